"""The one-operand activations: RELU and RELU6 (a clamp), LEAKY_RELU (two rescales, int8 or int16),
SOFTMAX, LOGISTIC, TANH and HARD_SWISH (TFLM's fixed-point kernels, their fixed output scales checked here).

int16 activations (TFLite's int16x8 mode) take TFLM's int16 kernels, which are other algorithms:
RELU and RELU6 clamp in int16 codes, SOFTMAX interpolates in two 513-entry tables (exp and
1 / (1 + x)) that TFLM fills in float32 at Prepare, and LOGISTIC and TANH interpolate in one
256-knot table of the sigmoid. HARD_SWISH has no int16 kernel in TFLM."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import HINT, Constants, Step, act, f32, lowers, symmetric16
from edgeq.aot.qmath import activation_range, quantize_multiplier, sigmoid_table
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo


@lowers("RELU", "RELU6")
def _requantize_step(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """RELU: a rescale from the input's scale to the output's, then the activation's clamp. RELU6:
    TFLM clamps in the input's codes and does not rescale."""
    if _is_int16(op, info):
        return _relu16(op, info)
    inp = act(info, op.inputs[0], "input", op.name)
    out = act(info, op.outputs[0], "output", op.name)
    mult, shift = quantize_multiplier(float(np.float32(inp.scales[0])) / float(np.float32(out.scales[0])))
    lo, hi = activation_range({"RELU": 1, "RELU6": 3}.get(op.name, 0), out.scales[0], out.zero_points[0])
    if op.name == "RELU6":  # TFLM clamps RELU6 in the input's codes, without rescaling
        lo, hi = activation_range(3, inp.scales[0], inp.zero_points[0])
        mult, shift = 1 << 30, 1  # exactly 1.0
        out_zero = inp.zero_points[0]
        return Step(op.index, op.name, "requantize", op.inputs[0], op.outputs[0],
                    {"size": math.prod(out.shape), "input_zero_point": inp.zero_points[0], "mult": mult,
                     "shift": shift, "output_offset": out_zero, "act_min": lo, "act_max": hi})
    return Step(op.index, op.name, "requantize", op.inputs[0], op.outputs[0],
                {"size": math.prod(out.shape), "input_zero_point": inp.zero_points[0], "mult": mult, "shift": shift,
                 "output_offset": out.zero_points[0], "act_min": lo, "act_max": hi})


SIGMOID_TABLE = "edgeq_sigmoid16"
"""The C name of TFLite's sigmoid table (qmath.sigmoid_table): one array for the int16 LOGISTIC and
TANH and the LSTM's gates (kernels/recurrent.py writes it under the same name)."""


@lowers("SOFTMAX")
def _softmax(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """TFLM's int8 softmax: input differences scaled into Q5.26 by beta * input scale, exp and
    the reciprocal of their sum in fixed point, output scale 1/256 with zero point -128 (or, int16
    out, 1/65536 with zero point -32768)."""
    if _is_int16(op, info):
        return _softmax16(op, info, options, constants)
    inp = act(info, op.inputs[0], "input", op.name)
    out = act(info, op.outputs[0], "output", op.name, ("int8", "int16"))
    wide: dict[str, Any] = {}
    if out.dtype == "int16":  # int8 in, int16 out (TFLM's keyword benchmark): the same arithmetic, 16 bits out
        if out.zero_points[0] != -32768 or abs(f32(out.scales[0]) - 1 / 65536) > 0.001 / 65536:
            raise TargetCheckError(f"{info.source}: SOFTMAX #{op.index} takes int8 and outputs int16 with scale "
                                   f"{out.scales[0]}, zero point {out.zero_points[0]}; TFLM's needs 1/65536 and "
                                   "-32768", hint=HINT)
        wide = {"int16": True, "int16_out": True}
    elif (out.scales[0], out.zero_points[0]) != (1 / 256, -128):
        raise TargetCheckError(f"{info.source}: SOFTMAX #{op.index} outputs scale {out.scales[0]}, zero point "
                               f"{out.zero_points[0]}; TFLM's int8 softmax needs 1/256 and -128", hint=HINT)
    integer_bits = 5
    real = min(float(np.float32(options.beta)) * float(np.float32(inp.scales[0])) * (1 << (31 - integer_bits)),
               (1 << 31) - 1.0)
    multiplier, left_shift = quantize_multiplier(real)
    if real <= 1.0 or left_shift < 0:
        raise TargetCheckError(f"{info.source}: SOFTMAX #{op.index} has an input scale too small for TFLM's "
                               "fixed-point softmax", hint=HINT)
    radius = math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift))
    depth = inp.shape[-1]
    return Step(op.index, op.name, "softmax", op.inputs[0], op.outputs[0],
                {"rows": math.prod(inp.shape) // depth, "depth": depth, "multiplier": multiplier,
                 "left_shift": left_shift, "diff_min": -radius, **wide})


