#!/usr/bin/env python3
"""Benchmark: `convert --search` against the converter's two defaults, on a RAM-tight board.

For the matrix's Dense autoencoder (scripts/reference_models.py, 10 FULLY_CONNECTED layers) on a
16 KiB part, the bundled digits CNN on a part just too small for its per-channel default, and a
regressor with an outlier channel whose int8 default misses an SNR floor (--min-snr: the
accuracy levers, int16 activations per layer), it prints:
  - the Pareto front of the whole space (`edgeq search`: every prefix of the search's order),
    quality against RAM;
  - the recipe `convert --search` chose, next to the two converter defaults (per channel
    everywhere, per tensor everywhere), and how many candidates it measured;
  - the wall time of `convert --search` (one worker) against one plain `convert` (the ratio is
    the price of searching), and of `edgeq search` with 1 and 2 local workers (and on a Ray head,
    if given).

    .venv/bin/python scripts/bench_search.py
    .venv/bin/python scripts/bench_search.py --ray 127.0.0.1:6379   # a head started with `ray start --head`
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
EDGEQ = [sys.executable, "-m", "edgeq"]
RAY_ADDRESS = sys.argv[sys.argv.index("--ray") + 1] if "--ray" in sys.argv else None  # a head already running


def _board(folder: Path, name: str, ram: int, reserved: int) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'kind = "board"\ninherits = "mcu"\ndescription = "{name}"\n[memory]\n'
                    f"ram_bytes = {ram}\nreserved_ram_bytes = {reserved}\narena_margin_bytes = 256\n")
    return path


def _run(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run([*EDGEQ, *args], capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - start, proc


def _models(folder: Path) -> list[tuple[str, Path, list[str], Path | str]]:
    from edgeq._tf import tf

    tf()
    import keras
    from reference_models import REFERENCES, trained

    model, arrays = trained(REFERENCES["autoencoder"], keras)
    model.save(folder / "autoencoder.keras")
    np.savez(folder / "autoencoder.npz", **arrays)
    data = str(folder / "autoencoder.npz")
    from reference_models import outlier_regressor

    (folder / "reg").mkdir()
    reg, calib, held_out, _ = outlier_regressor(keras, folder / "reg")
    return [("Dense autoencoder, 16 KiB RAM", folder / "autoencoder.keras", ["--calibration", data, "--eval", data],
             _board(folder, "board16k", 16_384, 2_048)),
            ("digits CNN, 4.3 KiB RAM", ROOT / "examples" / "digits_cnn.keras", ["--calibration", "digits"],
             _board(folder, "board4k", 4_400, 512)),
            ("outlier-channel regressor, SNR floor 20 dB", reg,
             ["--calibration", str(calib), "--eval", str(held_out), "--min-snr", "20"], "mcu")]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, model, data, board in _models(folder):
            print(f"\n{label} ({model.name}, target {Path(board).stem})")
            cut = data.index("--min-snr") if "--min-snr" in data else len(data)  # a --search option only
            plain_data = data[:cut] + data[cut + 2:]
            plain_s, plain = _run("convert", str(model), "--target", str(board), *plain_data, "-o",
                                  str(folder / "p"), "--force", "--overwrite")
            search_s, searched = _run("convert", str(model), "--target", str(board), *data, "-o",
                                      str(folder / "s"), "--search", "--overwrite", "--workers", "1")
            one_s, everything = _run("search", str(model), "--target", str(board), *data, "-o", str(folder / "a"),
                                     "--overwrite", "--workers", "1")
            two_s, _ = _run("search", str(model), "--target", str(board), *data, "-o", str(folder / "b"),
                            "--overwrite", "--workers", "2")
            ray_s = None
            if RAY_ADDRESS:
                ray_s, _ = _run("search", str(model), "--target", str(board), *data, "-o", str(folder / "r"),
                                "--overwrite", "--ray", RAY_ADDRESS)
            if not (folder / "a" / "report.json").exists():
                print(f"  edgeq search failed: {everything.stderr.strip()[-300:]}")
                continue
            space = json.loads((folder / "a" / "report.json").read_text())["search"]
            front, best = [], None
            for c in sorted(space["candidates"], key=lambda c: c["ram_bytes"] or 0):
                if c["quality"] is not None and (best is None or c["quality"] > best):
                    front.append(c)
                    best = c["quality"]
            print(f"  quality: {space['quality_metric']}")
            print(f"  Pareto front of the {space['tried']} candidates of the whole table (RAM, quality):")
            for c in front:
                print(f"    {c['label']:<56}{c['ram_bytes']:>8,} B {c['quality']:>8.2f}  "
                      f"{'passes' if c['passed'] else 'fails ' + ', '.join(c['failed_checks'])}")
            report = json.loads((folder / "s" / "report.json").read_text())
            rows = {c["label"]: c for c in report["search"]["candidates"]}
            print(f"  convert --search measured {report['search']['tried']} candidates: "
                  f"{report['search']['stopped_because']}")
            for name in ("per channel everywhere (the converter's default)", "per tensor everywhere"):
                c = rows.get(name)
                if c:
                    print(f"    {name:<56}{c['ram_bytes']:>8,} B {c['quality']:>8.2f}  "
                          f"{'passes' if c['passed'] else 'fails ' + ', '.join(c['failed_checks'])}")
            chosen = [c for c in report["search"]["candidates"] if c["chosen"]]
            if chosen:
                c = chosen[0]
                print(f"    chosen: {c['label']:<48}{c['ram_bytes']:>8,} B {c['quality']:>8.2f}  passes")
                for c in [c for c in report["search"]["candidates"] if c["label"] not in
                          ("per channel everywhere (the converter's default)", "per tensor everywhere")]:
                    print(f"      tried {c['label']:<48}{c['ram_bytes']:>8,} B {c['quality']:>8.2f}  "
                          f"{'passes' if c['passed'] else 'fails ' + ', '.join(c['failed_checks'])}")

            else:
                print("    chosen: none passes (exit 3)")
            print(f"  wall time: convert {plain_s:.1f} s, convert --search {search_s:.1f} s "
                  f"({search_s / plain_s:.2f}x)")
            print(f"  edgeq search ({space['tried']} candidates): 1 worker {one_s:.1f} s, 2 workers {two_s:.1f} s "
                  f"({two_s / one_s:.2f}x)" + (f", Ray {ray_s:.1f} s ({ray_s / one_s:.2f}x)" if ray_s else ""))
            if plain.returncode not in (0, 3) or searched.returncode not in (0, 3):
                print(f"  (exit codes: convert {plain.returncode}, --search {searched.returncode})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
