#!/usr/bin/env python3
"""Train the bundled example, examples/digits_cnn.keras: a small CNN on the real 8x8 digits.

The result is committed so that the demo needs no training. Rebuild with:
    .venv/bin/python scripts/build_example_model.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_digits_cnn(keras):  # type: ignore[no-untyped-def]
    """Conv-Conv-Pool-Dense: the shape of a keyword-spotting or tiny vision model, in miniature."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="digit")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train(model, keras, train_set, epochs: int = 40):  # type: ignore[no-untyped-def]
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train_set.inputs[0], train_set.labels, epochs=epochs, batch_size=32, verbose=0)
    return model


def main() -> int:
    import keras

    from edgeq.calibration import load_dataset

    keras.utils.set_random_seed(0)
    train_set = load_dataset("digits:train")
    eval_set = load_dataset("digits:eval")
    model = train(build_digits_cnn(keras), keras, train_set)
    _, accuracy = model.evaluate(eval_set.inputs[0], eval_set.labels, verbose=0)
    out = ROOT / "examples" / "digits_cnn.keras"
    out.parent.mkdir(exist_ok=True)
    # Save an uncompiled copy: the optimizer state is useless on a device and triples the file.
    export = build_digits_cnn(keras)
    export.set_weights(model.get_weights())
    export.save(out)
    print(f"wrote {out} ({out.stat().st_size:,} B); float accuracy on digits:eval {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
