#!/usr/bin/env python3
"""How edgeq's time and memory grow with the model, next to the plain TFLite converter.

    .venv/bin/python scripts/bench_scale.py [--models digits,ds_cnn,mnv2_035_96,mnv2_224,effnet_b0]
                                            [--target iot] [--eval 100] [--more-eval 1000]

For each model (random weights, from keras.applications or scripts/reference_models.py, from ~0.05 M
to ~5 M parameters) it times, each in a fresh process:
- plain: the TFLite converter's full int8 conversion with 64 calibration samples (the 12-line
  script every tutorial has);
- edgeq --no-eval: `edgeq convert MODEL --target T --calibration calib.npz --no-eval`;
- edgeq --eval N: the same with N eval samples (float reference, emulation, per-layer error);
- on the largest model, edgeq --eval M as well (M = --more-eval), to show that memory follows the
  model, not the number of samples.
Peak RSS is the largest process's, children included (the conversion runs in a child process):
RUSAGE_CHILDREN of a wrapper process around each run. One run, every number, as ratios to plain.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PYTHON = sys.executable

MODELS = {
    "digits": "the bundled example CNN (examples/digits_cnn.keras)",
    "ds_cnn": "DS-CNN keyword spotting, 49x10x1 (reference_models.ds_cnn)",
    "mnv2_035_96": "MobileNetV2 0.35 at 96x96x3",
    "mnv2_224": "MobileNetV2 1.0 at 224x224x3, 100 classes",
    "effnet_b0": "EfficientNetB0 at 224x224x3, 1000 classes",
}

PLAIN = """
import sys, numpy as np, keras, tensorflow as tf
model = keras.saving.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2], allow_pickle=False)["x"]
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = tf.int8
converter.inference_output_type = tf.int8
open(sys.argv[3], "wb").write(converter.convert())
"""

MEASURED = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
print(code.returncode, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
if code.returncode:
    print(code.stderr[-2000:], file=sys.stderr)
"""


def build(name: str, folder: Path) -> Path:
    """The model saved as .keras in `folder`, random weights."""
    if name == "digits":
        return ROOT / "examples" / "digits_cnn.keras"
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(0)
    if name == "ds_cnn":
        from reference_models import ds_cnn

        model = ds_cnn(keras)
    elif name == "mnv2_035_96":
        model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    elif name == "mnv2_224":
        model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, weights=None, classes=100)
    elif name == "effnet_b0":
        model = keras.applications.EfficientNetB0(input_shape=(224, 224, 3), weights=None, classes=1000)
    else:
        raise SystemExit(f"unknown model {name}; choose from {', '.join(MODELS)}")
    path = folder / f"{name}.keras"
    model.save(path)
    return path


def data(model_path: Path, folder: Path, n: int, tag: str) -> Path:
    """n random samples of the model's input, as an .npz with x."""
    import numpy as np

    from edgeq.loading import load_model

    shape = load_model(model_path).input_specs[0].shape[1:]
    path = folder / f"{model_path.stem}_{tag}.npz"
    np.savez(path, x=np.random.default_rng(n).normal(0, 1, size=(n, *shape)).astype(np.float32))
    return path


def measured(command: list[str]) -> tuple[float, float, bool]:
    """(wall seconds, peak RSS in MB of the largest process in the run, succeeded) of `command`."""
    out = subprocess.run([PYTHON, "-c", MEASURED, *command], capture_output=True, text=True)
    code, wall, rss = out.stdout.split()[:3]
    if int(code):
        print(f"  failed: {' '.join(command[:6])}...\n{out.stderr[-1500:]}", file=sys.stderr)
    return float(wall), int(rss) / 1024, int(code) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--target", default="iot")
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--more-eval", type=int, default=1000, help="eval samples of the second run on the largest "
                        "model (0: none)")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-scale-") as tmp:
        folder = Path(tmp)
        for k, name in enumerate(names):
            print(f"{name}: building", flush=True)
            model = build(name, folder)
            from edgeq.loading import load_model

            params = load_model(model).parameter_count
            calib = data(model, folder, 64, "calib")
            plain = measured([PYTHON, "-c", PLAIN, str(model), str(calib), str(folder / "plain.tflite")])
            edgeq = [PYTHON, "-m", "edgeq", "convert", str(model), "--target", args.target, "--calibration",
                     str(calib), "--overwrite"]
            runs = {"plain": plain, "edgeq --no-eval": measured([*edgeq, "--no-eval", "-o", str(folder / "a")])}
            evals = [args.eval] + ([args.more_eval] if args.more_eval and k == len(names) - 1 else [])
            for n in evals:
                held = data(model, folder, n, f"eval{n}")
                runs[f"edgeq --eval {n}"] = measured([*edgeq, "--eval", str(held), "-o", str(folder / f"e{n}")])
            rows.append((name, params, runs))
            for label, (wall, rss, ok) in runs.items():
                print(f"  {label:<18} {wall:7.1f} s  {rss:7.0f} MB{'' if ok else '  FAILED'}", flush=True)
    print()
    print(f"| model | parameters | run | wall s | x plain | peak RSS MB | x plain |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, params, runs in rows:
        base_wall, base_rss, _ = runs["plain"]
        for label, (wall, rss, ok) in runs.items():
            ratio = "" if label == "plain" else f"{wall / base_wall:.2f}x"
            mem = "" if label == "plain" else f"{rss / base_rss:.2f}x"
            print(f"| {name} | {params / 1e6:.2f} M | {label}{'' if ok else ' (failed)'} | {wall:.1f} | {ratio} | "
                  f"{rss:,.0f} | {mem} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
