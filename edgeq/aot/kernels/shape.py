"""The kernels that move bytes and leave values alone: RESHAPE, PAD(V2), TRANSPOSE,
STRIDED_SLICE and SLICE, and the row copies CONCATENATION, PACK, SPLIT, SPLIT_V and UNPACK; int8
elements, or int16 ones (TFLM's int16x8). The converter leaves no SQUEEZE or EXPAND_DIMS (it writes
RESHAPE for both), so they have no kernel here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import ELEMENT_BYTES, HINT, Constants, Step, act, lowers, tensor_bytes, weights
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo, TensorInfo


@lowers("RESHAPE")
def _reshape(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    inp, out = info.tensors[op.inputs[0]], info.tensors[op.outputs[0]]
    if tensor_bytes(inp) != tensor_bytes(out):
        raise TargetCheckError(f"{info.source}: RESHAPE #{op.index} changes the size", hint=HINT)
    return Step(op.index, op.name, "reshape", op.inputs[0], op.outputs[0], {"bytes": tensor_bytes(out)})


def _shape_constant(op: Any, info: ModelInfo, obj: Any, graph: Any, inp: TensorInfo, what: str) -> np.ndarray:
    """The op's second input, a constant int32/int64 array (PAD's paddings, TRANSPOSE's
    permutation), for an input of rank 4 or less: what the C kernels unroll into loops."""
    tensor = info.tensors[op.inputs[1]]
    if not tensor.is_constant or len(inp.shape) > 4:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has a computed {what} or rank above 4",
                               hint=HINT)
    return weights(obj, graph, op.inputs[1], "<i4" if tensor.dtype == "int32" else "<i8")


def _io(op: Any, info: ModelInfo) -> tuple[TensorInfo, TensorInfo]:
    """The op's input and output: both int8, or both int16."""
    inp = act(info, op.inputs[0], "input", op.name, ("int8", "int16"))
    out = act(info, op.outputs[0], "output", op.name, ("int8", "int16"))
    if inp.dtype != out.dtype:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} reads {inp.dtype} and writes {out.dtype}; the "
                               "c runtime's moves one type (int8 or int16)", hint=HINT)
    return inp, out


