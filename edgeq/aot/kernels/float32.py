"""The float32 kernels, for models (or parts of models) that are not quantized, on cores with an FPU."""

from __future__ import annotations
