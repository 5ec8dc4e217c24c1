"""What a checked .tflite holds, as the rest of edgeq sees it: its tensors, operators and graph.

edgeq/tflite/reader.py builds these from a file it has verified; nothing here reads bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from edgeq.records import Record

FLOAT_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16", "float8_e4m3fn", "float8_e5m2",
                          "complex64", "complex128"})
"""Dtypes that make a model not 'fully integer' (an integer-only MCU cannot run them)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the main graph. `shape` is what TFLite Micro runs: the file's `shape` field,
    where an open batch is 1; `shape_signature` is what the file declares, -1 for every open
    dimension, as LiteRT and the converter show it (empty: the same as `shape`)."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0
    buffer_bytes: int = 0
    shape_signature: tuple[int, ...] = ()

    @property
    def declared_shape(self) -> tuple[int, ...]:
        """The shape as the file declares it (-1: an open dimension)."""
        return self.shape_signature or self.shape

    @property
    def is_constant(self) -> bool:
        return self.buffer_bytes > 0

    @property
    def is_quantized(self) -> bool:
        return len(self.scales) > 0

    @property
    def is_per_channel(self) -> bool:
        return len(self.scales) > 1

    def quantization_part(self) -> TensorQuant | ChannelQuant | None:
        """Per-tensor scale/zero point, or a per-channel summary (hundreds of scales help nobody)."""
        if not self.scales:
            return None
        if len(self.scales) == 1:
            return TensorQuant(self.scales[0], self.zero_points[0] if self.zero_points else 0)
        return ChannelQuant(len(self.scales), self.quantized_dimension, min(self.scales), max(self.scales))

    def part(self) -> TensorPart:
        return TensorPart(self.index, self.name, self.dtype, list(self.declared_shape), self.is_constant,
                          self.buffer_bytes,
                          self.quantization_part())

    def to_dict(self) -> dict[str, Any]:
        return self.part().to_dict()


@dataclass(frozen=True)
class TensorQuant(Record):
    """Per-tensor quantization: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class ChannelQuant(Record):
    """Per-channel quantization, summarised: how many channels, along which axis, the scales' range."""

    channels: int
    axis: int
    scale_min: float
    scale_max: float


@dataclass(frozen=True)
class TensorPart(Record):
    """One tensor of the model's main graph as the report lists it (shape -1: a dynamic dimension)."""

    index: int
    name: str
    dtype: str
    shape: list[int]
    constant: bool
    buffer_bytes: int
    quant: TensorQuant | ChannelQuant | None


@dataclass(frozen=True)
class OpInfo:
    """One operator of the main graph; -1 in `inputs` marks an omitted optional input.

    `options` holds the builtin options the tools use, as (name, value) pairs: filter_height,
    filter_width, stride_h, stride_w for the 2-D pools; stride_h, stride_w, dilation_h_factor,
    dilation_w_factor (and depth_multiplier) for CONV_2D and DEPTHWISE_CONV_2D. Empty for other
    ops, or when the file stores no options table (the runtime then uses its defaults).
    """

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: tuple[tuple[str, int], ...] = ()

    def option(self, name: str, default: int = 0) -> int:
        """One builtin option by name, or `default` if the op does not store it."""
        return next((value for key, value in self.options if key == name), default)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "inputs": list(self.inputs), "outputs": list(self.outputs)}


