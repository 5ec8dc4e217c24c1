#!/usr/bin/env python3
"""Benchmark: evaluating an int8 model in LiteRT one sample at a time vs edgeq's batched run.

Two models trained for one epoch on mnist:train and converted to int8 exactly as edgeq does
(batch 1 baked in): a small CNN (compute-bound: ~45 us of kernels per sample) and an MLP
(784-32-10, overhead-bound: ~3 us). Each runs over mnist:eval (1,000 samples) as TensorFlow's
post-training quantization tutorial does it (quantize, set, invoke, get, one sample at a time),
as a tight per-sample loop (inputs quantized at once), through `run_litert` (batch dimension
freed, checked against per-sample inference), and in TFLite Micro for reference.

    .venv/bin/python scripts/bench_emulate.py [--epochs 1] [--tflm-samples 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_mnist_mlp(keras):  # type: ignore[no-untyped-def]
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="digit")(x)
    return keras.Model(inputs, outputs, name="mnist_mlp")


def build_mnist_cnn(keras):  # type: ignore[no-untyped-def]
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="digit")(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def edgeq_int8(build, epochs: int) -> tuple[bytes, float]:  # type: ignore[no-untyped-def]
    """(int8 .tflite as edgeq converts it, float accuracy on mnist:eval)."""
    import keras

    from edgeq.calibration import load_dataset
    from edgeq.loading import load_model
    from edgeq.quantize.ptq import quantize
    from edgeq.quantize.recipe import recipe_for
    from edgeq.targets import load_target

    keras.utils.set_random_seed(0)
    train, evaluation = load_dataset("mnist:train"), load_dataset("mnist:eval")
    model = build(keras)
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train.inputs[0], train.labels, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(evaluation.inputs[0], evaluation.labels, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        recipe = recipe_for(load_target("mcu"), "int8", have_calibration=True, calibration_samples=200)
        return quantize(load_model(path), recipe, load_dataset("mnist:calibration")), float(accuracy)


def plain_loop(tflite: bytes, x: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, float, float]:
    """The tutorial way: one set_tensor/invoke/get_tensor per sample.

    Returns (dequantized outputs, seconds for the whole run, seconds spent inside invoke()).
    """
    from ai_edge_litert.interpreter import Interpreter

    from edgeq._tf import captured_output

    start = time.perf_counter()
    with captured_output():
        interp = Interpreter(model_content=tflite, num_threads=threads)
        interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    q = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    rows, in_invoke = [], 0.0
    for sample in q:
        interp.set_tensor(inp["index"], sample[None])
        began = time.perf_counter()
        interp.invoke()
        in_invoke += time.perf_counter() - began
        rows.append(interp.get_tensor(out["index"]))
    scale, zero = out["quantization"]
    outputs = (np.concatenate(rows).astype(np.float32) - zero) * scale
    return outputs, time.perf_counter() - start, in_invoke


def tutorial_loop(tflite: bytes, x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """As tensorflow.org's post-training integer quantization tutorial evaluates a model."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeq._tf import captured_output

    start = time.perf_counter()
    with captured_output():
        interp = Interpreter(model_content=tflite)
        interp.allocate_tensors()
    input_details, output_details = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for test_image in x:
        input_scale, input_zero_point = input_details["quantization"]
        test_image = test_image / input_scale + input_zero_point
        test_image = np.expand_dims(test_image, axis=0).astype(input_details["dtype"])
        interp.set_tensor(input_details["index"], test_image)
        interp.invoke()
        rows.append(interp.get_tensor(output_details["index"])[0])
    scale, zero = output_details["quantization"]
    return (np.stack(rows).astype(np.float32) - zero) * scale, time.perf_counter() - start, 0.0


def best_of(repeats: int, run):  # type: ignore[no-untyped-def]
    """The fastest of `repeats` runs (this host is shared; the minimum is the least disturbed)."""
    return min((run() for _ in range(repeats)), key=lambda r: r[1])


def bench(name: str, tflite: bytes, float_accuracy: float, args: argparse.Namespace) -> bool:
    from edgeq.calibration import load_dataset
    from edgeq.emulator.runtimes import default_threads, run_litert, run_tflm

    data = load_dataset("mnist:eval")
    x, y = data.inputs[0], data.labels
    n, threads = len(x), default_threads()
    _, tutorial_s, _ = best_of(args.repeats, lambda: tutorial_loop(tflite, x))
    plain, plain_s, invoke_s = best_of(args.repeats, lambda: plain_loop(tflite, x))
    batched = min((run_litert(tflite, [x]) for _ in range(args.repeats)), key=lambda r: r.seconds)
    tflm = run_tflm(tflite, [x[: args.tflm_samples]])
    rows = [("tutorial per-sample loop (the plain way)", n, tutorial_s),
            ("tight per-sample loop, 1 thread", n, plain_s),
            (f"edgeq run_litert, batched={batched.batched}, {threads} thr", n, batched.seconds),
            ("TFLM per-sample", tflm.samples, tflm.seconds)]
    print(f"\n{name}: {len(tflite):,} B int8, {args.epochs} epoch(s) on mnist:train; mnist:eval ({n} samples); "
          f"best of {args.repeats}, set-up included")
    print(f"{'':<46}{'samples':>8}{'seconds':>9}{'samples/s':>11}{'vs plain':>9}")
    for label, count, seconds in rows:
        rate = count / seconds
        print(f"{label:<46}{count:>8}{seconds:>9.4f}{rate:>11,.0f}{rate / (n / tutorial_s):>8.2f}x")
    same = np.array_equal(plain, batched.outputs[0])
    accuracy = float(np.mean(np.argmax(batched.outputs[0], axis=1) == y))
    print(f"tight loop: {invoke_s / plain_s:.0%} of its time inside invoke() ({invoke_s / n * 1e6:.1f} us/sample); "
          f"batched == per-sample: {same}{f' ({batched.note})' if batched.note else ''}; "
          f"top-1 float {float_accuracy:.4f}, int8 {accuracy:.4f}")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tflm-samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from edgeq._tf import captured_output, tf

    with captured_output():  # TensorFlow's start-up chatter (CUDA probes, oneDNN notes)
        tf()
        models = [(name, *edgeq_int8(build, args.epochs))
                  for name, build in (("small CNN", build_mnist_cnn), ("MLP 784-32-10", build_mnist_mlp))]
    ok = [bench(name, tflite, accuracy, args) for name, tflite, accuracy in models]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
