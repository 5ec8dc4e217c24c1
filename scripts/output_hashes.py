#!/usr/bin/env python3
"""The SHA-256 of every file edgeq writes for a fixed set of commands: the check that a
restructuring changed no behaviour (issue 14: same inputs, byte-identical outputs).

    .venv/bin/python scripts/output_hashes.py --save before.json     # on the commit before
    .venv/bin/python scripts/output_hashes.py --check before.json    # on the commit after

The commands cover the bundled example (.keras) and a SavedModel and a tf_keras .h5 built from it,
for each kind of target, with and without the harness firmware, PTQ and QAT, plus export-c,
firmware, inspect --json and precision on the results. Commands whose outputs time the host
(emulate, device-check) are left out: their reports differ from run to run by design.

The models are built once into --models (default edgeq-out/identity-models) and reused, so both
runs read the same input bytes. Exit 0 when every hash matches, 1 otherwise (each difference named).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGEQ = [sys.executable, "-m", "edgeq"]


def build_models(folder: Path) -> dict[str, Path]:
    """The bundled example as .keras, as a SavedModel and as a tf_keras .h5 (weights copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    models = {"keras": ROOT / "examples" / "digits_cnn.keras", "savedmodel": folder / "digits_sm",
              "h5": folder / "digits_k2.h5"}
    if models["savedmodel"].exists() and models["h5"].exists():
        return models
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from edgeq._tf import tf
tf()
import keras, tf_keras
sys.path.insert(0, {str(ROOT / 'scripts')!r})
from build_example_model import build_digits_cnn
model = keras.saving.load_model({str(models['keras'])!r}, compile=False)
model.export({str(models['savedmodel'])!r}, format="tf_saved_model", verbose=False)
twin = build_digits_cnn(tf_keras)
twin.set_weights(model.get_weights())
twin.save({str(models['h5'])!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return models


def commands(models: dict[str, Path], out: Path) -> dict[str, list[str]]:
    cal = ["--calibration", "digits"]
    runs: dict[str, list[str]] = {}
    for fmt, path in models.items():
        runs[f"convert {fmt} mcu"] = ["convert", str(path), "--target", "mcu", *cal, "-o", str(out / f"{fmt}-mcu")]
    runs["convert keras mcu --harness"] = ["convert", str(models["keras"]), "--target", "mcu", *cal, "--harness",
                                           "-o", str(out / "keras-mcu-harness")]
    runs["convert keras iot"] = ["convert", str(models["keras"]), "--target", "iot", *cal, "-o", str(out / "keras-iot")]
    runs["convert keras phone float16"] = ["convert", str(models["keras"]), "--target", "phone", "--mode", "float16",
                                           "--calibration", "digits", "-o", str(out / "keras-phone-f16")]
    runs["convert keras mcu int16x8 --force"] = ["convert", str(models["keras"]), "--target", "mcu", "--mode",
                                                 "int16x8", *cal, "--force", "-o", str(out / "keras-mcu-16x8")]
    runs["convert keras mcu --qat"] = ["convert", str(models["keras"]), "--target", "mcu", *cal, "--qat",
                                       "--epochs", "2", "-o", str(out / "keras-mcu-qat")]
    flashed = out / "keras-mcu" / "digits_cnn.tflite"
    runs["export-c"] = ["export-c", str(out / "keras-iot" / "digits_cnn.tflite"), "-o", str(out / "export-c")]
    runs["firmware"] = ["firmware", str(flashed), "--target", "mcu", "-o", str(out / "firmware")]
    runs["inspect --json"] = ["inspect", str(flashed), "--json"]
    runs["precision"] = ["precision", str(models["keras"]), "--data", "digits", "--target", "mcu",
                         "-o", str(out / "precision")]
    return runs


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_all(models_dir: Path) -> dict[str, dict[str, str]]:
    models = build_models(models_dir)
    result: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for label, args in commands(models, out).items():
            started = time.perf_counter()
            proc = subprocess.run([*EDGEQ, *args], capture_output=True, text=True, cwd=ROOT,
                                  env=dict(os.environ, COLUMNS="100"))
            entry = {"exit": str(proc.returncode), "stdout": hashlib.sha256(_stable(proc.stdout)).hexdigest()}
            target = Path(args[args.index("-o") + 1]) if "-o" in args else None
            if target is not None and target.exists():
                entry.update(hashes(target))
            result[label] = entry
            print(f"{label:40s} exit {proc.returncode}  {len(entry) - 2:3d} files  {time.perf_counter() - started:5.1f} s",
                  file=sys.stderr)
    return result


def _stable(stdout: str) -> bytes:
    """The terminal output without the temporary folder's name."""
    lines = [line for line in stdout.splitlines() if "/tmp" not in line]
    return "\n".join(lines).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, help="write the hashes to this JSON file")
    group.add_argument("--check", type=Path, help="compare with the hashes in this JSON file")
    parser.add_argument("--models", type=Path, default=ROOT / "edgeq-out" / "identity-models")
    args = parser.parse_args()
    result = run_all(args.models)
    if args.save:
        args.save.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(f"saved {sum(len(v) for v in result.values())} hashes of {len(result)} commands to {args.save}")
        return 0
    before = json.loads(args.check.read_text())
    differences = []
    for label in sorted(set(before) | set(result)):
        old, new = before.get(label, {}), result.get(label, {})
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                differences.append(f"{label}: {name}: {old.get(name, 'missing')[:12]} -> {new.get(name, 'missing')[:12]}")
    for line in differences:
        print(line)
    total = sum(len(v) for v in result.values())
    print(f"{total - len(differences)} of {total} hashes identical" + ("" if differences else ": byte-identical"))
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