@dataclass(frozen=True)
class ModelInfo:
    """What `edgeq inspect` and the target checks need to know about a verified .tflite file.

    `tensors`, `ops`, `inputs` and `outputs` describe subgraph 0 (the graph that runs); op counts,
    dtypes and buffer sizes cover all subgraphs, because control-flow bodies run on the device too.
    """

    source: str
    file_bytes: int
    version: int
    description: str
    subgraph_count: int
    tensors: tuple[TensorInfo, ...]
    ops: tuple[OpInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    all_op_names: tuple[str, ...]
    op_histogram: tuple[tuple[str, int], ...] = ()  # (name, count) over all subgraphs, by name
    all_dtypes: tuple[str, ...] = ()  # distinct tensor dtypes over all subgraphs, sorted
    constant_buffers: tuple[int, ...] = ()  # bytes of each distinct buffer a tensor uses, any subgraph
    # The first signature's names of subgraph 0's inputs and outputs, in the graph's own order
    # ("" where the file names none: a stripped or hand-made model).
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    # What the file says that TFLite Micro ignores or reads otherwise, and how edgeq reads it alike
    # (an open batch run as 1, a bias's quantized dimension): `edgeq inspect` shows them.
    notes: tuple[str, ...] = ()

    def op_counts(self) -> dict[str, int]:
        """Operator name -> number of uses over all subgraphs, sorted by name."""
        if self.op_histogram:
            return dict(self.op_histogram)
        return dict(sorted(Counter(op.name for op in self.ops).items()))

    @property
    def activation_bytes(self) -> int:
        """Bytes of every computed tensor of the main graph for one sample (TFLM's batch-1 shapes):
        what a run holds alive per sample at worst, which `edgeq.budget.batch_for` sizes batches by."""
        size = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "uint32": 4, "float16": 2, "int16": 2,
                "uint16": 2}
        total = 0
        for t in self.tensors:
            if not t.is_constant:
                count = 1
                for d in t.shape:
                    count *= max(int(d), 1)
                total += count * size.get(t.dtype, 1)
        return total

    @property
    def parameter_bytes(self) -> int:
        """Bytes of constant tensor data (weights, biases, shapes) in all subgraphs, shared ones once.

        Metadata buffers (runtime version, conversion info) are not parameters and are left out.
        """
        return sum(self.constant_buffers) if self.constant_buffers else sum(t.buffer_bytes for t in self.tensors)

    @property
    def flowing_tensors(self) -> tuple[TensorInfo, ...]:
        """The main graph's tensors that ops read or write, or that are its inputs and outputs.

        Leaves out tensors that only carry quantization parameters for an op (the integer LSTM's
        float-typed "intermediate" tensors hold no data): they are not activations.
        """
        return flowing((self.tensors, self.ops, self.inputs, self.outputs))

    @property
    def input_tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self.tensors[i] for i in self.inputs)

    @property
    def output_tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self.tensors[i] for i in self.outputs)

    @property
    def is_fully_integer(self) -> bool:
        """True if no tensor in any subgraph is floating point (runs on integer-only targets)."""
        dtypes = self.all_dtypes or tuple(t.dtype for t in self.tensors)
        return not FLOAT_DTYPES.intersection(dtypes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary for `edgeq inspect --json`."""
        counts = self.op_counts()
        return {
            "source": self.source, "file_bytes": self.file_bytes, "parameter_bytes": self.parameter_bytes,
            "version": self.version, "description": self.description, "subgraph_count": self.subgraph_count,
            "fully_integer": self.is_fully_integer, "op_count": sum(counts.values()), "ops": counts,
            "inputs": [t.to_dict() for t in self.input_tensors],
            "outputs": [t.to_dict() for t in self.output_tensors],
            "tensors": [t.to_dict() for t in self.tensors],
            **({"notes": list(self.notes)} if self.notes else {}),
        }


Graph = tuple[tuple[TensorInfo, ...], tuple[OpInfo, ...], tuple[int, ...], tuple[int, ...]]
"""One parsed subgraph: tensors, operators, input and output tensor indices."""


def flowing(graph: Graph) -> tuple[TensorInfo, ...]:
    """The graph's tensors that ops read or write, or that are its inputs and outputs."""
    tensors, ops, inputs, outputs = graph
    used = set(inputs) | set(outputs)
    for op in ops:
        used.update(i for i in op.inputs if i >= 0)
        used.update(op.outputs)
    return tuple(t for t in tensors if t.index in used)


def reading_notes(open_batch: list[str], bias_axis: list[str]) -> tuple[str, ...]:
    """ModelInfo.notes: what TFLM reads otherwise than the file says, by the tensors concerned."""
    def named(tensors: list[str]) -> str:
        more = f" and {len(tensors) - 3} more" if len(tensors) > 3 else ""
        return f"{len(tensors)} tensor{'s' if len(tensors) > 1 else ''} ({', '.join(tensors[:3])}{more})"

    notes = []
    if open_batch:
        notes.append(f"the batch dimension is open (-1) for {named(open_batch)}; TFLite Micro runs it as 1, and so "
                     "does edgeq (one sample per inference)")
    if bias_axis:
        notes.append(f"{named(bias_axis)} of rank 1 say a per-channel quantized dimension other than 0; TFLite Micro "
                     "ignores it and reads the scales by channel, and so does edgeq")
    return tuple(notes)
