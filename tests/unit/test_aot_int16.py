"""Property test of edgeq/aot with int16 activations (TFLM's int16x8): random small models of the
element-wise, pooling, data-movement and quantize kernels through the real TFLite converter, as C
compiled with -Werror, byte for byte TFLM's outputs. Also SUB in int8, and the QUANTIZE ops
between int8 and int16 that edgeq's recipe search writes around an int16 layer of an int8 model.

No int16 CONV_2D or FULLY_CONNECTED here (those are the conv kernels' to test): the models
rescale their int16 input with constants (ADD, MUL), MEAN and the fused activations instead.
Each kind is one model holding several ops, so that one conversion and one compile cover them.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.errors import TargetCheckError
from tests.conftest import c_outputs, plain_tflite, tflm_outputs

GCC = shutil.which("gcc")
pytestmark = [pytest.mark.skipif(GCC is None, reason="needs gcc"), pytest.mark.slow]

EXPECTED_OPS = {
    "arith": {"ADD", "SUB", "MUL", "MEAN"},
    "pool": {"MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "CONCATENATION", "QUANTIZE", "RESHAPE"},
    "move": {"PAD", "PADV2", "TRANSPOSE", "RESHAPE", "SPLIT", "SPLIT_V", "UNPACK", "PACK", "CONCATENATION"},
    "float_io": {"QUANTIZE", "DEQUANTIZE", "ADD", "AVERAGE_POOL_2D"},
    "mixed": {"QUANTIZE", "ADD", "SUB", "CONV_2D"},
    "sub_int8": {"SUB", "CONV_2D", "MEAN"},
}
"""The ops each kind's model must hold (the converter could fold one away: then the test says so)."""


@st.composite
def shapes(draw: st.DrawFn) -> dict:
    return {"h": draw(st.integers(2, 6)), "w": draw(st.integers(2, 6)), "c": draw(st.integers(1, 4)),
            "k": draw(st.integers(1, 3)), "stride": draw(st.integers(1, 2)), "same": draw(st.booleans()),
            "act": draw(st.sampled_from([None, "relu", "relu6"])), "seed": draw(st.integers(0, 10_000)),
            "spread": draw(st.sampled_from([0.5, 2.0, 8.0]))}


def _activation(keras, y, act: str | None):  # type: ignore[no-untyped-def]
    """`y` through a ReLU or ReLU6 the converter fuses into the op before it (or unchanged)."""
    return y if act is None else (keras.ops.relu(y) if act == "relu" else keras.ops.relu6(y))


