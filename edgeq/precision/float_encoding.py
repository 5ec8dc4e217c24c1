"""How one value is stored in a float format: the bits of the cast, the value that comes back,
its exact error, and overflow or underflow called out.

:func:`encode_float` casts a value to a format and reads the bit pattern back from the bytes of
the cast result (viewed as uint8/uint16/uint32); nothing is re-derived by hand. All casts round
to nearest, ties to even (numpy for FP16, ml_dtypes for BF16 and FP8).

The narrow formats (FP16, BF16, FP8) are cast *from the FP32 value*, as a Keras model's float32
weights and activations are. The FP32 row itself is cast from the float64 the text was parsed
to. ml_dtypes would go through float32 anyway: it converts float64 -> bfloat16/float8 via
float32 (double rounding), e.g. 1 + 2**-8 + 2**-30 becomes 1.0 in BF16, not 1.0078125.
Errors are always ``stored - value`` against the parsed float64 value, computed exactly
(with fractions) and then rounded once to float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.precision.float_formats import FloatFormat, float_format
from edgeq.precision.values import constant_text, exact_decimal, exact_error, number_text

__all__ = ["FloatEncoding", "encode_float"]


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
        return exact_decimal(self.stored)

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

    error, rel = exact_error(stored, value)
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

