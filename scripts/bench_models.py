#!/usr/bin/env python3
"""Benchmark: real edge architectures through edgeq vs the plain TFLite converter, per format and target.

For each model of scripts/reference_models.py (trained briefly on synthetic data), each format a
user has (Keras 3 .keras, tf_keras .h5, SavedModel) and each target (mcu, iot), it runs
`edgeq convert` and the plain way (TFLiteConverter.from_keras_model with the full-int8 flags, or
from_saved_model, as tutorials do), and prints per row: flash bytes (edgeq's flashed model vs
plain), TFLM arena (smallest that runs, both measured the same way), agreement with the float
model, and conversion time. A model edgeq refuses shows the reason instead.

    .venv/bin/python scripts/bench_models.py                       # the whole matrix (~15 min)
    .venv/bin/python scripts/bench_models.py ds_cnn resnet8 --formats keras --targets mcu
    .venv/bin/python scripts/bench_models.py --markdown            # the README's table
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FORMATS = ("keras", "h5", "savedmodel")
TARGETS = ("mcu", "iot")


def save(reference, fmt: str, folder: Path):  # type: ignore[no-untyped-def]
    """The model built and trained in the Keras a user of `fmt` has, saved as `fmt`; and its data."""
    from edgeq._tf import tf

    tf()
    import keras
    import tf_keras

    from reference_models import trained

    model, data = trained(reference, tf_keras if fmt == "h5" else keras)
    path = folder / {"keras": f"{reference.name}.keras", "h5": f"{reference.name}.h5",
                     "savedmodel": f"{reference.name}_savedmodel"}[fmt]
    if fmt == "savedmodel":
        model.export(str(path), format="tf_saved_model", verbose=False)
    else:
        model.save(path)
    np.savez(folder / "data.npz", **data)
    return model, path


def plain_int8(fmt: str, path: Path, data: dict, names: list[str]) -> bytes:
    """What a tutorial does: load the model, the converter with the full-int8 flags, the same
    calibration data. Runs in a child process: the plain way segfaults on some models."""
    from edgeq._tf import captured_output, tf

    tfm = tf()
    if fmt == "savedmodel":
        converter = tfm.lite.TFLiteConverter.from_saved_model(str(path))
    else:
        if fmt == "h5":
            import tf_keras as keras_module
        else:
            import keras as keras_module
        model = keras_module.models.load_model(path, compile=False)
        converter = tfm.lite.TFLiteConverter.from_keras_model(model)
    keys = [k for k in data if k.startswith("x")]

    def representative():  # type: ignore[no-untyped-def]
        for i in range(200):
            if len(keys) == 1:
                yield [data[keys[0]][i:i + 1]]
            else:
                yield {n: data[f"x_{n}"][i:i + 1] for n in names}

    converter.optimizations = [tfm.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tfm.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tfm.int8
    with captured_output():
        return bytes(converter.convert())


def arena_of(model: bytes) -> int | None:
    from edgeq.emulator.memory import measure_tflm_arena
    from edgeq.errors import EdgeqError

    try:
        return measure_tflm_arena(model).smallest
    except EdgeqError:
        return None


def run(reference, fmt: str, target: str, worker) -> dict:  # type: ignore[no-untyped-def]
    from edgeq.errors import EdgeqError
    from edgeq.isolation import ChildCrashed, Worker
    from edgeq.pipeline import ConvertOptions, GateError, convert

    row = {"model": reference.name, "format": fmt, "target": target}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, path = save(reference, fmt, folder)
        data = dict(np.load(folder / "data.npz"))
        started = time.perf_counter()
        try:
            options = ConvertOptions(calibration=str(folder / "data.npz"), evaluation=str(folder / "data.npz"),
                                     outdir=folder / "out")
            result = convert(path, target, options, worker=worker)
        except GateError as exc:
            result = exc.result
            row["note"] = "gate failed: " + ", ".join(exc.result.gate.failed) + "; "
        except EdgeqError as exc:
            row["note"] = f"refused (exit {exc.exit_code}): {exc.message.split(': ', 1)[-1][:120]}"
            return row
        row["seconds"] = time.perf_counter() - started
        emulation = result.report.emulation
        row["agreement"] = emulation.accuracy.top1_agreement if emulation.accuracy else None
        errors = (emulation.accuracy.errors if emulation.accuracy else None) or []
        row["snr_db"] = min((e.snr_db for e in errors), default=None)
        row["bytes"] = result.quantized_bytes
        row["arena"] = emulation.memory.ram.needed_bytes if target == "mcu" else None
        names = [t.name.split(":")[0] for t in model.inputs]
        try:
            with Worker(import_paths=(str(ROOT / "scripts"),)) as plain_worker:
                # By module name, so that the child (which imports scripts/) finds the function.
                plain = plain_worker.call(importlib.import_module("bench_models").plain_int8, fmt, path, data, names)
        except ChildCrashed as crash:
            row["plain_note"] = f"the plain converter {crash.how}"
            return row
        except Exception as exc:  # the plain way may fail where edgeq does not
            row["plain_note"] = f"the plain converter failed ({type(exc).__name__})"
            return row
        row["plain_bytes"] = len(plain)
        if target == "mcu":
            row["plain_arena"] = arena_of(plain)
    return row


def main() -> int:
    from reference_models import REFERENCES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=list(REFERENCES), help=f"any of {', '.join(REFERENCES)}")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    from edgeq.isolation import TENSORFLOW, shared_worker

    worker = shared_worker(TENSORFLOW)
    rows = []
    for name in args.models:
        for fmt in args.formats:
            for target in args.targets:
                row = run(REFERENCES[name], fmt, target, worker)
                rows.append(row)
                print(_line(row), file=sys.stderr if args.markdown else sys.stdout, flush=True)
    if args.markdown:
        print(_markdown(rows))
    else:
        worst = max((r["bytes"] / r["plain_bytes"] for r in rows if r.get("plain_bytes") and r["target"] == "mcu"),
                    default=None)
        if worst is not None:
            print(f"\nlargest flash ratio edgeq/plain on mcu: {worst:.3f}")
    return 0


def _fmt(value, spec: str = ",") -> str:  # type: ignore[no-untyped-def]
    return "-" if value is None else format(value, spec)


def _line(r: dict) -> str:
    if "bytes" not in r:
        return f"{r['model']:<20} {r['format']:<10} {r['target']:<4} {r.get('note', '')}"
    ratio = f"{r['bytes'] / r['plain_bytes']:.3f}" if r.get("plain_bytes") else "-"
    arena = (f"{r['arena'] / r['plain_arena']:.2f}" if r.get("arena") and r.get("plain_arena") else "-")
    return (f"{r['model']:<20} {r['format']:<10} {r['target']:<4} flash {_fmt(r['bytes']):>9} B vs plain "
            f"{_fmt(r.get('plain_bytes')):>9} B ({ratio})  arena {_fmt(r.get('arena')):>8} B vs "
            f"{_fmt(r.get('plain_arena')):>8} B ({arena})  agreement {_fmt(r.get('agreement'), '.3f')}  "
            f"SNR {_fmt(r.get('snr_db'), '.1f')} dB  {r['seconds']:.1f} s  {r.get('note', '')}{r.get('plain_note', '')}")


def _markdown(rows: list[dict]) -> str:
    out = ["| model | format | target | flash B (edgeq / plain) | TFLM arena B (edgeq / plain) | top-1 agreement | "
           "min SNR dB | convert s | note |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "bytes" not in r:
            out.append(f"| {r['model']} | {r['format']} | {r['target']} | | | | | | {r.get('note', '')} |")
            continue
        ratio = f" ({r['bytes'] / r['plain_bytes']:.2f}x)" if r.get("plain_bytes") else ""
        arena = (f"{_fmt(r['arena'])} / {_fmt(r.get('plain_arena'))}" if r["target"] == "mcu" else "-")
        out.append(f"| {r['model']} | {r['format']} | {r['target']} | {_fmt(r['bytes'])} / "
                   f"{_fmt(r.get('plain_bytes'))}{ratio} | {arena} | {_fmt(r.get('agreement'), '.3f')} | "
                   f"{_fmt(r.get('snr_db'), '.1f')} | {r['seconds']:.1f} | {r.get('note', '')}{r.get('plain_note', '')} |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
