#!/usr/bin/env python3
"""The architectures edge ML runs on, built the same way in Keras 3 and tf_keras, trained briefly.

Used by tests/integration/test_real_models.py and scripts/bench_models.py. Each builder takes the
Keras module to build with (`keras` or `tf_keras`); `keras.applications` models come with
weights=None. `synthetic_data` makes class-dependent data of a model's input shapes (a
prototype per class plus noise), so that a few training steps give outputs that mean something:
quantization error shows up as lost agreement, as it would on real data. No download anywhere.

Shapes follow the public references: MobileNet v1 alpha 0.25 at 96x96 (visual wake words),
MobileNetV2 0.35, MobileNetV3Small, a ResNet-8 (MLPerf Tiny image classification, 32x32x3), a
DS-CNN keyword spotter (MLPerf Tiny KWS, 49x10 MFCCs), a Conv1D and an LSTM on sensor sequences,
the MLPerf Tiny anomaly-detection autoencoder (640 inputs, Dense+BatchNorm, 8-unit bottleneck),
and a two-input, two-output model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Reference:
    name: str
    build: Callable[[Any], Any]      # (keras module) -> an uncompiled model
    classes: int                      # 0: an autoencoder (target = input)
    train_samples: int = 512
    epochs: int = 8
    learning_rate: float = 3e-3


IMAGE_SIDE = 96
"""Input side of the MobileNets (96: visual wake words). Tests set it lower to save time."""


def mobilenet_v1(k: Any) -> Any:
    return k.applications.MobileNet(input_shape=(IMAGE_SIDE, IMAGE_SIDE, 3), alpha=0.25, weights=None, classes=2)


def mobilenet_v2(k: Any) -> Any:
    return k.applications.MobileNetV2(input_shape=(IMAGE_SIDE, IMAGE_SIDE, 3), alpha=0.35, weights=None, classes=2)


def mobilenet_v3_small(k: Any) -> Any:
    return k.applications.MobileNetV3Small(input_shape=(IMAGE_SIDE, IMAGE_SIDE, 3), alpha=0.75, minimalistic=True,
                                           weights=None, classes=2, include_preprocessing=False)


def resnet8(k: Any) -> Any:
    layers = k.layers
    x = inputs = k.Input((32, 32, 3), name="image")
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(x)))
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(filters, 3, stride, padding="same")(x)))
        y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same")(y))
        shortcut = x if stride == 1 else layers.Conv2D(filters, 1, stride)(x)
        x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.Flatten()(layers.AveragePooling2D(8)(x))
    return k.Model(inputs, layers.Dense(10, activation="softmax")(x), name="resnet8")


def ds_cnn(k: Any) -> Any:
    layers = k.layers
    x = inputs = k.Input((49, 10, 1), name="mfcc")
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(64, (10, 4), (2, 2), padding="same")(x)))
    for _ in range(4):
        x = layers.ReLU()(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same")(x)))
        x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(64, 1)(x)))
    x = layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, layers.Dense(12, activation="softmax")(x), name="ds_cnn")


def conv1d(k: Any) -> Any:
    layers = k.layers
    return k.Sequential([k.Input((128, 3), name="motion"), layers.Conv1D(16, 5, activation="relu"),
                         layers.MaxPooling1D(2), layers.Conv1D(32, 3, activation="relu"),
                         layers.GlobalAveragePooling1D(), layers.Dense(6, activation="softmax")], name="conv1d")


def lstm(k: Any) -> Any:
    return k.Sequential([k.Input((20, 8), name="sequence"), k.layers.LSTM(16), k.layers.Dense(4, activation="softmax")],
                        name="lstm")


def autoencoder(k: Any) -> Any:
    layers = k.layers
    x = inputs = k.Input((640,), name="spectrum")
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = layers.ReLU()(layers.BatchNormalization()(layers.Dense(units)(x)))
    return k.Model(inputs, layers.Dense(640)(x), name="autoencoder")


def two_in_two_out(k: Any) -> Any:
    layers = k.layers
    image, vector = k.Input((8, 8, 1), name="image"), k.Input((4,), name="vector")
    x = layers.Flatten()(layers.Conv2D(8, 3, activation="relu")(image))
    x = layers.Concatenate()([x, layers.Dense(8, activation="relu")(vector)])
    digit = layers.Dense(10, activation="softmax", name="digit")(x)
    score = layers.Dense(1, name="score")(x)
    return k.Model([image, vector], [digit, score], name="two_in_two_out")


REFERENCES = {r.name: r for r in (
    Reference("mobilenet_v1", mobilenet_v1, 2, train_samples=256, epochs=4),
    Reference("mobilenet_v2", mobilenet_v2, 2, train_samples=256, epochs=4),
    Reference("mobilenet_v3_small", mobilenet_v3_small, 2, train_samples=256, epochs=4),
    Reference("resnet8", resnet8, 10),
    Reference("ds_cnn", ds_cnn, 12),
    Reference("conv1d", conv1d, 6),
    Reference("lstm", lstm, 4, epochs=12, learning_rate=1e-2),
    Reference("autoencoder", autoencoder, 0),
    Reference("two_in_two_out", two_in_two_out, 10),
)}


def input_shapes(model: Any) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in t.shape[1:]) for t in model.inputs]


def synthetic_data(shapes: list[tuple[int, ...]], classes: int, n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Inputs of `shapes` that depend on a class label, and the labels. Each class has a level
    (which survives global pooling) and a pattern along the first axis (which convolutions and
    recurrent layers see), plus noise. Values in [0, 1] like scaled sensor or pixel data."""
    rng = np.random.default_rng(seed)
    count = max(classes, 1)
    labels = rng.integers(0, count, n)
    inputs = []
    for k, shape in enumerate(shapes):
        fixed = np.random.default_rng(1000 + k)
        position = np.linspace(0.0, 1.0, shape[0], dtype=np.float32).reshape(-1, *([1] * (len(shape) - 1)))
        levels = np.linspace(0.2, 0.8, count, dtype=np.float32)
        prototypes = np.stack([
            0.5 * levels[c] + 0.25 * np.sin(2 * np.pi * (c + 1) * position + fixed.random())
            + 0.15 * fixed.random(shape) for c in range(count)]).astype(np.float32)
        noise = rng.normal(0.0, 0.08, (n, *shape)).astype(np.float32)
        inputs.append(np.clip(prototypes[labels] + 0.1 + noise, 0.0, 1.0).astype(np.float32))
    return inputs, labels


