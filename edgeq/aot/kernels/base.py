"""What every kernel family shares: the Step a lowering returns, the registry it joins, and the
checks and constants most lowerings start from."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq.aot.qmath import activation_range
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo, TensorInfo

HINT = "convert for a TFLite Micro target (runtime tflm) and use the model data and op resolver instead"

Constants = dict[str, tuple[str, np.ndarray]]
"""The model's constant arrays as the C declares them: C name -> (C type, values)."""


@dataclass(frozen=True)
class Step:
    """One op as the C will run it: `kernel` names the template macro, `values` its numbers."""

    index: int
    op: str
    kernel: str
    input: int       # tensor index of the (first) activation read
    output: int      # tensor index written
    values: dict[str, Any] = field(default_factory=dict)
    more_inputs: tuple[int, ...] = ()  # further activations read (ADD, MUL, CONCATENATION, PACK)
    more_outputs: tuple[int, ...] = ()  # further tensors written (SPLIT, UNPACK)

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input, *self.more_inputs)

    @property
    def outputs(self) -> tuple[int, ...]:
        return (self.output, *self.more_outputs)


Lowering = Callable[[Any, ModelInfo, Any, Any, Any, Constants], Step]
"""(op, info, model object, its graph, the op's builtin options, constants to add to) -> the Step;
TargetCheckError naming what the kernel does not take."""

LOWERINGS: dict[str, Lowering] = {}
"""Op name -> its quantized lowering (int8, and int16 activations where the family has them),
filled by the family modules through `lowers`."""

FLOAT_LOWERINGS: dict[str, Lowering] = {}
"""Op name -> its float32 lowering, for ops whose activations are all float32 (`lowers(..., float32=True)`)."""

ELEMENT_BYTES = {"int8": 1, "uint8": 1, "bool": 1, "int16": 2, "int32": 4, "float32": 4, "int64": 8}
"""Bytes per element of the tensor types the c runtime holds in its arena."""

CTYPES = {"int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t", "float32": "float"}
"""The C type of each tensor type the c runtime reads or writes."""


def lowers(*ops: str, float32: bool = False) -> Callable[[Lowering], Lowering]:
    """Register the decorated function as the lowering of each op named: the quantized one, or
    with `float32=True` the one for ops whose activations are all float32."""
    table = FLOAT_LOWERINGS if float32 else LOWERINGS

    def register(fn: Lowering) -> Lowering:
        for name in ops:
            if name in table:
                raise RuntimeError(f"{name} has two lowerings: {table[name].__qualname__} and {fn.__qualname__}")
            table[name] = fn
        return fn
    return register


def is_float_op(op: Any, info: ModelInfo) -> bool:
    """Whether every activation the op reads or writes is float32 (its float lowering runs it);
    QUANTIZE and DEQUANTIZE, which cross between float and integers, are quantized ops."""
    tensors = [info.tensors[i] for i in (*op.inputs, *op.outputs) if i >= 0 and not info.tensors[i].is_constant]
    return bool(tensors) and all(t.dtype == "float32" for t in tensors)


def lowering_for(op: Any, info: ModelInfo) -> Lowering | None:
    """The lowering that runs `op`, or None when the c runtime has no kernel for it. A float op
    without a float lowering goes to the quantized one: the data-movement ops copy any element
    type, and the others refuse a float tensor by name."""
    if is_float_op(op, info) and op.name in FLOAT_LOWERINGS:
        return FLOAT_LOWERINGS[op.name]
    return LOWERINGS.get(op.name)


def tensor_bytes(t: TensorInfo) -> int:
    return math.prod(t.shape) * ELEMENT_BYTES.get(t.dtype, 1)


def weights(obj: Any, graph: Any, index: int, dtype: str) -> np.ndarray:
    """A constant tensor's data, as `dtype` in the tensor's shape."""
    tensor = graph.tensors[index]
    data = obj.buffers[tensor.buffer].data
    return np.frombuffer(bytes(data), dtype=dtype).reshape(tensor.shape)


def act(info: ModelInfo, index: int, what: str, op_name: str, dtypes: tuple[str, ...] = ("int8",)) -> TensorInfo:
    """The tensor, which must be a per-tensor quantized activation of one of `dtypes` (what the
    kernel computes in)."""
    t = info.tensors[index]
    if t.dtype not in dtypes or len(t.scales) != 1:
        raise TargetCheckError(f"{info.source}: {op_name}'s {what} '{t.name}' is {t.dtype}"
                               f"{' per-channel' if len(t.scales) > 1 else ''}; the c runtime's {op_name} takes "
                               f"per-tensor {' or '.join(dtypes)}", hint=HINT)
    return t


def common(op: Any, info: ModelInfo, activation: int) -> tuple[TensorInfo, TensorInfo, dict[str, Any]]:
    """The op's int8 input and output, their offsets and the fused activation's clamp."""
    inp = act(info, op.inputs[0], "input", op.name)
    out = act(info, op.outputs[0], "output", op.name)
    lo, hi = activation_range(activation, out.scales[0], out.zero_points[0])
    return inp, out, {"input_offset": -inp.zero_points[0], "output_offset": out.zero_points[0],
                      "act_min": lo, "act_max": hi}


def single_batch(op: Any, info: ModelInfo, inp: TensorInfo) -> None:
    if len(inp.shape) != 4 or inp.shape[0] != 1:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} takes {list(inp.shape)}; the c runtime's "
                               "2-D kernels take one NHWC sample (batch 1)", hint=HINT)


def padding(padding: int, stride: int, dilation: int, size: int, filter_size: int, out_size: int) -> int:
    """Rows (or columns) padded before the first window: TFLite's SAME (0) or VALID (1)."""
    effective = (filter_size - 1) * dilation + 1
    total = (out_size - 1) * stride + effective - size
    return max(total, 0) // 2 if padding == 0 else 0


def f32(x: float) -> float:
    """`x` rounded to float32, as TFLM holds scales."""
    return float(np.float32(x))


def broadcast_index(op: Any, info: ModelInfo, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str:
    """The C expression of an operand's element index in the output's loops d0..d3 (rank 4, NumPy's
    broadcasting: stride 0 along the axes where the operand has 1); TargetCheckError beyond rank 4."""
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


def symmetric16(op: Any, info: ModelInfo) -> tuple[TensorInfo, TensorInfo]:
    """The op's int16 input and output, both with zero point 0: TFLM's int16 kernels (convolutions,
    RELU, SOFTMAX, LOGISTIC, TANH) refuse any other in Prepare or leave it out of their arithmetic."""
    inp = act(info, op.inputs[0], "input", op.name, dtypes=("int16",))
    out = act(info, op.outputs[0], "output", op.name, dtypes=("int16",))
    for what, t in (("input", inp), ("output", out)):
        if t.zero_points[0] != 0:
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index}'s {what} '{t.name}' is int16 with zero "
                                   f"point {t.zero_points[0]}; the c runtime's int16 {op.name}, like TFLM's, takes "
                                   "zero point 0 (the converter's int16x8 mode writes it)", hint=HINT)
    return inp, out
