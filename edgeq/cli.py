"""The `edgeq` command line: parse, call the library, map EdgeqError to exit codes.

Only click and edgeq's light modules are imported at start-up; commands that need a model
import TensorFlow inside their function, so `edgeq --help` and `edgeq targets list` answer
at once.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from edgeq import __version__
from edgeq.defaults import DEFAULT_MAX_ACCURACY_DROP as DEFAULT_DROP
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD, LENGTH_LIMIT, MIN_PAYLOAD
from edgeq.errors import EdgeqError
from edgeq.report import confirmation_summary, kib
from edgeq.text import percent
from edgeq.vocab import DeviceVerdict



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


def _summary(report: dict[str, Any], err: bool = False) -> None:
    """The report's key facts in the terminal: accuracy, size, memory vs budget, latency, gate."""
    def echo(text: str) -> None:
        click.echo(text, err=err)

    emu = report["emulation"]
    mode = emu["mode"]
    acc = emu.get("accuracy")
    if acc:
        line = (f"  accuracy  float {_pct(acc['float_top1'])} -> {mode} {_pct(acc['quantized_top1'])}"
                if acc["float_top1"] is not None else f"  accuracy  {mode} {_pct(acc['quantized_top1'])}")
        if acc["drop_points"] is not None:
            line += f" (drop {acc['drop_points']:+.2f} points)"
        elif acc["quantized_top1"] is None and acc.get("errors"):
            e = acc["errors"][0]
            line = f"  output    SNR {e['snr_db']:.1f} dB, mean abs error {e['mean_abs']:.4g}, cosine {e['cosine']:.5f}"
        line += f" on {acc['samples']} samples of {emu['data']['name']}"
        conf = acc.get("confirmation")
        if conf and conf["identical"]:
            line += f" (LiteRT, bit-exact with TFLM on the first {conf['samples']})"
        elif conf:
            line += f" (TFLM; {confirmation_summary(conf)})"
        else:
            line += f" ({acc['runtime_used']})"
        echo(line)
    sizes = report["sizes"]
    if sizes.get("float32_tflite_bytes") and mode != "float32":
        ratio = sizes["ratio"]
        change = f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"
        stripped = (f"; {sizes['names_stripped_bytes']:,} B of names, unused bias scales and repeated zero points "
                    "left out of the flashed model" if sizes.get("names_stripped_bytes") else "")
        echo(f"  size      float32 {kib(sizes['float32_tflite_bytes'])} -> {mode} "
             f"{kib(sizes['quantized_tflite_bytes'])} ({change}{stripped})")
    elif sizes.get("quantized_tflite_bytes"):
        echo(f"  size      {kib(sizes['quantized_tflite_bytes'])} (float32, not quantized)")
    mem = emu["memory"]
    f, r = mem["flash"], mem["ram"]
    budget = f" of {kib(f['budget_bytes'])} ({100 * f['total_bytes'] / f['budget_bytes']:.1f}%)" if f["budget_bytes"] else ""
    echo(f"  flash     model {f['model_bytes']:,} B + runtime {kib(f['runtime_bytes'])} = {kib(f['total_bytes'])}{budget}")
    if r["needed_bytes"] is None:
        echo(f"  RAM       not measured: {r['note']}")
    else:
        exact = " (smallest that runs in TFLM)" if r["tflm_arena"] else ""
        budget = f" of {kib(r['budget_bytes'])} ({100 * r['total_bytes'] / r['budget_bytes']:.1f}%)" if r["budget_bytes"] else ""
        echo(f"  RAM       {r['kind']} {r['needed_bytes']:,} B{exact} + margin {r['margin_bytes']:,} B + reserved "
                   f"{kib(r['reserved_bytes'])} = {kib(r['total_bytes'])}{budget}")
    lat = emu["latency"]
    line = f"  latency   ~{lat['total_ms']:.3g} ms estimated on {report['target']['cpu']} @ {lat['clock_mhz']:g} MHz"
    if emu.get("host_latency"):
        line += f"; {emu['host_latency']['median_us']:.0f} µs measured on this host (LiteRT)"
    if lat.get("note"):
        line += f"; {lat['note']}"
    echo(line)
    layers = (emu.get("per_layer") or {}).get("worst") or []
    if layers:
        worst = layers[0]
        echo(f"  per-layer worst: {worst['op']} '{worst['layer'][:48]}' RMSE/scale {worst['rmse_over_scale']:.2f}")
    for c in report["checks"]:
        mark = (click.style("skip", fg="yellow") if c.get("skipped") else click.style("ok  ", fg="green")
                if c["passed"] else click.style("FAIL", fg="red"))
        echo(f"  {mark} {c['name']:<13} {c['message']}")
    gate = report["gate"]
    verdict = click.style("PASSED", fg="green") if gate["passed"] else click.style("FAILED", fg="red")
    echo(f"  gate      {verdict}" + (" (outputs written anyway: --force)" if gate.get("forced") else ""))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeq")
