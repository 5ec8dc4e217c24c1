#!/usr/bin/env python3
"""Benchmark: edgeq's int8 conversion vs the plain way, on the bundled example.

The plain way is what most tutorials do: TFLiteConverter.from_keras_model with the full-int8
flags. edgeq converts the same model with batch 1 (see edgeq/loading.py). Both run in the
real TFLite Micro interpreter; the arena is TFLM's own recorded allocation total.

    .venv/bin/python scripts/bench_convert.py [MODEL.keras] [--samples N]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def plain_int8(model_path: Path, calibration) -> bytes:  # type: ignore[no-untyped-def]
    import keras
    import tensorflow as tf

    from edgeq._tf import captured_output

    model = keras.saving.load_model(model_path, compile=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(200))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with captured_output():
        return converter.convert()


def tflm_measure(tflite: bytes, x, samples: int) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """(recorded arena bytes, mean microseconds per invoke) in the TFLM interpreter."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    from edgeq._tf import captured_output

    interp = runtime.Interpreter.from_bytes(tflite)
    detail = interp.get_input_details(0)
    scale, zp = detail["quantization_parameters"]["scales"][0], detail["quantization_parameters"]["zero_points"][0]
    q = np.clip(np.round(x[:samples] / scale + zp), -128, 127).astype(np.int8)
    start = time.perf_counter()
    for sample in q:
        interp.set_input(sample[None], 0)
        interp.invoke()
    per_invoke = (time.perf_counter() - start) / len(q) * 1e6
    with captured_output() as log:
        interp.print_allocations()
    match = re.search(r"Arena allocation total (\d+) bytes", log.text)
    return (int(match.group(1)) if match else -1), per_invoke


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(ROOT / "examples" / "digits_cnn.keras"))
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()

    from edgeq.calibration import load_dataset
    from edgeq.pipeline import ConvertOptions, convert
    from edgeq.tflite.reader import read_tflite

    calibration = load_dataset("digits:calibration").inputs[0]
    x = load_dataset("digits:eval").inputs[0]
    plain = plain_int8(Path(args.model), calibration)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        result = convert(args.model, "mcu", ConvertOptions(calibration="digits", outdir=out))
        ours = (Path(out) / f"{result.name}.tflite").read_bytes()

    rows = []
    for label, blob in (("plain from_keras_model", plain), ("edgeq convert", ours)):
        info = read_tflite(blob)
        arena, micros = tflm_measure(blob, x, args.samples)
        rows.append((label, len(blob), sum(info.op_counts().values()), len(info.all_op_names), arena, micros))
    print(f"model: {args.model}; TFLM invoke timed over {args.samples} samples on this host\n")
    print(f"{'':<24}{'.tflite B':>11}{'ops':>6}{'kinds':>7}{'arena B':>10}{'us/invoke':>11}")
    for label, size, ops, kinds, arena, micros in rows:
        print(f"{label:<24}{size:>11,}{ops:>6}{kinds:>7}{arena:>10,}{micros:>11.1f}")
    (_, ps, po, pk, pa, pt), (_, es, eo, ek, ea, et) = rows
    print(f"{'ratio plain/edgeq':<24}{ps / es:>11.2f}{po / eo:>6.2f}{pk / ek:>7.2f}{pa / ea:>10.2f}{pt / et:>11.2f}")
    _isolation_overhead(args.model)
    return 0


def _isolation_overhead(model: str, runs: int = 3) -> None:
    """Wall time of `edgeq.convert` with the conversion in a child process (the default) and in
    this process (`Worker(in_process=True)`, what edgeq did before the child existed)."""
    import tempfile

    from edgeq.isolation import TENSORFLOW, Worker, shared_worker
    from edgeq.pipeline import ConvertOptions, convert

    def best(worker: Worker) -> float:
        times = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                convert(model, "mcu", ConvertOptions(calibration="digits", outdir=out), worker=worker)
                times.append(time.perf_counter() - started)
        return min(times)

    child, here = best(shared_worker(TENSORFLOW)), best(Worker(in_process=True))
    print(f"\nconvert, best of {runs} (TensorFlow already imported in both processes):")
    print(f"  in a child process {child:.2f} s, in this process {here:.2f} s: overhead {child / here:.2f}x "
          f"({child - here:+.2f} s)")


if __name__ == "__main__":
    raise SystemExit(main())
