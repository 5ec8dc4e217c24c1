"""The RAM a model needs on a TFLite Micro device: the exact tensor arena, found by search.

TFLite Micro (TFLM) takes one fixed `tensor_arena`; too small and `AllocateTensors()` fails, or
worse, some kernels crash. Its RecordingMicroAllocator reports what the arena holds *after*
allocation, but allocation itself needs more (the memory planner's scratch space), so the recorded
total is a lower estimate that can be off by kilobytes. The only exact number is the one TFLM
accepts: `measure_tflm_arena` searches for the smallest arena with which the real TFLM interpreter
allocates and invokes the model, at 1-byte resolution.

Each trial runs in its own process: a too-small arena can segfault, and the caller may have
TensorFlow loaded. To keep a search of ~20 trials well under a second, one worker process
(numpy + tflite_micro only, single-threaded; edgeq.emulator.arena_trial) reads the model once and
forks a short-lived child per trial; the worker reports how each child ended, one JSON line per trial.

LiteRT targets allocate dynamically; their peak activations are estimated from the graph in
edgeq.emulator.activations.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgeq.emulator.arena_trial import LOG_LIMIT
from edgeq.errors import TargetCheckError
from edgeq.records import Record

_GROWTHS = 3  # times the recording arena is multiplied by 4 before giving up
_MAX_ARENA = 2**31 - 1  # the Python wrapper takes an int arena size
_FIRST_STEP = 16  # TFLM aligns arena allocations to 16 bytes, so steps below that rarely change anything
_WORKER_SLACK = 30.0  # seconds for the worker itself (start-up, imports) on top of a trial's timeout

_RECORD_RE = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")
# Lines TFLM or the wrapper prints on every failure (or success) that explain nothing.
_NOISE = ("Number of allocated temp buffers", "All temp buffers must be freed", "Input index ")


@dataclass(frozen=True)
class ArenaMeasurement(Record):
    """The TFLM arena of one model: what the recording allocator reports and what TFLM accepts."""

    recorded_total: int  # "[RecordingMicroAllocator] Arena allocation total N bytes"
    recorded_head: int  # planned, non-persistent activations
    recorded_tail: int  # persistent: tensor metadata, op data, allocator
    smallest: int  # smallest arena (bytes) with which the interpreter allocates and invokes
    trials: int  # child runs of the search, the recording run(s) included
    crashed_trials: int  # child runs that died by a signal instead of failing cleanly


@dataclass(frozen=True)
class _Trial:
    status: str  # "ok", "fails" (TFLM error), "error" (other exception), "crashed" (signal), "hung" (timeout)
    signal: int | None = None
    log: str = ""

    @property
    def runs(self) -> bool:
        return self.status == "ok"


def measure_tflm_arena(model: bytes, *, source: str = "<model>", timeout: float = 120.0) -> ArenaMeasurement:
    """Find the smallest tensor arena with which TFLite Micro allocates and invokes `model`.

    Every run happens in a child process (inputs all zeros). `timeout` bounds each run in seconds;
    a run that takes longer is killed and counts as failed. The result equals a device arena
    declared `alignas(16)`. Raises TargetCheckError if TFLM cannot run the model at any size.
    """
    with _ArenaWorker(model, source=source, timeout=timeout) as worker:
        total, head, tail, known_ok = _record(worker, len(model), source)
        smallest = _search(worker, total, known_ok)
        return ArenaMeasurement(recorded_total=total, recorded_head=head, recorded_tail=tail, smallest=smallest,
                                trials=worker.trials, crashed_trials=worker.crashed)


def recorded_arena(model: bytes, *, source: str = "<model>", timeout: float = 120.0) -> tuple[int, int, int]:
    """(total, head, tail) as TFLM's recording allocator reports them after one run: the head (the
    planned activations and scratch buffers) is exact; the total is a lower estimate of the arena."""
    with _ArenaWorker(model, source=source, timeout=timeout) as worker:
        total, head, tail, _ = _record(worker, len(model), source)
        return total, head, tail


def _record(worker: _ArenaWorker, model_bytes: int, source: str) -> tuple[int, int, int, int]:
    """(total, head, tail, arena that ran): one run with a generous arena, grown if needed."""
    arena = min(max(10 * model_bytes, 64 * 1024), _MAX_ARENA)
    trial = worker.run(arena, record=True)
    for _ in range(_GROWTHS):
        # Only an allocation failure or a crash may go away with a larger arena.
        if trial.status not in ("fails", "crashed") or arena >= _MAX_ARENA or _missing_kernel(trial.log):
            break
        arena = min(arena * 4, _MAX_ARENA)
        trial = worker.run(arena, record=True)
    if not trial.runs:
        raise _cannot_run(source, arena, trial)
    found = {kind: int(n) for kind, n in _RECORD_RE.findall(trial.log)}
    if set(found) != {"total", "head", "tail"}:
        raise TargetCheckError(f"{source}: TFLite Micro ran the model but its allocation report could not be read "
                               f"(expected 'Arena allocation total/head/tail' lines, got: {_last_line(trial.log)!r})",
                               hint="the installed tflite-micro prints a different format; report this to edgeq")
    return found["total"], found["head"], found["tail"], arena


def _search(worker: _ArenaWorker, total: int, known_ok: int) -> int:
    """Smallest N that runs with N - 1 failing: gallop away from the recorded total, then bisect."""
    if worker.run(total).runs:
        hi, lo, step = total, 0, _FIRST_STEP
        while hi - step > 0:
            if not worker.run(hi - step).runs:
                lo = hi - step
                break
            hi, step = hi - step, step * 2
        # lo == 0 was not tried: an empty arena cannot hold the interpreter's own structures.
    else:
        lo, step = total, _FIRST_STEP
        while True:
            candidate = min(lo + step, known_ok)
            if candidate == known_ok or worker.run(candidate).runs:
                hi = candidate
                break
            lo, step = candidate, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if worker.run(mid).runs:
            hi = mid
        else:
            lo = mid
    return hi


def _cannot_run(source: str, arena: int, trial: _Trial) -> TargetCheckError:
    line = _useful_line(trial.log)
    if _missing_kernel(line):
        return TargetCheckError(f"{source}: TFLite Micro cannot run the model: {line!r}",
                                hint="TFLite Micro has no kernel for this operator; change the model "
                                     "or choose a LiteRT target")
    if trial.status == "crashed":
        what = f"TFLite Micro crashed ({_signal_name(trial.signal)}) loading or running the model"
    elif trial.status == "hung":
        what = "TFLite Micro did not finish running the model within the timeout"
    elif trial.status == "error":
        what = "TFLite Micro's interpreter cannot load the model"
    else:
        what = "TFLite Micro cannot allocate and run the model"
    if trial.status in ("fails", "crashed"):
        what += f", even with a {arena:,}-byte tensor arena"
    message = f"{source}: {what}" + (f": {line!r}" if line else "")
    return TargetCheckError(message, hint="check that the model runs in LiteRT (`edgeq inspect`, a LiteRT "
                                          "target); TFLite Micro supports fewer ops and shapes")


def _missing_kernel(log: str) -> bool:
    return "Didn't find op" in log


def _useful_line(log: str) -> str:
    """The line of TFLM's output that explains a failure: a missing kernel, else the last message."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    missing = [ln for ln in lines if _missing_kernel(ln)]
    return (missing or lines or [""])[-1]