@lowers("PAD", "PADV2")
def _pad(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """PAD and PADV2: the output walked in order, each element the input's or the padding value
    (PADV2's constant; for PAD the output zero point in int8, and 0 in int16, as TFLM pads)."""
    inp, out = _io(op, info)
    pads = _shape_constant(op, info, obj, graph, inp, "paddings").reshape(-1, 2)
    wide = inp.dtype == "int16"
    value = 0 if wide else out.zero_points[0]
    if op.name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
        constant = info.tensors[op.inputs[2]]
        if not constant.is_constant or constant.dtype != inp.dtype:
            raise TargetCheckError(f"{info.source}: PADV2 #{op.index} pads {inp.dtype} with a {constant.dtype} "
                                   f"{'constant' if constant.is_constant else 'computed value'}; TFLM takes a "
                                   "constant of the input's type", hint=HINT)
        value = int(weights(obj, graph, op.inputs[2], "<i2" if wide else "int8").reshape(-1)[0])
    lead = 4 - len(inp.shape)
    values = {"inp": [1] * lead + list(inp.shape), "out": [1] * lead + list(out.shape),
              "before": [0] * lead + [int(p) for p in pads[:, 0]], "value": value}
    if wide:
        values["int16"] = True
    return Step(op.index, op.name, "pad", op.inputs[0], op.outputs[0], values)


@lowers("TRANSPOSE")
def _transpose(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """TRANSPOSE (what PyTorch and ONNX models keep before a flatten): the output walked in order,
    each element read from the input at its permuted position; bytes move, values do not."""
    inp, out = _io(op, info)
    if (inp.scales, inp.zero_points) != (out.scales, out.zero_points):
        raise TargetCheckError(f"{info.source}: TRANSPOSE #{op.index} rescales its input", hint=HINT)
    perm = [int(p) for p in _shape_constant(op, info, obj, graph, inp, "permutation").reshape(-1)]
    lead = 4 - len(inp.shape)
    shape = [1] * lead + list(inp.shape)
    perm = list(range(lead)) + [p % len(inp.shape) + lead for p in perm]
    strides = [math.prod(shape[k + 1:]) for k in range(4)]
    values: dict[str, Any] = {"out": [shape[p] for p in perm], "strides": [strides[p] for p in perm]}
    if inp.dtype == "int16":
        values["int16"] = True
    return Step(op.index, op.name, "transpose", op.inputs[0], op.outputs[0], values)


@lowers("CONCATENATION")
def _concatenation(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """CONCATENATION: the inputs' rows side by side. int8 inputs must share the output's scale and
    zero point, as TFLM requires; int16 ones only a zero point of 0, for TFLM copies int16 codes
    whatever their scales (the converter puts a QUANTIZE before any input of another scale)."""
    out = act(info, op.outputs[0], "output", op.name, ("int8", "int16"))
    axis = options.axis % len(out.shape)
    parts, at, activations = [], 0, []
    for k, index in enumerate(op.inputs):
        t = info.tensors[index]
        same = (t.scales, t.zero_points) == (out.scales, out.zero_points) if out.dtype == "int8" \
            else len(t.scales) == 1 and (t.zero_points[0], out.zero_points[0]) == (0, 0)
        if t.is_constant or t.dtype != out.dtype or not same:
            raise TargetCheckError(f"{info.source}: CONCATENATION #{op.index} input {k} is constant or quantized "
                                   "unlike its output; the c runtime joins int8 tensors of one scale, or int16 "
                                   "tensors of zero point 0", hint=HINT)
        row = math.prod(t.shape[axis:]) * ELEMENT_BYTES[t.dtype]
        parts.append({"pointer": "in" if k == 0 else f"in{k}", "at": at, "bytes": row})
        activations.append(index)
        at += row
    if options.fusedActivationFunction:
        raise TargetCheckError(f"{info.source}: CONCATENATION #{op.index} has a fused activation", hint=HINT)
    return Step(op.index, op.name, "concatenation", activations[0], op.outputs[0],
                {"outer": math.prod(out.shape[:axis]), "row": at, "parts": parts}, tuple(activations[1:]))


@lowers("PACK")
def _pack(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """PACK: the inputs stacked along a new axis, a concatenation of rows."""
    out = info.tensors[op.outputs[0]]
    axis = options.axis % len(out.shape)
    parts, at, activations = [], 0, []
    for k, index in enumerate(op.inputs):
        t = info.tensors[index]
        if t.is_constant or (t.dtype, t.scales, t.zero_points) != (out.dtype, out.scales, out.zero_points):
            raise TargetCheckError(f"{info.source}: PACK #{op.index} input {k} is constant or quantized unlike its "
                                   "output", hint=HINT)
        row = tensor_bytes(t) // max(math.prod(t.shape[:axis]), 1)
        parts.append({"pointer": "in" if k == 0 else f"in{k}", "at": at, "bytes": row})
        activations.append(index)
        at += row
    return Step(op.index, op.name, "concatenation", activations[0], op.outputs[0],
                {"outer": math.prod(out.shape[:axis]), "row": at, "parts": parts}, tuple(activations[1:]))


@lowers("SPLIT", "SPLIT_V", "UNPACK")
def _split(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """SPLIT, SPLIT_V and UNPACK: each output a slice along one axis, copied row by row."""
    data = op.inputs[1] if op.name == "SPLIT" else op.inputs[0]
    inp = info.tensors[data]
    if op.name == "UNPACK":
        axis = options.axis
    else:
        axis_tensor = op.inputs[0] if op.name == "SPLIT" else op.inputs[2]
        if not info.tensors[axis_tensor].is_constant:
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has a computed axis", hint=HINT)
        axis = int(weights(obj, graph, axis_tensor, "<i4").reshape(-1)[0])
    axis %= len(inp.shape)
    width = ELEMENT_BYTES.get(inp.dtype, 1) * math.prod(inp.shape[axis + 1:])
    parts, at = [], 0
    for k, index in enumerate(op.outputs):
        t = info.tensors[index]
        if (t.dtype, t.scales, t.zero_points) != (inp.dtype, inp.scales, inp.zero_points):
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index} output {k} is quantized unlike its input",
                                   hint=HINT)
        rows = t.shape[axis] if op.name != "UNPACK" else 1
        parts.append({"pointer": "out" if k == 0 else f"out{k}", "at": at, "bytes": rows * width})
        at += rows * width
    if at != inp.shape[axis] * width:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index}'s outputs do not tile its input", hint=HINT)
    return Step(op.index, op.name, "split", data, op.outputs[0],
                {"outer": math.prod(inp.shape[:axis]), "row": at, "parts": parts}, (), tuple(op.outputs[1:]))


def _gather(op: Any, info: ModelInfo, inp: TensorInfo, out: TensorInfo, starts: list[int], counts: list[int],
            strides: list[int]) -> Step:
    """The step that walks the output in order, reading the input at start + k * stride along each of
    its (up to 5) axes: what STRIDED_SLICE and SLICE both are. Axes with one element need no loop."""
    if math.prod(counts) != math.prod(out.shape) or math.prod(counts) == 0:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} selects {math.prod(counts)} elements for an "
                               f"output of shape {list(out.shape)}", hint=HINT)
    shape = [1] * (len(starts) - len(inp.shape)) + list(inp.shape)
    pitch = [math.prod(shape[k + 1:]) for k in range(len(shape))]
    loops = [{"count": n, "step": s * p} for n, s, p in zip(counts, strides, pitch) if n > 1]
    values: dict[str, Any] = {"base": sum(b * p for b, p in zip(starts, pitch)), "loops": loops}
    if inp.dtype == "int16":
        values["int16"] = True
    return Step(op.index, op.name, "strided_slice", op.inputs[0], op.outputs[0], values)