def main() -> None:
    """Take a trained Keras model to a microcontroller, a Linux board or a phone.

    \b
    Typical use:
      edgeq targets list                         # what can I deploy to?
      edgeq precision model.keras --data digits --target mcu    # what would each format cost?
      edgeq convert model.keras --target mcu --calibration digits --harness
      edgeq inspect edgeq-out/model-mcu/model.tflite
      edgeq device-check --port /dev/ttyACM0 --model edgeq-out/model-mcu/model.tflite --data digits

    Exit codes: 0 ok, 2 bad input (file, data, option), 3 the model does not fit the target,
    4 the device stopped answering (device-check).
    """


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", default="mcu", show_default=True,
              help="Target profile name (see `edgeq targets list`) or a path to your own .toml.")
@click.option("-m", "--mode", default=None,
              help="int8, int16x8, float16, dynamic or float32. Default: the target's default mode.")
@click.option("-c", "--calibration", default=None, metavar="SET",
              help="Representative data: a bundled set (`edgeq calibration list`), NAME:SPLIT, or your .npz/.npy.")
@click.option("--calibration-samples", default=200, show_default=True, type=int,
              help="How many calibration samples the converter sees.")
@click.option("-e", "--eval", "eval_set", default=None, metavar="SET",
              help="Held-out data for the accuracy check. Default: the 'eval' split of a bundled calibration set.")
@click.option("--no-eval", is_flag=True, help="Skip the accuracy check (memory and op checks still run).")
@click.option("--max-accuracy-drop", default=DEFAULT_DROP, show_default=True, type=click.FloatRange(min=0),
              help="Largest top-1 drop (percentage points, float vs quantized) the gate accepts.")
@click.option("--qat", is_flag=True,
              help="Quantization-aware training (tfmot quantize_model, fine-tuned) instead of PTQ. int8 only.")
@click.option("--train", "train_set", default=None, metavar="SET",
              help="Labelled training data for --qat. Default: the 'train' split of a bundled calibration set.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1),
              help="QAT: most epochs (early stopping on validation loss ends sooner).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="QAT: batch size.")
@click.option("--learning-rate", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="QAT: Adam learning rate (fine-tuning: keep it small).")
@click.option("--compare", is_flag=True, help="Run PTQ and QAT on the same model and data; report both side by "
                                               "side (the outputs are QAT's).")
@click.option("--force", is_flag=True, help="Write the outputs even if a check fails; the report says so.")
@click.option("--harness", is_flag=True, help="Also write the test-harness firmware for `edgeq device-check` "
              "(see `edgeq firmware --help`). TFLM targets only.")
@click.option("--max-payload", default=DEFAULT_MAX_PAYLOAD, show_default=True,
              type=click.IntRange(min=MIN_PAYLOAD, max=LENGTH_LIMIT),
              help="With --harness: the largest protocol frame payload (EDGEQ_MAX_PAYLOAD).")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=None,
              help="Output folder. Default: edgeq-out/<name>-<target>.")
@click.option("--name", default=None, help="Base name of the outputs and C identifiers. Default: the model file name.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (otherwise edgeq refuses).")
@click.option("--trust-model", is_flag=True,
              help="Allow Lambda layers and unregistered classes (they run code from the file). Only for models you "
                   "wrote or fully trust.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...",
              help="The sample shape (no batch) to convert an input with open dimensions for, e.g. "
                   "--input-shape audio=49,10. Default: the calibration data's shape, which edgeq names.")