def _last_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _signal_name(sig: int | None) -> str:
    try:
        return signal.Signals(sig).name if sig is not None else "unknown signal"
    except ValueError:
        return f"signal {sig}"


class _ArenaWorker:
    """One worker process holding the model; `run(N)` tries arena size N in a fresh forked child."""

    def __init__(self, model: bytes, *, source: str, timeout: float) -> None:
        self.model = bytes(model)
        self.source = source
        self.timeout = float(timeout)
        self.trials = 0
        self.crashed = 0
        self._results: dict[tuple[int, bool], _Trial] = {}
        self._buffer = b""
        self._proc: subprocess.Popen[bytes] | None = None
        self._errors: BinaryIO | None = None

    def __enter__(self) -> _ArenaWorker:
        self._errors = tempfile.TemporaryFile()  # unlinked at once: nothing left behind, even if killed
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        root = str(Path(__file__).resolve().parents[2])
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                "from edgeq.emulator.arena_trial import worker_main; worker_main()")
        # -I: the user's PYTHONPATH or current folder cannot shadow numpy or tflite_micro. New session:
        # the worker and its children form one process group, killed together on cleanup.
        self._proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._errors, env=env,
                                      start_new_session=True)
        try:
            assert self._proc.stdin is not None
            header = b"%d %r %d\n" % (len(self.model), self.timeout, _count_inputs(self.model, self.source))
            self._proc.stdin.write(header + self.model)
            self._proc.stdin.flush()
        except BrokenPipeError:
            error = self._worker_died()
            self.close()
            raise error from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def run(self, arena: int, *, record: bool = False) -> _Trial:
        key = (arena, record)
        if key not in self._results:
            self._results[key] = self._ask(arena, record)
            self.trials += 1
            self.crashed += self._results[key].status == "crashed"
        return self._results[key]

    def _ask(self, arena: int, record: bool) -> _Trial:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(b"%d %d\n" % (arena, record))
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._worker_died() from None
        reply = json.loads(self._read_line())
        return _Trial(status=reply["status"], signal=reply.get("signal"), log=reply.get("log", ""))

    def _read_line(self) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout + _WORKER_SLACK
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TargetCheckError(f"{self.source}: the TFLite Micro arena search stopped responding",
                                       hint="retry; if it persists, run with a larger timeout")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise self._worker_died()
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _worker_died(self) -> TargetCheckError:
        detail = ""
        try:
            if self._proc is not None:
                self._proc.wait(timeout=5)  # its last words are complete once it has exited
        except subprocess.TimeoutExpired:
            pass
        if self._errors is not None:
            self._errors.seek(0)
            detail = _last_line(self._errors.read()[-LOG_LIMIT:].decode(errors="replace"))
        return TargetCheckError(f"{self.source}: the TFLite Micro arena search process ended unexpectedly"
                                + (f": {detail}" if detail else ""),
                                hint="check that tflite-micro is installed in this Python environment")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # EOF: the worker exits after its current trial
            except OSError:
                pass
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the worker and any trial child it still has
                except ProcessLookupError:
                    pass
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._errors is not None:
            self._errors.close()
            self._errors = None


def _count_inputs(model: bytes, source: str) -> int:
    """The model's input count, from the checked reader (in the parent, which may import it); 0 for a
    file it refuses, so that TFLM itself fails on it in a trial child and says why."""
    from edgeq.errors import TFLiteFormatError
    from edgeq.tflite.reader import read_tflite

    try:
        return len(read_tflite(model, source=source).inputs)
    except TFLiteFormatError:
        return 0
