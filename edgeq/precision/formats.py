"""Number formats, the numerics: how a value is stored in FP32, FP16, BF16, FP8 and INT8/INT4.

Pure NumPy + ml_dtypes (no TensorFlow), so `edgeq formats` starts instantly and the model
simulator can reuse :func:`quantize_dequantize`. edgeq/precision/explain.py turns these into the
explanation `edgeq formats` prints.

Floating point
    :func:`encode_float` casts a value to a format and reads the bit pattern back from the bytes
    of the cast result (viewed as uint8/uint16/uint32); nothing is re-derived by hand. All casts
    round to nearest, ties to even (numpy for FP16, ml_dtypes for BF16 and FP8).

    The narrow formats (FP16, BF16, FP8) are cast *from the FP32 value*, as a Keras model's float32
    weights and activations are. The FP32 row itself is cast from the float64 the text was parsed
    to. ml_dtypes would go through float32 anyway: it converts float64 -> bfloat16/float8 via
    float32 (double rounding), e.g. 1 + 2**-8 + 2**-30 becomes 1.0 in BF16, not 1.0078125.
    Errors are always ``stored - value`` against the parsed float64 value, computed exactly
    (with fractions) and then rounded once to float.

Integers (linear quantization, k = 8 or 4 bits; any 2..16 works)
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
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from edgeq.errors import EdgeqError
from edgeq.vocab import Scheme

__all__ = [
    "FLOAT_FORMATS",
    "FloatEncoding",
    "FloatFormat",
    "FormatsInputError",
    "LinearCode",
    "LinearParams",
    "QuantizedArray",
    "encode_float",
    "float_format",
    "format_table",
    "linear_params",
    "quantize_dequantize",
    "quantize_linear",
]


class FormatsInputError(EdgeqError, ValueError):
    """A value or quantization parameter the precision explorer cannot use (also a ValueError)."""


# --------------------------------------------------------------------------------------------
# Float formats
# --------------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class FloatEncoding:
    """How one value is stored in one float format."""

    value: float  # the value asked for (float64)
    format: str  # format name, e.g. "FP16"
    raw: int  # the stored bit pattern as an unsigned integer
    sign: str  # "0" or "1"
    exponent: str  # exponent field bits, e.g. "10101"
    mantissa: str  # fraction field bits, e.g. "0101010010"
    biased_exponent: int  # exponent field as an integer (0 for zero/subnormal)
    unbiased_exponent: int | None  # normal: biased - bias; subnormal: 1 - bias; zero/inf/nan: None
    stored: float  # the value actually stored (exact: every format here fits in float64)
    error: float  # stored - value (exact difference, rounded once); inf on overflow, nan for NaN
    relative_error: float | None  # error / value; None when value is 0, inf or nan
    number_class: str  # "normal" | "subnormal" | "zero" | "inf" | "nan"
    notes: tuple[str, ...] = ()  # overflow / underflow call-outs

    @property
    def bit_string(self) -> str:
        """Sign, exponent and mantissa fields separated by spaces: '0 10000101 0101010'."""
        return f"{self.sign} {self.exponent} {self.mantissa}"

    @property
    def hex(self) -> str:
        width = (len(self.sign) + len(self.exponent) + len(self.mantissa)) // 4
        return f"0x{self.raw:0{width}x}"

    @property
    def stored_exact(self) -> str:
        """The stored value as an exact decimal string ('nan', '+inf' and '-inf' for specials)."""
        return _exact_decimal(self.stored)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "value": self.value,
            "bits": self.bit_string,
            "hex": self.hex,
            "sign": self.sign,
            "exponent": self.exponent,
            "mantissa": self.mantissa,
            "biased_exponent": self.biased_exponent,
            "unbiased_exponent": self.unbiased_exponent,
            "stored": self.stored,
            "stored_exact": self.stored_exact,
            "error": self.error,
            "relative_error": self.relative_error,
            "class": self.number_class,
            "notes": list(self.notes),
        }


def _exact_decimal(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    s = format(Decimal(x), "f")
    return s


def number_text(x: float) -> str:
    """Compact, round-trippable text for a value: 65520, -0.125, 1e-08, nan, +inf, -0."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(float(x))


def constant_text(x: float) -> str:
    """Text for a format constant (max, tiny, ...): integers in full, others to 6 digits."""
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return f"{x:.6g}"


def _exact_error(stored: float, value: float) -> tuple[float, float | None]:
    """(stored - value, (stored - value) / value), each computed exactly and rounded once."""
    if math.isnan(value) or math.isnan(stored):
        return math.nan, None
    if math.isinf(value):
        return (0.0 if stored == value else math.nan), None
    if math.isinf(stored):
        return stored, (None if value == 0 else stored * math.copysign(1.0, value))
    diff = Fraction(stored) - Fraction(value)
    rel = None if value == 0 else float(diff / Fraction(value))
    return float(diff), rel


