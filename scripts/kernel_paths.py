#!/usr/bin/env python3
"""How LiteRT's builtin kernels compare with TFLite Micro on this machine, under each kernel path.

LiteRT runs int8 convolutions and fully connected layers through ruy, which picks its kernels by
CPU features at run time; TFLM runs the same model through its reference C kernels everywhere.
So whether the two agree bit for bit belongs to the CPU, not the model. ruy reads a hex bit mask
from RUY_PATHS; forcing each x86 path in turn shows on one machine what other CPUs give:

    .venv/bin/python scripts/kernel_paths.py                       # edgeq-out/demo-mcu (scripts/demo)
    .venv/bin/python scripts/kernel_paths.py model.tflite --data digits:eval

The masks are those of the ruy inside ai-edge-litert 2.3.0 (1 portable C++, 0x10 AVX, 0x20
AVX2+FMA, 0x40 AVX-512). A path this CPU lacks, or this build does not have, kills its child
process; it is reported as not available. `RUY_PATHS=1 scripts/test` runs the whole suite with
the portable kernels.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "edgeq-out" / "demo-mcu" / "digits_cnn.tflite"
PATHS = {"detected by ruy": None, "portable C++": "1", "AVX": "11", "AVX2+FMA": "21", "AVX-512": "41"}


def _child(model: Path, data: str, out: Path) -> None:
    """In a child process: LiteRT's builtin kernels on every sample; raw outputs saved to `out`."""
    sys.path.insert(0, str(ROOT))
    from edgeq.calibration import load_dataset
    from edgeq.emulator.runtimes import run_litert

    dataset = load_dataset(data, default_split="eval")
    result = run_litert(model.read_bytes(), list(dataset.inputs), kernels="builtin")
    np.savez(out, *result.raw_outputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL, help="an int8 .tflite")
    parser.add_argument("--data", default="digits:eval", help="a bundled set or .npz (default digits:eval)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.model, args.data, args.child)
        return 0
    if not args.model.is_file():
        parser.error(f"{args.model} does not exist; run scripts/demo first or pass a .tflite")

    sys.path.insert(0, str(ROOT))
    from edgeq.calibration import load_dataset
    from edgeq.emulator.accuracy import raw_disagreement, top1_accuracy
    from edgeq.emulator.runtimes import run_tflm

    dataset = load_dataset(args.data, default_split="eval")
    micro = run_tflm(args.model.read_bytes(), list(dataset.inputs))
    tflm_top1 = top1_accuracy(micro.outputs[0], dataset.labels)
    print(f"{args.model.name} on {dataset.num_samples} samples of {dataset.name}; "
          f"TFLM top-1 {'-' if tflm_top1 is None else f'{100 * tflm_top1:.2f}%'}")
    print(f"{'LiteRT builtin, ruy path':<28} {'RUY_PATHS':>9} {'samples != TFLM':>16} {'max LSB':>8}")
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"kernel_paths_{os.getpid()}.npz"
    for label, mask in PATHS.items():
        env = {k: v for k, v in os.environ.items() if k != "RUY_PATHS"} | ({"RUY_PATHS": mask} if mask else {})
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run([sys.executable, __file__, str(args.model), "--data", args.data, "--child", str(out)],
                              env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            print(f"{label:<28} {mask or '-':>9} {'not available (the child died: ' + str(proc.returncode) + ')':>26}")
            continue
        with np.load(out, allow_pickle=False) as saved:
            raw = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        out.unlink()
        differing, lsb = raw_disagreement(raw, micro.raw_outputs or [])
        print(f"{label:<28} {mask or '-':>9} {differing:>16,} {'-' if lsb is None else lsb:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
