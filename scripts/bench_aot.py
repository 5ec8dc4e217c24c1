#!/usr/bin/env python3
"""Benchmark: the model as plain C (edgeq/aot) against the TFLite Micro way, on an emulated Cortex-M4.

For the bundled example and each model of scripts/reference_models.py (Keras 3, trained briefly,
converted by `edgeq convert --target mcu`), it writes the C, builds the QEMU mps2-an386 firmware,
runs 20 samples through `device-check` and prints per model:
  - bit-exact samples (the C on the emulated board vs TFLM on this host);
  - instructions per inference, counted by the board's port under `-icount shift=0,sleep=off`
    (1 instruction per virtual nanosecond, from a SysTick wrap, so the counts repeat exactly);
    TFLM with its reference kernels takes about 819k on the example, 210k with CMSIS-NN
    (REFERENCE.md, measured once against real TFLM sources);
  - flash: the whole AOT firmware's text + rodata + data (model, weights, kernels, protocol, startup) vs
    what the TFLM way needs at least: the model array + the mcu target's runtime flash;
  - RAM: edgeq's static activation arena vs TFLM's smallest arena (measured in TFLM);
  - the stack high-water mark (the port paints the stack at reset), the firmware's sections;
  - the plain-C build's instructions (-DEDGEQ_PLAIN_C: no DSP loops) next to the DSP build's;
  - a calibration of cycles per unit of work from each op's own count (a per-op profile build),
    the figures of the mcu-c profile, and how its estimate compares with the measurement.
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
TFLM_CMSIS_INSTRUCTIONS = 210_000  # the same with CMSIS-NN kernels


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
    from edgeq.device.qemu import build_qemu_firmware, op_profile, running_board, stack_high_water
    from edgeq.emulator.latency import count_macs, estimate_latency
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
        row["sizes"] = firmware.sizes
        row["aot_flash"] = firmware.flash_bytes
        row["aot_arena"] = firmware.arena_bytes
        with running_board(tflite) as board:
            result = device_check(board.url, tflite, data, limit=20, output_dir=folder / "check", timeout=30)
            row["stack"] = stack_high_water(board.firmware)
        report = result.report
        row["bit_exact"] = f"{report.agreement.bit_exact}/{report.run.requested}"
        if result.verdict != "pass":
            row["bit_exact"] += f" ({result.verdict}: {report.run.stopped_because or report.agreement.first_differing[:1]})"
            print(f"{name}: {row['bit_exact']}", file=sys.stderr)
        row["instructions"] = int(report.latency.median) if report.latency else None
        row["instructions_max"] = int(report.latency.max) if report.latency else None
        with running_board(tflite, plain_c=True) as board:
            plain = device_check(board.url, tflite, data, limit=3, output_dir=folder / "plain", timeout=60).report
        row["plain_instructions"] = int(plain.latency.median) if plain.latency else None
        with running_board(tflite, profile_ops=True) as board:
            device_check(board.url, tflite, data, limit=1, output_dir=folder / "profile", timeout=60)
            profile = op_profile(board.firmware)
        row["ops"] = [(kind, work, profile[op.index]) for op, kind, work in count_macs(info) if op.index in profile]
        row["estimated"] = estimate_latency(info, load_target("mcu-c")).total_cycles
    return row


def calibration(rows: list[dict]) -> list[tuple[str, int, float, float]]:
    """Per kind of work: (kind, ops, instructions per unit of work, the mcu profile's cycles per unit).

    From the per-op profile of every model: a kind's figure is its ops' instructions over their work
    (so the big ops, which decide the latency, weigh most); the per-op overhead is the median of
    what each op took beyond its kind's figure times its work (an op's call, loop set-up and the
    profile's own timer reads)."""
    from edgeq.targets import load_target

    ops = [op for r in rows for op in r.get("ops", [])]
    kinds = sorted({k for k, work, _ in ops if k != "other" and work > 0})
    if not ops or not kinds:
        return []
    per_unit = {k: sum(n for kind, _, n in ops if kind == k) / sum(w for kind, w, _ in ops if kind == k)
                for k in kinds}
    overhead = float(np.median([max(n - per_unit.get(kind, 0.0) * work, 0.0) for kind, work, n in ops]))
    mcu = load_target("mcu").latency
    out = [(k, sum(1 for kind, _, _ in ops if kind == k), per_unit[k], float(getattr(mcu, k))) for k in kinds]
    return out + [("op_overhead", len(ops), overhead, float(mcu.op_overhead))]


def main(argv: list[str] | None = None) -> int:
    from reference_models import REFERENCES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["example", *REFERENCES])
    args = parser.parse_args(argv)
    rows = [measure(name) for name in args.models]
    print(f"{'model':<20}{'bit-exact':>10}{'instr. C':>12}{'instr. DSP':>12}{'AOT flash':>11}{'TFLM flash':>12}"
          f"{'ratio':>7}{'AOT RAM':>9}{'TFLM arena':>12}{'ratio':>7}{'stack':>7}{'est/meas':>9}")
    for r in rows:
        if "aot_flash" not in r:
            print(f"{r['model']:<20}  C backend refuses it: {r.get('note', '?')}")
            continue
        print(f"{r['model']:<20}{r['bit_exact']:>10}{r['plain_instructions'] or 0:>12,}{r['instructions'] or 0:>12,}"
              f"{r['aot_flash']:>11,}{r['tflm_flash']:>12,}{r['aot_flash'] / r['tflm_flash']:>7.2f}{r['aot_arena']:>9,}"
              f"{r['tflm_arena']:>12,}{r['aot_arena'] / r['tflm_arena']:>7.2f}{r['stack'] or 0:>7,}"
              f"{r['estimated'] / r['instructions'] if r.get('instructions') else 0:>9.2f}")
    print("\nfirmware sections (arm-none-eabi-size -A): text / rodata / data / bss (bss with the 16 KiB stack)")
    for r in rows:
        if "sizes" in r:
            z = r["sizes"]
            print(f"  {r['model']:<20}{z['text']:>9,} /{z['rodata']:>9,} /{z['data']:>6,} /{z['bss']:>8,}")
    example = next((r for r in rows if r["model"] == "example" and r.get("instructions")), None)
    if example:
        print(f"\nexample: {example['instructions']:,} instructions per inference (DSP; plain C "
              f"{example['plain_instructions']:,}) vs TFLM reference kernels ~{TFLM_EXAMPLE_INSTRUCTIONS:,}: "
              f"{example['instructions'] / TFLM_EXAMPLE_INSTRUCTIONS:.2f}x; vs CMSIS-NN ~{TFLM_CMSIS_INSTRUCTIONS:,}: "
              f"{example['instructions'] / TFLM_CMSIS_INSTRUCTIONS:.2f}x")
    fitted = calibration(rows)
    if fitted:
        print("\ncalibration: instructions per unit of work on the emulated Cortex-M4 (DSP build), fitted over "
              "every op's own count (per-op profile), next to the mcu profile's CMSIS-NN cycles")
        for kind, n, per_unit, profile in fitted:
            print(f"  {kind:<20}{n:>5} ops {per_unit:>10.2f} instructions   (mcu profile: {profile:g} cycles)")
    print("flash: the whole AOT firmware (model, kernels, protocol, startup) vs the model array + the mcu "
          "profile's TFLM runtime; RAM: edgeq's static arena vs TFLM's smallest arena; stack: high-water mark "
          "of the painted stack; est/meas: the mcu-c profile's latency estimate (cycles) over the instructions "
          "measured (DSP build)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