def encode_float(value: float, fmt: str | FloatFormat) -> FloatEncoding:
    """Cast `value` to `fmt` (round to nearest even) and describe the stored bits.

    FP32 is cast from float64; FP16, BF16 and FP8 from the FP32 value (see the module docstring).
    """
    f = float_format(fmt)
    value = float(value)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        src = np.array(value, dtype=np.float64)
        if f.key != "fp32":
            src = src.astype(np.float32)
        cast = src.astype(f.dtype)
    raw = int(cast.reshape(1).view(f.uint_dtype)[0])
    stored = float(cast.astype(np.float64))

    bits = format(raw, f"0{f.bits}b")
    sign, exponent, mantissa = bits[0], bits[1:1 + f.exponent_bits], bits[1 + f.exponent_bits:]
    biased = int(exponent, 2)
    frac = int(mantissa, 2)
    all_ones = (1 << f.exponent_bits) - 1

    if math.isnan(stored):
        cls = "nan"
    elif math.isinf(stored):
        cls = "inf"
    elif biased == 0:
        cls = "zero" if frac == 0 else "subnormal"
    else:
        cls = "normal"
    if f.has_inf:  # IEEE-style: the all-ones exponent is reserved for Inf and NaN
        assert (biased == all_ones) == (cls in ("inf", "nan")), (value, f.name, bits)

    if cls == "normal":
        unbiased: int | None = biased - f.bias
    elif cls == "subnormal":
        unbiased = 1 - f.bias
    else:
        unbiased = None

    error, rel = _exact_error(stored, value)
    notes = _float_notes(value, stored, cls, frac, f)
    return FloatEncoding(
        value=value, format=f.name, raw=raw, sign=sign, exponent=exponent, mantissa=mantissa,
        biased_exponent=biased, unbiased_exponent=unbiased, stored=stored, error=error,
        relative_error=rel, number_class=cls, notes=tuple(notes),
    )


def _float_notes(value: float, stored: float, cls: str, frac: int, f: FloatFormat) -> list[str]:
    notes: list[str] = []
    v = number_text(value)
    if math.isnan(value):
        return notes
    if math.isinf(value):
        if not f.has_inf:
            notes.append(f"no Inf in {f.name}: {v} becomes NaN")
        return notes
    big = constant_text(f.largest_finite)
    if cls == "inf":
        notes.append(f"overflow: {v} rounds to {'+' if stored > 0 else '-'}Inf in {f.name} "
                     f"(largest finite {big})")
    elif cls == "nan":
        notes.append(f"overflow: no Inf in {f.name}, {v} becomes NaN (largest finite {big}; "
                     f"ml_dtypes does not saturate out-of-range values to ±{big})")
    elif abs(value) > f.largest_finite:
        notes.append(f"{v} is above {f.name}'s largest finite {big} but rounds down to it")
    elif value != 0 and cls == "zero":
        half = f.smallest_subnormal / 2
        ss = f"{f.smallest_subnormal:.3g}"
        zero = "-0" if stored == 0 and math.copysign(1.0, stored) < 0 else "0"
        via32 = float(np.float32(value)) if f.bits < 32 else value  # narrow formats are cast from FP32
        if abs(via32) == half:
            first = "" if via32 == value else f" once rounded to FP32 ({via32:.9g})"
            notes.append(f"underflow: {v} is exactly half of {f.name}'s smallest subnormal {ss}{first}; "
                         f"the tie rounds to even and it becomes {zero}")
        else:
            notes.append(f"underflow: {v} is below {f.name}'s smallest subnormal {ss} / 2 "
                         f"and becomes {zero}")
    elif cls == "subnormal" and abs(value) < f.smallest_normal:
        notes.append(f"underflow: {v} is below {f.name}'s smallest normal "
                     f"{f.smallest_normal:.3g} and is stored as a subnormal "
                     f"({frac.bit_length()} significant bits instead of {f.mantissa_bits + 1})")
    elif cls == "normal" and 0 < abs(value) < f.smallest_normal:
        notes.append(f"underflow: {v} is below {f.name}'s smallest normal "
                     f"{f.smallest_normal:.3g} and rounds up to it")
    return notes


# --------------------------------------------------------------------------------------------
# Linear (integer) quantization
# --------------------------------------------------------------------------------------------

SCHEMES = tuple(Scheme)  # asymmetric, symmetric


def _check_bits_scheme(bits: int, scheme: str) -> tuple[int, str]:
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


