#!/usr/bin/env python3
"""Benchmark: Dense->BatchNormalization folding, on a Dense+BN autoencoder trained on real digits.

The model: 64 -> [Dense -> BatchNormalization -> ReLU] x (32, 16, 32) -> Dense(64, sigmoid),
trained 3 epochs on digits:train (8x8 images flattened to 64). Three full-int8 conversions
(int8 I/O, the same 200 digits:calibration samples as representative data):

  plain      TFLiteConverter.from_keras_model with the full-int8 flags, as tutorials do
  edgeq      edgeq's PTQ path (batch 1, mcu recipe) on the unfolded model
  edgeq+fold fold_dense_batchnorm, then edgeq's PTQ path

For each: .tflite bytes, the bytes of tensor names in it, MUL+ADD ops (what an unfused
BatchNormalization becomes), all ops, the smallest TFLite Micro arena that runs it
(measure_tflm_arena) and the mean absolute error of its dequantized outputs (LiteRT) against the
float model on the 400 held-out digits:eval samples.

    .venv/bin/python scripts/bench_fold.py [--epochs N] [--seed N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_autoencoder(keras, x, epochs: int, seed: int):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((64,))
    h = inputs
    for units in (32, 16, 32):
        h = layers.ReLU()(layers.BatchNormalization()(layers.Dense(units)(h)))
    model = keras.Model(inputs, layers.Dense(64, activation="sigmoid")(h), name="dense_bn_autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, x, epochs=epochs, batch_size=32, verbose=0)
    return model


def plain_int8(model, calibration) -> bytes:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    from edgeq._tf import captured_output

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with captured_output():
        return bytes(converter.convert())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()

    import numpy as np

    from edgeq._tf import tf

    tf()
    import keras

    from edgeq.calibration import load_dataset
    from edgeq.emulator.memory import measure_tflm_arena
    from edgeq.emulator.runtimes import run_litert
    from edgeq.loading import from_keras_object
    from edgeq.quantize.fold import fold_dense_batchnorm
    from edgeq.quantize.ptq import quantize
    from edgeq.quantize.recipe import recipe_for
    from edgeq.targets import load_target
    from edgeq.tflite.reader import read_tflite

    flat = {s: load_dataset(f"digits:{s}").inputs[0].reshape(-1, 64) for s in ("train", "calibration", "eval")}
    calibration = dataclasses.replace(load_dataset("digits:calibration"), inputs=(flat["calibration"],))
    model = build_autoencoder(keras, flat["train"], args.epochs, args.seed)
    folded = fold_dense_batchnorm(model, [flat["calibration"][:32]])
    recipe = recipe_for(load_target("mcu"), "int8", have_calibration=True, calibration_samples=200)
    reference = np.asarray(model(flat["eval"], training=False))

    with tempfile.TemporaryDirectory() as tmp:
        blobs = {
            "plain": plain_int8(model, flat["calibration"]),
            "edgeq": quantize(from_keras_object(model, Path(tmp) / "m.keras", "keras"), recipe, calibration),
            "edgeq+fold": quantize(from_keras_object(folded.model, Path(tmp) / "m.keras", "keras"), recipe,
                                   calibration),
        }
    rows = []
    for label, blob in blobs.items():
        info = read_tflite(blob)
        ops = info.op_counts()
        mae = float(np.mean(np.abs(run_litert(blob, [flat["eval"]]).outputs[0] - reference)))
        rows.append((label, len(blob), sum(len(t.name.encode()) for t in info.tensors),
                     ops.get("MUL", 0) + ops.get("ADD", 0), sum(ops.values()),
                     measure_tflm_arena(blob).smallest, mae))

    print(f"model: Dense+BN autoencoder 64-32-16-32-64, {args.epochs} epochs on digits:train (seed {args.seed}); "
          f"folded {len(folded.folded)} pair(s), max |float difference| {folded.max_abs_difference:.1e}")
    print(f"int8 (int8 I/O), 200 calibration samples; MAE of dequantized outputs vs float on "
          f"{len(flat['eval'])} digits:eval samples (LiteRT)\n")
    print(f"{'':<20}{'.tflite B':>11}{'names B':>9}{'MUL+ADD':>9}{'ops':>5}{'arena B':>9}{'MAE':>10}")
    for label, size, names, muladd, ops, arena, mae in rows:
        print(f"{label:<20}{size:>11,}{names:>9,}{muladd:>9}{ops:>5}{arena:>9,}{mae:>10.6f}")
    ours = rows[-1]
    for other in rows[:-1]:
        _, size, names, muladd, ops, arena, mae = other
        print(f"{'ratio ' + other[0] + '/fold':<20}{size / ours[1]:>11.3f}{names / ours[2]:>9.2f}{'':>9}"
              f"{ops / ours[4]:>5.2f}{arena / ours[5]:>9.2f}{mae / ours[6]:>10.3f}")
    print(f"\n{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