def trained(reference: Reference, k: Any, seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    """The model built with `k`, trained briefly on synthetic data; and an .npz-ready data dict
    (x_<input name> arrays, and y) for calibration and evaluation."""
    k.utils.set_random_seed(seed)
    model = reference.build(k)
    shapes = input_shapes(model)
    xs, labels = synthetic_data(shapes, reference.classes, reference.train_samples, seed)
    outputs = model.outputs
    if reference.classes == 0:
        losses, targets = ["mse"], [xs[0]]
    else:
        losses = ["sparse_categorical_crossentropy" if o.shape[-1] > 1 else "mse" for o in outputs]
        targets = [labels if o.shape[-1] > 1 else labels[:, None].astype(np.float32) / reference.classes
                   for o in outputs]
    for layer in model.layers:  # a few hundred steps: let BatchNorm's moving statistics catch up
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.8
    model.compile(optimizer=k.optimizers.Adam(reference.learning_rate), loss=losses if len(losses) > 1 else losses[0])
    model.fit(xs if len(xs) > 1 else xs[0], targets if len(targets) > 1 else targets[0], epochs=reference.epochs,
              batch_size=32, verbose=0)
    data_x, data_y = synthetic_data(shapes, reference.classes, 200, seed + 1)
    names = [t.name.split(":")[0] for t in model.inputs]
    data = {f"x_{n}": x for n, x in zip(names, data_x)} if len(names) > 1 else {"x": data_x[0]}
    if reference.classes:
        data["y"] = data_y
    return model, data


def outlier_regressor(k: Any, folder: Any) -> tuple[Any, Any, Any, Any]:
    """A Dense regressor (16 -> 32 -> 32 -> 4) whose first layer has one unit with 40 times the
    others' range, as real models have outlier channels: in int8 that unit's scale leaves the
    others a few steps each, so int8 loses SNR that int16 activations keep. Saved in `folder` with
    its data: the model, calibration (400 samples), held-out (100) and training (x, and y = the
    float model's outputs, for QAT) .npz files. Untrained (its weights are set), so it builds fast."""
    from pathlib import Path

    folder = Path(folder)
    k.utils.set_random_seed(11)
    L = k.layers
    rng = np.random.default_rng(11)
    model = k.Sequential([L.Input((16,)), L.Dense(32, activation="relu"), L.Dense(32, activation="relu"),
                          L.Dense(4)], name="reg")
    for layer in model.layers:
        w = layer.get_weights()
        layer.set_weights([w[0], rng.normal(0, 0.3, w[1].shape).astype(np.float32)])
    (k1, b1), (k2, b2) = model.layers[0].get_weights(), model.layers[1].get_weights()
    k1[:, 0], b1[0], k2[0, :] = 40 * k1[:, 0], 45.0, k2[0, :] / 40
    model.layers[0].set_weights([k1, b1])
    model.layers[1].set_weights([k2, b2])
    model.save(folder / "reg.keras")
    x = rng.normal(size=(500, 16)).astype(np.float32)
    np.savez(folder / "calib.npz", x=x[:400])
    np.savez(folder / "eval.npz", x=x[400:])
    np.savez(folder / "train.npz", x=x[:400], y=model.predict(x[:400], verbose=0))
    return folder / "reg.keras", folder / "calib.npz", folder / "eval.npz", folder / "train.npz"
