"""The kernels at a model's float32 edges and between scales: QUANTIZE and DEQUANTIZE, for int8 and
int16 (TFLM's int16x8, and the int16 layers edgeq's recipe search puts inside int8 models)."""

from __future__ import annotations

import math
from typing import Any

from edgeq.aot.kernels.base import HINT, Constants, Step, act, f32, lowers
from edgeq.aot.qmath import quantize_multiplier
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo

LIMITS = {"int8": (-128, 127), "int16": (-32768, 32767)}
"""The codes an int8 or int16 tensor can hold: a requantization's clamp."""


def _c_float(x: float) -> str:
    """A float32 as an exact C99 literal (hexadecimal, so no decimal rounding can creep in)."""
    return float.hex(f32(x)) + "f"


@lowers("QUANTIZE")
def _quantize(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """QUANTIZE from float32 (round(x / scale) + zero point, in float as TFLM does), or from int8 or
    int16 to int8, int16 or int32 at another scale: a requantization, TFLM's Requantize for every pair
    (the int32 rescale of int8 layers, double rounding, clamped to the output type)."""
    if info.tensors[op.outputs[0]].dtype == "int32":
        return _to_int32(op, info)
    out = act(info, op.outputs[0], "output", op.name, tuple(LIMITS))
    inp, size = info.tensors[op.inputs[0]], math.prod(out.shape)
    wide = {"int16": True} if "int16" in (inp.dtype, out.dtype) else {}
    if inp.dtype == "float32":
        return Step(op.index, op.name, "quantize_float", op.inputs[0], op.outputs[0],
                    {"size": size, "scale": _c_float(out.scales[0]), "zero_point": out.zero_points[0], **wide})
    inp = act(info, op.inputs[0], "input", op.name, tuple(LIMITS))
    mult, shift = quantize_multiplier(f32(inp.scales[0]) / f32(out.scales[0]))
    types = {"input_ctype": f"{inp.dtype}_t", "output_ctype": f"{out.dtype}_t"} if wide else {}
    lo, hi = LIMITS[out.dtype]
    return Step(op.index, op.name, "requantize", op.inputs[0], op.outputs[0],
                {"size": size, "input_zero_point": inp.zero_points[0], "mult": mult, "shift": shift,
                 "output_offset": out.zero_points[0], "act_min": lo, "act_max": hi, **types, **wide})


def _to_int32(op: Any, info: ModelInfo) -> Step:
    """QUANTIZE from int8 or int16 to int32, which models like TFLM's keyword benchmark end with: TFLM's
    Requantize, whose clamp to the int32 range leaves every rescaled code as it is. A nonzero int32
    zero point, whose addition could overflow, is refused."""
    out = act(info, op.outputs[0], "output", op.name, ("int32",))
    inp = act(info, op.inputs[0], "input", op.name, tuple(LIMITS))
    if out.zero_points[0] != 0:
        raise TargetCheckError(f"{info.source}: QUANTIZE #{op.index} writes int32 with zero point "
                               f"{out.zero_points[0]}; the c runtime's int32 QUANTIZE takes zero point 0", hint=HINT)
    mult, shift = quantize_multiplier(f32(inp.scales[0]) / f32(out.scales[0]))
    types = {"input_ctype": f"{inp.dtype}_t", "output_ctype": "int32_t", **({"int16": True} if inp.dtype == "int16"
                                                                           else {})}
    return Step(op.index, op.name, "requantize", op.inputs[0], op.outputs[0],
                {"size": math.prod(out.shape), "input_zero_point": inp.zero_points[0], "mult": mult, "shift": shift,
                 "output_offset": 0, "act_min": 0, "act_max": 0, **types})


@lowers("DEQUANTIZE")
def _dequantize(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """DEQUANTIZE int8 or int16 to float32: (q - zero point) * scale, one float rounding (TFLM
    multiplies in double, but the exact product of a float and an integer of 17 bits or fewer
    rounds to the same float)."""
    inp = act(info, op.inputs[0], "input", op.name, tuple(LIMITS))
    if info.tensors[op.outputs[0]].dtype != "float32":
        raise TargetCheckError(f"{info.source}: DEQUANTIZE #{op.index} writes {info.tensors[op.outputs[0]].dtype}; "
                               "the c runtime dequantizes int8 or int16 to float32", hint=HINT)
    wide = {"int16": True} if inp.dtype == "int16" else {}
    return Step(op.index, op.name, "dequantize", op.inputs[0], op.outputs[0],
                {"size": math.prod(inp.shape), "scale": _c_float(inp.scales[0]), "zero_point": inp.zero_points[0],
                 **wide})
