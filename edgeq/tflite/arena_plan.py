"""edgeq's own plan of the TFLite Micro arena, carried in the model as TFLM reads it.

TFLM places activations with a greedy planner at `AllocateTensors()`. It is quick and usually
good, but not always: on a Keras 3 Conv1D model it used 4,832 bytes where the activations never
need more than 3,840 alive at once. TFLM also honours a plan that comes with the model, in the
metadata entry "OfflineMemoryAllocation": int32 words `[version 0, subgraph 0, N, offset of
tensor 0, ..., offset of tensor N-1]`, -1 for a tensor TFLM should place itself (constants, variables
and the kernels' scratch buffers are always TFLM's).

`plan_arena` computes such a plan from each activation's lifetime, the way TFLM marks them (a
graph input from before the first op, an op's outputs from that op, every tensor to the last op
that reads it, the graph outputs to the end), by trying a few placement orders and keeping the
lowest peak. The caller (the pipeline) keeps the plan only where TFLM, measured, then needs a
smaller arena and gives the same outputs bit for bit; elsewhere the model goes as it was.

Only single-subgraph models are planned: TFLM counts the offsets over every subgraph's tensors but
indexes them per subgraph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.records import Record, optional
from edgeq.tflite.reader import ModelInfo

METADATA_NAME = "OfflineMemoryAllocation"
ONLINE = -1  # TFLM places this tensor itself
ALIGNMENT = 16  # TFLM aligns every arena buffer to 16 bytes; CMSIS-NN kernels want it
# Element sizes TFLM's TfLiteEvalTensorByteLength uses; other types (packed int4, strings) are not planned.
_ELEMENT_BYTES = {"float32": 4, "int32": 4, "uint32": 4, "int16": 2, "uint16": 2, "float16": 2,
                  "int8": 1, "uint8": 1, "bool": 1, "int64": 8, "float64": 8}


@dataclass(frozen=True)
class Buffer:
    tensor: int
    size: int  # bytes, rounded up to ALIGNMENT
    first: int  # TFLM's allocation scope: 0 before the first op, k + 1 during op k
    last: int


@dataclass(frozen=True)
class ArenaPlan:
    offsets: tuple[int, ...]  # one per tensor of the main graph, ONLINE where TFLM places it
    peak: int  # bytes the planned activations span
    lower_bound: int  # the most bytes alive at any one time: no plan can do better
    order: str  # the placement order that won

    def words(self) -> np.ndarray:
        """The metadata buffer as TFLM reads it."""
        return np.asarray([0, 0, len(self.offsets), *self.offsets], dtype="<i4")


def activation_buffers(info: ModelInfo, variables: Sequence[int] = ()) -> list[Buffer] | None:
    """The tensors TFLM plans in the arena, with their lifetimes; None if edgeq should not plan it."""
    if not info.ops:
        return None
    skip = set(variables)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i in info.inputs:
        first.setdefault(i, 0)
        last.setdefault(i, 0)
    for k, op in enumerate(info.ops, start=1):
        for i in op.outputs:
            first.setdefault(i, k)
        for i in (*op.inputs, *op.outputs):
            if i >= 0:
                last[i] = k
    end = len(info.ops)
    for i in info.outputs:
        last[i] = end
    buffers = []
    for i, t in enumerate(info.tensors):
        if t.is_constant or i in skip or i not in first:
            continue  # in flash, persistent, or read before anything writes it: TFLM's to place
        if t.dtype not in _ELEMENT_BYTES or any(d < 0 for d in t.shape):
            return None
        size = int(np.prod(t.shape, dtype=np.int64)) * _ELEMENT_BYTES[t.dtype]
        if size:
            buffers.append(Buffer(i, -(-size // ALIGNMENT) * ALIGNMENT, first[i], last.get(i, first[i])))
    return buffers


def unplanned_reason(info: ModelInfo) -> str:
    """Why `activation_buffers` plans nothing for `info`, naming the op and the tensor."""
    if not info.ops:
        return "the model has no operators"
    for op in info.ops:
        for i in (*op.inputs, *op.outputs):
            if i < 0 or info.tensors[i].is_constant:
                continue
            t = info.tensors[i]
            if any(d < 0 for d in t.shape):
                return (f"{op.name} #{op.index}'s tensor '{t.name}' has the open shape {list(t.declared_shape)}; only "
                        "the batch may be open (TFLite Micro runs it as 1): convert with fixed dimensions")
            if t.dtype not in _ELEMENT_BYTES:
                return f"{op.name} #{op.index}'s tensor '{t.name}' is {t.dtype}, which has no place in the arena plan"
    return "no tensor of the model needs arena memory"


def lower_bound(buffers: Sequence[Buffer]) -> int:
    if not buffers:
        return 0
    usage = [0] * (max(b.last for b in buffers) + 1)
    for b in buffers:
        for step in range(b.first, b.last + 1):
            usage[step] += b.size
    return max(usage)


_ORDERS: dict[str, Callable[[Buffer], tuple[int, ...]]] = {
    "largest first": lambda b: (-b.size, b.first, b.tensor),
    "longest-lived first": lambda b: (-(b.last - b.first), -b.size, b.tensor),
    "most byte-steps first": lambda b: (-b.size * (b.last - b.first + 1), b.tensor),
    "in execution order": lambda b: (b.first, -b.size, b.tensor),
}


def place(buffers: Sequence[Buffer], order: Callable[[Buffer], tuple[int, ...]]) -> dict[int, int]:
    """Tensor -> offset: each buffer, in `order`, at the lowest offset clear of every buffer placed
    so far whose lifetime overlaps its own."""
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[int, int] = {}
    for b in sorted(buffers, key=order):
        busy = sorted((o, o + p.size) for p, o in placed if p.first <= b.last and b.first <= p.last)
        offset = 0
        for start, stop in busy:
            if offset + b.size <= start:
                break
            offset = max(offset, stop)
        placed.append((b, offset))
        offsets[b.tensor] = offset
    return offsets


def plan_arena(info: ModelInfo, variables: Sequence[int] = ()) -> ArenaPlan | None:
    """The best of a few placement orders, or None when edgeq does not plan this model."""
    buffers = activation_buffers(info, variables)
    if not buffers:
        return None
    best: tuple[int, str, dict[int, int]] | None = None
    for name, order in _ORDERS.items():
        offsets = place(buffers, order)
        peak = max(offsets[b.tensor] + b.size for b in buffers)
        if best is None or peak < best[0]:
            best = (peak, name, offsets)
    assert best is not None
    peak, name, offsets = best
    return ArenaPlan(offsets=tuple(offsets.get(i, ONLINE) for i in range(len(info.tensors))), peak=peak,
                     lower_bound=lower_bound(buffers), order=name)


def overlaps(buffers: Sequence[Buffer], offsets: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs of tensors that are alive at the same time and share bytes under `offsets` (none, in a
    valid plan)."""
    bad = []
    for a_index, a in enumerate(buffers):
        for b in buffers[a_index + 1:]:
            if a.first <= b.last and b.first <= a.last:
                oa, ob = offsets[a.tensor], offsets[b.tensor]
                if oa < ob + b.size and ob < oa + a.size:
                    bad.append((a.tensor, b.tensor))
    return bad


