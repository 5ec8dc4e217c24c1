"""Checks of a tensor's quantization parameters as a .tflite stores them.

Bad scales or zero points do not make a file unreadable, but they make every inference result
wrong, so the checked reader (edgeq/tflite/reader.py) refuses them with the tensor named.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NoReturn

ZP_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
            "uint16": (0, 65535), "int4": (-8, 7), "uint4": (0, 15)}
"""Zero point ranges by storage type. int16 must be 0 per the TFLite spec, but other int16 values
are only wrong, not unreadable, so they are accepted. int32/int64 (bias) zero points: anything."""

_BAD_SCALE_HINT = "calibration produced an invalid range or the file is corrupt; re-export it"


def check_quantization(fail: Callable[..., NoReturn], label: str, dtype: str, shape: list[int],
                       scales: list[float], zero_points: list[int], axis: int) -> None:
    """Call `fail(message)` (or `fail(message, hint=...)`) for the first thing wrong with the
    quantization of tensor `label`: a scale not finite and positive, scales and zero points that
    do not pair up, a zero point outside its dtype, a per-channel axis that does not fit the shape."""
    for k, scale in enumerate(scales):
        if not (math.isfinite(scale) and scale > 0):
            fail(f"{label} has quantization scale {scale} (entry {k}); scales must be finite and > 0",
                 hint=_BAD_SCALE_HINT)
    if zero_points and len(zero_points) != len(scales) and not (len(zero_points) == 1 and len(scales) > 1):
        # One zero point for every channel is TFLM's space-saving form (edgeq flashes it).
        fail(f"{label} has {len(scales)} quantization scales but {len(zero_points)} zero points")
    lo, hi = ZP_RANGE.get(dtype, (-(2**63), 2**63 - 1))
    for k, zp in enumerate(zero_points):
        if not lo <= zp <= hi:
            fail(f"{label} has zero point {zp} (entry {k}), outside the {dtype} range {lo}..{hi}")
    if len(scales) > 1:
        if not 0 <= axis < len(shape):
            fail(f"{label} is quantized per channel along axis {axis}, but has rank {len(shape)}")
        if shape[axis] != len(scales):
            fail(f"{label} has {len(scales)} per-channel scales, but its dimension {axis} has size {shape[axis]}")
