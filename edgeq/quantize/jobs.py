"""Where independent jobs run: a local process pool, or a Ray cluster. The executors know nothing
of what they run.

The search's job (`edgeq.measure.RecipeJob`) carries everything it needs as values: the
candidate's quantized model (the search converts once per mode and calibration and mixes layers
from those conversions, which takes milliseconds), the float model's outputs on the evaluation
data, the data and the target profile. So it runs wherever a worker is, with no shared file system
and no TensorFlow: `edgeq.measure.measure_job` measures it as `convert` does (stripped for TFLM,
the real arena, accuracy in the device's runtime, every check), which is most of a candidate's
time, and hands back what the search needs.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from edgeq.errors import RecipeError
from edgeq.measure import Measured, RecipeJob, measure_job


class LocalPool:
    """`workers` processes on this machine (spawned: each imports TensorFlow once, then takes jobs)."""

    def __init__(self, workers: int) -> None:
        self.workers = self.width = workers  # width: candidates worth measuring at once
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, jobs: list[RecipeJob]) -> list[Measured]:
        return self.map_function(measure_job, jobs)

    def map_function(self, function: Any, jobs: list[Any]) -> list[Any]:
        return list(self._pool.map(function, jobs))

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
        self.width = max(1, int(ray.cluster_resources().get("CPU", 1)))  # candidates worth measuring at once

    def map(self, jobs: list[RecipeJob]) -> list[Measured]:
        return self.map_function(measure_job, jobs)

    def map_function(self, function: Any, jobs: list[Any]) -> list[Any]:
        task = self._ray.remote(num_cpus=1)(function)
        return list(self._ray.get([task.remote(job) for job in jobs]))

    def close(self) -> None:
        self._ray.shutdown()
