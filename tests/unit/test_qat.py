"""edgeq.quantize.qat: real tfmot QAT on the digits CNN (tf_keras), then edgeq's real converter
path and LiteRT. No mocks."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import CalibrationError, ConversionError, RecipeError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tfk():
    from edgeq._tf import tf

    tf()
    import tf_keras

    return tf_keras


@pytest.fixture(scope="module")
def data():
    from edgeq.calibration import load_dataset

    return {split: load_dataset(f"digits:{split}") for split in ("train", "calibration", "eval")}


def _digits_cnn(keras):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_example_model import build_digits_cnn

    return build_digits_cnn(keras)


@pytest.fixture(scope="module")
def float_model(tfk, data):
    """The digits CNN in tf_keras, trained 10 epochs in float. It stays compiled, so QAT takes
    the compile-settings path for its loss."""
    tfk.utils.set_random_seed(0)
    model = _digits_cnn(tfk)
    model.compile(optimizer=tfk.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(data["train"].inputs[0], data["train"].labels, epochs=10, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def qat(float_model, data):
    from edgeq.quantize.qat import quantization_aware_train
    from edgeq.quantize.training import TrainSettings

    before = [w.copy() for w in float_model.get_weights()]
    epochs: list[tuple[int, int, dict]] = []
    batches: list[tuple[int, int]] = []
    result = quantization_aware_train(
        float_model, data["train"], TrainSettings(epochs=4, learning_rate=1e-4, seed=0),
        on_epoch=lambda i, n, logs: epochs.append((i, n, logs)),
        on_batch=lambda i, n: batches.append((i, n)),
    )
    return {"result": result, "before": before, "epochs": epochs, "batches": batches}


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def test_qat_model_converts_to_full_int8_and_keeps_accuracy(qat, float_model, data):
    from edgeq.emulator.runtimes import run_litert
    from edgeq.loading import from_keras_object
    from edgeq.quantize.ptq import quantize
    from edgeq.quantize.recipe import recipe_for
    from edgeq.targets import load_target
    from edgeq.tflite.reader import read_tflite

    result = qat["result"]
    assert type(result.model).__module__.startswith("tf_keras")
    assert any(type(layer).__name__ == "QuantizeWrapperV2" for layer in result.model.layers)
    loaded = from_keras_object(result.model, Path("m.keras"), "keras")
    recipe = recipe_for(load_target("mcu"), "int8", have_calibration=True, calibration_samples=100)
    tflite = quantize(loaded.converter_source(), recipe, data["calibration"])
    assert read_tflite(tflite).is_fully_integer

    x, y = data["eval"].inputs[0], data["eval"].labels
    float_acc = _accuracy(float_model.predict(x, verbose=0), y)
    int8_acc = _accuracy(run_litert(tflite, [x]).outputs[0], y)
    print(f"\ndigits:eval accuracy: float {float_acc:.4f}, QAT int8 (LiteRT) {int8_acc:.4f}")
    assert float_acc > 0.9
    assert int8_acc >= float_acc - 0.015


def test_result_records_training(qat):
    result = qat["result"]
    assert result.loss == "sparse_categorical_crossentropy"
    assert result.metrics == ("accuracy",)
    assert result.loss_source == "model compile settings"
    assert result.bridged is False
    assert result.epochs_run == 4 and not result.stopped_early
    assert set(result.history) == {"loss", "val_loss", "accuracy", "val_accuracy"}
    assert all(len(v) == 4 for v in result.history.values())
    summary = result.to_dict()
    assert "model" not in summary
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["history"]["loss"][0] == round(result.history["loss"][0], 6)


def test_callbacks_report_epochs_and_batches(qat, data):
    epochs, batches = qat["epochs"], qat["batches"]
    assert [(i, n) for i, n, _ in epochs] == [(i, 4) for i in range(4)]
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(epochs[-1][2])
    assert epochs[-1][2]["val_loss"] == pytest.approx(qat["result"].history["val_loss"][-1])
    n_train = math.floor(data["train"].num_samples * 0.9)
    per_epoch = math.ceil(n_train / 32)
    assert len(batches) == 4 * per_epoch
    assert batches[:per_epoch] == [(i, per_epoch) for i in range(per_epoch)]


def test_callers_model_is_not_modified(qat, float_model):
    after = float_model.get_weights()
    assert len(after) == len(qat["before"])
    assert all(np.array_equal(a, b) for a, b in zip(after, qat["before"]))
    assert not any("quant" in layer.name for layer in float_model.layers)


def test_early_stopping_restores_the_best_weights(float_model, data):
    """A high learning rate on a small subset: val_loss stops improving, training stops and the
    weights of the best epoch come back."""
    from edgeq.calibration import Dataset
    from edgeq.quantize.qat import quantization_aware_train
    from edgeq.quantize.training import TrainSettings

    train = data["train"]
    small = Dataset(name="digits:train[:300]", source=train.source, inputs=(train.inputs[0][:300],),
                    labels=train.labels[:300], sha256="")
    settings = TrainSettings(epochs=25, learning_rate=0.03, patience=1, batch_size=64, seed=3)
    result = quantization_aware_train(float_model, small, settings)
    val = result.history["val_loss"]
    assert result.stopped_early and result.epochs_run < settings.epochs
    assert result.epochs_run == len(val)
    best = int(np.nanargmin(val))
    assert best == result.epochs_run - settings.patience - 1   # the last `patience` epochs did not improve
    assert result.to_dict()["best_epoch"] == best + 1

    # The model holds the best epoch's weights: its loss on the validation split is the best val_loss.
    order = np.random.default_rng(settings.seed).permutation(300)
    val_idx = order[math.floor(300 * (1 - settings.validation_split)):]
    loss = result.model.evaluate(small.inputs[0][val_idx], small.labels[val_idx], verbose=0)[0]
    assert loss == pytest.approx(val[best], rel=1e-4)


# --------------------------------------------------------------------------- loss inference


def _tiny(tfk, activation: str, units: int = 10, shape=(8, 8, 1)):  # type: ignore[no-untyped-def]
    inputs = tfk.Input(shape)
    x = tfk.layers.Flatten()(inputs)
    return tfk.Model(inputs, tfk.layers.Dense(units, activation=activation)(x))


def test_integer_labels_and_softmax_give_sparse_ce_on_probabilities(tfk, data):
    from edgeq.quantize.qat_loss import choose_loss

    loss, metrics, source = choose_loss(_tiny(tfk, "softmax"), data["train"].labels, data["train"].inputs)
    assert isinstance(loss, tfk.losses.SparseCategoricalCrossentropy)
    assert loss.get_config()["from_logits"] is False
    assert metrics == ["accuracy"]
    assert source.startswith("inferred from the data: integer labels")


def test_linear_last_layer_means_logits(tfk, data):
    from edgeq.quantize.qat_loss import choose_loss

    inputs = tfk.Input((8, 8, 1))
    x = tfk.layers.Dense(10)(tfk.layers.Flatten()(inputs))
    model = tfk.Model(inputs, tfk.layers.Dropout(0.1)(x))          # looks through Dropout to the Dense
    loss, _, source = choose_loss(model, data["train"].labels, data["train"].inputs)
    assert isinstance(loss, tfk.losses.SparseCategoricalCrossentropy)
    assert loss.get_config()["from_logits"] is True
    assert "from_logits=True" in source


def test_no_labels_and_same_shape_output_is_an_autoencoder(tfk, data):
    from edgeq.quantize.qat_loss import choose_loss

    inputs = tfk.Input((8, 8, 1))
    x = tfk.layers.Dense(64, activation="sigmoid")(tfk.layers.Flatten()(inputs))
    model = tfk.Model(inputs, tfk.layers.Reshape((8, 8, 1))(x))
    loss, metrics, source = choose_loss(model, None, data["train"].inputs)
    assert isinstance(loss, tfk.losses.MeanSquaredError)
    assert metrics == [] and "autoencoder" in source


def test_float_targets_give_mse(tfk, data):
    from edgeq.quantize.qat_loss import choose_loss

    targets = np.random.default_rng(0).random((data["train"].num_samples, 3), dtype=np.float32)
    loss, metrics, source = choose_loss(_tiny(tfk, "linear", units=3), targets, data["train"].inputs)
    assert isinstance(loss, tfk.losses.MeanSquaredError) and metrics == []
    assert "float targets" in source


def test_no_labels_and_different_output_shape_needs_labels(tfk, data):
    from edgeq.quantize.qat_loss import choose_loss

    with pytest.raises(CalibrationError, match="QAT needs labels for this model: save y in the .npz"):
        choose_loss(_tiny(tfk, "softmax"), None, data["train"].inputs)


def test_labels_out_of_range_are_refused(tfk, data):
    from edgeq.quantize.qat_loss import choose_loss

    with pytest.raises(CalibrationError, match="range from 0 to 9.*4 classes"):
        choose_loss(_tiny(tfk, "softmax", units=4), data["train"].labels, data["train"].inputs)


def test_compile_settings_win_over_the_data(tfk, data):
    from edgeq.quantize.qat_loss import choose_loss

    model = _tiny(tfk, "softmax")
    model.compile(optimizer="adam", loss=tfk.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])
    loss, metrics, source = choose_loss(model, data["train"].labels, data["train"].inputs)
    assert source == "model compile settings"
    assert loss.get_config()["from_logits"] is True              # the user's choice, not the softmax
    assert metrics == ["sparse_categorical_accuracy"]


def test_keras3_compile_settings_are_translated_to_tf_keras(tfk, data):
    import keras

    from edgeq.quantize.qat_loss import choose_loss

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    loss, _, source = choose_loss(model, data["train"].labels, data["train"].inputs)
    assert source.startswith("inferred from the data") and loss.get_config()["from_logits"] is True
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    loss, metrics, source = choose_loss(model, data["train"].labels, data["train"].inputs)
    assert source == "model compile settings"
    assert isinstance(loss, tfk.losses.SparseCategoricalCrossentropy) and loss.get_config()["from_logits"]
    assert metrics == ["accuracy"]


# --------------------------------------------------------------------------- refusals and the bridge


def test_unsupported_layer_is_named(tfk, data):
    from edgeq.quantize.qat import quantization_aware_train
    from edgeq.quantize.training import TrainSettings

    inputs = tfk.Input((8, 8, 1))
    x = tfk.layers.LayerNormalization(name="norm")(tfk.layers.Flatten()(inputs))
    model = tfk.Model(inputs, tfk.layers.Dense(10, activation="softmax")(x))
    with pytest.raises(ConversionError) as info:
        quantization_aware_train(model, data["calibration"], TrainSettings(epochs=1))
    assert "norm (LayerNormalization)" in str(info.value)
    assert "use PTQ (drop --qat), or replace the layer" in str(info.value)


def test_bad_settings_are_refused():
    from edgeq.quantize.training import TrainSettings

    with pytest.raises(RecipeError, match="epochs must be at least 1"):
        TrainSettings(epochs=0)
    with pytest.raises(RecipeError, match="validation split"):
        replace(TrainSettings(), validation_split=1.0)


def test_keras3_model_goes_through_the_real_bridge(data):
    """A Keras 3 model is rebuilt as tf_keras (edgeq.quantize.bridge), then trained."""
    import keras

    from edgeq.calibration import Dataset
    from edgeq.quantize.qat import quantization_aware_train
    from edgeq.quantize.training import TrainSettings

    k3 = _digits_cnn(keras)
    before = [w.copy() for w in k3.get_weights()]
    train = data["calibration"]
    result = quantization_aware_train(k3, Dataset(name="digits:calibration", source=train.source,
                                                  inputs=train.inputs, labels=train.labels, sha256=""),
                                      TrainSettings(epochs=1))
    assert type(result.model).__module__.startswith("tf_keras")
    assert result.bridged and result.epochs_run == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, k3.get_weights()))
    assert result.loss == "sparse_categorical_crossentropy(from_logits=False)"
    assert result.loss_source.startswith("inferred from the data")
