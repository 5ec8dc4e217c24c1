"""Structural damage to a real .tflite, shared by the reader's unit tests and the CLI robustness tests.

Each mutator changes the unpacked object tree (ai_edge_litert's schema object API) in one way
the reader must refuse; `patched` re-serialises the result.
"""

from __future__ import annotations

from typing import Any, Callable

import flatbuffers
from ai_edge_litert import schema_py_generated as schema


def patched(data: bytes, mutate: Callable[[Any], None], tail: bytes = b"") -> bytes:
    """Unpack a trusted model, let `mutate` change the object tree, re-serialise (+ optional tail)."""
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    mutate(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()) + tail


def find_op(model: Any, name: str) -> Any:
    codes = [max(c.deprecatedBuiltinCode, c.builtinCode) for c in model.operatorCodes]
    wanted = getattr(schema.BuiltinOperator, name)
    return next(op for op in model.subgraphs[0].operators if codes[op.opcodeIndex] == wanted)


def tensor_index_out_of_range(m: Any) -> None:
    op = find_op(m, "CONV_2D")
    op.inputs = [op.inputs[0], 57, op.inputs[2]]


def opcode_index_out_of_range(m: Any) -> None:
    find_op(m, "SOFTMAX").opcodeIndex = len(m.operatorCodes)


def buffer_index_out_of_range(m: Any) -> None:
    m.subgraphs[0].tensors[3].buffer = len(m.buffers) + 5


def same_tensor_in_and_out(m: Any) -> None:
    op = find_op(m, "MAX_POOL_2D")
    op.outputs = [op.inputs[0]]


def input_quantization(**changes: Any) -> Callable[[Any], None]:
    """A mutator setting fields of the first input's quantization (scale=[0.0], zeroPoint=[300], ...)."""
    def mutate(m: Any) -> None:
        quant = m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]].quantization
        for key, value in changes.items():
            setattr(quant, key, value)
    return mutate
