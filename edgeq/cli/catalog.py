"""The commands that list what edgeq ships: targets, calibration."""

from __future__ import annotations

import json
import os

import click

from edgeq.cli import main
from edgeq.text import kib


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
    from edgeq.bundled_sets import list_bundled
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
