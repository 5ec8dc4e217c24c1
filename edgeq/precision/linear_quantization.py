"""Linear (integer) quantization of one value, and the rounding and parameter choice that
quantizing whole arrays shares with it.

k = 8 or 4 bits; any 2..16 works:

    asymmetric  s = (max - min) / (2^k - 1)
                unsigned (textbook): q = round((x - min) / s), clamped to [0, 2^k - 1];  x' = s*q + min
                signed (TFLite int8): z = round(-min / s) - 2^(k-1);
                                      q = round(x / s) + z, clamped to [-2^(k-1), 2^(k-1) - 1];  x' = s*(q - z)
    symmetric   s = max(|min|, |max|) / (2^(k-1) - 1)
                q = round(x / s), clamped to [-(2^(k-1) - 1), 2^(k-1) - 1];  x' = s*q   (z = 0)

Every ``round`` here is round half away from zero, as TFLite's QUANTIZE kernel (TfLiteRound,
std::round) and its weight quantizer do; on the unsigned path the argument is >= 0 for values
inside the range, where that is round half up. The range is always widened to include 0
(min(min, 0), max(max, 0)), as the TFLite converter does, so 0 is exactly representable.
An all-zero range gets scale 1.0 (as TFLite's per-channel weight quantizer does).
Arithmetic is float64; TFLite stores float32 scales and divides in float32, so a value that
lands within ~1e-7 relative of a rounding tie can get the neighbouring code there.
"""

from __future__ import annotations

import builtins  # linear_params takes `min` and `max` keywords, which hide these
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgeq.precision.values import FormatsInputError, exact_error, number_text
from edgeq.vocab import Scheme

__all__ = [
    "SCHEMES",
    "LinearCode",
    "LinearParams",
    "check_bits_scheme",
    "choose_params",
    "code_for",
    "code_range",
    "codes_and_dequantized",
    "linear_params",
    "quantize_linear",
    "round_half_away",
    "with_source",
]

SCHEMES = tuple(Scheme)  # asymmetric, symmetric


def check_bits_scheme(bits: int, scheme: str) -> tuple[int, str]:
    """(bits, scheme name) once both are checked; "asym", "affine" and "sym" name the schemes too."""
    if isinstance(bits, bool) or int(bits) != bits or not 2 <= int(bits) <= 16:
        raise FormatsInputError(f"bits must be an integer from 2 to 16, got {bits!r}",
                                hint="use 8 for INT8 or 4 for INT4")
    s = str(scheme).strip().lower()
    aliases = {"asym": "asymmetric", "affine": "asymmetric", "sym": "symmetric"}
    s = aliases.get(s, s)
    if s not in SCHEMES:
        raise FormatsInputError(f"unknown quantization scheme {scheme!r}",
                                hint="use 'asymmetric' or 'symmetric'")
    return int(bits), s


def code_range(bits: int, scheme: str) -> tuple[int, int]:
    """Signed code range: asymmetric [-2^(k-1), 2^(k-1)-1], symmetric [-(2^(k-1)-1), 2^(k-1)-1]."""
    half = 1 << (bits - 1)
    return (-half if scheme == "asymmetric" else -(half - 1)), half - 1


