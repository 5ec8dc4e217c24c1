"""The recurrent kernels: UNIDIRECTIONAL_SEQUENCE_LSTM and SVDF, whose state persists between calls."""

from __future__ import annotations
