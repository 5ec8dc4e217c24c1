#!/usr/bin/env python3
"""edgeq on .tflite files that other people made: which commands take each file, whether the C is
bit-exact with TFLite Micro, and what it costs on an emulated Cortex-M4 next to TFLM.

    .venv/bin/python scripts/bench_public.py DIR [--samples 20] [--no-board] [--markdown table.md]

For every DIR/*.tflite it tries `inspect`, `emulate --target mcu`, `export-c` (TFLM's C arrays) and
`export-c --runtime c`. Where the plain C is written, it builds it with the host's gcc and runs N
random inputs (and N given ones, from DIR/<name>.npz with x or x0, x1, ... if there is one)
through the C and through TFLM's interpreter, byte for byte. With QEMU and arm-none-eabi-gcc here,
it boots the C on QEMU mps2-an386 and counts the instructions per inference, the firmware's flash
and the C's static arena against TFLM's smallest arena. A refusal shows the reason edgeq gave.

Nothing is downloaded: point DIR at models you have (TFLM's examples, the MLPerf Tiny reference
models). Exit 0 when the table is printed, whatever the rows say.
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class Row:
    file: str
    ops: str = ""
    accepted: dict[str, str] = field(default_factory=dict)  # command -> "ok" or the reason
    bit_exact: str = "-"
    instructions: int | None = None
    flash: int | None = None
    c_arena: int | None = None
    tflm_arena: int | None = None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.split(": ", 1)[-1].splitlines()[0][:140]


def _try(row: Row, command: str, run) -> object:  # type: ignore[no-untyped-def]
    try:
        got = run()
    except Exception as exc:  # a refusal is a row, not the end of the run
        row.accepted[command] = _reason(exc)
        return None
    row.accepted[command] = "ok"
    return got


def _random_inputs(info, rng: np.random.Generator, n: int) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """N inputs of each input's type: integers over the whole range, floats around the real range its
    quantization would cover (standard normal when it has none)."""
    out = []
    for t in info.input_tensors:
        shape, dtype = (n, *t.shape[1:]), np.dtype(t.dtype)
        if dtype.kind == "i":
            limits = np.iinfo(dtype)
            out.append(rng.integers(limits.min, limits.max + 1, size=shape, dtype=dtype))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


def _given_inputs(path: Path, info, n: int) -> list[np.ndarray] | None:  # type: ignore[no-untyped-def]
    """DIR/<name>.npz, quantized to the model's integer inputs (float ones as they are), if it is there."""
    data = path.with_suffix(".npz")
    if not data.is_file():
        return None
    from edgeq.emulator.runtimes import quantize_inputs

    with np.load(data, allow_pickle=False) as arrays:
        keys = ["x"] if len(info.input_tensors) == 1 else [f"x{k}" for k in range(len(info.input_tensors))]
        return [np.asarray(arrays[key][:n], dtype=np.float32) if t.dtype == "float32" else
                quantize_inputs(np.asarray(arrays[key][:n], dtype=np.float32), np.dtype(t.dtype), t.scales[0],
                                t.zero_points[0]) for key, t in zip(keys, info.input_tensors)]


def _c_agrees(model: bytes, info, sources, folder: Path, inputs: list[np.ndarray]) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Samples whose every output is byte for byte TFLM's, of those run. A model with state (LSTM,
    SVDF) starts from TFLM's initial state in both and carries it from sample to sample in both."""
    from tflite_micro.python.tflite_micro import runtime

    for name, text in sources.files.items():
        (folder / name).write_bytes(text)
    lib = folder / f"libmodel{len(list(folder.glob('libmodel*.so')))}.so"  # a fresh library: fresh state
    build = subprocess.run(["gcc", "-std=c99", "-O2", "-shared", "-fPIC", str(folder / f"{sources.ident}_model.c"),
                            "-o", str(lib), "-lm"], capture_output=True, text=True)
    if build.returncode != 0:
        raise RuntimeError(f"gcc: {build.stderr.strip().splitlines()[-1]}")
    invoke = getattr(ctypes.CDLL(str(lib)), f"{sources.ident}_invoke")
    interpreter = runtime.Interpreter.from_bytes(model, arena_size=1 << 24)
    same = 0
    for i in range(len(inputs[0])):
        for k, x in enumerate(inputs):
            interpreter.set_input(x[i:i + 1], k)
        interpreter.invoke()
        want = [interpreter.get_output(k) for k in range(len(info.output_tensors))]
        got = [np.zeros(t.shape, dtype=np.dtype(t.dtype)) for t in info.output_tensors]
        args = [np.ascontiguousarray(x[i]).ctypes.data_as(ctypes.c_void_p) for x in inputs]
        if invoke(*args, *[g.ctypes.data_as(ctypes.c_void_p) for g in got]) != 0:
            continue
        same += all(g.tobytes() == w.tobytes() for g, w in zip(got, want))
    return same, len(inputs[0])