def _build(p: dict):  # type: ignore[no-untyped-def]
    """The Keras model of kind p["kind"] and its calibration data."""
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(p["seed"])
    L, ops = keras.layers, keras.ops
    h, w, c = p["h"], p["w"], p["c"]
    rng = np.random.default_rng(p["seed"])
    x = L.Input((h, w, c), batch_size=1)
    kind = p["kind"]
    if kind == "arith":  # constants and MEAN rescale the input; MUL and ADD broadcast [c], [1, 1, w, 1], [1, 1, 1, c]
        a = ops.multiply(x, rng.normal(size=(c,)).astype(np.float32))
        b = ops.add(x, rng.normal(0, p["spread"], size=(1, 1, w, 1)).astype(np.float32))
        s = _activation(keras, L.Subtract()([a, b] if p["same"] else [b, a]), p["act"])
        m = ops.mean(x, axis=[1, 2], keepdims=True)
        y = _activation(keras, L.Add()([L.Multiply()([s, m]), m]), "relu6" if p["act"] is None else None)
    elif kind == "pool":  # the pools keep the scale, MEAN does not: the converter requantizes before joining
        pad = "same" if p["same"] else "valid"
        k = p["k"] if p["same"] else min(p["k"], h, w)
        big = ops.multiply(x, np.float32(p["spread"]))
        parts = [L.MaxPooling2D(k, strides=p["stride"], padding=pad)(big),
                 L.AveragePooling2D(k, strides=p["stride"], padding=pad)(x),
                 ops.mean(x, axis=[1, 2], keepdims=True)]
        y = L.Concatenate()([L.Flatten()(t) for t in parts])
    elif kind == "move":
        padded = L.ZeroPadding2D(((p["k"] - 1, p["stride"] - 1), (p["stride"], p["k"] % 2)))(x)
        valued = ops.pad(x, [[0, 0], [1, p["k"] - 1], [p["stride"] - 1, 1], [0, 0]], constant_values=0.5)
        turned = L.Permute((3, 1, 2) if p["same"] else (2, 1, 3))(padded)
        z = L.Reshape((h, w * c))(x)
        halves = ops.split(ops.concatenate([z, z], axis=-1), 2, axis=-1)
        first, rest = ops.split(z, [1], axis=1)
        rows = ops.unstack(z, axis=1)
        stacked = ops.stack([rows[-1], rows[0]], axis=1 + p["k"] % 2)
        y = L.Concatenate()([L.Flatten()(t) for t in (turned, valued, halves[1], rest, first, stacked)])
    elif kind == "float_io":  # float32 in and out: QUANTIZE to int16 first, DEQUANTIZE from int16 last
        y = L.AveragePooling2D(min(p["k"], h, w), strides=1)(ops.add(x, np.float32(p["spread"])))
    elif kind == "mixed":  # made int8 with its ADD and SUB in int16 (_int16_island)
        a, b = L.Conv2D(c + 1, 1)(x), L.Conv2D(c + 1, 1, activation=p["act"])(x)
        y = L.Conv2D(2, 1)(L.Subtract()([L.Add()([a, b]), b]))
    else:  # sub_int8: SUB of two convs, and of a conv and a broadcast global average
        a = L.Conv2D(c + 1, 1, activation=p["act"])(x)
        b = L.Conv2D(c + 1, 1)(x)
        y = _activation(keras, L.Subtract()([a, b]), p["act"])
        y = L.Subtract()([y, L.GlobalAveragePooling2D(keepdims=True)(b)] if p["same"] else
                         [L.GlobalAveragePooling2D(keepdims=True)(b), y])
    data = rng.normal(0, p["spread"], size=(32, h, w, c)).astype(np.float32)
    return keras.Model(x, y), data