def convert(model: Path, target: str, mode: str | None, calibration: str | None, calibration_samples: int,
            eval_set: str | None, no_eval: bool, max_accuracy_drop: float, qat: bool, train_set: str | None,
            epochs: int, batch_size: int, learning_rate: float, compare: bool, force: bool, harness: bool,
            max_payload: int, outdir: Path | None, name: str | None, overwrite: bool, trust_model: bool,
            input_shapes: tuple[str, ...]) -> None:
    """Quantize MODEL (.keras, .h5 or SavedModel dir), check it against a target, write deployable files.

    \b
    Before anything is written, the quantized model runs in the target's runtime (TFLite Micro
    for MCU targets, LiteRT otherwise): accuracy against the float model on held-out data, the
    exact tensor arena, flash and RAM against the budgets, an estimated latency. If a check
    fails, edgeq exits with code 3 and writes only the report.

    \b
    Writes, atomically:
      <name>.tflite                      the quantized model (TFLM: as flashed, without names)
      <name>_names.json                  its tensor and signature names, for inspect and device-check (TFLM)
      <name>_model_data.cc / .h          the model as a C array and k_<name>_tensor_arena_size (TFLM)
      <name>_op_resolver.h               a MicroMutableOpResolver with exactly the model's ops
      report.json / report.md / .png     accuracy, sizes, memory, latency, per-layer error, checks
      README.md, edgeq_*.c/.h, ports/    with --harness: firmware for `edgeq device-check`

    \b
    Examples:
      edgeq convert model.keras --target mcu --calibration digits
      edgeq convert model.h5 --target nrf52840 --calibration my_data.npz --eval my_test.npz -o firmware/model
      edgeq convert saved_model_dir --target phone --mode float16
      edgeq convert model.keras --target mcu --calibration digits --qat --compare
      edgeq convert kws.keras --target mcu --calibration mfcc.npz --input-shape audio=49,10

    
    Several inputs: save the data with one array per input, named x_<input name> (or x0, x1, ...
    in the model's input order); edgeq feeds each input its array by name, whatever order the
    converter gives the inputs.
    """
    from edgeq.pipeline import ConvertOptions, GateError, HarnessOptions, QatOptions
    from edgeq.pipeline import convert as run_convert

    evaluation = None if no_eval else (eval_set or "auto")
    settings = None
    if qat or compare:
        from edgeq.quantize.qat import TrainSettings

        settings = TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    try:
        options = ConvertOptions(
            mode=mode, calibration=calibration, calibration_samples=calibration_samples, evaluation=evaluation,
            max_accuracy_drop=max_accuracy_drop, force=force, outdir=outdir, name=name, overwrite=overwrite,
            trust_model=trust_model, input_shapes=_parse_shapes(input_shapes),
            qat=QatOptions(train=train_set or "auto", settings=settings, compare=compare) if qat or compare else None,
            harness=HarnessOptions(max_payload=max_payload) if harness else None)
        result = run_convert(model, target, options, on_step=_step, progress=_progress_factory(quiet=False))
    except GateError as exc:
        click.echo(f"\n{model} does not fit {exc.result.target.name}:", err=True)
        _summary(exc.result.report, err=True)
        raise
    method = "QAT" if result.report.get("method") == "qat" else ("PTQ" if result.recipe.mode != "float32" else "")
    click.echo(f"\nconverted {model} for {result.target.name} ({' '.join(filter(None, (result.recipe.mode, method)))}, "
               f"{result.target.runtime})")
    _summary(result.report)
    _comparison(result.report)
    click.echo(f"wrote to {result.outdir}/")
    harness = result.report.get("harness")
    own = set(harness["files"]) - {f"{result.name}_model_data.cc", f"{result.name}_model_data.h",
                                   f"{result.name}_op_resolver.h"} if harness else set()
    for path in result.files:
        if path.relative_to(result.outdir).as_posix() not in own:
            click.echo(f"  {path.name:<32} {path.stat().st_size:>10,} B")
    if harness:
        size = harness.get("cortex_m_size") or {}
        flash = (f"; Cortex-M4F: model {size['model']['bytes']:,} B + harness {size['harness']['flash']:,} B flash, "
                 f"harness RAM {size['harness']['ram']:,} B") if "model" in size else ""
        click.echo(f"  + the device-check harness firmware: {len(own)} files, start with README.md{flash}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", default="mcu", show_default=True, help="Target profile name or a path to a .toml.")
@click.option("-d", "--data", default=None, metavar="SET",
              help="Held-out data: a bundled set (its 'eval' split by default), NAME:SPLIT, or your .npz/.npy.")
@click.option("-r", "--reference", type=click.Path(path_type=Path), default=None,
              help="The float Keras model MODEL came from: accuracy drop and output error against it.")
