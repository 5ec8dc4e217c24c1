#!/usr/bin/env python3
"""Benchmark: the model as plain C (edgeq/aot) against the TFLite Micro way, on an emulated Cortex-M4.

For the bundled example and each model of scripts/reference_models.py (Keras 3, trained briefly,
converted by `edgeq convert --target mcu`), it writes the C, builds the QEMU mps2-an386 firmware,
runs 20 samples through `device-check` and prints per model:
  - bit-exact samples (the C on the emulated board vs TFLM on this host);
  - instructions per inference, from the device's own timing under `-icount shift=0`
    (1 instruction per virtual nanosecond); TFLM with its reference kernels takes about 819k on
    the example (REFERENCE.md, measured once against real TFLM sources);
  - flash: the whole AOT firmware's text + data (model, weights, kernels, protocol, startup) vs
    what the TFLM way needs at least: the model array + the mcu target's runtime flash;
  - RAM: edgeq's static activation arena vs TFLM's smallest arena (measured in TFLM).
A model the C backend cannot run shows the op it lacks.

    .venv/bin/python scripts/bench_aot.py                  # the example and every reference model
    .venv/bin/python scripts/bench_aot.py example ds_cnn   # some of them
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TFLM_EXAMPLE_INSTRUCTIONS = 819_000  # REFERENCE.md: TFLM reference kernels, digits CNN, Cortex-M4


def converted(name: str, folder: Path) -> tuple[Path, str]:
    """The model as edgeq flashes it for mcu, and the data set to check it with."""
    from edgeq.pipeline import ConvertOptions, GateError, convert

    if name == "example":
        model, data = ROOT / "examples" / "digits_cnn.keras", "digits"
    else:
        from edgeq._tf import tf

        tf()
        import keras
        from reference_models import REFERENCES, trained

        trained_model, arrays = trained(REFERENCES[name], keras)
        model = folder / f"{name}.keras"
        trained_model.save(model)
        np.savez(folder / "data.npz", **arrays)
        data = str(folder / "data.npz")
    try:
        result = convert(model, "mcu", ConvertOptions(calibration=data, evaluation=data, outdir=folder / "out",
                                                      per_layer=False, force=True))
    except GateError as exc:
        result = exc.result
    return result.outdir / f"{result.name}.tflite", data


def measure(name: str) -> dict:
    from edgeq.aot.emit import emit_c
    from edgeq.device.check import device_check
    from edgeq.device.qemu import build_qemu_firmware, running_board
    from edgeq.emulator.memory import measure_tflm_arena
    from edgeq.errors import EdgeqError
    from edgeq.targets import load_target
    from edgeq.tflite.strip import read_tflite_named

    row: dict = {"model": name}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tflite, data = converted(name, folder)
        model, info = read_tflite_named(tflite)
        row["tflm_flash"] = len(model) + load_target("mcu").memory.runtime_flash_bytes
        row["tflm_arena"] = measure_tflm_arena(model).smallest
        try:
            emit_c(name, model, info)
            firmware = build_qemu_firmware(tflite, folder / "fw")
        except EdgeqError as exc:
            row["note"] = exc.message.split(": ", 1)[-1][:90]
            return row
        row["aot_flash"] = firmware.sizes["text"] + firmware.sizes["data"]
        row["aot_arena"] = firmware.arena_bytes
        with running_board(tflite) as board:
            result = device_check(board.url, tflite, data, limit=20, output_dir=folder / "check", timeout=30)
        report = result.report
        row["bit_exact"] = f"{report.agreement.bit_exact}/{report.run.requested}"
        if result.verdict != "pass":
            row["bit_exact"] += f" ({result.verdict}: {report.run.stopped_because or report.agreement.first_differing[:1]})"
            print(f"{name}: {row['bit_exact']}", file=sys.stderr)
        row["instructions"] = int(report.latency.median * 1000) if report.latency else None
    return row


def main(argv: list[str] | None = None) -> int:
    from reference_models import REFERENCES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["example", *REFERENCES])
    args = parser.parse_args(argv)
    rows = [measure(name) for name in args.models]
    print(f"{'model':<20}{'bit-exact':>10}{'instructions':>14}{'AOT flash':>11}{'TFLM flash':>12}{'ratio':>7}"
          f"{'AOT RAM':>9}{'TFLM arena':>12}{'ratio':>7}")
    for r in rows:
        if "aot_flash" not in r:
            print(f"{r['model']:<20}  C backend refuses it: {r.get('note', '?')}")
            continue
        print(f"{r['model']:<20}{r['bit_exact']:>10}{r['instructions'] or 0:>14,}{r['aot_flash']:>11,}"
              f"{r['tflm_flash']:>12,}{r['aot_flash'] / r['tflm_flash']:>7.2f}{r['aot_arena']:>9,}"
              f"{r['tflm_arena']:>12,}{r['aot_arena'] / r['tflm_arena']:>7.2f}")
    example = next((r for r in rows if r["model"] == "example" and r.get("instructions")), None)
    if example:
        print(f"\nexample: {example['instructions']:,} instructions per inference vs TFLM reference kernels "
              f"~{TFLM_EXAMPLE_INSTRUCTIONS:,}: {example['instructions'] / TFLM_EXAMPLE_INSTRUCTIONS:.2f}x")
    print("flash: the whole AOT firmware (model, kernels, protocol, startup) vs the model array + the mcu "
          "profile's TFLM runtime; RAM: edgeq's static arena vs TFLM's smallest arena")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
