"""Recipe candidates as independent jobs: measured here, in a local process pool, or on a Ray cluster.

A job carries everything it needs as values (the model file's bytes, the data arrays, the
target profile, the recipe), so it runs wherever a worker is, with no shared file system. It runs
`convert` there with the recipe (`--recipe`, `--force`, reports only kept in memory) and returns
what the search needs from the report: the checks, the memory totals and the accuracy.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import RecipeError


@dataclass(frozen=True)
class RecipeJob:
    model_name: str          # the file's name: its suffix tells the loader the format
    model_bytes: bytes
    profile: Any             # a TargetProfile (a frozen dataclass: pickles as it is)
    calibration: Any         # a Dataset
    evaluation: Any          # a Dataset, or None
    recipe: Any              # a Recipe
    max_accuracy_drop: float
    trust_model: bool
    input_shapes: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Measured:
    """What a job hands back: every check (name, passed), the RAM and flash totals, and the accuracy."""

    checks: tuple[tuple[str, bool], ...]
    ram_bytes: int | None
    flash_bytes: int
    quantized_top1: float | None
    drop_points: float | None
    quantized_auc: float | None
    auc_drop_points: float | None
    snr_db: float | None


def _save(folder: Path, name: str, data: Any) -> str:
    import numpy as np

    arrays = {"x": data.inputs[0]} if len(data.inputs) == 1 else {f"x{k}": a for k, a in enumerate(data.inputs)}
    if data.labels is not None:
        arrays["y"] = data.labels
    if getattr(data, "groups", None) is not None:
        arrays["groups"] = data.groups
    np.savez(folder / name, **arrays)
    return str(folder / name)


def run_job(job: RecipeJob) -> Measured:
    """One candidate, measured as `convert` measures a model (in this process: the job is the isolation)."""
    from edgeq.isolation import Worker
    from edgeq.pipeline import ConvertOptions, GateError, convert

    with tempfile.TemporaryDirectory(prefix="edgeq-job-") as tmp:
        folder = Path(tmp)
        model = folder / job.model_name
        model.write_bytes(job.model_bytes)
        recipe = folder / "recipe.json"
        recipe.write_text(__import__("json").dumps(job.recipe.to_dict()))
        options = ConvertOptions(calibration=_save(folder, "calibration.npz", job.calibration),
                                 evaluation=None if job.evaluation is None else _save(folder, "eval.npz", job.evaluation),
                                 max_accuracy_drop=job.max_accuracy_drop, force=True, outdir=folder / "out",
                                 per_layer=False, trust_model=job.trust_model, input_shapes=job.input_shapes,
                                 recipe_file=recipe)
        try:
            result = convert(model, job.profile, options, worker=Worker(in_process=True))
        except GateError as exc:  # --force: not raised, but be safe
            result = exc.result
    report = result.report
    acc, memory = report.emulation.accuracy, report.emulation.memory
    return Measured(tuple((c.name, c.passed) for c in report.checks), memory.ram.total_bytes,
                    memory.flash.total_bytes, acc.quantized_top1 if acc else None, acc.drop_points if acc else None,
                    acc.quantized_auc if acc else None,
                    None if acc is None or acc.float_auc is None or acc.quantized_auc is None
                    else (acc.float_auc - acc.quantized_auc) * 100.0,
                    acc.errors[0].snr_db if acc and acc.errors else None)


class LocalPool:
    """`workers` processes on this machine (spawned: each imports TensorFlow once, then takes jobs)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, jobs: list[RecipeJob]) -> list[Measured]:
        return list(self._pool.map(run_job, jobs))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayCluster:
    """Ray tasks on an existing cluster at `address` (edgeq[ray]); each task gets its job by value."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise RecipeError("--ray needs the ray package", hint="pip install 'edgeq[ray]'") from None
        self._ray = ray
        if address.split(":")[0] in ("127.0.0.1", "localhost"):
            # Ray swaps a loopback address for the machine's routable one unless told not to; a
            # head started on 127.0.0.1 is then unreachable.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        host, _, port = address.rpartition(":")
        if "://" not in address and port.isdigit():  # ray.init retries a dead address for minutes: ask first
            import socket

            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
            except OSError as exc:
                raise RecipeError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})",
                                  hint="start one with `ray start --head`, or drop --ray for local workers") from None
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError: all mean "no cluster there"
            raise RecipeError(f"--ray {address}: no Ray cluster answers there ({exc})",
                              hint="start one with `ray start --head`, or drop --ray for local workers") from None
        self._task = ray.remote(num_cpus=1)(run_job)

    def map(self, jobs: list[RecipeJob]) -> list[Measured]:
        return list(self._ray.get([self._task.remote(job) for job in jobs]))

    def close(self) -> None:
        self._ray.shutdown()