def _code_range(bits: int, scheme: str) -> tuple[int, int]:
    """Signed code range: asymmetric [-2^(k-1), 2^(k-1)-1], symmetric [-(2^(k-1)-1), 2^(k-1)-1]."""
    half = 1 << (bits - 1)
    return (-half if scheme == "asymmetric" else -(half - 1)), half - 1


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """Round half away from zero, exactly (no `floor(x + 0.5)` double rounding); keeps inf/nan."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        t = np.trunc(v)
        frac = v - t  # exact
        return t + np.where(np.abs(frac) >= 0.5, np.sign(v), 0.0)


def _choose_params(lo: np.ndarray, hi: np.ndarray, bits: int, scheme: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised scale and signed zero point for ranges [lo, hi] (widened to include 0)."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    qmin, qmax = _code_range(bits, scheme)
    if scheme == "asymmetric":
        scale = (hi - lo) / float((1 << bits) - 1)
        scale = np.where(scale > 0, scale, 1.0)
        zp = np.clip(_round_half_away(-lo / scale) + qmin, qmin, qmax).astype(np.int64)
    else:
        scale = np.maximum(-lo, hi) / float(qmax)
        scale = np.where(scale > 0, scale, 1.0)
        zp = np.zeros(np.shape(scale), dtype=np.int64)
    if not np.all(np.isfinite(scale)):
        raise FormatsInputError("the quantization range is too wide: its scale overflows float64")
    return scale, zp


def _quantize_core(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes as float64, dequantized, clipped mask): q = clamp(round(x/s) + z), x' = s*(q - z)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        raw = _round_half_away(np.asarray(x, dtype=np.float64) / scale) + zp
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
    bits, scheme = _check_bits_scheme(bits, scheme)
    qmin, qmax = _code_range(bits, scheme)
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
    s, z = _choose_params(np.float64(lo), np.float64(hi), bits, scheme)
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
    value = float(value)
    if math.isnan(value):
        return LinearCode(value=value, params=p, code=None, dequantized=math.nan, error=math.nan,
                          relative_error=None, clipped=False, out_of_range=False,
                          unsigned_code=None, unsigned_dequantized=None,
                          notes=("NaN has no integer code (TFLite's QUANTIZE result for NaN is "
                                 "undefined)",))
    q, deq, clipped = _quantize_core(np.float64(value), np.float64(p.scale),
                                     np.int64(p.zero_point), p.code_min, p.code_max)
    code, deq_f, clipped_b = int(q), float(deq), bool(clipped)
    error, rel = _exact_error(deq_f, value)
    if math.isinf(value):
        error, rel = -value, None
    out = not (p.range_min <= value <= p.range_max)
    uq = udeq = None
    if p.scheme == "asymmetric":
        umax = (1 << p.bits) - 1
        with np.errstate(over="ignore", invalid="ignore"):
            r = _round_half_away(np.float64((value - p.range_min) / p.scale))
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
    from dataclasses import replace

    return replace(p, source=source)


@dataclass(frozen=True)
class QuantizedArray:
    """Result of :func:`quantize_dequantize` (TFLite-style signed codes)."""

    q: np.ndarray  # integer codes, input shape; int8 for bits <= 8, else int16
    dequantized: np.ndarray  # float64, input shape: s*(q - z)
    scales: np.ndarray  # float64; shape () per-tensor, (C,) per-channel
    zero_points: np.ndarray  # int64, same shape as scales
    clipped: np.ndarray  # bool, input shape: code was clamped
    bits: int
    scheme: str
    axis: int | None  # normalised (non-negative) channel axis, or None


def quantize_dequantize(array: Any, bits: int = 8, scheme: str = "asymmetric",
                        axis: int | None = None, *, min: Any = None, max: Any = None,
                        scale: Any = None, zero_point: Any = None) -> QuantizedArray:
    """Quantize a float array to k-bit signed codes and back, per tensor or per channel.

    axis=None: one scale for the whole tensor. axis=k (e.g. -1 for conv kernels (h, w, in, out)):
    one scale per index along that axis, each from the min/max over all other axes.
    min/max (or scale/zero_point) override the ranges; they broadcast to the channel shape.
    Non-finite inputs are rejected (TFLite cannot quantize NaN/Inf meaningfully).
    """
    bits, scheme = _check_bits_scheme(bits, scheme)
    x = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise FormatsInputError("cannot quantize an array with NaN or Inf values")
    qmin, qmax = _code_range(bits, scheme)
    if axis is None:
        ch_shape: tuple[int, ...] = ()
        reduce_axes: tuple[int, ...] | None = None
        bshape: tuple[int, ...] = ()
        ax = None
    else:
        if x.ndim == 0:
            raise FormatsInputError("per-channel quantization needs an array with at least 1 axis")
        try:
            ax = _normalize_axis(axis, x.ndim)
        except IndexError as e:
            raise FormatsInputError(str(e)) from None
        ch_shape = (x.shape[ax],)
        reduce_axes = tuple(i for i in range(x.ndim) if i != ax)
        bshape = tuple(x.shape[ax] if i == ax else 1 for i in range(x.ndim))

    if scale is not None:
        if min is not None or max is not None:
            raise FormatsInputError("give either min/max or scale/zero_point, not both")
        scales, zps = _given_params(scale, zero_point, ch_shape, qmin, qmax, scheme)
    else:
        if zero_point is not None:
            raise FormatsInputError("a zero point needs a scale")
        if (min is None) != (max is None):
            raise FormatsInputError("give both min and max, or neither")
        lo, hi = _ranges(x, min, max, ch_shape, reduce_axes)
        scales, zps = _choose_params(lo, hi, bits, scheme)

    q, deq, clipped = _quantize_core(x, scales.reshape(bshape), zps.reshape(bshape), qmin, qmax)
    qdtype = np.int8 if bits <= 8 else np.int16
    return QuantizedArray(q=q.astype(qdtype), dequantized=deq, scales=np.asarray(scales),
                          zero_points=np.asarray(zps, dtype=np.int64), clipped=clipped,
                          bits=bits, scheme=scheme, axis=ax)


def _given_params(scale: Any, zero_point: Any, ch_shape: tuple[int, ...], qmin: int, qmax: int,
                  scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """The caller's scales and zero points, broadcast to the channel shape and checked."""
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), ch_shape).copy()
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise FormatsInputError("scales must be positive and finite")
    zp_in = np.zeros(ch_shape) if zero_point is None else np.asarray(zero_point)
    zps = np.broadcast_to(zp_in, ch_shape)
    if not np.all(zps == np.round(zps)) or np.any((zps < qmin) | (zps > qmax)):
        raise FormatsInputError(f"zero points must be integers in [{qmin}, {qmax}]")
    zps = zps.astype(np.int64)
    if scheme == "symmetric" and np.any(zps != 0):
        raise FormatsInputError("symmetric quantization has zero point 0")
    return scales, zps


