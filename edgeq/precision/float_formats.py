"""The binary floating-point formats the explorer knows (FP32, FP16, BF16, FP8 E4M3 and E5M2),
as data read from ml_dtypes.finfo, and their lookup by key, name or alias."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from edgeq.precision.values import FormatsInputError

__all__ = ["FLOAT_FORMATS", "FloatFormat", "float_format"]

_UINT_FOR_BITS = {8: np.uint8, 16: np.uint16, 32: np.uint32}


@dataclass(frozen=True)
class FloatFormat:
    """One binary floating-point format. Everything but key/name/dtype comes from ml_dtypes.finfo."""

    key: str  # "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"
    name: str  # "FP32", "FP16", "BF16", "FP8 E4M3", "FP8 E5M2"
    dtype: np.dtype
    bits: int
    exponent_bits: int
    mantissa_bits: int  # stored fraction bits (precision is mantissa_bits + 1 for normals)
    bias: int
    has_inf: bool  # False for E4M3 (float8_e4m3fn): S.1111.111 is NaN, everything else finite
    smallest_subnormal: float
    smallest_normal: float
    largest_finite: float
    epsilon: float  # 2**-mantissa_bits: gap between 1 and the next larger number

    @property
    def uint_dtype(self) -> type:
        return _UINT_FOR_BITS[self.bits]

    @property
    def decimal_digits(self) -> float:
        return -math.log10(self.epsilon)


def _make_format(key: str, name: str, dtype: Any) -> FloatFormat:
    dt = np.dtype(dtype)
    fi = ml_dtypes.finfo(dt)
    bits = int(fi.bits)
    assert bits == 1 + int(fi.nexp) + int(fi.nmant), (key, fi)
    with np.errstate(over="ignore", invalid="ignore"):
        has_inf = bool(np.isinf(np.array(np.inf, dtype=np.float32).astype(dt)))
    return FloatFormat(
        key=key, name=name, dtype=dt, bits=bits, exponent_bits=int(fi.nexp),
        mantissa_bits=int(fi.nmant), bias=1 - int(fi.minexp), has_inf=has_inf,
        smallest_subnormal=float(fi.smallest_subnormal), smallest_normal=float(fi.smallest_normal),
        largest_finite=float(fi.max), epsilon=float(fi.eps),
    )


FLOAT_FORMATS: dict[str, FloatFormat] = {
    f.key: f
    for f in (
        _make_format("fp32", "FP32", np.float32),
        _make_format("fp16", "FP16", np.float16),
        _make_format("bf16", "BF16", ml_dtypes.bfloat16),
        _make_format("fp8_e4m3", "FP8 E4M3", ml_dtypes.float8_e4m3fn),
        _make_format("fp8_e5m2", "FP8 E5M2", ml_dtypes.float8_e5m2),
    )
}

_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "f32": "fp32", "single": "fp32",
    "fp16": "fp16", "float16": "fp16", "f16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp8_e4m3": "fp8_e4m3", "e4m3": "fp8_e4m3", "fp8e4m3": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3",
    "fp8_e5m2": "fp8_e5m2", "e5m2": "fp8_e5m2", "fp8e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
}


def float_format(fmt: str | FloatFormat) -> FloatFormat:
    """Look a format up by key, name or common alias ("fp16", "half", "BF16", "FP8 E4M3", "e5m2")."""
    if isinstance(fmt, FloatFormat):
        return fmt
    norm = re.sub(r"[\s\-]+", "_", str(fmt).strip().lower())
    key = _ALIASES.get(norm) or _ALIASES.get(norm.replace("_", ""))
    if key is None:
        raise FormatsInputError(
            f"unknown float format {fmt!r}",
            hint="use one of: " + ", ".join(f.name for f in FLOAT_FORMATS.values()),
        )
    return FLOAT_FORMATS[key]
