"""The `edgeq` command line: parse, call the library, map EdgeqError to exit codes.

Only click and edgeq's light modules are imported at start-up; commands that need a model
import TensorFlow inside their function, so `edgeq --help` and `edgeq targets list` answer
at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgeq import __version__
from edgeq.errors import EdgeqError


class _Group(click.Group):
    """Turns edgeq's own errors into a one-line message and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeqError as exc:
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; no output was changed", err=True)
            ctx.exit(130)


def _step(message: str) -> None:
    click.echo(click.style("• ", fg="cyan") + message, err=True)


def _kib(n: int) -> str:
    """Bytes for people: 4.3 KiB, 256 KiB, 1 MiB."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):,.4g} MiB"
    return f"{n / 1024:,.4g} KiB"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeq")
def main() -> None:
    """Take a trained Keras model to a microcontroller, a Linux board or a phone.

    \b
    Typical use:
      edgeq targets list                         # what can I deploy to?
      edgeq convert model.keras --target mcu --calibration digits
      edgeq inspect edgeq-out/model-mcu/model.tflite

    Exit codes: 0 ok, 2 bad input (file, data, option), 3 the model does not fit the target.
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
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=None,
              help="Output folder. Default: edgeq-out/<name>-<target>.")
@click.option("--name", default=None, help="Base name of the outputs and C identifiers. Default: the model file name.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (otherwise edgeq refuses).")
@click.option("--trust-model", is_flag=True,
              help="Allow Lambda layers (arbitrary Python). Only for models you wrote or fully trust.")
def convert(model: Path, target: str, mode: str | None, calibration: str | None, calibration_samples: int,
            outdir: Path | None, name: str | None, overwrite: bool, trust_model: bool) -> None:
    """Quantize MODEL (.keras, .h5 or SavedModel dir) for a target and write deployable files.

    \b
    Writes, atomically:
      <name>.tflite                      the quantized model
      <name>_model_data.cc / .h          the model as a C array (TFLM targets)
      <name>_op_resolver.h               a MicroMutableOpResolver with exactly the model's ops
      report.json                        target, recipe, sizes, ops, versions, input hashes

    \b
    Examples:
      edgeq convert model.keras --target mcu --calibration digits
      edgeq convert model.h5 --target nrf52840 --calibration my_data.npz -o firmware/model
      edgeq convert saved_model_dir --target phone --mode float16
    """
    from edgeq.pipeline import convert as run_convert

    result = run_convert(model, target, mode=mode, calibration=calibration,
                         calibration_samples=calibration_samples, outdir=outdir, name=name,
                         overwrite=overwrite, trust_model=trust_model, on_step=_step)
    click.echo(f"\nconverted {model} for {result.target.name} ({result.recipe.mode}, {result.target.runtime})")
    click.echo(f"  float32 {_kib(result.float_bytes)} -> {result.recipe.mode} {_kib(result.quantized_bytes)}"
               f"  ({result.size_ratio:.2f}x smaller)")
    click.echo(f"  ops: {', '.join(f'{k} x{v}' for k, v in result.info.op_counts().items())}")
    for check in result.checks:
        click.echo(f"  check {check.name}: {check.message}")
    click.echo(f"wrote to {result.outdir}/")
    for path in result.files:
        click.echo(f"  {path.name:<32} {path.stat().st_size:>10,} B")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(file: Path, as_json: bool) -> None:
    """Show what is inside a .tflite file: ops, tensors, quantization, sizes.

    The file is verified before use: a truncated, empty or non-TFLite file is a clear error.
    """
    from edgeq.tflite.inspect_format import format_inspect
    from edgeq.tflite.reader import read_tflite_file

    info = read_tflite_file(file)
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
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def export_c(file: Path, outdir: Path, name: str | None, alignment: int, overwrite: bool) -> None:
    """Write TFLM C sources for a .tflite converted elsewhere.

    \b
    Writes <name>_model_data.cc/.h and <name>_op_resolver.h; fails (exit 3) if the model
    uses an op TensorFlow Lite Micro has no kernel for.
    """
    from edgeq.export.atomic import write_files_atomically
    from edgeq.export.c_arrays import c_identifier, tflm_sources
    from edgeq.tflite.reader import read_tflite, read_tflite_bytes

    data = read_tflite_bytes(file)
    info = read_tflite(data, source=str(file))
    sources = tflm_sources(c_identifier(name or file.stem), data, info.all_op_names,
                           alignment=alignment)
    written = write_files_atomically(outdir, sources.files, overwrite=overwrite)
    for path in written:
        click.echo(f"wrote {path}")


@main.group()
def targets() -> None:
    """List and show target profiles (targets/*.toml)."""


@targets.command("list")
def targets_list() -> None:
    """A table of all target profiles."""
    from edgeq.targets import load_all

    rows = [("NAME", "KIND", "RUNTIME", "CPU", "MHZ", "FLASH", "RAM", "MODES")]
    for t in load_all():
        m = t.memory
        rows.append((t.name, t.kind, t.runtime, t.cpu, f"{t.clock_mhz:g}",
                     _kib(m.flash_bytes) if m.flash_bytes else "-", _kib(m.ram_bytes) if m.ram_bytes else "-",
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
    """Bundled calibration/evaluation data sets (calibration_sets/)."""


@calibration.command("list")
def calibration_list() -> None:
    """The bundled sets, their splits and sample counts."""
    from edgeq.calibration import list_bundled

    for s in list_bundled():
        click.echo(f"{s.name}: {s.description}")
        click.echo(f"  source: {s.source}; license: {s.license}")
        for split, info in s.splits.items():
            shape = "x".join(str(d) for d in info.x_shape)
            click.echo(f"  {s.name}:{split:<12} {info.samples:>6} samples  {shape} {info.x_dtype}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