def bench(path: Path, samples: int, board: bool) -> Row:
    from edgeq.aot.emit import emit_c
    from edgeq.emulator.memory import measure_tflm_arena
    from edgeq.pipeline import emulate_file
    from edgeq.pipeline.exports import export_aot, export_c
    from edgeq.tflite.reader import read_tflite

    row = Row(path.name)
    model = path.read_bytes()
    info = _try(row, "inspect", lambda: read_tflite(model, source=path.name))
    if info is None:
        return row
    row.ops = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in info.op_counts().items())
    with tempfile.TemporaryDirectory(prefix="edgeq-public-") as tmp:
        folder = Path(tmp)
        _try(row, "emulate", lambda: emulate_file(path, "mcu"))
        _try(row, "export-c", lambda: export_c(path, folder / "tflm"))
        written = _try(row, "export-c --runtime c", lambda: export_aot(path, folder / "c"))
        if written is None:
            return row
        sources = emit_c("model", model, info)
        # The arena plus the state a recurrent model keeps between calls (TFLM keeps it in its arena)
        row.c_arena = sources.arena_bytes + int(sources.values.get("state_bytes", 0))
        arena = _try(row, "TFLM arena", lambda: measure_tflm_arena(model, source=path.name))
        row.tflm_arena = arena.smallest if arena is not None else None
        rng = np.random.default_rng(0)
        sets = {"random": _random_inputs(info, rng, samples), "given": _given_inputs(path, info, samples)}
        counts = []
        for label, inputs in sets.items():
            if inputs is None:
                continue
            try:
                same, ran = _c_agrees(model, info, sources, folder, inputs)
                counts.append(f"{same}/{ran} {label}")
            except Exception as exc:
                counts.append(f"{label}: {_reason(exc)}")
        row.bit_exact = ", ".join(counts)
        if board:
            from edgeq.device.qemu import measure_on_board
            from edgeq.emulator.runtimes import dequantize

            floats = [x[:8] if t.dtype == "float32" else dequantize(x[:8], t.scales[0], t.zero_points[0])
                      for x, t in zip(sets["random"], info.input_tensors)]
            measured = _try(row, "QEMU", lambda: measure_on_board(model, floats))
            if measured is not None:
                row.instructions = measured.instructions_median
                row.flash = measured.text_bytes + measured.rodata_bytes + measured.data_bytes
    return row


def _cell(row: Row, command: str) -> str:
    got = row.accepted.get(command)
    return "-" if got is None else ("yes" if got == "ok" else f"no: {got}")


def render(rows: list[Row]) -> str:
    heads = ["file", "inspect", "emulate", "export-c", "export-c --runtime c", "C = TFLM (samples)",
             "QEMU instructions", "flash B", "C arena B", "TFLM arena B", "arena C/TFLM"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        ratio = f"{r.c_arena / r.tflm_arena:.2f}x" if r.c_arena and r.tflm_arena else "-"
        cells = [r.file, _cell(r, "inspect"), _cell(r, "emulate"), _cell(r, "export-c"),
                 _cell(r, "export-c --runtime c"), r.bit_exact,
                 f"{r.instructions:,}" if r.instructions else "-", f"{r.flash:,}" if r.flash else "-",
                 f"{r.c_arena:,}" if r.c_arena else "-", f"{r.tflm_arena:,}" if r.tflm_arena else "-", ratio]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of .tflite files")
    parser.add_argument("--samples", type=int, default=20, help="random (and given) inputs per file")
    parser.add_argument("--no-board", action="store_true", help="skip QEMU even where it is installed")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    files = sorted(args.folder.glob("*.tflite"))
    if not files:
        print(f"{args.folder}: no .tflite files", file=sys.stderr)
        return 2
    board = not args.no_board and all(shutil.which(t) for t in ("qemu-system-arm", "arm-none-eabi-gcc"))
    rows = []
    for path in files:
        started = time.perf_counter()
        rows.append(bench(path, args.samples, board))
        print(f"{path.name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    table = render(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
