"""edgeq/quantize/int16.py: int16 activations for chosen layers of an int8 model, spliced from the
converter's own int16x8 conversion, run in TFLite Micro."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.errors import ConversionError
from edgeq.quantize.int16 import int16_layers, mixed
from edgeq.tflite.reader import read_tflite
from tests.conftest import tflm_outputs


@pytest.fixture(scope="module")
def conversions():  # type: ignore[no-untyped-def]
    """A small regression CNN (conv, depthwise, two dense) converted in int8 and int16x8 on the same
    samples, with its float outputs on held-out samples. One unit of the first dense layer has 40
    times the range of the others (an outlier channel, which real models have): in int8 its scale
    leaves the other units a few steps each, so that layer's int8 output is where the model loses."""
    from edgeq._tf import tf

    tfm = tf()
    import keras

    keras.utils.set_random_seed(5)
    L = keras.layers
    model = keras.Sequential([L.Input((8, 8, 2)), L.Conv2D(6, 3, activation="relu"), L.DepthwiseConv2D(3),
                              L.Flatten(), L.Dense(16, activation="relu"), L.Dense(3)])
    rng = np.random.default_rng(5)
    for layer in model.layers:  # nonzero biases: the converter drops all-zero ones
        w = layer.get_weights()
        if len(w) == 2:
            layer.set_weights([w[0], rng.normal(0, 0.3, w[1].shape).astype(np.float32)])
    first, second = model.layers[3], model.layers[4]
    (k1, b1), (k2, b2) = first.get_weights(), second.get_weights()
    k1[:, 0], b1[0], k2[0, :] = 40 * k1[:, 0], abs(b1[0]) * 40 + 5, k2[0, :] / 40
    first.set_weights([k1, b1])
    second.set_weights([k2, b2])
    data = rng.normal(size=(96, 8, 8, 2)).astype(np.float32)

    def convert(ops: str, io: object) -> bytes:
        c = tfm.lite.TFLiteConverter.from_keras_model(model)
        c.optimizations = [tfm.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([data[i:i + 1]] for i in range(64))
        c.target_spec.supported_ops = [getattr(tfm.lite.OpsSet, ops)]
        c.inference_input_type = c.inference_output_type = io
        c.exclude_conversion_metadata = True
        return bytes(c.convert())

    held_out = data[64:]
    return (convert("TFLITE_BUILTINS_INT8", tfm.int8),
            convert("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8", tfm.int16),
            held_out, model.predict(held_out, verbose=0))


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    """Float outputs of an int8-I/O model in TFLite Micro."""
    info = read_tflite(model)
    inp, out = info.input_tensors[0], info.output_tensors[0]
    q = np.clip(np.round(x / inp.scales[0]) + inp.zero_points[0], -128, 127).astype(np.int8)
    return (tflm_outputs(model, q).astype(np.float64).reshape(len(x), -1) - out.zero_points[0]) * out.scales[0]


def _ops(model: bytes) -> list[str]:
    return [op.name for op in read_tflite(model).ops]


def test_every_weighted_layer_can_take_int16_and_all_of_them_approach_int16x8(conversions) -> None:  # type: ignore[no-untyped-def]
    int8, int16, x, want = conversions
    layers = int16_layers(int8, int16)
    assert [l.op for l in layers] == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    every = mixed(int8, int16, {l.name for l in layers})
    # int8 at the input and output, int16 inside, the RESHAPE between the layers too (and the
    # SHAPE that reads its dimensions): one QUANTIZE after the input, one before the output.
    ops = _ops(every)
    assert ops.count("QUANTIZE") == 2 and ops[0] == ops[-1] == "QUANTIZE" and len(ops) == len(_ops(int8)) + 2
    assert read_tflite(every).tensors[[op for op in read_tflite(every).ops if op.name == "RESHAPE"][0].inputs[0]
                                      ].dtype == "int16"
    err_int8 = np.sqrt(np.mean((_run(int8, x) - want) ** 2))
    err_mixed = np.sqrt(np.mean((_run(every, x) - want) ** 2))
    assert err_mixed < 0.7 * err_int8, (err_mixed, err_int8)


def test_one_layer_in_int16_changes_that_layer_only(conversions) -> None:  # type: ignore[no-untyped-def]
    int8, int16, x, want = conversions
    last = int16_layers(int8, int16)[-1]
    one = mixed(int8, int16, {last.name})
    assert _ops(one) == _ops(int8)[:-1] + ["QUANTIZE", "FULLY_CONNECTED", "QUANTIZE"]
    info = read_tflite(one)
    fc = [op for op in info.ops if op.name == "FULLY_CONNECTED"][-1]
    types = [info.tensors[t].dtype for t in fc.inputs if t >= 0]
    assert types == ["int16", "int8", "int64"] and info.tensors[fc.outputs[0]].dtype == "int16"
    # Everything before that layer computes as in the int8 model; its output is int8 again.
    assert info.output_tensors[0].dtype == "int8"
    # Nothing is left over: the int8 layer's weights and bias are gone, the int64 bias is in.
    eight, both = read_tflite(int8), info
    assert both.parameter_bytes - eight.parameter_bytes == 4 * 3  # three int32 biases became int64
    assert np.sqrt(np.mean((_run(one, x) - want) ** 2)) <= np.sqrt(np.mean((_run(int8, x) - want) ** 2)) * 1.05


def test_consecutive_int16_layers_pass_int16_to_each_other(conversions) -> None:  # type: ignore[no-untyped-def]
    int8, int16, _, _ = conversions
    dense = [l.name for l in int16_layers(int8, int16) if l.op == "FULLY_CONNECTED"]
    ops = _ops(mixed(int8, int16, set(dense)))
    assert ops[-4:] == ["QUANTIZE", "FULLY_CONNECTED", "FULLY_CONNECTED", "QUANTIZE"]


def test_unknown_layers_and_other_graphs_are_refused(conversions, tiny_cnn_tflite) -> None:  # type: ignore[no-untyped-def]
    int8, int16, _, _ = conversions
    with pytest.raises(ConversionError, match="no layer that can take int16 activations is named nope"):
        mixed(int8, int16, {"nope"})
    with pytest.raises(ConversionError, match="different ops"):
        int16_layers(int8, tiny_cnn_tflite["int8"])
    assert mixed(int8, int16, set()) == int8
