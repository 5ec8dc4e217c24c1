"""The commands that talk to a board or stand in for one: device-check, device-sim."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgeq.cli import main, _progress_factory, _step
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD, LENGTH_LIMIT, MIN_PAYLOAD
from edgeq.errors import EdgeqError


@main.command("device-check")
@click.option("-p", "--port", required=True,
              help="Serial port of the board (/dev/ttyACM0, COM3) or a pyserial URL (socket://host:port).")
@click.option("-b", "--baud", default=115200, show_default=True, type=click.IntRange(min=1),
              help="Baud rate the firmware uses (ignored by pseudo-terminals and sockets).")
@click.option("-m", "--model", "model", required=True, type=click.Path(path_type=Path),
              help="The .tflite the firmware was generated from (its SHA-256 must match the device's).")
@click.option("-d", "--data", required=True, metavar="SET",
              help="Samples to run: a bundled set (its eval split: 'digits') or a .npz/.npy with x (and y).")
@click.option("-n", "--limit", default=None, type=click.IntRange(min=1), help="Run only the first N samples.")
@click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Wait this long for each reply before resending (default: at least 10 s, more for big "
                   "samples at low baud rates).")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=Path("device-check"),
              show_default=True, help="Folder for report.json and report.md.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress output).")
def device_check(port: str, baud: int, model: Path, data: str, limit: int | None, timeout: float | None,
                 outdir: Path, overwrite: bool, as_json: bool) -> None:
    """Run a data set on the board and compare every answer with the emulator.

    \b
    The board runs the harness firmware from `edgeq firmware` (or `edgeq convert --harness`).
    edgeq first asks it which model it runs (HELLO: SHA-256, tensors, arena) and refuses a
    mismatch; then it sends the samples one by one and checks each output, byte for byte,
    against TensorFlow Lite Micro on this host. Lost or damaged replies are resent (3 times);
    a board that resets is detected, checked again, and the run goes on.

    \b
    Reports top-1 accuracy on the device, bit-exact agreement per sample (and the first
    samples that differ), and the device's inference time (median, p90, max), in the
    terminal and in report.json / report.md.

    \b
    Exit codes: 0 every sample bit-exact; 2 bad input or wrong firmware; 3 some samples
    differ from the emulator; 4 the device stopped answering (the report says how many
    samples are missing).

    \b
    Examples:
      edgeq device-check --port /dev/ttyACM0 --model digits_cnn.tflite --data digits
      edgeq device-sim digits_cnn.tflite        # no board? a virtual one, in another terminal
    """
    from edgeq.device.check import device_check as run_check
    from edgeq.device.check import summary_lines

    result = run_check(port, model, data, baud=baud, limit=limit, output_dir=outdir, overwrite=overwrite,
                       timeout=timeout, on_step=(lambda m: None) if as_json else _step,
                       progress=_progress_factory(quiet=as_json))
    report = result.report
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(f"\ndevice check of {model.name} on {port}")
        for line in summary_lines(report):
            click.echo(f"  {line}")
        click.echo(f"wrote {', '.join(str(p) for p in result.written)}")
    failure = result.failure()
    if failure is not None:
        raise failure


@main.command("device-sim")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--fault", "faults", multiple=True, metavar="SPEC",
              help="Inject a fault (repeatable): drop@N[:BYTES], crc@N, slow@N[:SECONDS], reset@N, mute@N, "
                   "flip@N, wrong-hash. N counts the INFER frames received, from 0.")
@click.option("--link", "link_path", type=click.Path(path_type=Path), default=None,
              help="Also make this path a symlink to the port, a stable name for scripts.")
@click.option("--arena", default=None, type=click.IntRange(min=1),
              help="Tensor arena bytes (default: measured smallest + --arena-margin, as `edgeq firmware` does).")
@click.option("--arena-margin", default=1024, show_default=True, type=click.IntRange(min=0),
              help="Bytes added to the measured arena.")
@click.option("--max-payload", default=DEFAULT_MAX_PAYLOAD, show_default=True,
              type=click.IntRange(min=MIN_PAYLOAD, max=LENGTH_LIMIT),
              help="Largest frame payload, like the firmware's EDGEQ_MAX_PAYLOAD.")
@click.option("--board", type=click.Choice(["mps2-an386", "mps2-an500"]), default=None,
              help="Instead of TFLM on this host: build MODEL as plain C (export-c --runtime c) into a firmware "
                   "and boot it on this emulated Cortex-M4 (an386) or M7 (an500) board in QEMU.")
def device_sim(model: Path, faults: tuple[str, ...], link_path: Path | None, arena: int | None, arena_margin: int,
               max_payload: int, board: str | None) -> None:
    """A virtual board: run MODEL in TFLite Micro behind a serial port (a pseudo-terminal).

    \b
    It speaks the same protocol as the harness firmware, so you can try the whole on-device
    flow without hardware. It prints the port on the first line of standard output and serves
    until Ctrl-C. In another terminal:
      edgeq device-check --port <the port it printed> --model MODEL --data digits

    \b
    With --board mps2-an386 (Cortex-M4) or mps2-an500 (Cortex-M7), the board is a real firmware
    instead: MODEL as plain C (export-c --runtime c), edgeq's device loop and a bare-metal port,
    booted in QEMU (qemu-system-arm) with one instruction per virtual nanosecond: device-check
    reports instructions per inference, the same on every host. When stopped, it prints the stack
    high-water mark (the port paints the stack at reset). The port it prints is a socket:// URL.

    \b
    Faults show how device-check copes with a bad line or a flaky board:
      drop@N[:K]  drop K bytes (default 3) of the reply to INFER number N
      crc@N       corrupt that reply's CRC
      slow@N[:S]  answer after S seconds (default 2)
      reset@N     reboot instead of answering (the inference count starts again)
      mute@N      stop answering from INFER number N on
      flip@N      answer with one output bit flipped (a device computing wrong answers)
      wrong-hash  claim another model in HELLO (the wrong firmware)
    """
    import signal
    import threading

    from edgeq.device.sim import Serving, serve_model

    stop = threading.Event()
    if board is not None:
        _serve_board(model, board, stop, faults, link_path)
        return

    def ready(serving: Serving) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        click.echo(serving.port)
        sys.stdout.flush()
        where = str(serving.link) if serving.link is not None else serving.port
        click.echo(f"device-sim: serving {model.name} in TFLite Micro on {serving.port}"
                   + (f" (linked at {serving.link})" if serving.link else "") + f"; arena {serving.arena:,} B"
                   + (f"; faults: {', '.join(map(str, serving.faults))}" if serving.faults else ""), err=True)
        click.echo(f"device-sim: in another terminal: edgeq device-check --port {where} --model {model} --data SET",
                   err=True)
        click.echo("device-sim: Ctrl-C to stop", err=True)

    served = serve_model(model, stop, faults=faults, link_path=link_path, arena=arena, arena_margin=arena_margin,
                         max_payload=max_payload, on_ready=ready, log=lambda line: click.echo(f"device-sim: {line}",
                                                                                                err=True))
    click.echo(f"device-sim: stopped after {served} inference(s)", err=True)


def _serve_board(model: Path, board: str, stop: Any, faults: tuple[str, ...], link_path: Path | None) -> None:
    import signal

    from edgeq.device.qemu import BoardServing, serve_board, stack_high_water

    if faults or link_path is not None:
        raise EdgeqError("--fault and --link are for the host simulator, not for --board",
                         hint="drop them: the emulated board's serial line is a local TCP socket")

    def ready(serving: BoardServing) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        click.echo(serving.url)
        sys.stdout.flush()
        size = serving.firmware.sizes
        click.echo(f"device-sim: {model.name} as plain C on QEMU {board} ({serving.firmware.elf.name}: "
                   f"{size.get('text', 0):,} B text, {size.get('rodata', 0):,} B rodata, {size.get('data', 0):,} B "
                   f"data, {size.get('bss', 0):,} B bss with the 16 KiB stack; arena {serving.firmware.arena_bytes:,} B)",
                   err=True)
        click.echo(f"device-sim: in another terminal: edgeq device-check --port {serving.url} --model {model} "
                   "--data SET", err=True)
        click.echo("device-sim: Ctrl-C to stop", err=True)

    def stopped(serving: BoardServing) -> None:
        stack = stack_high_water(serving.firmware)
        if stack is not None:
            click.echo(f"device-sim: stack high-water mark {stack:,} B (of 16 KiB, painted at reset)", err=True)

    code = serve_board(model, stop, board=board, on_ready=ready, on_stop=stopped)
    click.echo(f"device-sim: QEMU stopped (exit {code})", err=True)
