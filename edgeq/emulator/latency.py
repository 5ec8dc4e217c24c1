"""How long one inference takes: a first-order estimate for the target, and a host measurement.

A microcontroller cannot be timed before the firmware exists, but its time is dominated by the
multiply-accumulates of convolutions and dense layers. So the estimate counts each op's work from
the shapes in the .tflite file (MACs, window reads or output elements) and prices it with the
target profile's cycles-per-unit figures plus a fixed per-op overhead. Good to compare models and
targets, and to spot the op that dominates; on-device timing refines the figures.

The host measurement runs the same file in LiteRT on this machine: not the device's speed, but a
real, repeatable number for regressions. Only subgraph 0 is counted (control-flow bodies such as a
WHILE loop's are not: how often they run is not in the file). Imports no TensorFlow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.errors import TFLiteFormatError
from edgeq.records import Record, optional
from edgeq.targets import TargetProfile
from edgeq.tflite.reader import ModelInfo, OpInfo
from edgeq.vocab import Runtime

KINDS = ("conv_2d", "depthwise_conv_2d", "fully_connected", "pooling", "elementwise", "other")
"""Cost classes; all but "other" have a cycles-per-unit figure in the target's [latency] table."""

_POOL_WINDOW = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"})
_REDUCTIONS = frozenset({"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "REDUCE_ANY", "REDUCE_ALL"})
_ELEMENTWISE = frozenset({
    "ADD", "SUB", "MUL", "DIV", "FLOOR_DIV", "FLOOR_MOD", "POW", "SQUARED_DIFFERENCE", "ADD_N",
    "MAXIMUM", "MINIMUM", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LEAKY_RELU", "PRELU", "ELU",
    "GELU", "LOGISTIC", "TANH", "HARD_SWISH", "SOFTMAX", "LOG_SOFTMAX", "L2_NORMALIZATION",
    "LOCAL_RESPONSE_NORMALIZATION", "QUANTIZE", "DEQUANTIZE", "CAST", "EXP", "LOG", "SQRT", "RSQRT",
    "SQUARE", "ABS", "NEG", "SIN", "COS", "FLOOR", "CEIL", "ROUND", "SIGN", "SELECT", "SELECT_V2",
    "EQUAL", "NOT_EQUAL", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "LOGICAL_AND",
    "LOGICAL_OR", "LOGICAL_NOT",
})


@dataclass(frozen=True)
class OpCost:
    """One operator's work and estimated time.

    `macs` is the op's unit of work: multiply-accumulates for convolutions and dense layers, window
    element reads for pooling, output elements for element-wise ops, 0 for data movement ("other").
    """

    index: int
    op: str
    kind: str
    macs: int
    cycles: float
    ms: float

    def part(self) -> OpCostPart:
        return OpCostPart(self.index, self.op, self.kind, self.macs, round(self.cycles), _significant(self.ms))


@dataclass(frozen=True)
class OpCostPart(Record):
    """One op's estimated work (MACs, or the op kind's unit of work), cycles and milliseconds."""

    index: int
    op: str
    kind: str
    macs: int
    cycles: int
    ms: float


@dataclass(frozen=True)
class KindCostPart(Record):
    """The ops of one cost kind together: how many, their work and their estimated milliseconds."""

    ops: int
    macs: int
    ms: float


@dataclass(frozen=True)
class EmulatedBoardPart(Record):
    """The c runtime's firmware run on an emulated board (QEMU, -icount shift=0): instructions per
    inference, deterministic on every host; agreement with TFLM; stack and firmware sections."""

    board: str
    cpu: str
    samples: int
    bit_exact: int
    instructions_median: int
    instructions_max: int
    stack_bytes: int | None
    text_bytes: int
    rodata_bytes: int
    data_bytes: int
    bss_bytes: int


@dataclass(frozen=True)
class LatencyPart(Record):
    """The first-order latency estimate on the target: totals, by op kind (KINDS order) and per op;
    for the c runtime, what an emulated board measured, when its tools are installed."""

    target: str
    clock_mhz: float
    total_macs: int
    total_cycles: int
    total_ms: float
    by_kind: dict[str, KindCostPart]
    ops: list[OpCostPart]
    note: str
    emulated_board: EmulatedBoardPart | None = optional()


@dataclass(frozen=True)
class HostLatencyPart(Record):
    """Wall-clock time of one invoke() in LiteRT on this machine (1 thread), in microseconds;
    it differs from run to run, unlike everything else in the report."""

    runtime: str
    runs: int
    median_us: float
    p90_us: float
    min_us: float
    varies_between_runs: bool


@dataclass(frozen=True)
class LatencyEstimate:
    """The per-op costs of one model on one target, and their totals."""

    target: str
    clock_mhz: float
    ops: tuple[OpCost, ...]
    total_macs: int
    total_cycles: float
    total_ms: float
    note: str = ""  # what the estimate leaves out (control-flow bodies)
    emulated: EmulatedBoardPart | None = None  # the c runtime measured on an emulated board

    def by_kind(self) -> dict[str, dict[str, Any]]:
        """Kind -> {"ops": count, "macs": work, "ms": time}, in KINDS order, kinds present only."""
        groups: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            members = [c for c in self.ops if c.kind == kind]
            if members:
                groups[kind] = {"ops": len(members), "macs": sum(c.macs for c in members),
                                "ms": sum(c.ms for c in members)}
        return groups

    def slowest(self, n: int = 5) -> tuple[OpCost, ...]:
        """The `n` ops with the most cycles, slowest first (graph order among equals)."""
        return tuple(sorted(self.ops, key=lambda c: (-c.cycles, c.index))[: max(n, 0)])

    def part(self) -> LatencyPart:
        kinds = {k: KindCostPart(v["ops"], v["macs"], _significant(v["ms"])) for k, v in self.by_kind().items()}
        return LatencyPart(self.target, self.clock_mhz, self.total_macs, round(self.total_cycles),
                           _significant(self.total_ms), kinds, [c.part() for c in self.ops], self.note,
                           self.emulated)


@dataclass(frozen=True)
class HostLatency:
    """Wall-clock time of `invoke()` in LiteRT on this machine, one thread, in microseconds."""

    runtime: str
    runs: int
    median_us: float
    p90_us: float
    min_us: float

    def part(self) -> HostLatencyPart:
        return HostLatencyPart(self.runtime, self.runs, _significant(self.median_us), _significant(self.p90_us),
                               _significant(self.min_us), varies_between_runs=True)


# -- counting work --------------------------------------------------------------------------------


def count_macs(info: ModelInfo) -> tuple[tuple[OpInfo, str, int], ...]:
    """(op, kind, units of work) for every op of the main graph, in graph order."""
    return tuple((op, *_work(info, op)) for op in info.ops)


def _work(info: ModelInfo, op: OpInfo) -> tuple[str, int]:
    """The op's cost kind and its units of work (see OpCost.macs)."""
    name = op.name
    if name in _PRICED:
        kind, count = _PRICED[name]
        return kind, max(count(info, op), 0)
    if name in _POOL_WINDOW:
        window = op.option("filter_height", 1) * op.option("filter_width", 1)
        return "pooling", _elements(_shape(info, op.outputs, 0)) * window
    if name in _REDUCTIONS:
        return "pooling", _elements(_shape(info, op.inputs, 0))
    if name in _ELEMENTWISE:
        return "elementwise", sum(_elements(_shape(info, op.outputs, k)) for k in range(len(op.outputs)))
    return "other", 0


def _shape(info: ModelInfo, indices: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Shape of the k-th tensor in `indices`; () if omitted (-1) or absent, like a scalar."""
    if k >= len(indices) or not 0 <= indices[k] < len(info.tensors):
        return ()
    return info.tensors[indices[k]].shape


def _dims(shape: tuple[int, ...]) -> list[int]:
    """Dynamic (-1, or any negative) dims count as 1: the estimate is for a batch of one."""
    return [d if d >= 0 else 1 for d in shape]


def _elements(shape: tuple[int, ...]) -> int:
    return math.prod(_dims(shape))


def _conv(info: ModelInfo, op: OpInfo) -> int:
    # output [n, oh, ow, out_c] x filter [out_c, kh, kw, in_c per group]
    return _elements(_shape(info, op.outputs, 0)) * math.prod(_dims(_shape(info, op.inputs, 1))[1:])


def _conv3d(info: ModelInfo, op: OpInfo) -> int:
    # output [n, od, oh, ow, out_c] x filter [kd, kh, kw, in_c, out_c]
    return _elements(_shape(info, op.outputs, 0)) * math.prod(_dims(_shape(info, op.inputs, 1))[:-1])


def _depthwise(info: ModelInfo, op: OpInfo) -> int:
    # output [n, oh, ow, out_c] x filter [1, kh, kw, out_c]: one window per output element
    return _elements(_shape(info, op.outputs, 0)) * math.prod(_dims(_shape(info, op.inputs, 1))[1:-1])


def _transpose_conv(info: ModelInfo, op: OpInfo) -> int:
    # inputs: output_shape, filter [out_c, kh, kw, in_c], input [n, h, w, in_c]: each input
    # element is scattered through a kh x kw x out_c window
    return _elements(_shape(info, op.inputs, 2)) * math.prod(_dims(_shape(info, op.inputs, 1))[:-1])


def _fully_connected(info: ModelInfo, op: OpInfo) -> int:
    # weights [units, in]: each output element is a dot product of length `in`
    weights = _dims(_shape(info, op.inputs, 1))
    return _elements(_shape(info, op.outputs, 0)) * (weights[-1] if weights else 1)


def _sequence_lstm(info: ModelInfo, op: OpInfo) -> int:
    # input [batch, time, in]; inputs 1-8 the input and recurrent weights of the four gates
    # ([units, in] and [units, units]), 16-17 an optional projection: every step runs them all
    steps = _dims(_shape(info, op.inputs, 0))
    time = steps[1] if len(steps) == 3 else 1
    weights = [k for k in (*range(1, 9), 16) if k < len(op.inputs) and op.inputs[k] >= 0]
    return time * sum(math.prod(_dims(_shape(info, op.inputs, k))) for k in weights)


def _batch_matmul(info: ModelInfo, op: OpInfo) -> int:
    # x [..., M, K] @ y [..., K, N] (adj_x is not read: K is taken as x's last dim)
    x = _dims(_shape(info, op.inputs, 0))
    return _elements(_shape(info, op.outputs, 0)) * (x[-1] if x else 1)


_PRICED: dict[str, tuple[str, Callable[[ModelInfo, OpInfo], int]]] = {
    "CONV_2D": ("conv_2d", _conv),
    "CONV_3D": ("conv_2d", _conv3d),
    "TRANSPOSE_CONV": ("conv_2d", _transpose_conv),
    "DEPTHWISE_CONV_2D": ("depthwise_conv_2d", _depthwise),
    "FULLY_CONNECTED": ("fully_connected", _fully_connected),
    "BATCH_MATMUL": ("fully_connected", _batch_matmul),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("fully_connected", _sequence_lstm),
}
_CONTROL_FLOW = frozenset({"WHILE", "IF", "CALL_ONCE", "CALL"})


# -- the estimate ---------------------------------------------------------------------------------


def estimate_latency(info: ModelInfo, target: TargetProfile) -> LatencyEstimate:
    """Price every op of the main graph with the target's [latency] figures."""
    costs = tuple(_cost(op, kind, work, target) for op, kind, work in count_macs(info))
    cycles = sum(c.cycles for c in costs)
    loops = sorted({op.name for op in info.ops if op.name in _CONTROL_FLOW})
    note = (f"not counted: the work inside {', '.join(loops)} (the bodies of {info.subgraph_count - 1} "
            "subgraph(s), run as often as the data decides), so the real time is higher") if loops else ""
    return LatencyEstimate(target=target.name, clock_mhz=target.clock_mhz, ops=costs,
                           total_macs=sum(c.macs for c in costs), total_cycles=cycles,
                           total_ms=_ms(cycles, target.clock_mhz), note=note)


MAX_WORK = 10**15
"""MACs per op beyond any real model (a crafted file can declare shapes of 2^31 in 100 dims):
counts saturate here so that cycles stay finite and reports stay valid JSON."""


def _cost(op: OpInfo, kind: str, work: int, target: TargetProfile) -> OpCost:
    work = min(work, MAX_WORK)
    per_unit = getattr(target.latency, kind) if kind != "other" else 0.0
    cycles = work * per_unit + target.latency.op_overhead
    return OpCost(index=op.index, op=op.name, kind=kind, macs=work, cycles=cycles,
                  ms=_ms(cycles, target.clock_mhz))


def _ms(cycles: float, clock_mhz: float) -> float:
    return cycles / (clock_mhz * 1e3)


def _significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (0.0 stays 0.0)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


# -- the host measurement -------------------------------------------------------------------------


def measure_host_latency(model: bytes, *, runs: int = 50, warmup: int = 5, seed: int = 0) -> HostLatency:
    """Time `invoke()` alone on seeded random inputs, after `warmup` untimed runs."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    from ai_edge_litert.interpreter import Interpreter

    from edgeq.tflite.strip import litert_loadable

    try:
        interpreter = Interpreter(model_content=litert_loadable(bytes(model)), num_threads=1)
        interpreter.allocate_tensors()
        rng = np.random.default_rng(seed)
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], _random_input(rng, detail["dtype"], detail["shape"]))
        for _ in range(warmup):
            interpreter.invoke()
        times = []
        for _ in range(runs):
            started = time.perf_counter_ns()
            interpreter.invoke()
            times.append(time.perf_counter_ns() - started)
    except (ValueError, RuntimeError) as exc:
        raise TFLiteFormatError(f"LiteRT cannot run the model: {exc}",
                                hint="check the file with `edgeq inspect`; re-export it") from None
    us = np.asarray(times, dtype=np.float64) / 1e3
    return HostLatency(runtime=Runtime.LITERT, runs=runs, median_us=float(np.median(us)),
                       p90_us=float(np.percentile(us, 90)), min_us=float(us.min()))


def _random_input(rng: np.random.Generator, dtype: Any, shape: Any) -> np.ndarray:
    """Integers uniform over the dtype's range, floats in [0, 1), booleans either way."""
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        return rng.integers(limits.min, limits.max, size=shape, dtype=dtype, endpoint=True)
    return rng.random(shape).astype(dtype)
