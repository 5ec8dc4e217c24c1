"""edgeq.quantize.fold: Dense->BatchNormalization folding, on real Keras 3 and tf_keras models.

The autoencoders are trained on the bundled real digits so the BatchNormalization statistics are
not the initial zeros and ones; the int8 comparison goes through the real converter (edgeq's PTQ
path), the real LiteRT interpreter and the real TFLite Micro arena search. Structural cases use
random BatchNormalization statistics set directly (no training needed to make them non-trivial).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgeq._tf import tf
from edgeq.errors import ConversionError

tf()
import keras  # noqa: E402
import tf_keras  # noqa: E402

from edgeq.quantize import fold  # noqa: E402
from edgeq.quantize.fold import fold_dense_batchnorm  # noqa: E402

FRAMEWORKS = {"keras3": keras, "tf_keras": tf_keras}


def _flat(ds) -> np.ndarray:  # type: ignore[no-untyped-def]
    return ds.inputs[0].reshape(-1, 64)


def _autoencoder(K, x: np.ndarray):  # type: ignore[no-untyped-def]
    """64 -> Dense+BN+ReLU (32, 16, 32) -> Dense(64, sigmoid), trained 3 epochs on `x`."""
    K.utils.set_random_seed(3)
    L = K.layers
    inputs = K.Input((64,))
    h = inputs
    for units in (32, 16, 32):
        h = L.ReLU()(L.BatchNormalization()(L.Dense(units)(h)))
    model = K.Model(inputs, L.Dense(64, activation="sigmoid")(h))
    model.compile(optimizer=K.optimizers.Adam(0.01), loss="mse")
    model.fit(x, x, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def data(digits):  # type: ignore[no-untyped-def]
    return {split: _flat(ds) for split, ds in digits.items()}


@pytest.fixture(scope="module")
def trained(data):  # type: ignore[no-untyped-def]
    return {name: _autoencoder(K, data["train"]) for name, K in FRAMEWORKS.items()}


def _bn_layers(model) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            out.append(layer.name)
        if hasattr(layer, "layers"):
            out += _bn_layers(layer)
    return out


def _randomize_bn(model, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    """Give every BatchNormalization non-trivial gamma, beta, moving mean and variance."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "layers"):
            _randomize_bn(layer, seed + 1)
        elif type(layer).__name__ == "BatchNormalization":
            weights = [rng.uniform(-2, 2, w.shape).astype(np.float32) for w in layer.get_weights()]
            weights[-1] = np.abs(weights[-1]) + 0.05  # the moving variance, always last
            layer.set_weights(weights)