def _constant_ints(op: Any, k: int, info: ModelInfo, obj: Any, graph: Any, what: str,
                   dtypes: tuple[str, ...]) -> list[int]:
    """The op's input k, a constant 1-D array of one of `dtypes` (int32, int64), as Python ints."""
    t = info.tensors[op.inputs[k]]
    if not t.is_constant or t.dtype not in dtypes:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index}'s {what} '{t.name}' is "
                               f"{'a constant' if t.is_constant else 'computed'} {t.dtype}; the c runtime takes a "
                               f"constant {' or '.join(dtypes)} {what}, as TFLM reads it", hint=HINT)
    return [int(x) for x in weights(obj, graph, op.inputs[k], "<i4" if t.dtype == "int32" else "<i8").reshape(-1)]


def _clamp(v: int, lo: int, hi: int) -> int:
    return hi if v > hi else (lo if v < lo else v)


@lowers("STRIDED_SLICE")
def _strided_slice(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """STRIDED_SLICE with constant int32 begin, end and strides on an input of rank 4 or less, as
    TFLM's kernel walks it: the indices padded to 5 axes, each start and stop made positive and
    clamped to the axis (to [-1, size - 1] for a negative stride), begin_mask and end_mask taking
    the whole axis, shrink_axis_mask one element. TFLM ignores ellipsis_mask, new_axis_mask and
    offset, so a model that sets them is refused rather than sliced as TFLM would."""
    inp, out = _io(op, info)
    if len(inp.shape) > 4:
        raise TargetCheckError(f"{info.source}: STRIDED_SLICE #{op.index} has an input of rank {len(inp.shape)}; "
                               "TFLM's takes rank 4 or less", hint=HINT)
    for flag in ("ellipsisMask", "newAxisMask", "offset"):
        if getattr(options, flag, 0):
            raise TargetCheckError(f"{info.source}: STRIDED_SLICE #{op.index} sets {flag}, which TFLM ignores; the c "
                                   "runtime takes begin_mask, end_mask and shrink_axis_mask only", hint=HINT)
    begin, end, strides = (_constant_ints(op, k, info, obj, graph, what, ("int32",))
                           for k, what in ((1, "begin"), (2, "end"), (3, "strides")))
    rank = len(inp.shape)
    if not len(begin) == len(end) == len(strides) == rank or 0 in strides:
        raise TargetCheckError(f"{info.source}: STRIDED_SLICE #{op.index} has begin, end and strides of lengths "
                               f"{len(begin)}, {len(end)}, {len(strides)} (or a stride of 0) for an input of rank "
                               f"{rank}", hint=HINT)
    pad = 5 - rank
    shape = [1] * pad + list(inp.shape)
    begin, end, strides = [0] * pad + begin, [1] * pad + end, [1] * pad + strides
    begin_mask = (options.beginMask << pad) | ((1 << pad) - 1)
    end_mask = (options.endMask << pad) | ((1 << pad) - 1)
    shrink_mask = options.shrinkAxisMask << pad
    starts, counts = [], []
    for axis, (size, stride) in enumerate(zip(shape, strides)):
        lo, hi = (0, size) if stride > 0 else (-1, size - 1)
        start = _clamp(begin[axis] + (size if begin[axis] < 0 else 0), lo, hi)
        if begin_mask >> axis & 1:
            start = 0 if stride > 0 else size - 1
        if shrink_mask >> axis & 1:
            stop = start if start >= size else start + 1
        else:
            stop = _clamp(end[axis] + (size if end[axis] < 0 else 0), lo, hi)
            if end_mask >> axis & 1:
                stop = size if stride > 0 else -1
        span = stop - start if stride > 0 else start - stop
        starts.append(start)
        counts.append(max(0, -(-span // abs(stride))))
    return _gather(op, info, inp, out, starts, counts, strides)


@lowers("SLICE")
def _slice(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """SLICE with constant begin and size (int32 or int64) on an input of rank 5 or less, as TFLM's
    kernel: a size of -1 runs to the end of the axis; nothing is clamped."""
    inp, out = _io(op, info)
    begin = _constant_ints(op, 1, info, obj, graph, "begin", ("int32", "int64"))
    size = _constant_ints(op, 2, info, obj, graph, "size", ("int32", "int64"))
    rank = len(inp.shape)
    if rank > 5 or not len(begin) == len(size) == rank:
        raise TargetCheckError(f"{info.source}: SLICE #{op.index} has begin and size of lengths {len(begin)} and "
                               f"{len(size)} for an input of rank {rank}; TFLM takes rank 5 or less", hint=HINT)
    counts = [dim - b if n == -1 else n for dim, b, n in zip(inp.shape, begin, size)]
    if any(b < 0 or n < 0 or b + n > dim for dim, b, n in zip(inp.shape, begin, counts)):
        raise TargetCheckError(f"{info.source}: SLICE #{op.index} reads outside its input {list(inp.shape)} (begin "
                               f"{begin}, size {size})", hint=HINT)
    return _gather(op, info, inp, out, begin, counts, [1] * rank)