def _float_io_int16(model, data: np.ndarray) -> bytes:  # type: ignore[no-untyped-def]
    """int16x8 with float32 I/O (conftest.plain_tflite keeps int16 I/O): QUANTIZE float32 to int16
    in, DEQUANTIZE int16 to float32 out."""
    from edgeq._tf import tf as load_tf

    tf = load_tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([data[i:i + 1]] for i in range(len(data)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return bytes(converter.convert())


def _int16_island(model, data: np.ndarray, ops: set[str]) -> bytes:  # type: ignore[no-untyped-def]
    """The int8 conversion of `model` with its ops named in `ops` taken from the int16x8 one, and
    QUANTIZE ops (int8 to int16, int16 to int8) where int16 meets int8: the surgery edgeq's recipe
    search does for its int16 layers (edgeq/quantize/int16.py), here on element-wise ops."""
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeq.quantize import int16 as mixing

    a, b = mixing._read(plain_tflite(model, io="int8", data=data)), mixing._read(plain_tflite(model, io="int16",
                                                                                             data=data))
    chosen = {k for k, name, _ in mixing._ops(a) if name in ops}
    mixing._Splice(a, b, mixing._pairs(a, b, "mixed"), chosen).run()
    mixing._compact(a)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(a))


def _int16_pad_values(tflite: bytes) -> bytes:
    """The model with each PADV2's float32 padding value (what the converter leaves in int16x8, and
    TFLM refuses: it pads with a constant of the input's type) quantized to int16 at the output's
    scale: the int16 PADV2 TFLM runs."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = obj.subgraphs[0]
    for op in graph.operators:
        code = obj.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.PADV2:
            continue
        value, out = graph.tensors[op.inputs[2]], graph.tensors[op.outputs[0]]
        if value.type != schema.TensorType.FLOAT32:
            continue
        real = np.frombuffer(bytes(obj.buffers[value.buffer].data), dtype="<f4")[0]
        code16 = np.clip(np.round(real / np.float32(out.quantization.scale[0])), -32768, 32767).astype("<i2")
        obj.buffers[value.buffer].data = np.frombuffer(code16.tobytes(), dtype=np.uint8)
        value.type, value.quantization = schema.TensorType.INT16, schema.QuantizationParametersT()
        value.quantization.scale, value.quantization.zeroPoint = [out.quantization.scale[0]], [0]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def _inputs(info, params: dict) -> np.ndarray:  # type: ignore[no-untyped-def]
    """12 samples for the model's input: integers over the whole int8 or int16 range (half of them
    within a 16th of it, where values do not all saturate), or floats of which half sit on exact
    halves of the input's scale (where rounding half away from zero shows)."""
    rng = np.random.default_rng(params["seed"])
    t = info.input_tensors[0]
    shape = (12, *t.shape[1:])
    if t.dtype == "float32":
        x = rng.normal(0, params["spread"], size=shape).astype(np.float32)
        scale = np.float32(info.tensors[info.ops[0].outputs[0]].scales[0])
        x[::2] = (rng.integers(-40_000, 40_000, size=x[::2].shape) + 0.5).astype(np.float32) * scale
        return x
    limits = np.iinfo(t.dtype)
    x = rng.integers(limits.min, limits.max + 1, size=shape).astype(t.dtype)
    x[::2] //= 16
    return x


@pytest.mark.parametrize("kind", sorted(EXPECTED_OPS))
@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(drawn=shapes())
def test_int16_models_are_bit_exact_with_tflm(tmp_path_factory, kind: str, drawn: dict) -> None:
    from edgeq.aot.emit import emit_c
    from edgeq.aot.lower import KERNELS
    from edgeq.tflite.reader import read_tflite

    params = {**drawn, "kind": kind}
    model, data = _build(params)
    if kind == "float_io":
        tflite = _float_io_int16(model, data)
    elif kind == "mixed":
        tflite = _int16_island(model, data, {"ADD", "SUB"})
    else:
        tflite = plain_tflite(model, io="int8" if kind == "sub_int8" else "int16", data=data)
    if kind == "move":  # the converter leaves PADV2's value float32, which TFLM refuses: so does the C
        with pytest.raises(TargetCheckError, match=r"PADV2 #\d+ pads int16 with a float32 constant"):
            emit_c("m", tflite, read_tflite(tflite))
        tflite = _int16_pad_values(tflite)
    info = read_tflite(tflite)
    names = set(info.all_op_names)
    assert EXPECTED_OPS[kind] <= names <= set(KERNELS), (params, sorted(names))
    if kind != "sub_int8":  # the ops under test really run in int16
        wide = {op.name for op in info.ops if info.tensors[op.outputs[0]].dtype == "int16"}
        assert EXPECTED_OPS[kind] - {"CONV_2D", "DEQUANTIZE"} <= wide, (params, sorted(wide))
    if kind == "mixed":  # int8 to int16 and back
        pairs = {(info.tensors[op.inputs[0]].dtype, info.tensors[op.outputs[0]].dtype) for op in info.ops
                 if op.name == "QUANTIZE"}
        assert {("int8", "int16"), ("int16", "int8")} <= pairs, pairs
    inputs = _inputs(info, params)
    out = info.output_tensors[0]
    expected = tflm_outputs(tflite, inputs)[:, 0]
    got = c_outputs(tmp_path_factory.mktemp("int16"), tflite, inputs, tuple(out.shape[1:]), out.dtype)
    assert got.tobytes() == expected.tobytes(), params
