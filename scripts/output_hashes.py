#!/usr/bin/env python3
"""The SHA-256 of every file edgeq writes for a fixed set of commands: the check that a
restructuring changed no behaviour (same inputs, byte-identical outputs).

    .venv/bin/python scripts/output_hashes.py --save before.json     # on the commit before
    .venv/bin/python scripts/output_hashes.py --check before.json    # on the commit after

The commands cover the bundled example (.keras) and a SavedModel and a tf_keras .h5 built from it,
for each kind of target, with and without the harness firmware, PTQ and QAT, --runtime c and
--search (here and on local worker processes); the PyTorch CNN of examples/torch_digits.py as a
module:factory (PTQ and QAT) and exported to ONNX; plus export-c (TFLM and plain C), firmware,
inspect --json and precision on the results. Commands whose outputs time the host
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


def build_torch_models(folder: Path) -> Path | None:
    """examples/torch_digits.py's CNN, trained once (a few epochs: only the bytes matter), its data as
    NCHW .npz files, and the same network exported to ONNX. None where the torch extra is missing."""
    torch_dir = folder / "torch"
    if (torch_dir / "cnn.onnx").exists():
        return torch_dir
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / 'examples')!r})
from pathlib import Path
import torch, torch_digits
out = Path({str(torch_dir)!r})
torch_digits.main(out, epochs=5)
module = torch_digits.cnn()
module.load_state_dict(torch.load(out / "cnn.pt", weights_only=True))
torch.onnx.export(module.eval(), (torch.zeros(1, 1, 8, 8),), str(out / "cnn.onnx"), input_names=["x"],
                  output_names=["logits"])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"no PyTorch/ONNX commands: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return torch_dir


def commands(models: dict[str, Path], out: Path, torch_dir: Path | None = None) -> dict[str, list[str]]:
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
    runs["convert keras mcu --runtime c"] = ["convert", str(models["keras"]), "--target", "mcu", *cal, "--runtime", "c",
                                             "-o", str(out / "keras-mcu-c")]
    runs["export-c --runtime c"] = ["export-c", str(flashed), "--runtime", "c", "-o", str(out / "export-c-c")]
    runs["convert keras mcu --search"] = ["convert", str(models["keras"]), "--target", "mcu", *cal, "--search",
                                          "--workers", "1", "-o", str(out / "keras-mcu-search")]
    runs["convert keras mcu --search --workers 2 --min-snr"] = [
        "convert", str(models["keras"]), "--target", "mcu", *cal, "--search", "--workers", "2", "--min-snr", "30",
        "--force", "-o", str(out / "keras-mcu-search-snr")]
    if torch_dir is not None:
        data = ["--calibration", str(torch_dir / "calibration.npz"), "--eval", str(torch_dir / "eval.npz")]
        weights = ["--weights", str(torch_dir / "cnn.pt"), "--trust-model"]
        runs["convert torch factory mcu"] = ["convert", "torch_digits:cnn", *weights, "--target", "mcu", *data,
                                             "-o", str(out / "torch-mcu")]
        runs["convert torch factory mcu --qat"] = ["convert", "torch_digits:cnn", *weights, "--target", "mcu", *data,
                                                   "--qat", "--train", str(torch_dir / "eval.npz"), "--epochs", "1",
                                                   "-o", str(out / "torch-mcu-qat")]
        runs["convert onnx mcu"] = ["convert", str(torch_dir / "cnn.onnx"), "--target", "mcu", *data,
                                    "-o", str(out / "onnx-mcu")]
        runs["convert onnx mcu --runtime c"] = ["convert", str(torch_dir / "cnn.onnx"), "--target", "mcu", *data,
                                                "--runtime", "c", "-o", str(out / "onnx-mcu-c")]
    return runs


def _content(path: Path) -> bytes:
    """A file's bytes; a convert's report.json without its `timings`, which time the host."""
    data = path.read_bytes()
    if path.name == "report.json":
        report = json.loads(data)
        if isinstance(report, dict) and "timings" in report:
            report.pop("timings")
            return json.dumps(report, sort_keys=True).encode()
    return data


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(_content(p)).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_all(models_dir: Path) -> dict[str, dict[str, str]]:
    models: dict[str, Path] = dict(build_models(models_dir))
    torch_dir = build_torch_models(models_dir)
    if torch_dir is not None:
        models["torch"] = torch_dir
    result: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for label, args in commands({k: v for k, v in models.items() if k != "torch"}, out,
                                    models.get("torch")).items():
            started = time.perf_counter()
            # A module:factory is imported from the current folder, as a user's would be.
            cwd = ROOT / "examples" if any(a.startswith("torch_digits:") for a in args) else ROOT
            proc = subprocess.run([*EDGEQ, *args], capture_output=True, text=True, cwd=cwd,
                                  env=dict(os.environ, COLUMNS="100", PYTHONPATH=str(ROOT)))
            entry = {"exit": str(proc.returncode), "stdout": hashlib.sha256(_stable(proc.stdout)).hexdigest()}
            target = Path(args[args.index("-o") + 1]) if "-o" in args else None
            if target is not None and target.exists():
                entry.update(hashes(target))
            result[label] = entry
            print(f"{label:40s} exit {proc.returncode}  {len(entry) - 2:3d} files  {time.perf_counter() - started:5.1f} s",
                  file=sys.stderr)
    return result


def _stable(stdout: str) -> bytes:
    """The terminal output without the temporary folder's name, and with the checkout's own path
    named alike wherever the two runs stand."""
    lines = [line for line in stdout.replace(str(ROOT), "<checkout>").splitlines() if "/tmp" not in line]
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
