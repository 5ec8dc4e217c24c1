"""`edgeq sweep`: every model for every target, one table."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgeq.cli import _step, main
from edgeq.defaults import DEFAULT_MAX_ACCURACY_DROP as DEFAULT_DROP


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--targets", required=True, metavar="A,B,...",
              help="Comma-separated target profiles (names or .toml paths).")
@click.option("-c", "--calibration", default=None, metavar="SET",
              help="Calibration data for every model: a bundled set or your .npz.")
@click.option("-e", "--eval", "eval_set", default=None, metavar="SET",
              help="Held-out data for accuracy. Default: the bundled set's eval split.")
@click.option("--max-accuracy-drop", default=DEFAULT_DROP, show_default=True, type=click.FloatRange(min=0),
              help="The accuracy check's limit, in points.")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=Path("edgeq-out/sweep"),
              show_default=True, help="Where sweep.csv and sweep.md go.")
@click.option("--overwrite", is_flag=True, help="Replace an existing sweep.csv / sweep.md.")
@click.option("--workers", default=None, show_default="the number of cores", type=click.IntRange(min=1),
              help="Convert this many pairs at once, in local processes.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Convert the pairs as tasks on this Ray cluster (pip install 'edgeq[ray]').")
def sweep(models: tuple[Path, ...], targets: str, calibration: str | None, eval_set: str | None,
          max_accuracy_drop: float, outdir: Path, overwrite: bool, workers: int | None,
          ray_address: str | None) -> None:
    """Convert every MODEL for every target and write one table: sweep.csv and sweep.md.

    \b
    Each pair is converted as `convert --force` would (PTQ, the target's default recipe, every
    check), and gets a row: passes or which checks fail (or the error that stopped it), accuracy,
    flash, RAM and the estimated latency. No model files are written. Exits 0 when the table is
    written, whatever the rows say: read them (the last line counts the pairs that pass).

    \b
    Example:
      edgeq sweep kws.keras vww.keras --targets mcu,nrf52840,stm32f072rb --calibration mfcc.npz -o zoo/
    """
    from edgeq.calibration import load_dataset
    from edgeq.export.atomic import check_output_dir, write_files_atomically
    from edgeq.quantize.jobs import LocalPool, RayCluster
    from edgeq.sweep import render
    from edgeq.sweep import sweep as run_sweep
    from edgeq.targets import load_target

    check_output_dir(outdir, ["sweep.csv", "sweep.md"], overwrite=overwrite)
    profiles = [load_target(t.strip()) for t in targets.split(",") if t.strip()]
    for model in models:
        if not model.is_file():
            raise click.UsageError(f"{model}: not a model file (.keras or .h5; a SavedModel folder cannot be sent "
                                   "to workers)")
    data = load_dataset(calibration) if calibration else None
    from edgeq.pipeline import default_eval_set

    spec = eval_set or (default_eval_set(calibration) if calibration else None)
    evaluation = load_dataset(spec, default_split="eval") if spec else None
    workers = workers or os.cpu_count() or 1
    executor = RayCluster(ray_address) if ray_address else LocalPool(workers) if workers > 1 else None
    try:
        rows = run_sweep(list(models), profiles, data, evaluation, max_accuracy_drop=max_accuracy_drop,
                         executor=executor, on_step=_step)
    finally:
        if executor is not None:
            executor.close()
    files = render(rows)
    write_files_atomically(outdir, files, overwrite=overwrite)
    click.echo(files["sweep.md"].decode().split("\n", 2)[2].rstrip())
    click.echo(f"{sum(r.passed for r in rows)} of {len(rows)} pairs pass; wrote {outdir}/sweep.csv and sweep.md")
