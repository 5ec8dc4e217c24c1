"""The two-operand kernels: ADD, SUB, MUL, MAXIMUM and MINIMUM of int8 tensors or of int16 ones
(TFLM's int16x8), each operand of the output's shape, a single value, or broadcast to it (NumPy's
rules, up to rank 4)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import HINT, Constants, Step, act, broadcast_index, lowers, weights
from edgeq.aot.qmath import activation_range, effective_scale, quantize_multiplier
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo, TensorInfo

LIMITS = {"int8": (-128, 127), "int16": (-32768, 32767)}
"""The codes an int8 or int16 output can hold: its clamp when no fused activation narrows it."""

LEFT_SHIFT = {"int8": 20, "int16": 15}
"""The headroom TFLM's ADD and SUB give both inputs before rescaling them to a common scale: 20
bits for int8, 15 for int16, so that the two rescaled int16 values still add within 32 bits."""


def _operand(op: Any, k: int, info: ModelInfo, obj: Any, graph: Any, name: str, out: TensorInfo,
             constants: Constants, activations: list[int]) -> dict[str, Any]:
    """Operand k of an element-wise op: its C pointer (the arena, or a const array), its offset, and
    its element index in the output's loops: `i` for the output's shape, `0` for a single value, or
    a sum over the loop counters d0..d3 with stride 0 where it broadcasts (NumPy's rules). An int16
    activation is read through an int16_t pointer (`a16`, `b16`) cast from the arena's bytes."""
    out_shape = tuple(out.shape)
    t = act(info, op.inputs[k], f"input {k}", op.name, tuple(LIMITS)) if not info.tensors[op.inputs[k]].is_constant \
        else info.tensors[op.inputs[k]]
    if t.dtype != out.dtype or len(t.scales) != 1:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} input {k} is {t.dtype}; the c runtime has "
                               f"per-tensor operands of its output's type ({out.dtype}: int8 or int16)", hint=HINT)
    wide = t.dtype == "int16"
    if t.is_constant:
        values = weights(obj, graph, op.inputs[k], "<i2" if wide else "int8").reshape(-1)
        constants[f"{name}_c{k}"] = ("int16_t" if wide else "int8_t", values)
        pointer = f"{name}_c{k}"
    else:
        pointer = "in" if not activations else f"in{len(activations)}"
        activations.append(op.inputs[k])
    count, size = math.prod(t.shape), math.prod(out_shape)
    if count == size:
        index = "i"
    elif count == 1:
        index = "0"
    else:
        index = broadcast_index(op, info, tuple(t.shape), out_shape)
    cast = wide and not t.is_constant
    return {"pointer": "ab"[k] + "16" if cast else pointer, "cast": [["ab"[k] + "16", pointer]] if cast else [],
            "index": index, "offset": -t.zero_points[0], "scale": t.scales[0]}


def _sub_multipliers(a: float, b: float, out: float, left_shift: int) -> tuple[tuple[int, int], ...]:
    """SUB's three multipliers as TFLM's Prepare() forms them: unlike ADD's (in double), in float32
    arithmetic (twice the larger input scale, each ratio a float32 division), widened only at the end."""
    one = np.float32
    twice = one(2) * max(one(a), one(b))
    reals = (one(a) / twice, one(b) / twice, twice / (one(1 << left_shift) * one(out)))
    return tuple(quantize_multiplier(float(r)) for r in reals)


