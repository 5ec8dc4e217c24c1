"""Number formats, the numerics: how a value is stored in FP32, FP16, BF16, FP8 and INT8/INT4.

Pure NumPy + ml_dtypes (no TensorFlow), so `edgeq formats` starts instantly and the model
simulator can reuse :func:`quantize_dequantize`. edgeq/precision/explain.py turns these into the
explanation `edgeq formats` prints. The numerics live in the modules beside this one, and the names
the rest of edgeq uses are importable from here:

    float_formats.py        the float formats' constants (from ml_dtypes.finfo) and their lookup
    float_encoding.py       one value cast to a float format: its bits, stored value and error
    linear_quantization.py  one value's integer code (asymmetric or symmetric, INT2..INT16)
    array_quantization.py   whole arrays, per tensor or per channel
    values.py               exact errors, the text of a value, the explorer's input error

This module holds the table of every format's range and precision.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from edgeq.precision.array_quantization import QuantizedArray, quantize_dequantize
from edgeq.precision.float_encoding import FloatEncoding, encode_float
from edgeq.precision.float_formats import FLOAT_FORMATS, FloatFormat, float_format
from edgeq.precision.linear_quantization import (
    SCHEMES, LinearCode, LinearParams, check_bits_scheme, code_for, code_range, linear_params, quantize_linear,
    with_source,
)
from edgeq.precision.values import FormatsInputError, constant_text, number_text

__all__ = [
    "FLOAT_FORMATS",
    "SCHEMES",
    "FloatEncoding",
    "FloatFormat",
    "FormatsInputError",
    "LinearCode",
    "LinearParams",
    "QuantizedArray",
    "code_for",
    "constant_text",
    "encode_float",
    "float_format",
    "format_table",
    "linear_params",
    "number_text",
    "quantize_dequantize",
    "quantize_linear",
    "with_source",
]


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
            b, s = check_bits_scheme(bits, scheme)
            lo, hi = code_range(b, s)
            levels = hi - lo + 1
            rel = 1.0 / (levels - 1)  # one step over the full range
            rows.append({
                "format": f"INT{b} {s}", "kind": "int", "bits": b, "scheme": s,
                "levels": levels, "code_min": lo, "code_max": hi, "relative_precision": rel,
                "decimal_digits": -math.log10(rel),
            })
    return rows
