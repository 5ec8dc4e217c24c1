"""The two-operand kernels: ADD and MUL, each operand of the output's shape, a single value, or
broadcast to it (NumPy's rules, up to rank 4)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import HINT, Constants, Step, act, lowers, weights
from edgeq.aot.qmath import activation_range, effective_scale, quantize_multiplier
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo


def _operand(op: Any, k: int, info: ModelInfo, obj: Any, graph: Any, name: str, out_shape: tuple[int, ...],
             constants: Constants, activations: list[int]) -> dict[str, Any]:
    """Operand k of an element-wise op: its C pointer (the arena, or a const array), its offset, and
    its element index in the output's loops: `i` for the output's shape, `0` for a single value, or
    a sum over the loop counters d0..d3 with stride 0 where it broadcasts (NumPy's rules)."""
    t = act(info, op.inputs[k], f"input {k}", op.name) if not info.tensors[op.inputs[k]].is_constant \
        else info.tensors[op.inputs[k]]
    if t.dtype != "int8" or len(t.scales) != 1:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} input {k} is {t.dtype}; the c runtime has "
                               "per-tensor int8", hint=HINT)
    if t.is_constant:
        constants[f"{name}_c{k}"] = ("int8_t", weights(obj, graph, op.inputs[k], "int8").reshape(-1))
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
        index = _broadcast_index(op, info, tuple(t.shape), out_shape)
    return {"pointer": pointer, "index": index, "offset": -t.zero_points[0], "scale": t.scales[0]}


def _broadcast_index(op: Any, info: ModelInfo, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str:
    if len(shape) > len(out_shape) or len(out_shape) > 4:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} broadcasts {list(shape)} to "
                               f"{list(out_shape)}; the c runtime broadcasts up to rank 4", hint=HINT)
    dims = (1,) * (4 - len(shape)) + shape
    full = (1,) * (4 - len(out_shape)) + out_shape
    terms, stride = [], 1
    for axis in range(3, -1, -1):
        if dims[axis] not in (1, full[axis]):
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index} cannot broadcast {list(shape)} to "
                                   f"{list(out_shape)}", hint=HINT)
        if dims[axis] == full[axis] and full[axis] > 1:
            terms.append(f"d{axis}" if stride == 1 else f"d{axis} * {stride}")
        stride *= dims[axis]
    return " + ".join(reversed(terms)) or "0"


@lowers("ADD", "MUL")
def _elementwise(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """ADD and MUL of two int8 tensors, each of the output's shape, a single value, or broadcast to
    it, as TFLM's reference kernels compute them: ADD rescales both to a common scale with 20 bits of
    headroom."""
    out = act(info, op.outputs[0], "output", op.name)
    size, name = math.prod(out.shape), f"op{op.index}"
    activations: list[int] = []
    a, b = (_operand(op, k, info, obj, graph, name, tuple(out.shape), constants, activations) for k in (0, 1))
    if not activations:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has only constant inputs", hint=HINT)
    lo, hi = activation_range(options.fusedActivationFunction if options else 0, out.scales[0], out.zero_points[0])
    broadcast = any(x["index"] not in ("i", "0") for x in (a, b))
    values: dict[str, Any] = {"size": size, "a": a["pointer"], "a_index": a["index"], "a_offset": a["offset"],
                              "b": b["pointer"], "b_index": b["index"], "b_offset": b["offset"],
                              "output_offset": out.zero_points[0], "act_min": lo, "act_max": hi,
                              "loops": list((1,) * (4 - len(out.shape)) + tuple(out.shape)) if broadcast else None}
    if op.name == "ADD":
        twice = 2 * max(float(np.float32(a["scale"])), float(np.float32(b["scale"])))
        (values["a_mult"], values["a_shift"]), (values["b_mult"], values["b_shift"]) = (
            quantize_multiplier(float(np.float32(x["scale"])) / twice) for x in (a, b))
        values["mult"], values["shift"] = quantize_multiplier(twice / ((1 << 20) * float(np.float32(out.scales[0]))))
    else:
        values["mult"], values["shift"] = quantize_multiplier(effective_scale(a["scale"], b["scale"], out.scales[0]))
    return Step(op.index, op.name, op.name.lower(), activations[0], op.outputs[0], values, tuple(activations[1:]))
