"""LiteRT's RAM for a model: the peak of its live activation tensors, estimated from the graph.

LiteRT targets allocate tensors dynamically, so there is no fixed arena to measure as on TFLite
Micro (edgeq.emulator.memory). `peak_activation_memory` walks the main graph op by op instead:
the largest sum of live activation tensors at any op is what the device must hold at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeq.records import Record

if TYPE_CHECKING:
    from edgeq.tflite.reader import ModelInfo, TensorInfo

_DTYPE_BITS = {
    "bool": 8, "int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "float16": 16,
    "bfloat16": 16, "float8_e4m3fn": 8, "float8_e5m2": 8, "int32": 32, "uint32": 32, "float32": 32,
    "int64": 64, "uint64": 64, "float64": 64, "complex64": 64, "complex128": 128,
}
_DEFAULT_BITS = 32  # strings, resources, variants and unknown types: 4 bytes per element


@dataclass(frozen=True)
class ActivationMemory(Record):
    """RAM for the non-constant tensors of a graph run op by op, each freed after its last use."""

    peak_bytes: int  # largest sum of live non-constant tensor bytes at any op step
    peak_op_index: int  # the op at which it peaks (-1: the graph has no ops)
    peak_op_name: str
    total_activation_bytes: int  # all non-constant tensors with no reuse at all, for comparison


def tensor_bytes(tensor: TensorInfo, alignment: int = 1) -> int:
    """Bytes of one tensor (dynamic dims count as 1), rounded up to `alignment`."""
    elements = math.prod(1 if d < 0 else d for d in tensor.shape)
    size = (elements * _DTYPE_BITS.get(tensor.dtype, _DEFAULT_BITS) + 7) // 8
    return -(-size // alignment) * alignment if alignment > 1 else size


def peak_activation_memory(info: ModelInfo, *, alignment: int = 64) -> ActivationMemory:
    """The largest sum of live activation tensors at any op of the main graph.

    A tensor is live from the op that produces it (graph inputs: from the first op) to the last op
    that reads it (graph outputs: to the end). Constants live in flash and are not counted.
    """
    active = [t for t in info.tensors if not t.is_constant]
    total = sum(tensor_bytes(t, alignment) for t in active)
    if not info.ops:
        edges = {i for i in (*info.inputs, *info.outputs) if not info.tensors[i].is_constant}
        return ActivationMemory(peak_bytes=sum(tensor_bytes(info.tensors[i], alignment) for i in edges),
                                peak_op_index=-1, peak_op_name="", total_activation_bytes=total)
    usage = [0] * len(info.ops)
    for index, (first, last) in _live_ranges(info).items():
        size = tensor_bytes(info.tensors[index], alignment)
        for step in range(first, last + 1):
            usage[step] += size
    peak = max(usage)
    at = usage.index(peak)
    return ActivationMemory(peak_bytes=peak, peak_op_index=at, peak_op_name=info.ops[at].name,
                            total_activation_bytes=total)


def _live_ranges(info: ModelInfo) -> dict[int, tuple[int, int]]:
    """Tensor index -> (first op step, last op step) it must be held in memory, non-constants only."""
    end = len(info.ops) - 1
    first: dict[int, int] = {i: 0 for i in info.inputs}
    last: dict[int, int] = {i: end for i in info.outputs}
    for step, op in enumerate(info.ops):
        for i in op.outputs:
            first.setdefault(i, step)
            last[i] = max(last.get(i, step), step)
        for i in op.inputs:
            if i >= 0:
                first.setdefault(i, 0)  # read but never written: a state or variable, held from the start
                last[i] = max(last.get(i, step), step)
    for i in info.outputs:
        first.setdefault(i, 0)
    for i in info.inputs:  # an input no op reads is still filled by the caller before the first op
        last.setdefault(i, first[i])
    return {i: (first[i], last[i]) for i in first if not info.tensors[i].is_constant}
