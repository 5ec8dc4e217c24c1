"""The c runtime's int16x8 weighted kernels (int16 activations, int8 weights): CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED from the real TFLite converter in int16x8 mode, as C compiled
with -Werror by gcc and clang, byte for byte TFLM's outputs.

Hypothesis draws one layer, its shape and options (strides, SAME/VALID, dilation, depth
multiplier, bias or none, fused RELU/RELU6); the examples are derandomized, so CI tries the same
models every run. Every weight and bias is random, so the bias is never the converter's zero.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import c_outputs, plain_tflite, tflm_outputs

pytestmark = [pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"), pytest.mark.slow]

EXPECTED_OP = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "dense": "FULLY_CONNECTED"}
STEPS = [(2, (1, 1)), (1, (2, 1)), (1, (1, 2)), (2, (1, 1)), (1, (2, 2)), (1, (1, 1))]
"""(stride, (dilation h, dilation w)) of a drawn layer: Keras takes a stride or a dilation above 1, not both."""


def _keras():  # type: ignore[no-untyped-def]
    from edgeq._tf import tf

    tf()
    import keras

    return keras


def _randomized(model, seed: int):  # type: ignore[no-untyped-def]
    """`model` with every weight and bias drawn at random (Keras starts biases at zero, and the
    converter leaves a zero FULLY_CONNECTED bias out)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.get_weights():
            layer.set_weights([rng.normal(0, 0.4, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def _inputs(info, seed: int, spread: float, count: int = 10) -> np.ndarray:  # type: ignore[no-untyped-def]
    """int16 samples: most the size calibration saw (the input scale applied), two at the
    extremes of int16, where the accumulators are widest and the clamps bite."""
    first = info.input_tensors[0]
    rng = np.random.default_rng(seed)
    shape = (count, *first.shape[1:])
    codes = np.rint(rng.normal(0, spread, size=shape) / first.scales[0])
    codes[:2] = rng.choice([-32768, 32767, -32767, 0], size=codes[:2].shape)
    return np.clip(codes, -32768, 32767).astype(np.int16)


def _assert_bit_exact(tmp_path: Path, tflite: bytes, seed: int, spread: float) -> None:
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(tflite)
    inputs = _inputs(info, seed, spread)
    expected = tflm_outputs(tflite, inputs)
    out = info.output_tensors[0]
    assert out.dtype == "int16"
    got = c_outputs(tmp_path, tflite, inputs, tuple(out.shape[1:]), out.dtype)
    assert got.reshape(expected.shape).tobytes() == expected.tobytes()


@st.composite
def layers(draw: st.DrawFn) -> dict:
    """The smallest draw is still a real window (3x3 image, 2x2 kernel); 1x1 kernels are in the mixed model."""
    return {"h": draw(st.integers(3, 8)), "w": draw(st.integers(3, 8)), "c": draw(st.integers(1, 5)),
            "filters": draw(st.integers(1, 6)), "k": draw(st.integers(2, 3)),
            "step": draw(st.sampled_from(STEPS)),
            "same": draw(st.booleans()), "bias": draw(st.booleans()), "multiplier": draw(st.integers(1, 2)),
            "act": draw(st.sampled_from([None, "relu", "relu6"])), "rows": draw(st.integers(1, 3)),
            "seed": draw(st.integers(0, 10_000)), "spread": draw(st.sampled_from([0.5, 3.0, 20.0]))}


def _layer_model(kind: str, p: dict):  # type: ignore[no-untyped-def]
    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(p["seed"])
    pad = "same" if p["same"] else "valid"
    stride, dilation = p["step"]
    # VALID: the largest kernel up to k whose dilated span fits the image
    k = p["k"] if pad == "same" else min(p["k"], *[(n - 1) // d + 1 for n, d in zip((p["h"], p["w"]), dilation)])
    if kind == "dense":  # rows > 1: a [rows, depth] input, FULLY_CONNECTED's batches
        x = L.Input((p["h"] * p["c"],) if p["rows"] == 1 else (p["rows"], p["h"] * p["c"]), batch_size=1)
        y = L.Dense(p["filters"], use_bias=p["bias"], activation=p["act"])(x)
    else:
        x = L.Input((p["h"], p["w"], p["c"]), batch_size=1)
        if kind == "conv":
            y = L.Conv2D(p["filters"], k, strides=stride, padding=pad, dilation_rate=dilation,
                         use_bias=p["bias"], activation=p["act"])(x)
        else:
            y = L.DepthwiseConv2D(k, strides=stride, padding=pad, dilation_rate=dilation,
                                  depth_multiplier=p["multiplier"], use_bias=p["bias"], activation=p["act"])(x)
    model = _randomized(keras.Model(x, y), p["seed"])
    data = np.random.default_rng(p["seed"]).normal(0, p["spread"], size=(32, *model.inputs[0].shape[1:]))
    return model, data.astype(np.float32)


@pytest.mark.parametrize("kind", sorted(EXPECTED_OP))
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(drawn=layers())
def test_one_layer_int16x8_is_bit_exact_with_tflm(tmp_path_factory, kind: str, drawn: dict) -> None:
    from edgeq.aot.lower import KERNELS
    from edgeq.tflite.reader import read_tflite

    model, data = _layer_model(kind, drawn)
    tflite = plain_tflite(model, io="int16", data=data)
    info = read_tflite(tflite)
    ops = set(info.all_op_names)
    assert ops <= set(KERNELS) and EXPECTED_OP[kind] in ops, (drawn, ops)
    _assert_bit_exact(tmp_path_factory.mktemp("wide"), tflite, drawn["seed"], drawn["spread"])


def _converted(model, data: np.ndarray, *, int32_bias: bool,  # type: ignore[no-untyped-def]
               per_tensor_dense: bool = False) -> bytes:
    """`model` through the real converter in int16x8 mode with int16 I/O, as plain_tflite does, and
    its experimental options for an int32 bias and per-tensor Dense weights."""
    from edgeq._tf import tf as load_tf

    tf = load_tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([data[i:i + 1]] for i in range(len(data)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int16
    if int32_bias:
        converter._experimental_full_integer_quantization_bias_type = tf.int32
    converter._experimental_disable_per_channel_quantization_for_dense_layers = per_tensor_dense
    return bytes(converter.convert())


def _mixed(keras):  # type: ignore[no-untyped-def]
    """Conv (SAME, stride 2, RELU), a dilated depthwise with multiplier 2, a 1x1 conv without
    bias, then two Dense layers (RELU6, and one without an activation)."""
    L = keras.layers
    keras.utils.set_random_seed(7)
    x = L.Input((9, 8, 3), batch_size=1)
    y = L.Conv2D(6, 3, strides=2, padding="same", activation="relu")(x)
    y = L.DepthwiseConv2D(2, depth_multiplier=2, dilation_rate=(2, 1), padding="same")(y)
    y = L.Conv2D(4, 1, use_bias=False)(y)
    y = L.Dense(7, activation="relu6")(L.Flatten()(y))
    y = L.Dense(5)(y)
    return _randomized(keras.Model(x, y), 7)


@pytest.fixture(scope="module")
def mixed() -> bytes:
    data = np.random.default_rng(7).normal(0, 2.0, size=(48, 9, 8, 3)).astype(np.float32)
    return plain_tflite(_mixed(_keras()), io="int16", data=data)


def test_a_model_mixing_the_three_is_bit_exact_with_tflm(mixed: bytes, tmp_path: Path) -> None:
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(mixed)
    assert [op.name for op in info.ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "RESHAPE",
                                            "FULLY_CONNECTED", "FULLY_CONNECTED"]
    biases = [info.tensors[op.inputs[2]].dtype for op in info.ops if len(op.inputs) > 2 and op.inputs[2] >= 0]
    assert set(biases) == {"int64"}, biases
    _assert_bit_exact(tmp_path, mixed, 7, 2.0)


def _tie(m: int, total: int, negative: bool) -> int:
    """An accumulator a with a * m exactly halfway between two multiples of 2^total (a tie of the
    64-bit requantization's one rounding), below zero if `negative`."""
    odd, twos = m, 0
    while odd % 2 == 0:
        odd, twos = odd // 2, twos + 1
    modulus = 1 << (total - twos)
    a = ((1 << (total - 1 - twos)) * pow(odd, -1, modulus)) % modulus
    return a - modulus if negative else a


def test_the_64_bit_requantization_rounds_ties_up_as_tflm(mixed: bytes, tmp_path: Path) -> None:
    """The last FULLY_CONNECTED's weights zeroed and its int64 biases set to exact ties, below and
    above zero: TFLM rounds them toward +infinity (not away from zero), and so do the C and
    qmath.requantize64."""
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeq.aot.qmath import effective_scale, quantize_multiplier, reduced_multiplier, requantize64
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(mixed)
    last = info.ops[-1]
    weights, bias, out = (info.tensors[i] for i in (last.inputs[1], last.inputs[2], last.outputs[0]))
    pairs = [quantize_multiplier(effective_scale(info.tensors[last.inputs[0]].scales[0], s, out.scales[0]))
             for s in weights.scales]
    ties = [_tie(reduced_multiplier(q), 15 - shift, negative=u % 2 == 0) for u, (q, shift) in enumerate(pairs)]
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(mixed))
    graph = obj.subgraphs[0]
    obj.buffers[graph.tensors[weights.index].buffer].data = np.zeros(int(np.prod(weights.shape)), dtype=np.uint8)
    obj.buffers[graph.tensors[bias.index].buffer].data = np.asarray(ties, dtype="<i8").view(np.uint8)
    edited = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
    expected = [requantize64(a, q, shift) for a, (q, shift) in zip(ties, pairs)]
    assert any(e < 0 for e in expected) and all(-32768 <= e <= 32767 for e in expected)
    got = tflm_outputs(edited, _inputs(info, 1, 2.0, count=2))
    assert got.reshape(2, -1).tolist() == [expected, expected]
    _assert_bit_exact(tmp_path, edited, 1, 2.0)


def test_an_int32_bias_and_per_tensor_dense_weights_are_bit_exact_with_tflm(tmp_path: Path) -> None:
    """The converter's int32 bias for int16x8 (TFLM then sums CONV_2D and FULLY_CONNECTED in 32
    bits, and an op without a bias too, by its quantized_bias_type) with per-tensor Dense weights."""
    from edgeq.tflite.reader import read_tflite

    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(8)
    x = L.Input((6, 5, 2), batch_size=1)
    y = L.Conv2D(5, 3, padding="same", activation="relu6")(x)
    y = L.Conv2D(3, 2, use_bias=False)(y)
    y = L.Dense(6, activation="relu")(L.Flatten()(y))
    y = L.Dense(4, use_bias=False)(y)
    model = _randomized(keras.Model(x, y), 8)
    data = np.random.default_rng(8).normal(0, 3.0, size=(48, 6, 5, 2)).astype(np.float32)
    tflite = _converted(model, data, int32_bias=True, per_tensor_dense=True)
    info = read_tflite(tflite)
    assert [op.name for op in info.ops] == ["CONV_2D", "CONV_2D", "RESHAPE", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert {info.tensors[op.inputs[2]].dtype for op in info.ops if len(op.inputs) > 2 and op.inputs[2] >= 0} \
        == {"int32"}
    assert {len(info.tensors[op.inputs[1]].scales) for op in info.ops if op.name == "FULLY_CONNECTED"} == {1}
    _assert_bit_exact(tmp_path, tflite, 8, 3.0)


def test_an_int32_bias_on_an_int16_depthwise_is_refused_by_name() -> None:
    """TFLM's int16 DEPTHWISE_CONV_2D reads its bias as int64 whatever its type (an int32 one gives
    garbage), so the c runtime refuses it, naming the op and the bias."""
    from edgeq.aot.emit import emit_c
    from edgeq.errors import TargetCheckError
    from edgeq.tflite.reader import read_tflite

    keras = _keras()
    L = keras.layers
    x = L.Input((4, 4, 2), batch_size=1)
    model = _randomized(keras.Model(x, L.DepthwiseConv2D(2)(x)), 9)
    data = np.random.default_rng(9).normal(0, 1.0, size=(16, 4, 4, 2)).astype(np.float32)
    tflite = _converted(model, data, int32_bias=True)
    with pytest.raises(TargetCheckError, match=r"DEPTHWISE_CONV_2D #0 has an int16 input and its bias '.*' is int32"):
        emit_c("m", tflite, read_tflite(tflite))