@lowers("ADD", "SUB", "MUL")
def _elementwise(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """ADD, SUB and MUL of two int8 or two int16 tensors, each of the output's shape, a single value,
    or broadcast to it, as TFLM's reference kernels compute them: ADD and SUB rescale both inputs to
    a common scale with 20 bits of headroom (15 for int16; TFLM takes this general path for int16
    whatever the scales, never LiteRT's power-of-two one), MUL rescales the product."""
    out = act(info, op.outputs[0], "output", op.name, tuple(LIMITS))
    size, name = math.prod(out.shape), f"op{op.index}"
    activations: list[int] = []
    a, b = (_operand(op, k, info, obj, graph, name, out, constants, activations) for k in (0, 1))
    if not activations:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has only constant inputs", hint=HINT)
    wide = out.dtype == "int16"
    if wide and op.name == "MUL" and (a["offset"], b["offset"], out.zero_points[0]) != (0, 0, 0):
        raise TargetCheckError(f"{info.source}: MUL #{op.index} has an int16 tensor with a zero point other than 0; "
                               "TFLM's int16 MUL takes symmetric tensors only", hint=HINT)
    lo, hi = activation_range(options.fusedActivationFunction if options else 0, out.scales[0], out.zero_points[0],
                              *LIMITS[out.dtype])
    broadcast = any(x["index"] not in ("i", "0") for x in (a, b))
    values: dict[str, Any] = {"size": size, "a": a["pointer"], "a_index": a["index"], "a_offset": a["offset"],
                              "b": b["pointer"], "b_index": b["index"], "b_offset": b["offset"],
                              "output_offset": out.zero_points[0], "act_min": lo, "act_max": hi,
                              "loops": list((1,) * (4 - len(out.shape)) + tuple(out.shape)) if broadcast else None,
                              "casts": a["cast"] + b["cast"], "out": "out16" if wide else "out",
                              "clamp": "edgeq_clamp16" if wide else "edgeq_clamp"}
    if wide:
        values["int16"] = True
    if op.name in ("ADD", "SUB"):
        values["left_shift"], values["operator"] = LEFT_SHIFT[out.dtype], "+" if op.name == "ADD" else "-"
        if op.name == "ADD":
            twice = 2 * max(float(np.float32(a["scale"])), float(np.float32(b["scale"])))
            (values["a_mult"], values["a_shift"]), (values["b_mult"], values["b_shift"]) = (
                quantize_multiplier(float(np.float32(x["scale"])) / twice) for x in (a, b))
            values["mult"], values["shift"] = quantize_multiplier(
                twice / ((1 << values["left_shift"]) * float(np.float32(out.scales[0]))))
        else:
            ((values["a_mult"], values["a_shift"]), (values["b_mult"], values["b_shift"]),
             (values["mult"], values["shift"])) = _sub_multipliers(a["scale"], b["scale"], out.scales[0],
                                                                   values["left_shift"])
        if (wide or op.name == "SUB") and values["shift"] > 0:
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index}'s output scale is too small for its inputs' "
                                   f"(a rescale of 1 or more after the {values['left_shift']}-bit headroom); TFLM "
                                   "refuses it too", hint=HINT)
    else:
        values["mult"], values["shift"] = quantize_multiplier(effective_scale(a["scale"], b["scale"], out.scales[0]))
    kernel = "add" if op.name == "SUB" else op.name.lower()
    return Step(op.index, op.name, kernel, activations[0], op.outputs[0], values, tuple(activations[1:]))


@lowers("MAXIMUM", "MINIMUM")
def _maximum_minimum(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """MAXIMUM and MINIMUM of two int8 or two int16 tensors (or one and a constant), each of the
    output's shape, a single value, or broadcast to it: TFLM compares the codes as they are and
    writes the larger (smaller), without rescaling (the converter gives both inputs the output's
    quantization)."""
    out = act(info, op.outputs[0], "output", op.name, tuple(LIMITS))
    name = f"op{op.index}"
    activations: list[int] = []
    a, b = (_operand(op, k, info, obj, graph, name, out, constants, activations) for k in (0, 1))
    if not activations:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has only constant inputs", hint=HINT)
    broadcast = any(x["index"] not in ("i", "0") for x in (a, b))
    values: dict[str, Any] = {"size": math.prod(out.shape), "a": a["pointer"], "a_index": a["index"],
                              "b": b["pointer"], "b_index": b["index"],
                              "loops": list((1,) * (4 - len(out.shape)) + tuple(out.shape)) if broadcast else None,
                              "casts": a["cast"] + b["cast"], "out": "out16" if out.dtype == "int16" else "out",
                              "compare": ">" if op.name == "MAXIMUM" else "<"}
    if out.dtype == "int16":
        values["int16"] = True
    return Step(op.index, op.name, "maximum_minimum", activations[0], op.outputs[0], values, tuple(activations[1:]))
