"""The `edgeq` command line: parse, call the library, map EdgeqError to exit codes.

The group and what every command shares live here; the commands live in one module per group
(model, export, explore, device, catalog), imported at the end so that they register.

Only click and edgeq's light modules are imported at start-up; commands that need a model
import TensorFlow inside their function, so `edgeq --help` and `edgeq targets list` answer
at once.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable

import click

from edgeq._version import __version__
from edgeq.defaults import DEFAULT_MAX_ACCURACY_DROP as DEFAULT_DROP  # noqa: F401 - the commands' default
from edgeq.errors import EdgeqError
from edgeq.text import kib, percent

if TYPE_CHECKING:
    from edgeq.emulator.emulate import EmulationPart
    from edgeq.report_types import ConvertReport, EmulateReport, Sizes



class _Group(click.Group):
    """Turns edgeq's own errors into a one-line message and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except EdgeqError as exc:
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; no output was changed", err=True)
            ctx.exit(130)


_default_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """edgeq's own warnings (e.g. constant calibration data) as one line; others as Python prints them."""
    if category.__module__.startswith("edgeq"):
        click.secho(f"warning: {message}", fg="yellow", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _step(message: str) -> None:
    click.echo(click.style("• ", fg="cyan") + message, err=True)


def _progress_factory(quiet: bool) -> Callable[[str, int], Callable[[int], None]]:
    """Progress bars on stderr, only when a person is watching (a terminal, not CI, not --json)."""
    if quiet or os.environ.get("CI") or not sys.stderr.isatty():
        return lambda label, total: (lambda done: None)

    # A stream of its own on the terminal: the converter's fd-level capture must not swallow the bar.
    terminal = open(os.dup(sys.stderr.fileno()), "w", buffering=1)  # noqa: SIM115 (lives as long as the command)

    def start(label: str, total: int) -> Callable[[int], None]:
        bar = click.progressbar(length=total, label=f"  {label}", file=terminal, show_pos=True)
        bar.__enter__()

        def advance(done: int) -> None:
            bar.update(done - bar.pos)
            if done >= total:
                bar.__exit__(None, None, None)

        return advance

    return start


def _pct(x: float | None) -> str:
    return percent(x, missing="-")


def _summary(report: ConvertReport | EmulateReport, err: bool = False) -> None:
    """The report's key facts in the terminal: accuracy, size, memory vs budget, latency, gate."""
    def echo(text: str) -> None:
        click.echo(text, err=err)

    emu = report.emulation
    if emu.accuracy:
        echo(_accuracy_line(emu, emu.mode))
    _size_line(report.sizes, emu.mode, echo)
    f, r = emu.memory.flash, emu.memory.ram
    budget = f" of {kib(f.budget_bytes)} ({100 * f.total_bytes / f.budget_bytes:.1f}%)" if f.budget_bytes else ""
    echo(f"  flash     model {f.model_bytes:,} B + runtime {kib(f.runtime_bytes)} = {kib(f.total_bytes)}{budget}")
    if r.needed_bytes is None:
        echo(f"  RAM       not measured: {r.note}")
    else:
        exact = " (smallest that runs in TFLM)" if r.tflm_arena and r.kind == "arena" else ""
        if r.kind == "static arena":
            exact = f" (planned by edgeq; TFLM's arena: {r.tflm_arena.smallest:,} B)" if r.tflm_arena else ""
        budget = f" of {kib(r.budget_bytes)} ({100 * r.total_bytes / r.budget_bytes:.1f}%)" if r.budget_bytes else ""
        echo(f"  RAM       {r.kind} {r.needed_bytes:,} B{exact} + margin {r.margin_bytes:,} B + reserved "
             f"{kib(r.reserved_bytes)} = {kib(r.total_bytes)}{budget}")
    lat = emu.latency
    line = f"  latency   ~{lat.total_ms:.3g} ms estimated on {report.target.cpu} @ {lat.clock_mhz:g} MHz"
    if emu.host_latency:
        line += f"; {emu.host_latency.median_us:.0f} µs measured on this host (LiteRT)"
    if lat.note:
        line += f"; {lat.note}"
    board = lat.emulated_board
    if board:
        line += (f"\n  measured  on emulated {board.cpu} (QEMU {board.board}): {board.instructions_median:,} "
                 f"instructions per inference, bit-exact with TFLM on {board.bit_exact} of {board.samples} samples"
                 + (f"; stack {board.stack_bytes:,} B" if board.stack_bytes is not None else "")
                 + f"; firmware {board.text_bytes + board.rodata_bytes + board.data_bytes:,} B flash")
    echo(line)
    if emu.per_layer.worst:
        worst = emu.per_layer.worst[0]
        echo(f"  per-layer worst: {worst.op} '{worst.layer[:48]}' RMSE/scale {worst.rmse_over_scale:.2f}")
    for c in report.checks:
        mark = (click.style("skip", fg="yellow") if c.skipped else click.style("ok  ", fg="green")
                if c.passed else click.style("FAIL", fg="red"))
        echo(f"  {mark} {c.name:<13} {c.message}")
    verdict = click.style("PASSED", fg="green") if report.gate.passed else click.style("FAILED", fg="red")
    echo(f"  gate      {verdict}" + (" (outputs written anyway: --force)" if report.gate.forced else ""))


def _accuracy_line(emu: EmulationPart, mode: str) -> str:
    acc = emu.accuracy
    assert acc is not None
    line = (f"  accuracy  float {_pct(acc.float_top1)} -> {mode} {_pct(acc.quantized_top1)}"
            if acc.float_top1 is not None else f"  accuracy  {mode} {_pct(acc.quantized_top1)}")
    if acc.quantized_auc is not None:
        line = (f"  accuracy  per-file AUC float {acc.float_auc:.4f} -> {mode} {acc.quantized_auc:.4f}"
                if acc.float_auc is not None else f"  accuracy  per-file AUC {mode} {acc.quantized_auc:.4f}")
        line += f" over {acc.auc_files} files (anomaly scores: reconstruction error)"
    elif acc.drop_points is not None:
        line += f" (drop {acc.drop_points:+.2f} points)"
    elif acc.quantized_top1 is None and acc.errors:
        e = acc.errors[0]
        line = f"  output    SNR {e.snr_db:.1f} dB, mean abs error {e.mean_abs:.4g}, cosine {e.cosine:.5f}"
    line += f" on {acc.samples} samples of {emu.data.name if emu.data else '?'}"
    conf = acc.confirmation
    if conf and conf.identical:
        return line + f" (LiteRT, bit-exact with TFLM on the first {conf.samples})"
    if conf:
        return line + f" (TFLM; {conf.summary()})"
    return line + f" ({acc.runtime_used})"


def _size_line(sizes: Sizes, mode: str, echo: Callable[[str], None]) -> None:
    if sizes.float32_tflite_bytes and mode != "float32":
        ratio = sizes.ratio or 0.0
        change = f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"
        stripped = (f"; {sizes.names_stripped_bytes:,} B of names, unused bias scales and repeated zero points "
                    "left out of the flashed model" if sizes.names_stripped_bytes else "")
        echo(f"  size      float32 {kib(sizes.float32_tflite_bytes)} -> {mode} "
             f"{kib(sizes.quantized_tflite_bytes)} ({change}{stripped})")
    elif sizes.quantized_tflite_bytes:
        echo(f"  size      {kib(sizes.quantized_tflite_bytes)} "
             + ("(float32, not quantized)" if mode == "float32" else f"({mode})"))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeq")
def main() -> None:
    """Take a trained Keras, PyTorch or ONNX model to a microcontroller, a Linux board or a phone.

    \b
    Typical use:
      edgeq targets list                         # what can I deploy to?
      edgeq precision model.keras --data digits --target mcu    # what would each format cost?
      edgeq convert model.keras --target mcu --calibration digits --harness
      edgeq convert model.onnx --target mcu --calibration data_nchw.npz   # or a torch nn.Module
      edgeq inspect edgeq-out/model-mcu/model.tflite
      edgeq device-check --port /dev/ttyACM0 --model edgeq-out/model-mcu/model.tflite --data digits

    Exit codes: 0 ok, 2 bad input (file, data, option), 3 the model does not fit the target,
    4 the device stopped answering (device-check).
    """


# The commands register themselves on `main` when their modules are imported.
from edgeq.cli import catalog, device, explore, export, model, sweep  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
