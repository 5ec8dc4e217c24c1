"""An evaluation-only copy of a model with a free batch dimension, so LiteRT can run many samples
per invoke. Read through the checked reader first; only then are a few int32 words edited in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeq.errors import TFLiteFormatError
from edgeq.tflite.reader import read_tflite

# Ops that keep state between invokes, branch into other subgraphs, draw random numbers, or
# combine values along an axis that may be the batch axis without changing any shape.
_UNSAFE_OPS = frozenset({
    "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE", "WHILE", "IF", "CALL",
    "RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL", "CUMSUM", "REVERSE_V2",
    "REVERSE_SEQUENCE", "SHAPE", "RANK", "SIZE", "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_RNN",
    "LSTM", "RNN", "SVDF",
})


class Unbatchable(Exception):
    """The model cannot safely run with a free batch dimension; the message says why."""


def free_batch_dimension(model: bytes) -> bytes:
    """An evaluation-only copy of `model` whose leading batch dimension of 1 is free.

    Only the targets of RESHAPE ops whose output has batch 1 change, in place, from [1, ...] to
    [-1, ...] (both the ReshapeOptions and the constant shape tensor); every other byte stays as
    it was, so weights keep their alignment. LiteRT's `resize_tensor_input` then propagates any
    batch size. Raises Unbatchable for models where batching could change results.
    """
    from ai_edge_litert import schema_py_generated as schema

    try:  # the checked reader first: the edits below trust the offsets it has checked
        info = read_tflite(model, source="<evaluation copy>")
    except TFLiteFormatError as exc:
        raise Unbatchable(f"the model did not read cleanly ({exc.message}): batching not attempted") from None
    if info.subgraph_count != 1:
        raise Unbatchable(f"the model has {info.subgraph_count} subgraphs (control flow): batching not attempted")
    unsafe = [c for c in info.all_op_names if c in _UNSAFE_OPS or c.startswith("CUSTOM")]
    if unsafe:
        raise Unbatchable(f"op(s) {', '.join(unsafe)} may keep state or combine samples: batching not attempted")
    buf = bytearray(model)
    m = schema.Model.GetRootAs(buf, 0)
    graph = m.Subgraphs(0)
    reshapes = [graph.Operators(op.index) for op in info.ops if op.name == "RESHAPE"]
    shape_tensors = {int(op.Inputs(1)) for op in reshapes if op.InputsLength() > 1 and op.Inputs(1) >= 0}
    for op in reshapes:
        _free_reshape(m, graph, op, shape_tensors, schema)
    return bytes(buf)


def _free_reshape(m: Any, graph: Any, op: Any, shape_tensors: set[int], schema: Any) -> None:
    shape = graph.Tensors(op.Outputs(0)).ShapeAsNumpy()
    if not isinstance(shape, np.ndarray) or not len(shape) or shape[0] != 1:
        return
    target = [-1, *(int(d) for d in shape[1:])]
    if op.BuiltinOptionsType() == schema.BuiltinOptions.ReshapeOptions:
        table = op.BuiltinOptions()
        options = schema.ReshapeOptions()
        options.Init(table.Bytes, table.Pos)
        _overwrite(options.NewShapeAsNumpy(), target, "the RESHAPE options")
    if op.InputsLength() < 2 or op.Inputs(1) < 0:
        return
    index = int(op.Inputs(1))
    buffer_index = graph.Tensors(index).Buffer()
    sharers = {i for i in range(graph.TensorsLength()) if graph.Tensors(i).Buffer() == buffer_index}
    if not sharers <= shape_tensors:
        raise Unbatchable("a RESHAPE shares its shape constant with another tensor: batching not attempted")
    buffer = m.Buffers(buffer_index)
    if buffer.Offset() > 1:
        raise Unbatchable("the model keeps tensor data outside the flatbuffer: batching not attempted")
    data = buffer.DataAsNumpy()
    if not isinstance(data, np.ndarray):
        return  # computed at run time: LiteRT derives it from the (resized) inputs
    dtype = {schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}.get(graph.Tensors(index).Type())
    if dtype is None or data.size % np.dtype(dtype).itemsize:
        raise Unbatchable("a RESHAPE has a shape tensor that is neither int32 nor int64")
    _overwrite(data.view(dtype), target, "the RESHAPE shape tensor")


def _overwrite(view: Any, target: list[int], what: str) -> None:
    """Write `target` into a numpy view of the model bytes (same length only: nothing moves)."""
    if not isinstance(view, np.ndarray) or not len(view):
        return
    if len(view) != len(target):
        raise Unbatchable(f"{what} has {len(view)} dimensions for an output of rank {len(target)}")
    view[:] = target