@lowers("LOGISTIC", "TANH")
def _sigmoid_like(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """LOGISTIC and TANH as TFLM's int8 kernels: the input rescaled into Q4.27 (inputs beyond a
    radius saturate), gemmlowp's fixed-point logistic or tanh, the result to 1/256 (zero point
    -128) or 1/128 (zero point 0)."""
    if _is_int16(op, info):
        return _sigmoid_like16(op, info, constants)
    inp = act(info, op.inputs[0], "input", op.name)
    out = act(info, op.outputs[0], "output", op.name)
    expected = (1 / 256, -128) if op.name == "LOGISTIC" else (1 / 128, 0)
    if (f32(out.scales[0]), out.zero_points[0]) != expected:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} outputs scale {out.scales[0]}, zero point "
                               f"{out.zero_points[0]}; TFLM's int8 {op.name} writes {expected[0]} and {expected[1]}",
                               hint=HINT)
    mantissa, left_shift = math.frexp(f32(inp.scales[0]) * (1 << 27))
    mult = int(math.floor(mantissa * (1 << 31) + 0.5))
    if left_shift < 0 or mult >= 1 << 31:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has an input scale ({inp.scales[0]}) outside "
                               "what TFLM's fixed-point kernel handles", hint=HINT)
    radius = math.floor(15 * (1 << 27) / (1 << left_shift))
    return Step(op.index, op.name, op.name.lower(), op.inputs[0], op.outputs[0],
                {"size": math.prod(inp.shape), "input_zero_point": inp.zero_points[0], "mult": mult,
                 "shift": left_shift, "radius": radius})


def _int16_multiplier(real: float) -> tuple[int, int]:
    """TFLM's QuantizeMultiplier then DownScaleInt32ToInt16Multiplier: (q16, shift)."""
    q, shift = quantize_multiplier(real)
    return (32767 if q >= (1 << 31) - 1 - (1 << 15) else (q + (1 << 15)) >> 16), shift