def round_half_away(v: np.ndarray) -> np.ndarray:
    """Round half away from zero, exactly (no `floor(x + 0.5)` double rounding); keeps inf/nan."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        t = np.trunc(v)
        frac = v - t  # exact
        return t + np.where(np.abs(frac) >= 0.5, np.sign(v), 0.0)


def choose_params(lo: np.ndarray, hi: np.ndarray, bits: int, scheme: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised scale and signed zero point for ranges [lo, hi] (widened to include 0)."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    qmin, qmax = code_range(bits, scheme)
    if scheme == "asymmetric":
        scale = (hi - lo) / float((1 << bits) - 1)
        scale = np.where(scale > 0, scale, 1.0)
        zp = np.clip(round_half_away(-lo / scale) + qmin, qmin, qmax).astype(np.int64)
    else:
        scale = np.maximum(-lo, hi) / float(qmax)
        scale = np.where(scale > 0, scale, 1.0)
        zp = np.zeros(np.shape(scale), dtype=np.int64)
    if not np.all(np.isfinite(scale)):
        raise FormatsInputError("the quantization range is too wide: its scale overflows float64")
    return scale, zp


def codes_and_dequantized(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes as float64, dequantized, clipped mask): q = clamp(round(x/s) + z), x' = s*(q - z)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        raw = round_half_away(np.asarray(x, dtype=np.float64) / scale) + zp
        clipped = (raw < qmin) | (raw > qmax)
        q = np.clip(raw, qmin, qmax)
        deq = scale * (q - zp)
    return q, deq, clipped


@dataclass(frozen=True)
class LinearParams:
    """Per-tensor linear quantization parameters (TFLite convention: signed codes, x = s*(q - z))."""

    bits: int
    scheme: str  # "asymmetric" | "symmetric"
    scale: float
    zero_point: int  # signed-storage zero point z (0 for symmetric)
    code_min: int
    code_max: int
    range_min: float  # the real range the parameters were chosen for (includes 0)
    range_max: float
    source: str  # "range" (min/max given), "values" (range of the values), "scale" (s, z given)
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"INT{self.bits} {self.scheme}"

    @property
    def levels(self) -> int:
        return self.code_max - self.code_min + 1

    @property
    def representable_min(self) -> float:
        return self.scale * (self.code_min - self.zero_point)

    @property
    def representable_max(self) -> float:
        return self.scale * (self.code_max - self.zero_point)

    @property
    def formula(self) -> str:
        if self.scheme == "asymmetric":
            return (f"s = (max - min)/(2^{self.bits} - 1); z = round(-min/s) - {1 << (self.bits - 1)}; "
                    f"q = clamp(round(x/s) + z, {self.code_min}, {self.code_max}); x' = s*(q - z); "
                    f"unsigned: q_u = clamp(round((x - min)/s), 0, {(1 << self.bits) - 1}), "
                    f"x' = s*q_u + min")
        return (f"s = max(|min|, |max|)/{self.code_max}; "
                f"q = clamp(round(x/s), {self.code_min}, {self.code_max}); x' = s*q")

    rounding = "round half away from zero (TFLite QUANTIZE); ties in z and q_u round up"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "bits": self.bits, "scheme": self.scheme, "scale": self.scale,
            "zero_point": self.zero_point, "code_min": self.code_min, "code_max": self.code_max,
            "levels": self.levels, "range_min": self.range_min, "range_max": self.range_max,
            "representable_min": self.representable_min,
            "representable_max": self.representable_max, "source": self.source,
            "formula": self.formula, "rounding": self.rounding, "notes": list(self.notes),
        }


def _finite_float(name: str, x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise FormatsInputError(f"{name} must be a number, got {x!r}") from None
    if not math.isfinite(v):
        raise FormatsInputError(f"{name} must be finite, got {x!r}")
    return v


def linear_params(*, bits: int = 8, scheme: str = "asymmetric", min: float | None = None,
                  max: float | None = None, scale: float | None = None,
                  zero_point: int | None = None) -> LinearParams:
    """Choose (or validate) per-tensor parameters from a range [min, max] or a given scale/zero point."""
    bits, scheme = check_bits_scheme(bits, scheme)
    qmin, qmax = code_range(bits, scheme)
    notes: list[str] = []
    if scale is not None:
        if min is not None or max is not None:
            raise FormatsInputError("give either a range (min, max) or a scale/zero point, not both")
        s = _finite_float("scale", scale)
        if s <= 0:
            raise FormatsInputError(f"scale must be positive, got {scale!r}")
        z = 0 if zero_point is None else zero_point
        if isinstance(z, bool) or int(z) != z:
            raise FormatsInputError(f"zero point must be an integer, got {zero_point!r}")
        z = int(z)
        if scheme == "symmetric" and z != 0:
            raise FormatsInputError(f"symmetric quantization has zero point 0, got {z}",
                                    hint="use scheme 'asymmetric' for a nonzero zero point")
        if not qmin <= z <= qmax:
            raise FormatsInputError(f"zero point {z} is outside the INT{bits} code range "
                                    f"[{qmin}, {qmax}]")
        return LinearParams(bits=bits, scheme=scheme, scale=s, zero_point=z, code_min=qmin,
                            code_max=qmax, range_min=s * (qmin - z), range_max=s * (qmax - z),
                            source="scale")
    if zero_point is not None:
        raise FormatsInputError("a zero point needs a scale")
    if min is None or max is None:
        raise FormatsInputError("give both ends of the range (min and max), or a scale")
    lo, hi = _finite_float("min", min), _finite_float("max", max)
    if lo > hi:
        raise FormatsInputError(f"range min {number_text(lo)} is above max {number_text(hi)}")
    if lo > 0 or hi < 0:
        notes.append(f"range [{number_text(lo)}, {number_text(hi)}] widened to include 0, as TFLite does")
    s, z = choose_params(np.float64(lo), np.float64(hi), bits, scheme)
    lo, hi = builtins.min(lo, 0.0), builtins.max(hi, 0.0)
    if lo == hi == 0.0:
        notes.append("empty range [0, 0]: scale set to 1.0")
    return LinearParams(bits=bits, scheme=scheme, scale=float(s), zero_point=int(z), code_min=qmin,
                        code_max=qmax, range_min=lo + 0.0, range_max=hi + 0.0, source="range",
                        notes=tuple(notes))


@dataclass(frozen=True)
class LinearCode:
    """One value's integer code under `params`."""

    value: float
    params: LinearParams
    code: int | None  # signed stored code (TFLite int8/int4); None for NaN
    dequantized: float  # s*(code - z)
    error: float  # dequantized - value
    relative_error: float | None  # None when value is 0 or non-finite
    clipped: bool  # round(x/s) + z fell outside [code_min, code_max] and was clamped
    out_of_range: bool  # value outside [range_min, range_max]
    unsigned_code: int | None  # asymmetric only: clamp(round((x - min)/s), 0, 2^k - 1)
    unsigned_dequantized: float | None  # s*unsigned_code + min
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value, "format": self.params.name, "bits": self.params.bits,
            "scheme": self.params.scheme, "scale": self.params.scale,
            "zero_point": self.params.zero_point, "code": self.code,
            "dequantized": self.dequantized, "error": self.error,
            "relative_error": self.relative_error, "clipped": self.clipped,
            "out_of_range": self.out_of_range, "unsigned_code": self.unsigned_code,
            "unsigned_dequantized": self.unsigned_dequantized, "notes": list(self.notes),
        }


