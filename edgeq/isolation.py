"""Code that runs user models runs in a child process, where a native crash cannot take edgeq down.

The TFLite converter's calibrator segfaults on some recurrent models, TFLM aborts on some
quantization parameters, and a crafted .tflite can do worse: none of that may end the edgeq
process without a message. A `Worker` is one child Python process that imports edgeq and runs
the module-level functions it is sent (the converter, LiteRT, TFLM), one at a time. Arguments
and results travel pickled over a pipe; the child's stdout and stderr go to a log file, so
that a crash can be explained with its last lines. When the child dies, the call raises
`ChildCrashed`, and the next call starts a fresh child.

Only edgeq's own functions are sent, and only edgeq reads the results: the pipe is not a trust
boundary, the model files are (they are checked before they reach the child).
"""

from __future__ import annotations

import atexit
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from edgeq.errors import EdgeqError

_HEADER = struct.Struct("<Q")
_LOG_TAIL_LINES = 60
# TensorFlow's start-up chatter (absl INFO/WARNING lines), never the reason for a crash.
_NOISE = re.compile(r"^\s*([IW]\d{4} |WARNING: All log messages before absl)")


class ChildCrashed(Exception):
    """The child process died (a signal or an exit) while it ran a function for edgeq."""

    def __init__(self, returncode: int, log_tail: str) -> None:
        self.returncode = returncode
        self.log_tail = log_tail
        super().__init__(f"the child process {describe_exit(returncode)}")

    @property
    def how(self) -> str:
        return describe_exit(self.returncode)

    def last_words(self, lines: int = 3) -> str:
        """'; its last words: ...' from the child's log: the innermost Python frames of the crash
        (faulthandler's stack names the stage) or the last lines it printed; '' if none."""
        text = [line.strip() for line in self.log_tail.splitlines() if line.strip() and not _NOISE.match(line)]
        if "Fatal Python error" in " ".join(text):
            start = next(i for i, line in enumerate(text) if line.startswith("Fatal Python error"))
            frames = [line for line in text[start:] if line.startswith("File ")]
            text = [text[start], *frames[:lines - 1]]
        kept = [line[:200] for line in text[-lines:]]
        return f"; its last words: {' | '.join(kept)}" if kept else ""


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"crashed ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Worker:
    """A child process for edgeq functions on user models; a context manager. One worker can
    serve many calls (and many conversions): the child keeps its imports between them.

    `preload`: "module" or "module:function" that the child imports (and calls) as soon as it
    starts, e.g. TENSORFLOW, so that TensorFlow's few seconds of import overlap with the
    parent's own work.
    """

    def __init__(self, *, preload: str | None = None, in_process: bool = False,
                 import_paths: tuple[str, ...] = ()) -> None:
        self.preload = preload
        self.in_process = in_process  # run here instead: for tests that patch what the child would run
        self.import_paths = import_paths  # where the child finds functions outside edgeq (it sees no PYTHONPATH)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.calls = 0

    def __enter__(self) -> Worker:
        if not self.in_process:
            self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # No call is in flight: nothing to wait for (not even the preload's import).
            proc.kill()
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    stream.close()
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _start(self) -> None:
        self.close()
        verbose = bool(os.environ.get("EDGEQ_VERBOSE"))
        self._log = None if verbose else tempfile.TemporaryFile()  # unlinked: nothing left behind
        paths = [str(Path(__file__).resolve().parents[1]), *self.import_paths]
        code = (f"import sys; sys.path[:] = {paths!r} + [p for p in sys.path if p]; "
                "from edgeq.isolation import _serve; _serve()")
        # Isolated as `python -I` would be (the user's PYTHONPATH, user site or current folder
        # cannot shadow numpy, TensorFlow or edgeq: no PYTHON* variable reaches the child, -s, and
        # the current folder leaves sys.path), but with one hash seed: -I ignores PYTHONHASHSEED, and
        # with a random one PT2E partitions a graph in another order from run to run.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"PYTHONHASHSEED": "0"}
        self._proc = subprocess.Popen([sys.executable, "-s", "-c", code, self.preload or ""], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log if self._log is not None else None)

    def call(self, function: Callable[..., Any], *args: Any, on_progress: Callable[[int], None] | None = None,
             callbacks: dict[str, Callable[..., Any]] | None = None, **kwargs: Any) -> Any:
        """`function(*args, **kwargs)` in the child. Each of `callbacks` (and `on_progress`) is
        passed to the function under its name, as a stand-in whose calls are relayed here (their
        return values are not). Raises what the function raised, or ChildCrashed."""
        relayed = dict(callbacks or {}) | ({"on_progress": on_progress} if on_progress else {})
        self.calls += 1
        if self.in_process:
            return function(*args, **kwargs, **relayed)
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        request = pickle.dumps((function, args, kwargs, sorted(relayed)), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            proc.stdin.write(_HEADER.pack(len(request)) + request)
            proc.stdin.flush()
            while True:
                kind, value = _receive(proc.stdout)
                if kind == "callback":
                    name, values = value
                    relayed[name](*values)
                    continue
                if kind == "ok":
                    return value
                raise value
        except (EOFError, BrokenPipeError, OSError) as exc:
            raise self._crashed() from exc

    def _crashed(self) -> ChildCrashed:
        proc = self._proc
        assert proc is not None
        try:
            returncode = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
        tail = ""
        if self._log is not None:
            self._log.seek(0)
            lines = self._log.read().decode("utf-8", "replace").splitlines()
            tail = "\n".join(line for line in lines[-_LOG_TAIL_LINES:] if line.strip())
        self.close()
        return ChildCrashed(returncode, tail)


TENSORFLOW = "edgeq._tf:tf"
"""The preload that imports TensorFlow the way edgeq does (quiet, oneDNN off for stable floats)."""

_SHARED: dict[str, Worker] = {}


def shared_worker(preload: str | None = None) -> Worker:
    """This process's worker for `preload`, started on first use and kept until the process
    exits: conversions in one process (a script, a test session) pay the child's start-up, and
    TensorFlow's import in it, once. A crashed child is replaced on the next call."""
    key = preload or ""
    if key not in _SHARED:
        worker = _SHARED[key] = Worker(preload=preload)
        worker._start()
        atexit.register(worker.close)
    return _SHARED[key]


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the child closed its pipe")
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the child closed its pipe mid-message")
    return pickle.loads(payload)


# -- the child ------------------------------------------------------------------------------------


def _serve() -> None:
    """The child's loop: one request at a time, until the parent closes the pipe."""
    import faulthandler

    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the converter or a runtime prints goes to the log, not into the protocol
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    # A native crash leaves the Python stack in the log, naming the stage: on a descriptor of its
    # own, because captured_output() points fd 2 elsewhere while the converter runs.
    crash_log = os.fdopen(os.dup(2), "w")
    faulthandler.enable(file=crash_log)
    if len(sys.argv) > 1 and sys.argv[1]:  # "module:function", imported and called, or a module
        module, _, function = sys.argv[1].partition(":")
        loaded = __import__(module, fromlist=["_"])
        if function:
            getattr(loaded, function)()

    def send(kind: str, value: Any) -> None:
        try:
            payload = pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an unpicklable result or exception: say what it was
            payload = pickle.dumps(("error", RuntimeError(f"{type(value).__name__}: {value} ({exc})")))
        replies.write(_HEADER.pack(len(payload)) + payload)
        replies.flush()

    while True:
        try:
            function, args, kwargs, relayed = _receive(requests)
        except EOFError:
            return
        except Exception as exc:  # e.g. a function this child cannot import: say so, stay up
            send("error", RuntimeError(f"the child could not read the request: {type(exc).__name__}: {exc}"))
            continue
        for name in relayed:
            kwargs[name] = (lambda name: lambda *values: send("callback", (name, values)))(name)
        try:
            result = function(*args, **kwargs)
        except EdgeqError as exc:
            send("error", exc)
        except Exception as exc:
            exc.__traceback__ = None
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            send("error", exc if _picklable(exc) else RuntimeError(detail))
        else:
            send("ok", result)


def _picklable(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True