def _ranges(x: np.ndarray, lo_given: Any, hi_given: Any, ch_shape: tuple[int, ...],
            reduce_axes: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """The min and max to quantize over: the caller's (checked), else the data's, per channel."""
    if lo_given is not None:
        lo = np.broadcast_to(np.asarray(lo_given, dtype=np.float64), ch_shape)
        hi = np.broadcast_to(np.asarray(hi_given, dtype=np.float64), ch_shape)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo > hi):
            raise FormatsInputError("min/max must be finite with min <= max")
        return lo, hi
    if x.size == 0:
        return np.zeros(ch_shape), np.zeros(ch_shape)
    if reduce_axes is None:
        return x.min(), x.max()
    return x.min(axis=reduce_axes), x.max(axis=reduce_axes)


def _normalize_axis(axis: int, ndim: int) -> int:
    a = int(axis)
    if not -ndim <= a < ndim:
        raise IndexError(f"axis {axis} is out of bounds for an array with {ndim} dimensions")
    return a % ndim


# --------------------------------------------------------------------------------------------
# Format table
# --------------------------------------------------------------------------------------------

def format_table(int_bits: Sequence[int] = (8, 4)) -> list[dict[str, Any]]:
    """Dynamic range and precision of each float format (from ml_dtypes.finfo) and INT8/INT4."""
    rows: list[dict[str, Any]] = []
    for f in FLOAT_FORMATS.values():
        rows.append({
            "format": f.name, "kind": "float", "bits": f.bits, "exponent_bits": f.exponent_bits,
            "mantissa_bits": f.mantissa_bits, "bias": f.bias, "has_inf": f.has_inf,
            "smallest_subnormal": f.smallest_subnormal, "smallest_normal": f.smallest_normal,
            "largest_finite": f.largest_finite, "epsilon": f.epsilon,
            "decimal_digits": f.decimal_digits,
        })
    for bits in int_bits:
        for scheme in SCHEMES:
            b, s = _check_bits_scheme(bits, scheme)
            lo, hi = _code_range(b, s)
            levels = hi - lo + 1
            rel = 1.0 / (levels - 1)  # one step over the full range
            rows.append({
                "format": f"INT{b} {s}", "kind": "int", "bits": b, "scheme": s,
                "levels": levels, "code_min": lo, "code_max": hi, "relative_precision": rel,
                "decimal_digits": -math.log10(rel),
            })
    return rows
