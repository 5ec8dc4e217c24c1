"""Tests for edgeq.tflite.reader against models from the real TFLite converter (no mocks).

Broken files are made by patching a real model with the flatbuffers object API (fine here: the
input is our own trusted model) and re-serialising it, so each test breaks exactly one thing.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tflite_mutations import buffer_index_out_of_range as _tensor_buffer
from tflite_mutations import find_op as _find_op
from tflite_mutations import input_quantization as _input_quant
from tflite_mutations import opcode_index_out_of_range as _opcode
from tflite_mutations import patched as _patched
from tflite_mutations import same_tensor_in_and_out as _same_in_out
from tflite_mutations import tensor_index_out_of_range as _op_input
from edgeq.errors import TFLiteFormatError
from edgeq.tflite import reader
from edgeq.tflite.inspect_format import format_inspect
from edgeq.tflite.reader import ModelInfo, read_tflite, read_tflite_file

REPO = Path(__file__).resolve().parents[2]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tflite_models(tiny_cnn_tflite: dict[str, bytes]) -> dict[str, bytes]:
    return tiny_cnn_tflite


@pytest.fixture(scope="session")
def int8_model(tflite_models: dict[str, bytes]) -> bytes:
    return tflite_models["int8"]


def _interpreter(data: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=data)


def _expect_error(data: bytes, *fragments: str, source: str = "model.tflite") -> TFLiteFormatError:
    with pytest.raises(TFLiteFormatError) as caught:
        read_tflite(data, source=source)
    error = caught.value
    assert error.message.startswith(f"{source}: "), error.message
    for fragment in fragments:
        assert fragment in error.message, error.message
    assert error.hint
    return error


# -- no TensorFlow, schema layout -----------------------------------------------------------------


def test_import_does_not_load_tensorflow() -> None:
    code = ("import sys, edgeq.tflite.reader, edgeq.tflite.inspect_format; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("cls", "method", "slot"), [
    ("Model", "OperatorCodes", reader._M_OPCODES), ("Model", "Subgraphs", reader._M_SUBGRAPHS),
    ("Model", "Description", reader._M_DESCRIPTION), ("Model", "Buffers", reader._M_BUFFERS),
    ("OperatorCode", "CustomCode", reader._OC_CUSTOM_CODE),
    ("SubGraph", "Tensors", reader._SG_TENSORS), ("SubGraph", "Inputs", reader._SG_INPUTS),
    ("SubGraph", "Outputs", reader._SG_OUTPUTS), ("SubGraph", "Operators", reader._SG_OPERATORS),
    ("Tensor", "Shape", reader._T_SHAPE), ("Tensor", "Name", reader._T_NAME),
    ("Tensor", "Quantization", reader._T_QUANTIZATION), ("Tensor", "ShapeSignature", reader._T_SHAPE_SIGNATURE),
    ("Operator", "Inputs", reader._OP_INPUTS), ("Operator", "Outputs", reader._OP_OUTPUTS),
    ("Operator", "BuiltinOptions", reader._OP_BUILTIN_OPTIONS),
    ("QuantizationParameters", "Scale", reader._Q_SCALE),
    ("QuantizationParameters", "ZeroPoint", reader._Q_ZERO_POINT), ("Buffer", "Data", reader._B_DATA),
])
def test_vtable_slots_match_the_schema(cls: str, method: str, slot: int) -> None:
    """The reader bounds-checks these fields itself; a schema change must not go unnoticed."""
    assert f"_tab.Offset({slot})" in inspect.getsource(getattr(getattr(schema, cls), method))


# -- real models -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_ops_match_litert_interpreter(tflite_models: dict[str, bytes], kind: str) -> None:
    data = tflite_models[kind]
    info = read_tflite(data, source=f"{kind}.tflite")
    details = _interpreter(data)._get_ops_details()
    assert info.op_counts() == dict(sorted(Counter(d["op_name"] for d in details).items()))
    assert [op.name for op in info.ops] == [d["op_name"] for d in details]
    for op, d in zip(info.ops, details):
        assert op.inputs == tuple(d["inputs"].tolist())
        assert op.outputs == tuple(d["outputs"].tolist())
    assert info.all_op_names == tuple(sorted({d["op_name"] for d in details}))
    assert {"CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(info.all_op_names)
    assert info.subgraph_count == 1 and info.version == 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_inputs_outputs_match_litert_interpreter(tflite_models: dict[str, bytes], kind: str) -> None:
    info = read_tflite(tflite_models[kind])
    interpreter = _interpreter(tflite_models[kind])
    for ours, theirs in [(info.input_tensors, interpreter.get_input_details()),
                         (info.output_tensors, interpreter.get_output_details())]:
        assert len(ours) == len(theirs) == 1
        for tensor, d in zip(ours, theirs):
            assert tensor.index == d["index"] and tensor.name == d["name"]
            assert tensor.dtype == np.dtype(d["dtype"]).name == kind
            assert tensor.declared_shape == tuple(d["shape_signature"].tolist())
            assert tensor.shape == tuple(d["shape"].tolist())  # what TFLM runs: the open batch as 1
            q = d["quantization_parameters"]
            assert tensor.scales == pytest.approx(q["scales"].tolist(), rel=1e-7)
            assert tensor.zero_points == tuple(q["zero_points"].tolist())
            assert tensor.quantized_dimension == q["quantized_dimension"]
            assert tensor.is_quantized == (kind == "int8")
    assert info.input_tensors[0].declared_shape == (-1, 8, 8, 1) and info.input_tensors[0].shape == (1, 8, 8, 1)
    assert info.output_tensors[0].declared_shape == (-1, 10) and info.output_tensors[0].shape == (1, 10)


@pytest.mark.slow
def test_integer_only_and_per_channel(tflite_models: dict[str, bytes]) -> None:
    quant = read_tflite(tflite_models["int8"])
    floating = read_tflite(tflite_models["float32"])
    assert quant.is_fully_integer and not floating.is_fully_integer
    conv = next(op for op in quant.ops if op.name == "CONV_2D")
    weights, bias = quant.tensors[conv.inputs[1]], quant.tensors[conv.inputs[2]]
    assert weights.dtype == "int8" and weights.is_constant and weights.is_per_channel
    assert weights.shape == (4, 3, 3, 1) and len(weights.scales) == 4 and weights.quantized_dimension == 0
    assert weights.to_dict()["quant"] == {"channels": 4, "axis": 0, "scale_min": min(weights.scales),
                                          "scale_max": max(weights.scales)}
    assert bias.dtype == "int32" and bias.buffer_bytes == 16
    assert all(t.dtype in ("int8", "int32") for t in quant.tensors)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_sizes_and_json(tflite_models: dict[str, bytes], kind: str) -> None:
    info = read_tflite(tflite_models[kind], source=f"{kind}.tflite")
    assert info.file_bytes == len(tflite_models[kind])
    # Conv 4*3*3*1 + Dense 36*10 weights plus biases: all of them must be counted.
    weight_count = 36 + 360
    assert weight_count * (4 if kind == "float32" else 1) < info.parameter_bytes <= info.file_bytes
    document = json.loads(json.dumps(info.to_dict()))
    assert document["file_bytes"] == info.file_bytes and document["parameter_bytes"] == info.parameter_bytes
    assert document["fully_integer"] is (kind == "int8")
    assert document["ops"] == info.op_counts() and document["op_count"] == len(info.ops)
    assert document["inputs"][0]["dtype"] == kind and document["inputs"][0]["shape"] == [-1, 8, 8, 1]
    assert len(document["tensors"]) == len(info.tensors)
    if kind == "int8":
        assert set(document["inputs"][0]["quant"]) == {"scale", "zero_point"}


@pytest.mark.slow
def test_format_inspect(int8_model: bytes) -> None:
    info = read_tflite(int8_model, source="model_int8.tflite")
    text = format_inspect(info)
    assert text.startswith("model_int8.tflite\n")
    assert f"{info.file_bytes:,} bytes" in text and f"{info.parameter_bytes:,} bytes" in text
    assert "fully integer    yes" in text and "per-channel x4 (axis 0)" in text
    assert "CONV_2D" in text and "zp=-128" in text and "[-1,8,8,1]" in text
    assert all(len(line) < 140 for line in text.splitlines())


# -- files that are not models at all ---------------------------------------------------------------


@pytest.mark.parametrize(("data", "fragment"), [
    (b"", "empty"),
    (b"TFL3", "only 4 bytes"),
    (bytes(range(7)), "only 7 bytes"),
    (b"PK\x03\x04" + bytes(200), "identifier"),
    (b"\x89HDF\r\n\x1a\n" + bytes(200), "identifier"),
    (np.random.default_rng(1).bytes(3000), "identifier"),
    (b"\x1c\x00\x00\x00TFL3", "root table offset 28"),
    (b"\xff\xff\xff\xffTFL3" + bytes(64), "root table offset"),
])
def test_not_a_model(data: bytes, fragment: str) -> None:
    _expect_error(data, fragment)


@pytest.mark.slow
def test_wrong_identifier(int8_model: bytes) -> None:
    error = _expect_error(int8_model[:4] + b"TFL2" + int8_model[8:], "b'TFL2'", "TFL3")
    assert "not a TFLite flatbuffer" in (error.hint or "")


@pytest.mark.slow
@pytest.mark.parametrize("cut", [8, 12, 16, 40, 100, 0.25, 0.5, 0.75, -64, -8, -1])
def test_truncated_model(int8_model: bytes, cut: float) -> None:
    end = int(len(int8_model) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(int8_model) + cut)
    _expect_error(int8_model[:end])


# -- structurally broken models ---------------------------------------------------------------------


@pytest.mark.slow
def test_reserialised_model_is_unchanged(int8_model: bytes) -> None:
    """The patch helper itself must not break anything, or the tests below prove nothing."""
    data = _patched(int8_model, lambda m: None)
    _interpreter(data).allocate_tensors()
    original, again = read_tflite(int8_model), read_tflite(data)
    assert again.tensors == original.tensors and again.ops == original.ops
    assert again.parameter_bytes == original.parameter_bytes


def _op_output_optional(m: Any) -> None:
    _find_op(m, "SOFTMAX").outputs = [-1]


def _graph_input(m: Any) -> None:
    m.subgraphs[0].inputs = [999]


def _graph_output(m: Any) -> None:
    m.subgraphs[0].outputs = [-1]


def _no_subgraphs(m: Any) -> None:
    m.subgraphs = []


def _conv_weight_quant(**changes: Any) -> Callable[[Any], None]:
    def mutate(m: Any) -> None:
        quant = m.subgraphs[0].tensors[_find_op(m, "CONV_2D").inputs[1]].quantization
        for key, value in changes.items():
            setattr(quant, key, value if not callable(value) else value(quant))
    return mutate


def _external_buffer_past_end(m: Any) -> None:
    buffer = m.buffers[m.subgraphs[0].tensors[_find_op(m, "CONV_2D").inputs[1]].buffer]
    buffer.data, buffer.offset, buffer.size = None, 100_000, 36


@pytest.mark.slow
@pytest.mark.parametrize(("mutate", "fragments"), [
    (_op_input, ["operator 0 (CONV_2D) input 1 refers to tensor 57, but subgraph 0 has only 15 tensors"]),
    (_op_output_optional, ["(SOFTMAX) output 0 refers to tensor -1"]),
    (_opcode, ["uses operator code 8", "only 8 operator codes"]),
    (_tensor_buffer, ["tensor 3 (", "uses buffer", "only"]),
    (_same_in_out, ["(MAX_POOL_2D)", "as both input and output"]),
    (_graph_input, ["subgraph 0 input 0 refers to tensor 999"]),
    (_graph_output, ["subgraph 0 output 0 refers to tensor -1"]),
    (_no_subgraphs, ["no subgraphs"]),
    (_input_quant(scale=[0.0]), ["tensor 0 ('serving_default", "scale 0.0"]),
    (_input_quant(scale=[float("nan")]), ["scale nan"]),
    (_input_quant(scale=[float("inf")]), ["scale inf"]),
    (_input_quant(scale=[-0.5]), ["scale -0.5"]),
    (_input_quant(zeroPoint=[300]), ["zero point 300", "int8 range -128..127"]),
    (_input_quant(zeroPoint=[-128, 0]), ["1 quantization scales but 2 zero points"]),
    (_conv_weight_quant(scale=lambda q: list(q.scale)[:3], zeroPoint=lambda q: list(q.zeroPoint)[:3]),
     ["3 per-channel scales", "dimension 0 has size 4"]),
    (_conv_weight_quant(quantizedDimension=4), ["per channel along axis 4, but has rank 4"]),
    (_external_buffer_past_end, ["stores 36 bytes at offset 100000, past the end of the file"]),
])
def test_structural_errors(int8_model: bytes, mutate: Callable[[Any], None], fragments: list[str]) -> None:
    _expect_error(_patched(int8_model, mutate), *fragments)


@pytest.mark.slow
def test_zero_points_allowed_by_dtype(int8_model: bytes) -> None:
    """uint8 allows 0..255; int32 biases allow anything; absent zero points are fine."""
    def mutate(m: Any) -> None:
        tensors = m.subgraphs[0].tensors
        tensors[m.subgraphs[0].inputs[0]].type = schema.TensorType.UINT8
        tensors[m.subgraphs[0].inputs[0]].quantization.zeroPoint = [255]
        bias = tensors[_find_op(m, "CONV_2D").inputs[2]]
        bias.quantization.zeroPoint = [123456] * 4
        tensors[m.subgraphs[0].outputs[0]].quantization.zeroPoint = []
    info = read_tflite(_patched(int8_model, mutate))
    assert info.input_tensors[0].dtype == "uint8" and info.input_tensors[0].zero_points == (255,)
    assert info.output_tensors[0].zero_points == ()
    assert info.output_tensors[0].to_dict()["quant"]["zero_point"] == 0


@pytest.mark.slow
def test_unknown_and_custom_operator_names(int8_model: bytes) -> None:
    def mutate(m: Any) -> None:
        softmax, pool = _find_op(m, "SOFTMAX"), _find_op(m, "MAX_POOL_2D")
        m.operatorCodes[softmax.opcodeIndex].deprecatedBuiltinCode = 127
        m.operatorCodes[softmax.opcodeIndex].builtinCode = 4000
        m.operatorCodes[pool.opcodeIndex].deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        m.operatorCodes[pool.opcodeIndex].builtinCode = schema.BuiltinOperator.CUSTOM
        m.operatorCodes[pool.opcodeIndex].customCode = "MyPool"
    info = read_tflite(_patched(int8_model, mutate))
    assert {"UNKNOWN_4000", "CUSTOM:MyPool"} <= set(info.all_op_names)
    assert "SOFTMAX" not in info.op_counts() and "MAX_POOL_2D" not in info.op_counts()


@pytest.mark.slow
def test_unknown_tensor_type(int8_model: bytes) -> None:
    def mutate(m: Any) -> None:
        m.subgraphs[0].tensors[5].type = 99
    _expect_error(_patched(int8_model, mutate), "tensor 5 (", "unknown type code 99")


@pytest.mark.slow
def test_buffer_stored_after_the_flatbuffer(int8_model: bytes) -> None:
    """Large models keep weights after the flatbuffer (Buffer.offset/size); both layouts count."""
    original = read_tflite(int8_model)
    weights = bytes(range(36))

    def move(offset: int) -> Callable[[Any], None]:
        def mutate(m: Any) -> None:
            buffer = m.buffers[m.subgraphs[0].tensors[_find_op(m, "CONV_2D").inputs[1]].buffer]
            buffer.data, buffer.offset, buffer.size = None, offset, len(weights)
        return mutate

    flatbuffer_size = len(_patched(int8_model, move(2)))  # same layout for any offset > 1
    data = _patched(int8_model, move(flatbuffer_size), tail=weights)
    assert len(data) == flatbuffer_size + len(weights)
    info = read_tflite(data)
    conv = next(op for op in info.ops if op.name == "CONV_2D")
    assert info.tensors[conv.inputs[1]].buffer_bytes == 36 and info.tensors[conv.inputs[1]].is_constant
    assert info.parameter_bytes == original.parameter_bytes <= info.file_bytes
    _expect_error(data[:-1], "past the end of the file")


class _SharedOperator:
    """Stands in for an OperatorT: packs the table once and hands out the same offset every time."""

    def __init__(self, op: Any) -> None:
        self.op, self.offset = op, None

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (the object API's name)
        if self.offset is None:
            self.offset = self.op.Pack(builder)
        return self.offset


@pytest.mark.slow
def test_shared_tables_do_not_make_the_reader_hang(int8_model: bytes) -> None:
    """20,000 references to one operator with 2,000 inputs: 40M index checks if nothing stops it."""
    def mutate(m: Any) -> None:
        op = _find_op(m, "MAX_POOL_2D")
        op.inputs = [op.inputs[0]] * 2000
        m.subgraphs[0].operators = [_SharedOperator(op)] * 20_000
    data = _patched(int8_model, mutate)
    assert len(data) < 200_000
    started = time.perf_counter()
    _expect_error(data, "far more often")
    assert time.perf_counter() - started < 2.0


# -- fuzzing ------------------------------------------------------------------------------------------


def _read_or_format_error(data: bytes) -> None:
    try:
        info = read_tflite(data, source="fuzz.tflite")
    except TFLiteFormatError as error:
        assert error.message.startswith("fuzz.tflite: ")
        return
    json.dumps(info.to_dict())  # whatever is accepted must also be presentable
    format_inspect(info)
    assert info.parameter_bytes <= info.file_bytes
    assert all(math.isfinite(s) and s > 0 for t in info.tensors for s in t.scales)


_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@_FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(["flip", "set", "cut"]), st.floats(0, 1, exclude_max=True),
                                st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated_model(int8_model: bytes, edits: list[tuple[str, float, int]]) -> None:
    data = bytearray(int8_model)
    for kind, where, value in edits:
        if not data:
            break
        at = int(where * len(data))
        if kind == "flip":
            data[at] ^= 1 << (value % 8)
        elif kind == "set":
            data[at] = value
        else:
            del data[at:]
    _read_or_format_error(bytes(data))


@_FUZZ
@given(head=st.integers(0, 2**32 - 1), body=st.binary(max_size=2048), tfl3=st.booleans())
def test_fuzz_random_bytes(head: int, body: bytes, tfl3: bool) -> None:
    prefix = head.to_bytes(4, "little") + b"TFL3" if tfl3 else b""
    _read_or_format_error(prefix + body)


# -- files ------------------------------------------------------------------------------------------


def test_read_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.tflite"
    with pytest.raises(TFLiteFormatError, match="nope.tflite: no such file"):
        read_tflite_file(path)


def test_read_file_directory(tmp_path: Path) -> None:
    with pytest.raises(TFLiteFormatError, match="is a directory"):
        read_tflite_file(tmp_path)


def test_read_file_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.tflite"
    path.write_bytes(b"")
    with pytest.raises(TFLiteFormatError, match=r"empty\.tflite: the file is empty"):
        read_tflite_file(str(path))


@pytest.mark.slow
def test_read_file_names_the_path(tmp_path: Path, int8_model: bytes) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(int8_model)
    info = read_tflite_file(path)
    assert isinstance(info, ModelInfo) and info.source == str(path) and info.file_bytes == len(int8_model)
    assert read_tflite(bytearray(int8_model)).ops == info.ops


def test_read_file_refuses_over_2_gib_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.tflite"
    with open(path, "wb") as f:
        f.truncate(reader.MAX_FILE_BYTES + 1)  # sparse: takes no disk space
    started = time.perf_counter()
    with pytest.raises(TFLiteFormatError, match=r"huge\.tflite: the file is larger than 2 GiB"):
        read_tflite_file(path)
    assert time.perf_counter() - started < 1.0


# -- builtin options ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def options_model() -> bytes:
    """Strides, dilation, a depth multiplier and a non-square pool: options that differ from defaults.

    A fixed batch of 1 keeps the dilation in the op (with a dynamic batch the converter rewrites a
    dilated convolution into SPACE_TO_BATCH_ND + undilated conv + BATCH_TO_SPACE_ND).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 3), batch_size=1),
        keras.layers.Conv2D(4, 3, strides=2),                                   # -> 7x7x4
        keras.layers.DepthwiseConv2D(3, dilation_rate=2, depth_multiplier=2),   # -> 3x3x8
        keras.layers.AveragePooling2D((3, 2), strides=(1, 2)),                  # -> 1x1x8
    ])
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_options_of_a_small_cnn(tflite_models: dict[str, bytes], kind: str) -> None:
    info = read_tflite(tflite_models[kind])
    conv = next(op for op in info.ops if op.name == "CONV_2D")
    pool = next(op for op in info.ops if op.name == "MAX_POOL_2D")
    assert dict(conv.options) == {"stride_h": 1, "stride_w": 1, "dilation_h_factor": 1, "dilation_w_factor": 1}
    assert dict(pool.options) == {"filter_height": 2, "filter_width": 2, "stride_h": 2, "stride_w": 2}
    assert all(op.options == () for op in info.ops if op.name not in ("CONV_2D", "MAX_POOL_2D"))
    assert pool.option("filter_width") == 2 and pool.option("padding", 7) == 7
    hash(conv)  # still a frozen, hashable record


