"""Files other tools write the way TFLite Micro reads them: an open batch (-1 in the shape
signature, what the converter writes for a Keras model without a fixed batch) runs as one sample,
a bias's quantized dimension, which TFLM ignores, is accepted with a note, and an int16x8 model
keeps its int16 I/O. Each model comes from the real converter (the quirk made by a flatbuffer
edit where the converter does not write it), runs through `edgeq inspect` and `export-c --runtime
c`, and its C, built by gcc and clang, is byte for byte TFLM's on random inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import c_outputs, plain_tflite, run_edgeq, tflm_outputs

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _model(kind: str, batch: int | None):  # type: ignore[no-untyped-def]
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(11)
    L = keras.layers
    if kind == "dense":  # hello_world's shape: one scalar in, two hidden layers
        layers = [L.Input((1,), batch_size=batch), L.Dense(16, activation="relu"), L.Dense(16, activation="relu"),
                  L.Dense(1)]
    else:
        layers = [L.Input((8, 8, 2), batch_size=batch), L.Conv2D(4, 3, padding="same", activation="relu"),
                  L.DepthwiseConv2D(3, padding="same"), L.GlobalAveragePooling2D(), L.Dense(3)]
    model = keras.Sequential(layers)
    data = np.random.default_rng(3).normal(0, 1, size=(32, *model.inputs[0].shape[1:])).astype(np.float32)
    return plain_tflite(model, io="int8", data=data)


def _bias_axis(model: bytes, axis: int) -> bytes:
    """`model` with every per-channel rank-1 tensor (the biases) saying quantized dimension `axis`."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    edited = 0
    for tensor in obj.subgraphs[0].tensors:
        q = tensor.quantization
        if q is not None and q.scale is not None and len(q.scale) > 1 and len(tensor.shape) == 1:
            q.quantizedDimension = axis
            edited += 1
    assert edited, "the model has no per-channel bias to edit"
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


