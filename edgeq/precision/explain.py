"""The number-format explainer behind `edgeq formats`: parse the values a user typed, explain
each in every format (edgeq/precision/formats.py does the numerics), and render the explanation
as text or JSON.
"""

from __future__ import annotations

import builtins  # explain takes `min` and `max` keywords, which hide these
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Sequence

import numpy as np

from edgeq.precision.formats import (
    FLOAT_FORMATS, SCHEMES, FloatEncoding, FormatsInputError, LinearCode, LinearParams, code_for, constant_text,
    encode_float, float_format, format_table, linear_params, number_text, with_source,
)

__all__ = ["FormatsReport", "explain", "parse_value", "render_text", "to_json"]


# --------------------------------------------------------------------------------------------
# Parsing, the whole explanation, text and JSON
# --------------------------------------------------------------------------------------------

_SPECIALS = {"inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf,
             "-inf": -math.inf, "-infinity": -math.inf, "nan": math.nan, "+nan": math.nan,
             "-nan": -math.nan}


def parse_value(text: str | float | int) -> float:
    """Parse '85.125', '-3e-5', 'inf', '-inf', 'nan', '0x1p-14' (hex float) to a float.

    Raises FormatsInputError (a ValueError) for anything else, and for decimals that float64
    cannot hold (1e400 would silently become inf, 1e-400 would become 0).
    """
    if isinstance(text, bool):
        raise FormatsInputError(f"not a number: {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str):
        raise FormatsInputError(f"not a number: {text!r}")
    t = text.strip()
    low = t.lower()
    if not t:
        raise FormatsInputError("empty value", hint="give a number such as 85.125, -3e-5, inf, "
                                "nan or 0x1p-14")
    if low in _SPECIALS:
        return _SPECIALS[low]
    if re.fullmatch(r"[+-]?0x[0-9a-f_.]*(p[+-]?\d+)?", low):
        try:
            v = float.fromhex(t.replace("_", ""))
        except OverflowError:
            raise FormatsInputError(f"{t} is too large for float64") from None
        except ValueError:
            raise FormatsInputError(f"{t!r} is not a valid hex float",
                                    hint="hex floats look like 0x1p-14 or -0x1.8p3") from None
        mant = low.lstrip("+-")[2:].split("p")[0]
        if v == 0 and re.search(r"[1-9a-f]", mant):
            raise FormatsInputError(f"{t} is too small for float64 (it would be read as 0)")
        return v
    try:
        v = float(t)
    except ValueError:
        raise FormatsInputError(
            f"not a number: {text!r}",
            hint="give a decimal (85.125, -3e-5), inf, -inf, nan or a hex float (0x1p-14)",
        ) from None
    if math.isfinite(v) and v != 0:
        return v
    if math.isinf(v):
        raise FormatsInputError(f"{t} is too large for float64 (it would be read as inf)",
                                hint="write inf for infinity")
    try:
        if Decimal(t.replace("_", "")) != 0:
            raise FormatsInputError(f"{t} is too small for float64 (it would be read as 0)")
    except InvalidOperation:  # pragma: no cover - float() accepted it, Decimal should too
        pass
    return v


@dataclass(frozen=True)
class FormatsReport:
    """Everything `edgeq formats` shows: per value encodings and codes, then the format table."""

    values: list[float]
    encodings: list[list[FloatEncoding]]  # [value][format], formats in FLOAT_FORMATS order
    params: list[LinearParams]  # one per (bits, scheme)
    codes: list[list[LinearCode]]  # [value][params]
    table: list[dict[str, Any]] = field(default_factory=list)


def explain(values: Iterable[float], *, formats: Sequence[str] | None = None,
            bits: Sequence[int] = (8,), schemes: Sequence[str] = SCHEMES,
            min: float | None = None, max: float | None = None, scale: float | None = None,
            zero_point: int | None = None) -> FormatsReport:
    """Encode every value in every float format and quantize it with every (bits, scheme).

    Without min/max/scale the integer range is the range of the finite values, widened to 0.
    With scale (and zero_point) every scheme uses them (symmetric needs zero_point 0).
    """
    vals = [float(v) for v in values]
    fmts = [float_format(f) for f in (formats or list(FLOAT_FORMATS))]
    encodings = [[encode_float(v, f) for f in fmts] for v in vals]
    params: list[LinearParams] = []
    for b in bits:
        for s in schemes:
            if scale is not None or min is not None or max is not None:
                params.append(linear_params(bits=b, scheme=s, min=min, max=max, scale=scale,
                                            zero_point=zero_point))
            else:
                finite = [v for v in vals if math.isfinite(v)]
                lo = builtins.min(finite + [0.0])
                hi = builtins.max(finite + [0.0])
                params.append(with_source(
                    linear_params(bits=b, scheme=s, min=lo, max=hi), "values"))
    codes = [[code_for(v, p) for p in params] for v in vals]
    table = format_table(int_bits=sorted(set(bits) | {8, 4}, reverse=True))
    return FormatsReport(values=vals, encodings=encodings, params=params, codes=codes,
                         table=table)


def _jsonable(obj: Any) -> Any:
    """Strict-JSON friendly: non-finite floats become the strings 'nan', '+inf', '-inf'."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else number_text(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


def to_json(report: FormatsReport) -> dict[str, Any]:
    """A JSON-ready dict (json.dumps(..., allow_nan=False) works: nan/inf are strings)."""
    return _jsonable({
        "values": [
            {"value": v, "text": number_text(v),
             "floats": [e.to_dict() for e in encs],
             "ints": [c.to_dict() for c in cs]}
            for v, encs, cs in zip(report.values, report.encodings, report.codes)
        ],
        "quantization": [p.to_dict() for p in report.params],
        "table": report.table,
    })


def _exp_text(e: FloatEncoding) -> str:
    if e.number_class == "normal":
        return f"exp {e.biased_exponent} (2^{e.unbiased_exponent})"
    if e.number_class == "subnormal":
        return f"exp 0 (subnormal, 2^{e.unbiased_exponent})"
    return f"exp {e.biased_exponent} ({ {'zero': 'zero', 'inf': 'Inf', 'nan': 'NaN'}[e.number_class] })"


def _err_text(err: float, rel: float | None) -> str:
    if err == 0:
        return "0"
    if math.isnan(err) or math.isinf(err):
        return number_text(err)
    s = f"{err:+.6g}"
    return s if rel is None else f"{s} (rel {rel:+.2e})"


def _num(x: float) -> str:
    return number_text(x) if not math.isfinite(x) or x.is_integer() else f"{x:.6g}"


def render_text(report: FormatsReport) -> str:
    """The terminal view: per value one line per float format and per integer format, notes,
    then the quantization parameters and the format table."""
    lines = _values_text(report) + _params_text(report) + _table_text(report)
    return "\n".join(lines) + "\n"


def _values_text(report: FormatsReport) -> list[str]:
    lines: list[str] = []
    name_w = max([len(e.format) for encs in report.encodings for e in encs] + [4])
    bits_w = max([len(e.bit_string) for encs in report.encodings for e in encs] + [1])
    int_w = max([len(_short_int_name(p)) for p in report.params] + [name_w])
    label_w = max(name_w, int_w)
    for v, encs, cs in zip(report.values, report.encodings, report.codes):
        lines.append(number_text(v))
        notes: list[str] = []
        for e in encs:
            lines.append(f"  {e.format:<{label_w}}  {e.bit_string:<{bits_w}}  "
                         f"{_exp_text(e):<24}stored {number_text(e.stored):<22} "
                         f"error {_err_text(e.error, e.relative_error)}")
            notes += [f"{e.format}: {n}" for n in e.notes]
        for c in cs:
            p = c.params
            if c.code is None:
                code = "-"
            elif p.scheme == "asymmetric":
                code = f"{c.code} (unsigned {c.unsigned_code})"
            else:
                code = str(c.code)
            flag = "  CLIPPED" if c.clipped else ""
            lines.append(f"  {_short_int_name(p):<{label_w}}  q {code:<{bits_w - 2}}  "
                         f"{'':<24}deq    {_num(c.dequantized):<22} "
                         f"error {_err_text(c.error, c.relative_error)}{flag}")
            notes += [f"{p.name}: {n}" for n in c.notes]
        for n in notes:
            lines.append(f"  ! {n}")
        lines.append("")
    return lines


def _params_text(report: FormatsReport) -> list[str]:
    if not report.params:
        return []
    lines = ["Integer quantization (per tensor; round half away from zero, as TFLite):"]
    for p in report.params:
        src = {"values": "range of the values (with 0)", "range": "given range", "scale": "given scale"}[p.source]
        lines.append(f"  {p.name:<16} s = {p.scale:.6g}  z = {p.zero_point}  codes "
                     f"[{p.code_min}, {p.code_max}]  range [{_num(p.range_min)}, "
                     f"{_num(p.range_max)}] ({src})")
        lines.append(f"  {'':<16} {p.formula}")
        for n in p.notes:
            lines.append(f"  {'':<16} note: {n}")
    return lines + [""]


def _table_text(report: FormatsReport) -> list[str]:
    lines = ["Formats:",
             f"  {'format':<20} {'bits':>4}  {'layout':<8} {'smallest subnormal':>18} "
             f"{'smallest normal':>15} {'largest finite':>14} {'epsilon':>10} {'digits':>6}"]
    for row in report.table:
        if row["kind"] == "float":
            layout = f"1+{row['exponent_bits']}+{row['mantissa_bits']}"
            inf = "" if row["has_inf"] else "  (no Inf)"
            lines.append(
                f"  {row['format']:<20} {row['bits']:>4}  {layout:<8} "
                f"{row['smallest_subnormal']:>18.6g} {row['smallest_normal']:>15.6g} "
                f"{constant_text(row['largest_finite']):>14} {_pow2(row['epsilon']):>10} "
                f"{row['decimal_digits']:>6.2f}{inf}")
        else:
            lines.append(
                f"  {row['format']:<20} {row['bits']:>4}  {'codes':<8} "
                f"{row['code_min']:>18} {'':>15} {row['code_max']:>14} "
                f"{'1/' + str(row['levels'] - 1):>10} {row['decimal_digits']:>6.2f}"
                f"  ({row['levels']} levels)")
    lines.append("  (epsilon: float gap above 1; for INT, one step over the full range)")
    return lines


def _pow2(x: float) -> str:
    m, e = math.frexp(x)
    return f"2^{e - 1}" if m == 0.5 else f"{x:.4g}"


def _short_int_name(p: LinearParams) -> str:
    return f"INT{p.bits} {'asym' if p.scheme == 'asymmetric' else 'sym'}"