@lowers("HARD_SWISH")
def _hard_swish(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """HARD_SWISH as TFLM's int8 kernel: int16 fixed point, its multipliers formed in float32."""
    inp = act(info, op.inputs[0], "input", op.name)
    out = act(info, op.outputs[0], "output", op.name)
    hires = np.float32(1 / 128) * np.float32(inp.scales[0])
    out_mult, out_shift = _int16_multiplier(float(hires / np.float32(out.scales[0])))
    relu_mult, relu_shift = _int16_multiplier(float(hires / (np.float32(3) / np.float32(32768))))
    if out_shift > 0:
        raise TargetCheckError(f"{info.source}: HARD_SWISH #{op.index} scales its output up; TFLM refuses that too",
                               hint=HINT)
    return Step(op.index, op.name, "hard_swish", op.inputs[0], op.outputs[0],
                {"size": math.prod(inp.shape), "input_zero_point": inp.zero_points[0],
                 "output_zero_point": out.zero_points[0], "out_mult": out_mult, "out_shift": out_shift,
                 "relu_mult": relu_mult, "relu_shift": relu_shift})


# ---- int16 activations (TFLite's int16x8 mode): TFLM's int16 kernels ----

_INT16_MIN, _INT16_MAX = -(1 << 15), (1 << 15) - 1


def _is_int16(op: Any, info: ModelInfo) -> bool:
    return info.tensors[op.inputs[0]].dtype == "int16"


def _round_away(x: float) -> int:
    """C's round(): to the nearest integer, halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _relu16(op: Any, info: ModelInfo) -> Step:
    """RELU and RELU6 on int16 as TFLM runs them. RELU: the int32 requantization by input scale /
    output scale, then a clamp at the code of 0. The division is in double, as for int8: TFLM's
    interpreter computes that, though its source reads as a float32 division. RELU6: a clamp
    between the input's codes of 0 and 6, written to the output as they are (no rescale)."""
    if op.name == "RELU6":  # TFLM's Prepare reads only the input: any zero point, no rescale
        inp = act(info, op.inputs[0], "input", op.name, dtypes=("int16",))
        act(info, op.outputs[0], "output", op.name, dtypes=("int16",))
        zero = inp.zero_points[0]
        six = _round_away(float(np.float32(6.0) / np.float32(inp.scales[0]))) + zero
        return Step(op.index, op.name, "relu16", op.inputs[0], op.outputs[0],
                    {"size": math.prod(inp.shape), "rescale": False, "lo": max(zero, _INT16_MIN),
                     "hi": min(max(six, _INT16_MIN), _INT16_MAX)})
    inp, out = symmetric16(op, info)
    mult, shift = quantize_multiplier(f32(inp.scales[0]) / f32(out.scales[0]))
    return Step(op.index, op.name, "relu16", op.inputs[0], op.outputs[0],
                {"size": math.prod(inp.shape), "rescale": True, "mult": mult, "shift": shift, "lo": 0,
                 "hi": _INT16_MAX})


def _lut16(fn: Callable[[np.float32], np.float32], input_scale: float, input_zero: int, output_scale: float,
           output_zero: int) -> np.ndarray:
    """The 513 int16 entries TFLM's int16 lookup interpolates in (its LUTPopulate for int16, all in
    float32): `fn` sampled at 512 even steps over the input's int16 range and at its end, each
    sample in output codes moved by half the error that linear interpolation makes at the middle
    of its step."""
    f = np.float32

    def fround(x: np.float32) -> np.float32:
        return f(_round_away(float(x)))

    in_lo, in_hi = f(input_scale) * f(_INT16_MIN - input_zero), f(input_scale) * f(_INT16_MAX - input_zero)
    out_lo, out_hi = f(output_scale) * f(_INT16_MIN - output_zero), f(output_scale) * f(_INT16_MAX - output_zero)
    step = (in_hi - in_lo) / f(512)
    half = step / f(2)
    to_codes = f(65536) / (out_hi - out_lo)
    table = np.zeros(513, dtype=np.int16)
    for i in range(512):
        here = fn(in_lo + f(i) * step)
        middle = fn(in_lo + f(i) * step + half)
        following = fn(in_lo + f(i + 1) * step)
        interpolated = fround((following * to_codes + fround(here * to_codes)) / f(2))
        bias = fround((interpolated - fround(middle * to_codes)) / f(2))
        table[i] = min(max(float(fround(here * to_codes) - bias), _INT16_MIN), _INT16_MAX)
    table[512] = min(max(float(fround(fn(in_hi) * to_codes)), _INT16_MIN), _INT16_MAX)
    return table


@lru_cache(maxsize=1)
def _softmax16_tables() -> tuple[np.ndarray, np.ndarray]:
    """TFLM's int16 softmax tables, the same for every model: exp on [-10, 0] and 1 / (1 + x) on
    [0, 1], both to [-1, 1] in int16 codes. exp is float32's (the double result rounded once)."""
    f = np.float32
    span = f(65535)
    exp = _lut16(lambda v: f(math.exp(float(v))), float(f(10) / span), _INT16_MAX, float(f(2) / span), 0)
    recip = _lut16(lambda v: f(1) / (f(1) + v), float(f(1) / span), _INT16_MIN, float(f(2) / span), 0)
    return exp, recip


def _softmax16(op: Any, info: ModelInfo, options: Any, constants: Constants) -> Step:
    """TFLM's int16 softmax: each difference to the row's maximum rescaled so that [-65535, 0]
    spans exp's table ([-10, 0]), the exps summed, the sum's reciprocal from the second table,
    the output scale 1/32768 with zero point 0."""
    inp, out = symmetric16(op, info)
    one = np.float32(1) / np.float32(32768)
    if abs(np.float32(out.scales[0]) - one) > np.float32(0.001) * one:
        raise TargetCheckError(f"{info.source}: SOFTMAX #{op.index} outputs scale {out.scales[0]}; TFLM's int16 "
                               "softmax needs 1/32768", hint=HINT)
    real = f32(inp.scales[0]) * f32(options.beta) / (10.0 / 65535.0)
    mult, shift = quantize_multiplier(real)
    if shift >= 16:  # 65535 * 2^shift would not fit the int32 that TFLM shifts it in
        raise TargetCheckError(f"{info.source}: SOFTMAX #{op.index} has input scale {inp.scales[0]} and beta "
                               f"{options.beta}; TFLM's int16 softmax overflows int32 above a product of 5",
                               hint=HINT)
    exp, recip = _softmax16_tables()
    constants["edgeq_softmax16_exp"] = ("int16_t", exp)
    constants["edgeq_softmax16_recip"] = ("int16_t", recip)
    depth = inp.shape[-1]
    return Step(op.index, op.name, "softmax16", op.inputs[0], op.outputs[0],
                {"rows": math.prod(inp.shape) // depth, "depth": depth, "mult": mult, "shift": shift})


def _checked_log2(x: float) -> tuple[bool, int]:
    """TFLM's CheckedLog2 (in float32): log2(x) rounded, and whether x is within 0.001 of an
    octave of that power of two, which TFLM then takes for it."""
    if not x > 0:
        return False, 0
    f = np.float32
    log2 = f(math.log(f32(x))) * (f(1) / f(math.log(2.0)))
    rounded = _round_away(float(log2))
    return bool(abs(log2 - f(rounded)) < f(1e-3)), rounded


def _sigmoid_like16(op: Any, info: ModelInfo, constants: Constants) -> Step:
    """LOGISTIC and TANH on int16 as TFLM's kernels: the input times an int16 multiplier and a
    rounding right shift puts 1.0 at 3 * 4096 (the table spans [-10.7, 10.7] where [-8, 8] would
    be a power of two), then the sigmoid table, interpolated on 9 (LOGISTIC) or 8 (TANH)
    fractional bits; output scale 2^-15, zero point 0. An input scale at (or within 0.1% of)
    2^-12 (LOGISTIC) or 2^-12 or 2^-11 (TANH) takes TFLM's power-of-two path: multiplier 3 or 6,
    no shift."""
    inp, out = symmetric16(op, info)
    pot, log2 = _checked_log2(inp.scales[0])
    shift = 12 + log2
    if pot and shift in ((0,) if op.name == "LOGISTIC" else (0, 1)):
        mult, shift = 3 << shift, 0
    else:
        real, shift = f32(inp.scales[0]) * 4096.0 * 3.0, 0
        while real <= 32767.0 / 2.0 and shift <= 30:
            real, shift = real * 2.0, shift + 1
        mult = int(real) if real < 1 << 31 else 1 << 31
        if not 0 < mult <= 65535:  # beyond, input * multiplier overflows TFLM's int32
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has input scale {inp.scales[0]}, outside "
                                   f"what TFLM's int16 {op.name} handles (about 4e-14 to 5.3)", hint=HINT)
    pot_out, log2_out = _checked_log2(out.scales[0])
    if not pot_out or log2_out != -15:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} outputs scale {out.scales[0]}; TFLM's int16 "
                               f"{op.name} writes 2^-15 (1/32768)", hint=HINT)
    constants[SIGMOID_TABLE] = ("uint16_t", sigmoid_table())
    return Step(op.index, op.name, op.name.lower() + "16", op.inputs[0], op.outputs[0],
                {"size": math.prod(inp.shape), "mult": mult, "shift": shift, "half": (1 << shift) >> 1})


