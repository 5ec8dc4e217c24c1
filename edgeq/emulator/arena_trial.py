"""The worker process of the TFLM arena search, and each trial arena run in a forked child of it.

edgeq.emulator.memory starts this worker with `python -I` and talks to it over a pipe. It imports
numpy and tflite_micro only (never TensorFlow, which the caller may have loaded): it reads the model
once, then forks one short-lived child per trial, since a too-small arena can segfault TFLM. Each
child's way of ending (exit code or signal) is reported back as one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from typing import Any

LOG_LIMIT = 16384  # bytes of a child's TFLM output sent back: enough for the allocation report


def worker_main() -> None:
    """Read `<size> <timeout> <inputs>\\n<model bytes>`, then answer each `<arena> <record>\\n` with a JSON line."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    size, timeout, count = stdin.readline().split()
    model = stdin.read(int(size))
    inputs = int(count)
    for line in stdin:
        arena, record = (int(x) for x in line.split())
        reply = fork_trial(lambda: _trial_body(runtime, np, model, inputs, arena, bool(record)),
                           float(timeout), bool(record))
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()


def _trial_body(runtime: Any, np: Any, model: bytes, inputs: int, arena: int, record: bool) -> None:
    interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena)
    for i in range(inputs):
        details = interpreter.get_input_details(i)
        interpreter.set_input(np.zeros(details["shape"], dtype=details["dtype"]), i)
    interpreter.invoke()
    if record:
        interpreter.print_allocations()


def fork_trial(body: Any, timeout: float, capture: bool) -> dict[str, Any]:
    """Run `body` in a forked child; how it ended: exit 0 ok, 1 RuntimeError, 2 other error, or a signal."""
    with tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:
            _child(body, timeout, log.fileno() if capture else None)
        _, status = os.waitpid(pid, 0)
        text = ""
        if capture:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - LOG_LIMIT))
            text = log.read().decode(errors="replace")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"status": "hung" if sig == signal.SIGALRM else "crashed", "signal": sig, "log": text}
    return {"status": ("ok", "fails", "error")[min(os.WEXITSTATUS(status), 2)], "log": text}


def _child(body: Any, timeout: float, log_fd: int | None) -> None:
    code = 2
    try:
        # TFLM prints to the C-level fds; they go to the log (or nowhere), never to the worker's pipe.
        sink = log_fd if log_fd is not None else os.open(os.devnull, os.O_WRONLY)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        # The default SIGALRM action ends the process even inside a C call that never returns.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        body()
        code = 0
    except RuntimeError:
        code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