@pytest.mark.slow
def test_options_differ_from_defaults(options_model: bytes) -> None:
    ops = {op.name: op for op in read_tflite(options_model).ops}
    assert dict(ops["CONV_2D"].options) == {"stride_h": 2, "stride_w": 2,
                                            "dilation_h_factor": 1, "dilation_w_factor": 1}
    assert dict(ops["DEPTHWISE_CONV_2D"].options) == {"stride_h": 1, "stride_w": 1, "dilation_h_factor": 2,
                                                      "dilation_w_factor": 2, "depth_multiplier": 2}
    assert dict(ops["AVERAGE_POOL_2D"].options) == {"filter_height": 3, "filter_width": 2,
                                                    "stride_h": 1, "stride_w": 2}


def _pool_options(**changes: Any) -> Callable[[Any], None]:
    def mutate(m: Any) -> None:
        op = _find_op(m, "MAX_POOL_2D")
        for key, value in changes.items():
            if key in ("builtinOptionsType", "builtinOptions"):
                setattr(op, key, value)
            else:
                setattr(op.builtinOptions, key, value)
    return mutate


@pytest.mark.slow
@pytest.mark.parametrize(("mutate", "fragments"), [
    (_pool_options(builtinOptionsType=schema.BuiltinOptions.AddOptions, builtinOptions=schema.AddOptionsT()),
     ["operator 1 (MAX_POOL_2D) in subgraph 0 stores AddOptions, expected Pool2DOptions"]),
    (_pool_options(filterHeight=0), ["(MAX_POOL_2D) in subgraph 0 has filter_height 0; it must be >= 1"]),
    (_pool_options(strideW=-3), ["has stride_w -3"]),
])
def test_bad_options(int8_model: bytes, mutate: Callable[[Any], None], fragments: list[str]) -> None:
    _expect_error(_patched(int8_model, mutate), *fragments)


@pytest.mark.slow
def test_missing_options_table_means_defaults(int8_model: bytes) -> None:
    data = _patched(int8_model, _pool_options(builtinOptionsType=schema.BuiltinOptions.NONE, builtinOptions=None))
    pool = next(op for op in read_tflite(data).ops if op.name == "MAX_POOL_2D")
    assert pool.options == () and pool.option("filter_height", 1) == 1
