"""A checked .tflite as a list of C kernel steps with every constant worked out.

What TFLite Micro's Prepare() computes on the device (per-channel multipliers and shifts, input and
output offsets, activation clamps, padding, lookup tables) is computed here once, so the C has
only loops over constants. This module walks the model and plans its arena; each op is lowered by
its kernel in edgeq/aot/kernels/, and an op with none is refused by name. int8 and int16
activations (int16x8), float32 ones, and mixes with QUANTIZE/DEQUANTIZE between them; I/O of
IO_DTYPES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeq.aot.kernels import FLOAT_KERNELS, HINT, KERNELS, Constants, Step, lowering_for, tensor_bytes
from edgeq.aot.schedule import scheduled
from edgeq.errors import TargetCheckError
from edgeq.tflite.arena_plan import ArenaPlan, plan_arena, unplanned_reason
from edgeq.tflite.model_info import ModelInfo

__all__ = ["FLOAT_KERNELS", "KERNELS", "Program", "Step", "lower"]

IO_DTYPES = ("int8", "int16", "int32", "float32")
"""The tensor types the generated `<name>_invoke()` takes and returns."""

_NO_PLAN = ArenaPlan(offsets=(), peak=1 << 62, lower_bound=0, order="")


@dataclass(frozen=True)
class Program:
    """The whole model: its steps, the constant arrays, the arena and where each activation sits."""

    steps: tuple[Step, ...]
    constants: Constants                            # C name -> (C type, values)
    offsets: dict[int, int]                         # tensor index -> byte offset in the arena
    arena_bytes: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    sizes: dict[int, int]                           # tensor index -> bytes
    states: tuple[dict[str, Any], ...] = ()         # the recurrent ops' variable tensors, kept outside the arena


def lower(model: bytes, info: ModelInfo) -> Program:
    """`model` (already accepted by the checked reader as `info`) as C steps; TargetCheckError
    naming the first op, dtype or option the C backend lacks."""
    from ai_edge_litert.tools import flatbuffer_utils

    if info.subgraph_count != 1:
        raise TargetCheckError(f"{info.source} has {info.subgraph_count} subgraphs; the c runtime runs one",
                               hint=HINT)
    for role, tensors in (("input", info.input_tensors), ("output", info.output_tensors)):
        for k, t in enumerate(tensors):
            if t.dtype not in IO_DTYPES:
                name = f"'{t.name}', " if t.name else ""
                raise TargetCheckError(f"{info.source}: {role} {k} ({name}tensor #{t.index}) is {t.dtype}; the c "
                                       f"runtime takes {', '.join(IO_DTYPES)} I/O", hint=HINT)
    for op in info.ops:
        if lowering_for(op, info) is None:
            raise TargetCheckError(f"{info.source}: the c runtime has no kernel for {op.name} (op #{op.index}); it "
                                   f"has {', '.join(KERNELS)} (and float32 {', '.join(FLOAT_KERNELS) or 'none'})",
                                   hint=HINT)
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    graph = obj.subgraphs[0]
    constants: Constants = {}
    # The ops in the order that keeps the fewest bytes alive (branchy graphs), if its plan is smaller.
    order = min((info, scheduled(info)), key=lambda i: (plan_arena(i) or _NO_PLAN).peak)
    steps = []
    for op in order.ops:
        options = graph.operators[op.index].builtinOptions
        steps.append(lowering_for(op, info)(op, info, obj, graph, options, constants))  # type: ignore[misc]
    plan = plan_arena(order)
    if plan is None:
        raise TargetCheckError(f"{info.source}: the c runtime cannot plan its activations: {unplanned_reason(order)}",
                               hint=HINT)
    planned = {i: o for i, o in enumerate(plan.offsets) if o >= 0}
    sizes = {i: tensor_bytes(info.tensors[i]) for i in planned}
    # A variable tensor (state a recurrent op keeps between calls) is read before anything writes it, so the
    # planner leaves it out; its lowering names it as a static array of its own (kernels/recurrent.py).
    states = {state["name"]: state for step in steps for state in step.values.get("state", ())}
    return Program(tuple(steps), constants, planned, max(plan.peak, 1), tuple(info.inputs), tuple(info.outputs),
                   sizes, tuple(states.values()))