def with_plan(model: bytes, info: ModelInfo) -> tuple[bytes, ArenaPlan] | None:
    """`model` carrying edgeq's arena plan, or None when it has more than one subgraph, a plan of
    its own, or nothing to plan. The buffers keep their 16-byte alignment."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeq.tflite.strip import align_buffers, text

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    if len(obj.subgraphs or []) != 1 or any(text(m.name) == METADATA_NAME for m in obj.metadata or []):
        return None
    variables = [i for i, t in enumerate(obj.subgraphs[0].tensors or []) if t.isVariable]
    plan = plan_arena(info, variables)
    if plan is None:
        return None
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(plan.words().tobytes(), dtype=np.uint8)
    obj.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(obj.buffers) - 1
    obj.metadata = [*(obj.metadata or []), entry]
    align_buffers(obj)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), plan


def read_plan(obj_or_model: Any) -> np.ndarray | None:
    """The offsets of a model's OfflineMemoryAllocation entry, or None."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(obj_or_model, 0) if isinstance(obj_or_model, (bytes, bytearray)) else obj_or_model
    for k in range(root.MetadataLength()):
        entry = root.Metadata(k)
        if (entry.Name() or b"").decode("utf-8", "replace") == METADATA_NAME:
            data = root.Buffers(entry.Buffer()).DataAsNumpy()
            words = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype="<i4")
            return words[3:3 + int(words[2])]
    return None


@dataclass(frozen=True)
class ArenaPlanPart(Record):
    """edgeq's own arena plan against TFLM's: both planners' activation bytes, the lower bound (the
    most bytes alive at once), the first-fit order that won, the flash the plan costs; where it
    was worth measuring, the smallest arena without and with it; whether the model carries it."""

    kept: bool
    tflm_head_bytes: int
    planned_head_bytes: int
    lower_bound_bytes: int
    order: str
    extra_flash_bytes: int
    arena_bytes: int | None = optional()
    planned_arena_bytes: int | None = optional()