def _out(model, x):  # type: ignore[no-untyped-def]
    return np.asarray(model(x, training=False))


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_trained_autoencoder_folds_exactly(framework: str, trained, data) -> None:  # type: ignore[no-untyped-def]
    model = trained[framework]
    bns = _bn_layers(model)
    before = _out(model, data["eval"])
    mean, var = model.get_layer(bns[0]).get_weights()[2:]
    assert np.abs(mean).max() > 0.01 and np.abs(var - 1).max() > 0.01  # trained, not the initial statistics
    result = fold_dense_batchnorm(model, [data["calibration"][:64]])

    assert len(result.folded) == 3 and all("+" in p for p in result.folded)
    assert [p.split("+")[1] for p in result.folded] == bns
    assert _bn_layers(result.model) == []
    assert type(result.model).__module__.split(".")[0] == type(model).__module__.split(".")[0]
    assert result.max_abs_difference < 1e-5
    # held-out data, not just the samples the fold was verified on
    assert np.max(np.abs(_out(result.model, data["eval"]) - before)) < 1e-5
    # the original is left as it was
    assert _bn_layers(model) == bns and np.array_equal(_out(model, data["eval"]), before)
    assert all(layer.use_bias for layer in result.model.layers if type(layer).__name__ == "Dense")


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_sequential_without_bias_center_or_scale(framework: str) -> None:
    K = FRAMEWORKS[framework]
    L = K.layers
    model = K.Sequential([K.Input((10,)), L.Dense(8, use_bias=False), L.BatchNormalization(center=False),
                          L.Activation("tanh"), L.Dense(6), L.BatchNormalization(scale=False),
                          L.Dense(3), L.BatchNormalization(axis=1, epsilon=0.1)])
    _randomize_bn(model)
    x = np.random.default_rng(1).normal(size=(50, 10)).astype(np.float32)
    result = fold_dense_batchnorm(model, [x])
    assert len(result.folded) == 3 and _bn_layers(result.model) == []
    assert isinstance(result.model, K.Sequential)
    assert np.max(np.abs(_out(result.model, x) - _out(model, x))) < 1e-5


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_activation_before_batchnorm_is_left_alone(framework: str) -> None:
    K = FRAMEWORKS[framework]
    L = K.layers
    inputs = K.Input((12,))
    a = L.BatchNormalization(name="bn_after_act")(L.Dense(8, activation="relu", name="dense_act")(inputs))
    b = L.BatchNormalization(name="bn_after_relu")(L.ReLU()(L.Dense(8, name="dense_relu")(inputs)))
    model = K.Model(inputs, L.Concatenate()([a, b]))
    _randomize_bn(model)
    result = fold_dense_batchnorm(model, [np.ones((4, 12), np.float32)])
    assert result.model is model and result.folded == () and result.max_abs_difference == 0.0
    assert len(result.skipped) == 1 and result.skipped[0].startswith("dense_act+bn_after_act: ")
    assert "relu" in result.skipped[0]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_batchnorm_after_conv_is_left_to_the_converter(framework: str) -> None:
    K = FRAMEWORKS[framework]
    L = K.layers
    model = K.Sequential([K.Input((8, 8, 1)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(),
                          L.Flatten(), L.Dense(10)])
    result = fold_dense_batchnorm(model, [np.zeros((2, 8, 8, 1), np.float32)])
    assert result.model is model and result.folded == () and result.skipped == ()


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_only_safe_pairs_fold_in_a_branching_graph(framework: str) -> None:
    K = FRAMEWORKS[framework]
    L = K.layers
    seq_in, vec_in = K.Input((5, 6), name="seq"), K.Input((6,), name="vec")
    # rank 3, BN on the last axis: folds
    s = L.ReLU()(L.BatchNormalization(name="bn_seq")(L.Dense(4, name="d_seq")(seq_in)))
    # rank 3, BN over the time axis: not the Dense's feature axis
    t = L.BatchNormalization(axis=1, name="bn_time")(L.Dense(4, name="d_time")(seq_in))
    # the Dense output also feeds an Add: cannot fold
    shared = L.Dense(6, name="d_shared")(vec_in)
    u = L.Add()([L.BatchNormalization(name="bn_shared")(shared), shared])
    # BN as a model output, right after the Dense: folds (the output is redirected to the Dense)
    v = L.BatchNormalization(name="bn_out")(L.Dense(3, name="d_out")(u))
    # pinned training=True: batch statistics even at inference, cannot fold
    w = L.BatchNormalization(name="bn_train")(L.Dense(3, name="d_train")(vec_in), training=True)
    model = K.Model([seq_in, vec_in], [L.Flatten()(L.Add()([s, t])), v, w])
    _randomize_bn(model)
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(40, 5, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)]
    result = fold_dense_batchnorm(model, xs)
    assert result.folded == ("d_seq+bn_seq", "d_out+bn_out")
    assert sorted(s.split(":")[0] for s in result.skipped) == ["d_shared+bn_shared", "d_time+bn_time",
                                                              "d_train+bn_train"]
    assert sorted(_bn_layers(result.model)) == ["bn_shared", "bn_time", "bn_train"]
    assert [o.shape[1:] for o in result.model.outputs] == [o.shape[1:] for o in model.outputs]
    # bn_train normalizes with batch statistics: compare the deterministic outputs only
    for new, old in zip(result.model(xs, training=False)[:2], model(xs, training=False)[:2]):
        assert np.max(np.abs(np.asarray(new) - np.asarray(old))) < 1e-5


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_pairs_inside_nested_models_fold(framework: str) -> None:
    K = FRAMEWORKS[framework]
    L = K.layers
    encoder = K.Sequential([K.Input((16,)), L.Dense(8), L.BatchNormalization(), L.ReLU()], name="encoder")
    inputs = K.Input((16,))
    h = encoder(inputs)
    model = K.Model(inputs, L.BatchNormalization(name="bn_top")(L.Dense(4, name="d_top")(h)))
    _randomize_bn(model)
    x = np.random.default_rng(3).normal(size=(30, 16)).astype(np.float32)
    result = fold_dense_batchnorm(model, [x])
    assert len(result.folded) == 2 and result.folded[0].startswith("encoder/")
    assert _bn_layers(result.model) == [] and _bn_layers(model) != []
    assert np.max(np.abs(_out(result.model, x) - _out(model, x))) < 1e-5


def test_a_wrong_fold_is_refused(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    L = keras.layers
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d"), L.BatchNormalization(name="bn")])
    _randomize_bn(model)
    right = fold._fold_weights
    monkeypatch.setattr(fold, "_fold_weights", lambda d, b: tuple(w * 1.01 for w in right(d, b)))
    with pytest.raises(ConversionError, match=r"d\+bn.*changed the model's outputs by up to"):
        fold_dense_batchnorm(model, [np.ones((5, 4), np.float32)])


def test_int8_folded_is_smaller_and_as_accurate(trained, data, digits,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    """Through edgeq's PTQ path (batch 1, full int8, int8 I/O, per-channel), run by LiteRT and TFLM.

    TensorFlow 2.21's converter already fuses an inference-mode BatchNormalization into the
    FULLY_CONNECTED before it, so here the fold saves the long fused tensor names (a few hundred
    bytes) and the arena and outputs stay the same; the checks below hold either way.
    """
    from edgeq.emulator.memory import measure_tflm_arena
    from edgeq.emulator.runtimes import run_litert
    from edgeq.loading import from_keras_object
    from edgeq.quantize.ptq import quantize
    from edgeq.quantize.recipe import recipe_for
    from edgeq.targets import load_target
    from edgeq.tflite.reader import read_tflite

    model = trained["keras3"]
    calibration = dataclasses.replace(digits["calibration"], inputs=(data["calibration"],))
    recipe = recipe_for(load_target("mcu"), "int8", have_calibration=True, calibration_samples=200)
    folded = fold_dense_batchnorm(model, [data["calibration"][:32]]).model
    x = data["eval"]
    reference = _out(model, x)
    rows = {}
    for name, m in (("plain", model), ("folded", folded)):
        blob = quantize(from_keras_object(m, tmp_path / f"{name}.keras", "keras").converter_source(), recipe,
                        calibration)
        ops = read_tflite(blob).op_counts()
        error = float(np.mean(np.abs(run_litert(blob, [x]).outputs[0] - reference)))
        rows[name] = (len(blob), ops.get("MUL", 0) + ops.get("ADD", 0), measure_tflm_arena(blob).smallest, error)
    plain_size, plain_muladd, plain_arena, plain_mae = rows["plain"]
    size, muladd, arena, mae = rows["folded"]
    assert size < plain_size
    assert muladd == 0 <= plain_muladd
    assert arena <= plain_arena
    assert mae <= plain_mae * 1.01 + 1e-6
    assert mae < 0.02  # dequantized sigmoid outputs in [0, 1]