def code_for(value: float, p: LinearParams) -> LinearCode:
    """The integer code of `value` under `p`, what it dequantizes to, and any clipping called out."""
    value = float(value)
    if math.isnan(value):
        return LinearCode(value=value, params=p, code=None, dequantized=math.nan, error=math.nan,
                          relative_error=None, clipped=False, out_of_range=False,
                          unsigned_code=None, unsigned_dequantized=None,
                          notes=("NaN has no integer code (TFLite's QUANTIZE result for NaN is "
                                 "undefined)",))
    q, deq, clipped = codes_and_dequantized(np.float64(value), np.float64(p.scale),
                                            np.int64(p.zero_point), p.code_min, p.code_max)
    code, deq_f, clipped_b = int(q), float(deq), bool(clipped)
    error, rel = exact_error(deq_f, value)
    if math.isinf(value):
        error, rel = -value, None
    out = not (p.range_min <= value <= p.range_max)
    uq = udeq = None
    if p.scheme == "asymmetric":
        umax = (1 << p.bits) - 1
        with np.errstate(over="ignore", invalid="ignore"):
            r = round_half_away(np.float64((value - p.range_min) / p.scale))
        uq = int(np.clip(r, 0, umax))
        udeq = p.scale * uq + p.range_min
    notes = []
    if clipped_b:
        end = "max" if code == p.code_max else "min"
        notes.append(f"clipped: {number_text(value)} is outside {p.name}'s range "
                     f"[{number_text(p.representable_min)}, {number_text(p.representable_max)}]; the code "
                     f"saturates at the {end} code {code} (error {number_text(error)})")
    elif out:
        notes.append(f"{number_text(value)} is just outside the range [{number_text(p.range_min)}, "
                     f"{number_text(p.range_max)}] but within half a step of it")
    return LinearCode(value=value, params=p, code=code, dequantized=deq_f, error=error,
                      relative_error=rel, clipped=clipped_b, out_of_range=out, unsigned_code=uq,
                      unsigned_dequantized=udeq, notes=tuple(notes))


def quantize_linear(x: float, *, bits: int = 8, scheme: str = "asymmetric",
                    min: float | None = None, max: float | None = None,
                    scale: float | None = None, zero_point: int | None = None) -> LinearCode:
    """Integer code of one value. Without a range or scale, the range is [min(x, 0), max(x, 0)]."""
    if scale is None and min is None and max is None:
        xf = float(x)
        lo = builtins.min(xf, 0.0) if math.isfinite(xf) else 0.0
        hi = builtins.max(xf, 0.0) if math.isfinite(xf) else 0.0
        p = linear_params(bits=bits, scheme=scheme, min=lo, max=hi)
        p = with_source(p, "values")
    else:
        p = linear_params(bits=bits, scheme=scheme, min=min, max=max, scale=scale,
                          zero_point=zero_point)
    return code_for(x, p)


def with_source(p: LinearParams, source: str) -> LinearParams:
    """`p`, saying its parameters came from `source` ("range", "values" or "scale")."""
    return replace(p, source=source)
