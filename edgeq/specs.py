"""A model input as every stage names it: the loaders and frontends make them, the data checks and
the .tflite facts read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """One model input as the model expects it; shape includes the batch dimension (None)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