@pytest.mark.parametrize("kind", ["dense", "cnn"])
def test_an_open_batch_runs_as_one_sample_bit_exact_with_tflm(kind: str, tmp_path: Path) -> None:
    from edgeq.tflite.reader import read_tflite

    model = _model(kind, batch=None)
    info = read_tflite(model)
    first = info.input_tensors[0]
    assert first.declared_shape[0] == -1 and first.shape[0] == 1  # the file leaves the batch open
    assert any("batch dimension is open" in note for note in info.notes)
    inputs = np.random.default_rng(5).integers(-128, 128, size=(24, *first.shape[1:]), dtype=np.int8)
    expected = tflm_outputs(model, inputs, arena_size=1 << 20)
    got = c_outputs(tmp_path, model, inputs, info.output_tensors[0].shape[1:], "int8")
    assert got.reshape(expected.shape).tobytes() == expected.tobytes()

    file = tmp_path / f"{kind}.tflite"
    file.write_bytes(model)
    shown = run_edgeq("inspect", str(file))
    assert shown.returncode == 0 and "[-1," in shown.stdout and "batch dimension is open" in shown.stdout
    exported = run_edgeq("export-c", str(file), "--runtime", "c", "-o", str(tmp_path / "c"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "c" / f"{kind}_model.c").is_file()


def test_a_bias_quantized_dimension_tflm_ignores_is_accepted_with_a_note(tmp_path: Path) -> None:
    from edgeq.tflite.reader import read_tflite

    model = _bias_axis(_model("cnn", batch=1), axis=3)
    info = read_tflite(model)  # refused before: "quantized per channel along axis 3, but has rank 1"
    assert any("quantized dimension other than 0" in note for note in info.notes)
    assert all(t.quantized_dimension == 0 for t in info.tensors if t.is_per_channel and len(t.shape) == 1)
    inputs = np.random.default_rng(6).integers(-128, 128, size=(24, *info.input_tensors[0].shape[1:]),
                                               dtype=np.int8)
    expected = tflm_outputs(model, inputs, arena_size=1 << 20)  # TFLM runs the edited file as it is
    got = c_outputs(tmp_path, model, inputs, info.output_tensors[0].shape[1:], "int8")
    assert got.reshape(expected.shape).tobytes() == expected.tobytes()


def test_an_open_dimension_in_the_shape_itself_is_refused_by_name(tmp_path: Path) -> None:
    """TFLM refuses -1 in a tensor's `shape` (a dynamic tensor); the c runtime says which op and shape."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(_model("cnn", batch=1)))
    graph = obj.subgraphs[0]
    first = graph.tensors[graph.inputs[0]]
    first.shape = np.array([-1, *first.shape[1:]], dtype=np.int32)
    file = tmp_path / "dynamic.tflite"
    file.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(obj)))
    proc = run_edgeq("export-c", str(file), "--runtime", "c", "-o", str(tmp_path / "c"))
    assert proc.returncode == 3 and "CONV_2D #0" in proc.stderr and "[-1, 8, 8, 2]" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "c").exists()


def test_int16_io_runs_bit_exact_with_tflm(tmp_path: Path) -> None:
    """An int16x8 model with int16 I/O (the converter's 16x8 mode) exports through the CLI as
    plain C, the same C the property tests build, and runs byte for byte as TFLM does."""
    from edgeq._tf import tf

    tf()
    import keras

    from edgeq.aot.emit import emit_c
    from edgeq.tflite.reader import read_tflite

    keras.utils.set_random_seed(12)
    model = keras.Sequential([keras.layers.Input((6,), batch_size=1), keras.layers.Dense(4)])
    tflite = plain_tflite(model, io="int16")
    info = read_tflite(tflite)
    assert [t.dtype for t in (*info.input_tensors, *info.output_tensors)] == ["int16", "int16"]
    file = tmp_path / "wide.tflite"
    file.write_bytes(tflite)
    proc = run_edgeq("export-c", str(file), "--runtime", "c", "-o", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    written = {name: (tmp_path / "c" / name).read_bytes() for name in ("wide_model.c", "wide_model.h")}
    assert written == emit_c("wide", tflite, info).files
    assert b"const int16_t *input0, int16_t *output0" in written["wide_model.h"]
    inputs = np.random.default_rng(12).integers(-32768, 32768, size=(24, 6), dtype=np.int16)
    expected = tflm_outputs(tflite, inputs)
    got = c_outputs(tmp_path, tflite, inputs, (4,), "int16")
    assert got.reshape(expected.shape).tobytes() == expected.tobytes()


def _with_int32_output(model: bytes) -> bytes:
    """`model` with a QUANTIZE from its (int16) output to a new int32 output at twice the scale, as
    TFLM's keyword benchmark model ends."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    graph = obj.subgraphs[0]
    source = graph.tensors[graph.outputs[0]]
    wide = schema.TensorT()
    wide.shape, wide.type, wide.buffer, wide.name = list(source.shape), schema.TensorType.INT32, 0, b"wide"
    wide.quantization = schema.QuantizationParametersT()
    wide.quantization.scale, wide.quantization.zeroPoint = [float(source.quantization.scale[0]) * 2], [0]
    graph.tensors.append(wide)
    codes = [c.builtinCode for c in obj.operatorCodes]
    if schema.BuiltinOperator.QUANTIZE not in codes:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        code.version = 1
        obj.operatorCodes.append(code)
        codes.append(schema.BuiltinOperator.QUANTIZE)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = codes.index(schema.BuiltinOperator.QUANTIZE), [graph.outputs[0]], \
        [len(graph.tensors) - 1]
    graph.operators.append(op)
    graph.outputs = [len(graph.tensors) - 1]
    obj.signatureDefs = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def test_an_int32_output_after_quantize_runs_bit_exact_with_tflm(tmp_path: Path) -> None:
    """QUANTIZE int16 -> int32 (TFLM's Requantize into int32) and int32 I/O: the C's output is TFLM's."""
    from edgeq._tf import tf

    tf()
    import keras

    from edgeq.tflite.reader import read_tflite

    keras.utils.set_random_seed(13)
    model = keras.Sequential([keras.layers.Input((6,), batch_size=1), keras.layers.Dense(3)])
    tflite = _with_int32_output(plain_tflite(model, io="int16"))
    info = read_tflite(tflite)
    assert info.output_tensors[0].dtype == "int32" and info.ops[-1].name == "QUANTIZE"
    inputs = np.random.default_rng(13).integers(-32768, 32768, size=(24, 6), dtype=np.int16)
    expected = tflm_outputs(tflite, inputs)
    got = c_outputs(tmp_path, tflite, inputs, (3,), "int32")
    assert got.reshape(expected.shape).tobytes() == expected.tobytes()
    assert len(np.unique(expected)) > 8  # the codes vary: a wrong rescale would show


def test_an_int8_softmax_with_an_int16_output_runs_bit_exact_with_tflm(tmp_path: Path) -> None:
    """SOFTMAX from int8 to int16 (scale 1/65536, zero point -32768, as TFLM's keyword benchmark
    has it), made by retyping an int8 model's softmax output: the C's codes are TFLM's."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(14)
    model = keras.Sequential([keras.layers.Input((7,), batch_size=1), keras.layers.Dense(5),
                              keras.layers.Softmax()])
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(plain_tflite(model, io="int8")))
    graph = obj.subgraphs[0]
    softmax = next(op for op in graph.operators
                   if obj.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.SOFTMAX)
    assert softmax.outputs[0] == graph.outputs[0]
    out = graph.tensors[softmax.outputs[0]]
    out.type, out.quantization.scale, out.quantization.zeroPoint = schema.TensorType.INT16, [1 / 65536], [-32768]
    obj.signatureDefs = None
    tflite = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
    inputs = np.random.default_rng(14).integers(-128, 128, size=(24, 7), dtype=np.int8)
    expected = tflm_outputs(tflite, inputs)
    got = c_outputs(tmp_path, tflite, inputs, (5,), "int16")
    assert expected.dtype == np.int16 and got.reshape(expected.shape).tobytes() == expected.tobytes()
    assert (expected.astype(np.int32) % 256 != 0).any()  # finer than 8 bits: the 16-bit path, not int8's
