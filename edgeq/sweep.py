"""`edgeq sweep`: many models for many targets, one table.

For a model zoo's CI: every model converted (PTQ, each target's default recipe) for every target,
with `convert`'s own checks, and one row per pair: passes or why not, accuracy, flash, RAM and
latency. The pairs are independent jobs, run on the search's executors (here one by one, in
`--workers N` local processes, or as Ray tasks), each with the model file's bytes and the data by
value, so nothing depends on a shared file system.
"""

from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.records import Record
from edgeq.text import markdown_table


@dataclass(frozen=True)
class SweepJob:
    model_name: str
    model_bytes: bytes
    target: Any              # a TargetProfile
    calibration: Any         # a Dataset, or None
    evaluation: Any          # a Dataset, or None
    max_accuracy_drop: float


@dataclass(frozen=True)
class SweepRow(Record):
    """One model on one target: whether every check passed, which failed (or the error that stopped
    the conversion), and what convert measured."""

    model: str
    target: str
    passed: bool
    failed: str
    accuracy: str
    flash_bytes: int | None
    ram_bytes: int | None
    latency_ms: float | None


def _save(folder: Path, name: str, data: Any) -> str:
    import numpy as np

    arrays = {"x": data.inputs[0]} if len(data.inputs) == 1 else {f"x{k}": a for k, a in enumerate(data.inputs)}
    if data.labels is not None:
        arrays["y"] = data.labels
    np.savez(folder / name, **arrays)
    return str(folder / name)


def _accuracy(report: Any) -> str:
    acc = report.emulation.accuracy
    if acc is None:
        return "-"
    if acc.quantized_auc is not None:
        return f"AUC {acc.quantized_auc:.4f}"
    if acc.quantized_top1 is not None:
        return f"top-1 {100 * acc.quantized_top1:.2f}%"
    return f"SNR {acc.errors[0].snr_db:.1f} dB" if acc.errors else "-"


def run_sweep_job(job: SweepJob) -> SweepRow:
    """One model for one target, as `convert --force` does it, in this process."""
    from edgeq.errors import EdgeqError
    from edgeq.isolation import Worker
    from edgeq.pipeline import ConvertOptions, convert

    with tempfile.TemporaryDirectory(prefix="edgeq-sweep-") as tmp:
        folder = Path(tmp)
        model = folder / job.model_name
        model.write_bytes(job.model_bytes)
        options = ConvertOptions(
            calibration=None if job.calibration is None else _save(folder, "calibration.npz", job.calibration),
            evaluation=None if job.evaluation is None else _save(folder, "eval.npz", job.evaluation),
            max_accuracy_drop=job.max_accuracy_drop, force=True, outdir=folder / "out", per_layer=False)
        try:
            result = convert(model, job.target, options, worker=Worker(in_process=True))
        except EdgeqError as exc:
            message = exc.message.splitlines()[0]
            for data, file in ((job.calibration, "calibration.npz"), (job.evaluation, "eval.npz")):
                if data is not None:  # the user's data set, not this job's copy of it
                    message = message.replace(str(folder / file), data.name)
            return SweepRow(job.model_name, job.target.name, False, f"error: {message}", "-", None, None, None)
    report = result.report
    memory = report.emulation.memory
    return SweepRow(job.model_name, job.target.name, report.gate.passed, ", ".join(report.gate.failed), _accuracy(report),
                    memory.flash.total_bytes, memory.ram.total_bytes, report.emulation.latency.total_ms)


def sweep(models: list[Path], targets: list[Any], calibration: Any, evaluation: Any, *, max_accuracy_drop: float,
          executor: Any = None, on_step: Any = lambda message: None) -> list[SweepRow]:
    """Every model for every target; `executor` (a LocalPool or RayCluster) or here, one by one."""
    jobs = [SweepJob(m.name, m.read_bytes(), t, calibration, evaluation, max_accuracy_drop)
            for m in models for t in targets]
    on_step(f"sweep: {len(models)} model(s) x {len(targets)} target(s) = {len(jobs)} conversions"
            + ("" if executor is None else f" on {executor.__class__.__name__}"))
    if executor is None:
        return [run_sweep_job(job) for job in jobs]
    return list(executor.map_function(run_sweep_job, jobs))


def render(rows: list[SweepRow]) -> dict[str, bytes]:
    """sweep.csv and sweep.md."""
    header = ["model", "target", "passes", "failed checks", "accuracy", "flash (B)", "RAM (B)", "latency (ms)"]

    def cells(r: SweepRow) -> list[str]:
        return [r.model, r.target, "yes" if r.passed else "no", r.failed, r.accuracy,
                "" if r.flash_bytes is None else str(r.flash_bytes), "" if r.ram_bytes is None else str(r.ram_bytes),
                "" if r.latency_ms is None else f"{r.latency_ms:.4g}"]

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(cells(r) for r in rows)
    md = ["# edgeq sweep", "", *markdown_table(header, [cells(r) for r in rows])]
    return {"sweep.csv": out.getvalue().encode(), "sweep.md": ("\n".join(md).rstrip() + "\n").encode()}
