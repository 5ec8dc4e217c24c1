"""edgeq.quantize.bridge: Keras 3 models rebuilt as tf_keras for tfmot, with real Keras 3, tf_keras and tfmot."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq._tf import tf
from edgeq.errors import CalibrationError, ModelLoadError

tf()
import keras  # noqa: E402  (after the quiet TensorFlow import)
import tf_keras  # noqa: E402

from edgeq.quantize.bridge import SUPPORTED_LAYERS, is_tf_keras, to_tf_keras, unquantizable_layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
L = keras.layers


def run(model, xs):
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(out)]


def assert_same(k3, tk, xs, atol=1e-5):
    expected, actual = run(k3, xs), run(tk, xs)
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=atol)


def randomize(model, seed=0):
    """Random weights everywhere; BatchNorm variances kept positive so its moving stats are non-trivial."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in w.path
                       else rng.normal(0, 0.5, w.shape).astype("float32") for w in model.weights])
    return model


@pytest.fixture(scope="module")
def digits_x():
    from edgeq.calibration import load_dataset

    return load_dataset("digits:eval").inputs[0][:32]


@pytest.fixture(scope="module")
def digits_cnn(digits):
    """The bundled example's architecture, briefly trained on the real digits."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_example_model import build_digits_cnn, train

    keras.utils.set_random_seed(3)
    return train(build_digits_cnn(keras), keras, digits["train"], epochs=4)


def test_digits_cnn_rebuilds_quantizes_and_runs(digits_cnn, digits_x):
    bridged = to_tf_keras(digits_cnn, [digits_x])
    assert is_tf_keras(bridged) and not is_tf_keras(digits_cnn)
    assert isinstance(bridged, tf_keras.Model) and bridged.name == "digits_cnn"
    assert [layer.name for layer in bridged.layers] == [layer.name for layer in digits_cnn.layers]
    assert bridged.inputs[0].name.startswith("image") and bridged.output_names == ["digit"]
    assert_same(digits_cnn, bridged, [digits_x])
    for a, b in zip(digits_cnn.get_weights(), bridged.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert unquantizable_layers(bridged) == []

    import tensorflow_model_optimization as tfmot

    quantized = tfmot.quantization.keras.quantize_model(bridged)
    quantized(digits_x, training=True)  # one pass sets the fake-quant ranges, as fine-tuning would
    out = quantized(digits_x, training=False).numpy()
    assert out.shape == (32, 10) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)  # still a softmax
    # fake-quantized: close to the float model
    assert np.mean(np.argmax(out, 1) == np.argmax(run(digits_cnn, [digits_x])[0], 1)) > 0.8


def test_branchy_functional_model(digits_x):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = L.Rescaling(1 / 16.0, offset=-0.5)(inputs)
    x = L.ZeroPadding2D(1)(x)
    x = L.Conv2D(8, 3, name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(max_value=6)(x)
    a = L.SeparableConv2D(8, 3, padding="same", activation="relu6")(x)
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1)(x)
    b = L.BatchNormalization()(b)
    b = L.Activation("relu6")(b)
    merged = L.Add()([a, b])
    c = L.MaxPooling2D(2)(merged)
    d = L.AveragePooling2D(2)(merged)
    x = L.Concatenate()([c, d])
    x = L.Dropout(0.3)(x)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(10, activation="softmax", name="probs")(x)
    model = randomize(keras.Model(inputs, outputs, name="branchy"))
    bridged = to_tf_keras(model, [digits_x])
    assert_same(model, bridged, [digits_x])
    moving = bridged.get_layer("stem_bn").moving_variance.numpy()
    np.testing.assert_array_equal(moving, model.get_layer("stem_bn").moving_variance.numpy())
    assert not np.allclose(moving, 1.0)
    # relu6 as a fused activation becomes Conv + ReLU(6), as TFLite fuses it again; Activation("relu6") a ReLU
    relus = [layer for layer in bridged.layers if isinstance(layer, tf_keras.layers.ReLU)]
    assert len(relus) == 3 and all(float(layer.max_value) == 6.0 for layer in relus)
    assert bridged.get_layer("separable_conv2d").activation.__name__ == "linear"
    # tfmot's default scheme has no Rescaling (and no standalone BatchNorm after a DepthwiseConv2D)
    bad = unquantizable_layers(bridged)
    assert any(item.endswith("(Rescaling)") for item in bad), bad


def test_conv1d_model_and_sequential():
    keras.utils.set_random_seed(5)
    model = randomize(keras.Sequential([
        keras.Input((32, 3), name="signal"),
        L.Conv1D(8, 5, padding="same", activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3)),
        L.BatchNormalization(),
        L.MaxPooling1D(2),
        L.Conv1D(8, 3, strides=2, activation="silu"),
        L.AveragePooling1D(2),
        L.Reshape((-1, 4)),
        L.GlobalMaxPooling1D(),
        L.Dense(4),
        L.Softmax(),
    ], name="kws"))
    x = np.random.default_rng(0).normal(size=(16, 32, 3)).astype("float32")
    bridged = to_tf_keras(model, [x])
    assert isinstance(bridged, tf_keras.Sequential) and bridged.name == "kws"
    assert_same(model, bridged, [x])
    conv = bridged.layers[0]
    assert isinstance(conv, tf_keras.layers.Conv1D)
    assert float(conv.kernel_regularizer.l2) == pytest.approx(1e-3)
    assert any(item.endswith("(Conv1D)") for item in unquantizable_layers(bridged))


def test_two_inputs_two_outputs_keep_their_order():
    keras.utils.set_random_seed(6)
    series = keras.Input((10, 2), name="series")
    meta = keras.Input((3,), name="meta")
    s = L.GlobalAveragePooling1D()(L.Conv1D(4, 3)(series))
    joined = L.Concatenate()([s, meta])
    aux = L.Dense(2, name="aux")(meta)  # depends on the second input only
    main = L.Dense(5, activation="softmax", name="main")(joined)
    model = randomize(keras.Model([series, meta], [main, aux]))
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(8, 10, 2)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")]
    bridged = to_tf_keras(model, xs)
    assert [t.name.split(":")[0] for t in bridged.inputs] == ["series", "meta"]
    assert bridged.output_names == ["main", "aux"]
    assert [tuple(t.shape) for t in bridged.outputs] == [(None, 5), (None, 2)]
    assert_same(model, bridged, xs)


def test_dict_outputs_and_shared_layer():
    keras.utils.set_random_seed(7)
    left, right = keras.Input((4,), name="left"), keras.Input((4,), name="right")
    shared = L.Dense(3, name="shared")
    outputs = {"l": shared(left), "r": L.Multiply()([shared(right), shared(left)])}
    model = randomize(keras.Model([left, right], outputs))
    xs = [np.ones((2, 4), "float32"), np.full((2, 4), -0.5, "float32")]
    bridged = to_tf_keras(model, xs)
    assert len([layer for layer in bridged.layers if layer.name == "shared"]) == 1
    assert_same(model, bridged, xs)


def _layer_cases():
    d2, d1, flat = (8, 8, 3), (12, 3), (6,)
    return {
        "Conv1D": (d1, lambda x: L.Conv1D(4, 3, dilation_rate=2, activation="tanh")(x)),
        "Conv2D": (d2, lambda x: L.Conv2D(4, (3, 2), strides=2, padding="same", use_bias=False)(x)),
        "Conv2DTranspose": (d2, lambda x: L.Conv2DTranspose(2, 3, strides=2, padding="same")(x)),
        "DepthwiseConv2D": (d2, lambda x: L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu")(x)),
        "SeparableConv2D": (d2, lambda x: L.SeparableConv2D(5, 3, depth_multiplier=2)(x)),
        "Dense": (flat, lambda x: L.Dense(4, activation="leaky_relu")(x)),
        "BatchNormalization": (d2, lambda x: L.BatchNormalization(center=False, epsilon=0.01)(x)),
        "PReLU": (d2, lambda x: L.PReLU(shared_axes=[1, 2])(x)),
        "MaxPooling1D": (d1, lambda x: L.MaxPooling1D(3, padding="same")(x)),
        "MaxPooling2D": (d2, lambda x: L.MaxPooling2D(3, strides=1)(x)),
        "AveragePooling1D": (d1, lambda x: L.AveragePooling1D(2)(x)),
        "AveragePooling2D": (d2, lambda x: L.AveragePooling2D(3, strides=2, padding="same")(x)),
        "GlobalAveragePooling1D": (d1, lambda x: L.GlobalAveragePooling1D(keepdims=True)(x)),
        "GlobalAveragePooling2D": (d2, lambda x: L.GlobalAveragePooling2D()(x)),
        "GlobalMaxPooling1D": (d1, lambda x: L.GlobalMaxPooling1D()(x)),
        "GlobalMaxPooling2D": (d2, lambda x: L.GlobalMaxPooling2D(keepdims=True)(x)),
        "Activation": (flat, lambda x: L.Activation("sigmoid")(L.Activation("leaky_relu")(x))),
        "ReLU": (flat, lambda x: L.ReLU(max_value=1.0, negative_slope=0.1, threshold=0.2)(x)),
        "LeakyReLU": (flat, lambda x: L.LeakyReLU(negative_slope=0.05)(x)),
        "Softmax": (d1, lambda x: L.Softmax(axis=1)(x)),
        "Add": (flat, lambda x: L.Add()([x, L.Dense(6)(x)])),
        "Subtract": (flat, lambda x: L.Subtract()([x, L.Dense(6)(x)])),
        "Multiply": (flat, lambda x: L.Multiply()([x, x, x])),
        "Average": (flat, lambda x: L.Average()([x, L.Dense(6)(x)])),
        "Maximum": (flat, lambda x: L.Maximum()([x, L.Dense(6)(x)])),
        "Minimum": (flat, lambda x: L.Minimum()([x, L.Dense(6)(x)])),
        "Concatenate": (d2, lambda x: L.Concatenate(axis=1)([x, x])),
        "Flatten": (d2, lambda x: L.Flatten()(x)),
        "Reshape": (d2, lambda x: L.Reshape((16, -1))(x)),
        "Permute": (d1, lambda x: L.Permute((2, 1))(x)),
        "ZeroPadding1D": (d1, lambda x: L.ZeroPadding1D((1, 2))(x)),
        "ZeroPadding2D": (d2, lambda x: L.ZeroPadding2D(((0, 1), (2, 0)))(x)),
        "Cropping1D": (d1, lambda x: L.Cropping1D((1, 2))(x)),
        "Cropping2D": (d2, lambda x: L.Cropping2D(((1, 0), (0, 2)))(x)),
        "UpSampling1D": (d1, lambda x: L.UpSampling1D(2)(x)),
        "UpSampling2D": (d2, lambda x: L.UpSampling2D(2, interpolation="bilinear")(x)),
        "Dropout": (flat, lambda x: L.Dropout(0.5, seed=1)(x)),
        "SpatialDropout1D": (d1, lambda x: L.SpatialDropout1D(0.5)(x)),
        "SpatialDropout2D": (d2, lambda x: L.SpatialDropout2D(0.5)(x)),
        "Rescaling": (d2, lambda x: L.Rescaling(2.0, offset=1.0)(x)),
        "LSTM": (d1, lambda x: L.LSTM(5, return_sequences=True)(x)),
        "GRU": (d1, lambda x: L.GRU(4, reset_after=True)(x)),
        "SimpleRNN": (d1, lambda x: L.SimpleRNN(3, activation="relu")(x)),
    }


def test_every_supported_layer_has_a_case():
    assert set(_layer_cases()) | {"InputLayer"} == set(SUPPORTED_LAYERS)


@pytest.mark.parametrize("name", sorted(_layer_cases()))
def test_supported_layer_round_trips(name):
    shape, build = _layer_cases()[name]
    keras.utils.set_random_seed(8)
    inputs = keras.Input(shape)
    model = randomize(keras.Model(inputs, build(inputs), name=f"only_{name.lower()}"))
    x = np.random.default_rng(2).normal(size=(4, *shape)).astype("float32")
    bridged = to_tf_keras(model, [x])
    if name != "Activation":  # Activation("leaky_relu") becomes a LeakyReLU layer
        assert name in [type(layer).__name__ for layer in bridged.layers]
    assert_same(model, bridged, [x])


def test_auto_names_tfmot_creates_do_not_clash_with_rebuilt_names():
    """tfmot splits SeparableConv2D into new, auto-named DepthwiseConv2D + Conv2D and matches weights by name."""
    tf_keras.backend.clear_session()  # fresh tf_keras name counters, as in a new process
    keras.utils.set_random_seed(10)
    inputs = keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, name="conv2d")(inputs)
    x = L.DepthwiseConv2D(3, name="depthwise_conv2d")(x)
    x = L.SeparableConv2D(3, 3, padding="same")(x)
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(x)))
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 2)).astype("float32")
    bridged = to_tf_keras(model, [x])
    assert unquantizable_layers(bridged) == []

    import tensorflow_model_optimization as tfmot

    quantized = tfmot.quantization.keras.quantize_model(bridged)
    assert len({layer.name for layer in quantized.layers}) == len(quantized.layers)
    assert quantized(x, training=False).shape == (4, 2)


def test_unsupported_layer_is_named():
    inputs = keras.Input((10, 3))
    x = L.Bidirectional(L.LSTM(4), name="my_bilstm")(inputs)
    model = keras.Model(inputs, L.Dense(2)(x))
    with pytest.raises(ModelLoadError) as info:
        to_tf_keras(model, [np.zeros((2, 10, 3), "float32")])
    text = str(info.value)
    assert "'my_bilstm' (Bidirectional)" in text and "drop --qat" in text and "supported: InputLayer, Conv1D" in text
    assert info.value.exit_code == 2


def test_raw_ops_nested_models_and_subclasses_are_refused():
    inputs = keras.Input((4,))
    raw = keras.Model(inputs, L.Dense(2)(inputs) * 2.0)
    with pytest.raises(ModelLoadError, match=r"raw keras\.ops call"):
        to_tf_keras(raw, [np.zeros((1, 4), "float32")])

    inner = keras.Sequential([keras.Input((4,)), L.Dense(3)], name="inner_block")
    outer_in = keras.Input((4,))
    nested = keras.Model(outer_in, L.Dense(1)(inner(outer_in)))
    with pytest.raises(ModelLoadError, match=r"'inner_block' \(Sequential\) is a nested model"):
        to_tf_keras(nested, [np.zeros((1, 4), "float32")])

    class MyDense(L.Dense):  # same class name as a supported layer, different code
        pass

    custom = keras.Model(inputs, MyDense(2, name="mine")(inputs))
    with pytest.raises(ModelLoadError, match=r"'mine' \(MyDense\)"):
        to_tf_keras(custom, [np.zeros((1, 4), "float32")])

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ModelLoadError, match="subclassed"):
        to_tf_keras(Sub(), [np.zeros((1, 4), "float32")])
    with pytest.raises(ModelLoadError, match="not built"):
        to_tf_keras(keras.Sequential([L.Dense(2)]), [np.zeros((1, 4), "float32")])


def test_verification_failure_reports_difference_and_layer_count():
    # Dropout forced on at inference: both models are right, and they still disagree: not provably the same.
    keras.utils.set_random_seed(9)
    inputs = keras.Input((64,))
    x = L.Dropout(0.5)(L.Dense(64)(inputs), training=True)
    model = keras.Model(inputs, L.Dense(3)(x), name="noisy")
    with pytest.raises(ModelLoadError, match=r"'noisy' \(3 layers\).*max abs output difference [0-9.e+-]+ on 8 "
                                             r"samples \(tolerance 1e-05\)"):
        to_tf_keras(model, [np.ones((8, 64), "float32")])


def test_sample_inputs_must_fit_the_model(digits_cnn, digits_x):
    with pytest.raises(CalibrationError, match="2 sample array"):
        to_tf_keras(digits_cnn, [digits_x, digits_x])
    with pytest.raises(CalibrationError, match=r"shape \(32, 8, 8\)"):
        to_tf_keras(digits_cnn, [digits_x[..., 0]])
    with pytest.raises(CalibrationError, match="no samples"):
        to_tf_keras(digits_cnn, [digits_x[:0]])


def test_tf_keras_model_is_returned_unchanged():
    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(inputs))
    assert is_tf_keras(model)
    assert to_tf_keras(model, []) is model
    assert unquantizable_layers(model) == []
    k3_inputs = keras.Input((4,))
    with pytest.raises(ModelLoadError, match="tf_keras model"):
        unquantizable_layers(keras.Model(k3_inputs, L.Dense(2)(k3_inputs)))