@click.option("--max-accuracy-drop", default=DEFAULT_DROP, show_default=True, type=click.FloatRange(min=0),
              help="Largest top-1 drop (percentage points) that passes.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Also write report.json, report.md and report.png to this folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
@click.option("--trust-model", is_flag=True, help="Allow Lambda layers in the reference model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress output).")
def emulate(model: Path, target: str, data: str | None, reference: Path | None, max_accuracy_drop: float,
            report_dir: Path | None, overwrite: bool, trust_model: bool, as_json: bool) -> None:
    """Check a .tflite against a target in the runtime the device uses, before flashing it.

    \b
    Memory: flash, and the exact TFLite Micro tensor arena (MCU targets; measured by running
    the model, each trial in a child process) or LiteRT's peak activations. Latency: MACs x
    the target's cycle costs, and LiteRT on this host. With --data: accuracy (and, with
    --reference, the drop from the float model, output SNR and cosine similarity).
    Exit code 3 when a check fails.

    \b
    Examples:
      edgeq emulate model.tflite --target mcu
      edgeq emulate model.tflite --target nrf52840 --data digits --reference model.keras --report out/
    """
    from edgeq.pipeline import GateError, emulate_file

    step = (lambda message: None) if as_json else _step
    try:
        result = emulate_file(model, target, data=data, reference=reference, max_accuracy_drop=max_accuracy_drop,
                              report_dir=report_dir, overwrite=overwrite, trust_model=trust_model, on_step=step,
                              progress=_progress_factory(quiet=as_json))
    except GateError as exc:
        _show_emulation(exc.result, as_json, err=True)
        raise
    _show_emulation(result, as_json)


def _comparison(report: dict[str, Any]) -> None:
    rows = report.get("comparison")
    if not rows:
        return
    click.echo("\n  PTQ vs QAT on the same data (the outputs are QAT's):")
    click.echo(f"    {'':<5} {'top-1':>8} {'drop':>7} {'SNR dB*':>7} {'.tflite':>9} {'RAM':>9} {'est. ms':>8}  gate")
    for method, r in rows.items():
        top1 = "-" if r["quantized_top1"] is None else f"{100 * r['quantized_top1']:.2f}%"
        drop = "-" if r["drop_points"] is None else f"{r['drop_points']:+.2f}"
        snr = "-" if r["snr_db"] is None else f"{r['snr_db']:.1f}"
        ram = "-" if r["ram_bytes"] is None else f"{r['ram_bytes']:,}"
        click.echo(f"    {method.upper():<5} {top1:>8} {drop:>7} {snr:>7} {r['tflite_bytes']:>9,} {ram:>9} "
                   f"{r['latency_ms']:>8.3g}  {'pass' if r['gate_passed'] else 'FAIL'}")
    click.echo("    * against the original float model; QAT's fine-tuning moves its weights away from it")


def _show_emulation(result: Any, as_json: bool, err: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(result.report, indent=2, sort_keys=True))
        return
    click.echo(f"\n{result.info.source} on {result.target.name} ({result.emulation.mode}, {result.target.runtime})",
               err=err)
    _summary(result.report, err=err)
    for path in result.files:
        click.echo(f"  wrote {path}")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(file: Path, as_json: bool) -> None:
    """Show what is inside a .tflite file: ops, tensors, quantization, sizes.

    The file is verified before use: a truncated, empty or non-TFLite file is a clear error.
    """
    from edgeq.tflite.inspect_format import format_inspect
    from edgeq.tflite.strip import read_tflite_named

    _, info = read_tflite_named(file)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(format_inspect(info))


@main.command("export-c")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Output folder.")
@click.option("--name", default=None, help="Base name of files and C identifiers. Default: the file name.")
@click.option("--alignment", default=16, show_default=True, type=click.IntRange(min=16),
              help="Byte alignment of the model array (CMSIS-NN needs 16).")
@click.option("--arena-margin", default=1024, show_default=True, type=click.IntRange(min=0),
              help="Bytes added to the measured tensor arena in k_<name>_tensor_arena_size.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def export_c(file: Path, outdir: Path, name: str | None, alignment: int, arena_margin: int, overwrite: bool) -> None:
    """Write TFLM C sources for a .tflite converted elsewhere.

    \b
    Writes <name>_model_data.cc/.h (with the exact tensor arena, measured by running the model
    in TFLite Micro) and <name>_op_resolver.h; fails (exit 3) if the model uses an op
    TensorFlow Lite Micro has no kernel for.
    """
    from edgeq.export.tflm import export_c as run_export_c

    written, model = run_export_c(file, outdir, name=name, alignment=alignment, arena_margin=arena_margin,
                                  overwrite=overwrite)
    arena = model.arena
    click.echo(f"tensor arena: {arena.smallest:,} B measured in TFLite Micro + {arena_margin:,} B margin")
    for path in written:
        click.echo(f"wrote {path}")


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """--input-shape NAME=D1,D2,... (repeatable) as {name: shape}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name.strip() or not shape or min(shape) < 1:
            raise EdgeqError(f"--input-shape {value!r}: expected NAME=D1,D2,... with positive sizes",
                             hint="e.g. --input-shape audio=49,10 (the sample shape, without the batch dimension)")
        shapes[name.strip()] = shape
    return shapes


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", default="mcu", show_default=True,
              help="A TFLM target profile (its arena margin and flash budget are used).")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=None,
              help="Output folder. Default: edgeq-out/<name>-firmware.")
@click.option("--name", default=None, help="Base name of the C identifiers. Default: the file name.")
@click.option("--arena-margin", default=None, type=click.IntRange(min=0),
              help="Bytes added to the measured tensor arena. Default: the target's margin.")
@click.option("--max-payload", default=DEFAULT_MAX_PAYLOAD, show_default=True,
              type=click.IntRange(min=MIN_PAYLOAD, max=LENGTH_LIMIT),
              help="EDGEQ_MAX_PAYLOAD: the largest frame payload; the device holds two such buffers in RAM.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def firmware(model: Path, target: str, outdir: Path | None, name: str | None, arena_margin: int | None,
             max_payload: int, overwrite: bool) -> None:
    """Write a test-harness firmware source tree for MODEL.tflite (TFLite Micro).

    \b
    Flashed on a board, it answers `edgeq device-check` over a serial port: HELLO (model
    SHA-256, arena, tensors) and INFER (input bytes in; output bytes and the Invoke() time
    out). The folder holds the model's C arrays and op resolver, the TFLM glue, the protocol
    in plain C99 (no malloc, no TFLM), the three hooks a port supplies (edgeq_platform.h:
    read bytes, write bytes, a microsecond timer), example ports (Arduino, Zephyr, bare-metal
    Cortex-M, POSIX) and a README on building and flashing.

    \b
    With arm-none-eabi-gcc installed, the model data and the protocol code are compiled for a
    Cortex-M4F, and their flash and RAM go into edgeq_firmware.json.

    \b
    Examples:
      edgeq firmware edgeq-out/digits_cnn-mcu/digits_cnn.tflite -o harness/
      edgeq convert model.keras --target mcu --calibration digits --harness   # the same, in one go
    """
    from edgeq.export.tflm import build_firmware
    from edgeq.targets import load_target

    profile = load_target(target)
    built = build_firmware(model, profile, outdir=outdir, name=name, arena_margin=arena_margin,
                           max_payload=max_payload, overwrite=overwrite, on_step=_step)
    arena, out = built.model.arena.smallest, built.outdir
    click.echo(f"\nharness firmware for {model.name} ({built.manifest['model_sha256'][:16]}…), target {profile.name}")
    click.echo(f"  arena     {arena:,} B measured in TFLM + {built.margin:,} B margin = "
               f"k_{built.ident}_tensor_arena_size {arena + built.margin:,} B")
    _firmware_sizes(built.size, len(built.model.data), profile)
    click.echo(f"wrote {len(built.files)} files to {out}/ (start with {out / 'README.md'})")
    click.echo(f"then: edgeq device-check --port PORT --model {model} --data SET")


def _firmware_sizes(size: Any, model_bytes: int, profile: Any) -> None:
    if size is None:
        click.echo("  flash     (install gcc-arm-none-eabi for Cortex-M flash and RAM figures)")
        return
    runtime = profile.memory.runtime_flash_bytes
    total = size.model_size + size.harness_flash + runtime
    click.echo(f"  flash     model {size.model_size:,} B in {size.model_section} + harness {size.harness_flash:,} B "
               f"+ TFLM ~{kib(runtime)} (target profile) = {kib(total)} of {kib(profile.memory.flash_bytes)}")
    click.echo(f"  RAM       harness {size.harness_ram:,} B (protocol buffers for {size.max_payload:,}-byte frames) "
               f"+ the arena")
    click.echo(f"  compiled  with {size.compiler} {' '.join(size.cpu_flags)}")



@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("values", nargs=-1, required=True)
@click.option("--bits", "bits", multiple=True, type=click.Choice(["8", "4"]), default=("8",), show_default=True,
              help="Integer widths to show (repeat for both).")
@click.option("--range", "value_range", nargs=2, type=float, default=None, metavar="MIN MAX",
              help="The float range the integer codes cover. Default: the values' own range, with 0.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Use this scale instead of a range (with --zero-point).")
@click.option("--zero-point", type=int, default=None, help="With --scale: the integer that 0.0 maps to.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def formats(values: tuple[str, ...], bits: tuple[str, ...], value_range: tuple[float, float] | None,
            scale: float | None, zero_point: int | None, as_json: bool) -> None:
    """Show how VALUES are stored in FP32, FP16, BF16, FP8 and as INT8/INT4 codes.

    \b
    For each value and float format: the sign, exponent and mantissa bits, the biased exponent,
    the value actually stored and the rounding error, with overflow to Inf and underflow to
    subnormal or zero called out. For integers, the linear quantization code:
      asymmetric  s = (max - min)/(2^k - 1), q = round(x/s) + z, x' = s*(q - z)
      symmetric   s = max|x|/(2^(k-1) - 1), q = round(x/s),     x' = s*q
    Then each format's range (smallest subnormal and normal, largest) and precision (epsilon).

    \b
    Examples:
      edgeq formats 85.125                       # 0 10000101 01010100100000000000000 in FP32
      edgeq formats 65504 65520 1e-8 -2.5 nan
      edgeq formats 0.3 -1.2 --range -2 2 --bits 8 --bits 4
    """
    from edgeq.precision.explain import explain, parse_value, render_text, to_json

    parsed = [parse_value(text) for text in values]
    if scale is None and zero_point is not None:
        raise EdgeqError("--zero-point needs --scale", hint="e.g. --scale 0.05 --zero-point -10")
    if scale is not None and value_range is not None:
        raise EdgeqError("give either --range or --scale, not both",
                         hint="--range MIN MAX derives the scale; --scale S [--zero-point Z] sets it")
    low, high = value_range if value_range else (None, None)
    report = explain(parsed, bits=tuple(sorted({int(b) for b in bits}, reverse=True)), min=low, max=high,
                     scale=scale, zero_point=zero_point)
    if as_json:
        click.echo(json.dumps(to_json(report), indent=2, sort_keys=True, allow_nan=False))
    else:
        click.echo(render_text(report), nl=False)

@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-d", "--data", required=True, metavar="SET",
              help="Samples to run: a bundled set (its eval split: 'digits') or a .npz/.npy with x (and y).")
@click.option("-t", "--target", default=None, help="Mark which formats this target profile can run.")
@click.option("-n", "--limit", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Use at most the first N samples.")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=None,
              help="Folder for precision.json, precision.md and precision.png. Default: edgeq-out/<name>-precision.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--trust-model", is_flag=True, help="Allow Lambda layers (runs code from the model file).")
@click.option("--json", "as_json", is_flag=True, help="Print precision.json instead of the table.")
def precision(model: Path, data: str, target: str | None, limit: int, outdir: Path | None, overwrite: bool,
              trust_model: bool, as_json: bool) -> None:
    """What each number format would cost MODEL (.keras or .h5) in accuracy, and save in size.

    \b
    The weights are rounded to each format and back, and the float model runs on the data:
      FP16, BF16, FP8 E4M3 / E5M2 (per-tensor scale), INT8 symmetric / asymmetric per tensor /
      per channel, INT4 per channel; and FP16 / BF16 for weights *and* activations.
    For each: the exact weight bytes, mean and max logit difference from FP32, top-1 agreement
    with FP32 and accuracy on the labels; with --target, whether that target can run it.
    Also: per layer, how much per-channel beats per-tensor INT8, and one dot product per layer
    computed in FP32, BF16, FP16 and INT8.

    \b
    Examples:
      edgeq precision examples/digits_cnn.keras --data digits --target mcu
      edgeq formats 85.125 65504 1e-8      # the bits behind the table
    """
    from edgeq.calibration import load_dataset, validate_for_model
    from edgeq.export.atomic import check_output_dir, write_files_atomically
    from edgeq.export.c_arrays import c_identifier
    from edgeq.loading import load_model
    from edgeq.precision.report import render_markdown, render_png, render_text, to_json
    from edgeq.precision.simulate import simulate
    from edgeq.report import render_json
    from edgeq.targets import load_target

    profile = load_target(target) if target else None
    ident = c_identifier(model.name.removesuffix(model.suffix) or model.name)
    out = outdir if outdir is not None else Path("edgeq-out") / f"{ident}-precision"
    names = ["precision.json", "precision.md", "precision.png"]
    check_output_dir(out, names, overwrite=overwrite)
    if not as_json:
        _step(f"loading {model} (TensorFlow start-up takes a few seconds)")
    loaded = load_model(model, trust_model=trust_model)
    if loaded.keras_model is None:
        raise EdgeqError(f"{model} is a SavedModel: `edgeq precision` changes a Keras model's weights and needs its "
                         "layers", hint="pass the .keras or .h5 file the SavedModel was exported from")
    dataset = validate_for_model(load_dataset(data, default_split="eval"), loaded.input_specs, purpose="evaluation")
    n = min(limit, dataset.num_samples)
    result = simulate(loaded.keras_model, [x[:n] for x in dataset.inputs],
                      None if dataset.labels is None else dataset.labels[:n], model_name=model.name,
                      data_name=dataset.name, target=profile, on_step=(lambda m: None) if as_json else _step)
    report = to_json(result)
    files = {"precision.json": render_json(report), "precision.md": render_markdown(result).encode(),
             "precision.png": render_png(result)}
    written = write_files_atomically(out, files, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo("")
    click.echo(render_text(result), nl=False)
    click.echo(f"\nwrote {', '.join(str(p) for p in written)}")

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
    from edgeq.device.link import DeviceError

    result = run_check(port, model, data, baud=baud, limit=limit, output_dir=outdir, overwrite=overwrite,
                       timeout=timeout, on_step=(lambda m: None) if as_json else _step,
                       progress=_progress_factory(quiet=as_json))
    report = result.report
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(f"\ndevice check of {model.name} on {port}")
        for line in summary_lines(report):
            click.echo(f"  {line}")
        click.echo(f"wrote {', '.join(str(p) for p in result.written)}")
    run = report["run"]
    if result.verdict == DeviceVerdict.INCOMPLETE:
        differing = report["agreement"]["differing"]
        raise DeviceError(f"the run stopped at sample {run['stopped_at']} with {run['missing']} of {run['requested']} "
                          f"samples missing: {run['stopped_because']}"
                          + (f" (and {differing} answered samples differ from the emulator)" if differing else ""),
                          hint="the accuracy in the report covers only the answered samples; fix the link or the "
                               "device and run again")
    if result.verdict == DeviceVerdict.MISMATCH:
        from edgeq.errors import TargetCheckError

        agree = report["agreement"]
        first = ", ".join(str(d["sample"]) for d in agree["first_differing"][:5])
        raise TargetCheckError(f"the device differs from the emulator on {agree['differing']} of {agree['compared']} "
                               f"samples (first: {first})",
                               hint="see report.md; optimized kernels (CMSIS-NN) are meant to be bit-exact with "
                                    "TFLM's reference kernels, so a difference points at the build or the port")


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
def device_sim(model: Path, faults: tuple[str, ...], link_path: Path | None, arena: int | None, arena_margin: int,
               max_payload: int) -> None:
    """A virtual board: run MODEL in TFLite Micro behind a serial port (a pseudo-terminal).

    \b
    It speaks the same protocol as the harness firmware, so you can try the whole on-device
    flow without hardware. It prints the port on the first line of standard output and serves
    until Ctrl-C. In another terminal:
      edgeq device-check --port <the port it printed> --model MODEL --data digits

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

    from edgeq.device.sim import SimDevice, VirtualPort, parse_fault
    from edgeq.export.tflm import require_tflm_kernels
    from edgeq.tflite.reader import read_tflite, read_tflite_bytes

    try:
        parsed = [parse_fault(spec) for spec in faults]
    except ValueError as exc:
        raise EdgeqError(f"--fault: {exc}", hint="e.g. --fault crc@3 --fault reset@10") from None
    data = read_tflite_bytes(model)
    info = read_tflite(data, source=str(model))
    require_tflm_kernels(info)
    if link_path is not None and os.path.lexists(link_path) and not link_path.is_symlink():
        raise EdgeqError(f"--link {link_path} exists and is not a symlink; edgeq will not replace it",
                         hint="pass a new path, e.g. /tmp/edgeq-device")
    from edgeq.emulator.memory import measure_tflm_arena

    measured = measure_tflm_arena(data, source=str(model))
    arena_used = measured.recorded_total
    if arena is None:
        arena = measured.smallest + arena_margin
    port = VirtualPort.open()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        device = SimDevice(data, info, arena_size=arena, arena_used=arena_used, arena_needed=measured.smallest,
                           faults=parsed, max_payload=max_payload,
                           log=lambda line: click.echo(f"device-sim: {line}", err=True))
        if link_path is not None:
            if link_path.is_symlink():
                link_path.unlink()
            link_path.symlink_to(port.path)
        click.echo(port.path)
        sys.stdout.flush()
        where = str(link_path) if link_path is not None else port.path
        click.echo(f"device-sim: serving {model.name} in TFLite Micro on {port.path}"
                   + (f" (linked at {link_path})" if link_path else "") + f"; arena {arena:,} B"
                   + (f"; faults: {', '.join(map(str, parsed))}" if parsed else ""), err=True)
        click.echo(f"device-sim: in another terminal: edgeq device-check --port {where} --model {model} --data SET",
                   err=True)
        click.echo("device-sim: Ctrl-C to stop", err=True)
        device.serve(port.master, stop)
    finally:
        port.close()
        if link_path is not None and link_path.is_symlink():
            link_path.unlink()
    click.echo(f"device-sim: stopped after {device.served} inference(s)", err=True)

@main.group()
def targets() -> None:
    """List and show target profiles (edgeq/data/targets/*.toml; --target also takes a path)."""


@targets.command("list")
def targets_list() -> None:
    """A table of all target profiles."""
    from edgeq.resources import TARGETS_DIR_ENV, targets_root
    from edgeq.targets import load_all

    profiles = load_all()
    if not profiles:
        click.echo(f"no target profiles in {targets_root()}"
                   + (f" (set by {TARGETS_DIR_ENV})" if os.environ.get(TARGETS_DIR_ENV) else ""), err=True)
        return
    rows = [("NAME", "KIND", "RUNTIME", "CPU", "MHZ", "FLASH", "RAM", "MODES")]
    for t in profiles:
        m = t.memory
        rows.append((t.name, t.kind, t.runtime, t.cpu, f"{t.clock_mhz:g}",
                     kib(m.flash_bytes) if m.flash_bytes else "-", kib(m.ram_bytes) if m.ram_bytes else "-",
                     ",".join(t.quantization.modes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets_show(name: str, as_json: bool) -> None:
    """The resolved profile NAME (after inheritance), or a path to a .toml."""
    from edgeq.modes import MODES
    from edgeq.targets import load_target

    t = load_target(name)
    if as_json:
        click.echo(json.dumps(t.to_dict(), indent=2, sort_keys=True))
        return
    click.echo(f"{t.name}: {t.description}")
    click.echo(f"  inherits:    {' -> '.join(t.chain)}")
    click.echo(f"  runtime:     {t.runtime}    cpu: {t.cpu} @ {t.clock_mhz:g} MHz")
    click.echo("  modes:")
    for mode in t.quantization.modes:
        spec = MODES[mode]
        default = " (default)" if mode == t.quantization.default_mode else ""
        i, o = t.io_dtypes(mode)
        click.echo(f"    {mode:<8} weights {spec.weights:<7} activations {spec.activations:<7} I/O {i}/{o}{default}")
    click.echo(f"  per-channel: {t.quantization.per_channel}")
    m = t.memory
    click.echo(f"  flash:       {m.flash_bytes or '-':,} B (runtime code {m.runtime_flash_bytes:,} B)"
               if m.flash_bytes else f"  flash:       no budget (runtime code {m.runtime_flash_bytes:,} B)")
    click.echo(f"  ram:         {m.ram_bytes:,} B (reserved for the application {m.reserved_ram_bytes:,} B)"
               if m.ram_bytes else "  ram:         no budget")
    click.echo(f"  alignment:   {m.tensor_alignment} B    arena margin: {m.arena_margin_bytes:,} B")
    lat = t.latency
    click.echo(f"  latency:     conv {lat.conv_2d} / dwconv {lat.depthwise_conv_2d} / fc {lat.fully_connected}"
               f" cycles per MAC, {lat.op_overhead:g} cycles per op")
    click.echo(f"  ops:         {len(t.supported_ops)} from op set '{t.ops.set}' ({t.op_set_source})"
               + (f", excluding {', '.join(t.ops.exclude)}" if t.ops.exclude else ""))


@main.group()
def calibration() -> None:
    """Bundled calibration/evaluation data sets (edgeq/data/calibration_sets/)."""


@calibration.command("list")
def calibration_list() -> None:
    """The bundled sets, their splits and sample counts."""
    from edgeq.calibration import list_bundled
    from edgeq.resources import CALIBRATION_DIR_ENV, calibration_root

    sets = list_bundled()
    if not sets:
        click.echo(f"no bundled data sets in {calibration_root()}"
                   + (f" (set by {CALIBRATION_DIR_ENV})" if os.environ.get(CALIBRATION_DIR_ENV) else ""), err=True)
    for s in sets:
        click.echo(f"{s.name}: {s.description}")
        click.echo(f"  source: {s.source}; license: {s.license}")
        for split, info in s.splits.items():
            shape = "x".join(str(d) for d in info.x_shape)
            click.echo(f"  {s.name}:{split:<12} {info.samples:>6} samples  {shape} {info.x_dtype}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