# ---- LEAKY_RELU (int8 and int16) ----

_LIMITS = {"int8": (-128, 127), "int16": (_INT16_MIN, _INT16_MAX)}


@lowers("LEAKY_RELU")
def _leaky_relu(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """LEAKY_RELU as TFLM's int8 and int16 kernel: the input less its zero point, rescaled by input
    scale / output scale where it is 0 or more and by alpha * input scale / output scale below
    (two multipliers worked out at Prepare), plus the output's zero point, clamped to the type.
    A negative alpha's multiplier is applied as its magnitude and the product negated, as TFLM does."""
    inp = act(info, op.inputs[0], "input", op.name, tuple(_LIMITS))
    out = act(info, op.outputs[0], "output", op.name, tuple(_LIMITS))
    if inp.dtype != out.dtype:
        raise TargetCheckError(f"{info.source}: LEAKY_RELU #{op.index} reads {inp.dtype} and writes {out.dtype}; "
                               "TFLM's takes one type (int8 or int16)", hint=HINT)
    # TFLM forms both ratios from float32 scales; as for RELU, its interpreter's result is the double one.
    alpha = f32(options.alpha if options else 0.2)
    id_mult, id_shift = quantize_multiplier(f32(inp.scales[0]) / f32(out.scales[0]))
    alpha_mult, alpha_shift = quantize_multiplier(f32(inp.scales[0]) * alpha / f32(out.scales[0]))
    if alpha_mult == -(1 << 31):
        raise TargetCheckError(f"{info.source}: LEAKY_RELU #{op.index} has alpha {alpha}, whose negative multiplier "
                               "TFLM cannot negate within int32", hint=HINT)
    lo, hi = _LIMITS[out.dtype]
    values: dict[str, Any] = {"size": math.prod(inp.shape), "input_zero_point": inp.zero_points[0],
                              "output_zero_point": out.zero_points[0], "id_mult": id_mult, "id_shift": id_shift,
                              "alpha_mult": abs(alpha_mult), "alpha_shift": alpha_shift, "negate": alpha_mult < 0,
                              "lo": lo, "hi": hi}
    if out.dtype == "int16":
        values["int16"] = True
    return Step(op.index, op.name, "leaky_relu", op.inputs[0], op.outputs[0], values)
