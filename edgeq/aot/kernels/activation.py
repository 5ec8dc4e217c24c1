"""The one-operand activations: RELU and RELU6 (a clamp), SOFTMAX, LOGISTIC, TANH and HARD_SWISH
(TFLM's fixed-point kernels, their fixed output scales checked here)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import HINT, Constants, Step, act, f32, lowers
from edgeq.aot.qmath import activation_range, quantize_multiplier
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo


@lowers("RELU", "RELU6")
def _requantize_step(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """RELU: a rescale from the input's scale to the output's, then the activation's clamp. RELU6:
    TFLM clamps in the input's codes and does not rescale."""
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


@lowers("SOFTMAX")
def _softmax(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """TFLM's int8 softmax: input differences scaled into Q5.26 by beta * input scale, exp and
    the reciprocal of their sum in fixed point, output scale 1/256 with zero point -128."""
    inp = act(info, op.inputs[0], "input", op.name)
    out = act(info, op.outputs[0], "output", op.name)
    if (out.scales[0], out.zero_points[0]) != (1 / 256, -128):
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
                 "left_shift": left_shift, "diff_min": -radius})


@lowers("LOGISTIC", "TANH")
def _sigmoid_like(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """LOGISTIC and TANH as TFLM's int8 kernels: the input rescaled into Q4.27 (inputs beyond a
    radius saturate), gemmlowp's fixed-point logistic or tanh, the result to 1/256 (zero point
    -128) or 1/128 (zero point 0)."""
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
