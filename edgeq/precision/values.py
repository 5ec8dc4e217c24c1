"""Single values as the number-format explorer writes and compares them: compact and exact text,
errors computed exactly, and the error raised for a value or parameter it cannot use."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

from edgeq.errors import EdgeqError

__all__ = ["FormatsInputError", "constant_text", "exact_decimal", "exact_error", "number_text"]


class FormatsInputError(EdgeqError, ValueError):
    """A value or quantization parameter the precision explorer cannot use (also a ValueError)."""


def exact_decimal(x: float) -> str:
    """Every digit of a float's value ('nan', '+inf' and '-inf' for specials)."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return format(Decimal(x), "f")


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


def exact_error(stored: float, value: float) -> tuple[float, float | None]:
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
