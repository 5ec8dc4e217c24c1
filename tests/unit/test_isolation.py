"""edgeq.isolation: a child process runs what may crash; the parent survives and says how it ended."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

import pytest

from edgeq.errors import CalibrationError
from edgeq.isolation import ChildCrashed, Worker, describe_exit

HERE = (str(Path(__file__).resolve().parent),)  # the child imports this module's functions from here


def _progress_then_square(n: int, *, on_progress) -> int:  # type: ignore[no-untyped-def]
    for i in range(1, n + 1):
        on_progress(i)
    return n * n


def _refuse() -> None:
    raise CalibrationError("data 'x.npz': sample 3 is NaN", hint="drop it")


def _pid() -> int:
    return os.getpid()


def test_results_progress_and_errors_cross_the_pipe() -> None:
    with Worker(import_paths=HERE) as worker:
        seen: list[int] = []
        assert worker.call(_progress_then_square, 4, on_progress=seen.append) == 16
        assert seen == [1, 2, 3, 4]
        with pytest.raises(CalibrationError) as caught:
            worker.call(_refuse)
        assert caught.value.message == "data 'x.npz': sample 3 is NaN" and caught.value.hint == "drop it"
        assert caught.value.exit_code == 2
        assert worker.call(_pid) != os.getpid()


def test_a_segfault_ends_the_child_not_the_caller_and_the_next_call_gets_a_new_child() -> None:
    with Worker(import_paths=HERE) as worker:
        first = worker.call(_pid)
        with pytest.raises(ChildCrashed) as caught:
            worker.call(ctypes.string_at, 0)  # reads address 0: SIGSEGV in the child
        assert caught.value.returncode == -signal.SIGSEGV and caught.value.how == "crashed (SIGSEGV)"
        assert "string_at" in caught.value.last_words()  # the child's faulthandler names the stage
        assert worker.call(_pid) not in (first, os.getpid())


def test_in_process_mode_runs_here() -> None:
    worker = Worker(in_process=True)
    assert worker.call(_pid) == os.getpid()
    assert worker.call(_progress_then_square, 2, on_progress=lambda done: None) == 4


def test_a_function_the_child_cannot_import_is_an_error_not_a_dead_child() -> None:
    with Worker() as worker:  # no import path: the child cannot find this test module
        with pytest.raises(RuntimeError, match="could not read the request"):
            worker.call(_pid)
        assert worker.call(pow, 3, 2) == 9


def test_exit_descriptions() -> None:
    assert describe_exit(-signal.SIGABRT) == "crashed (SIGABRT)"
    assert describe_exit(3) == "exited with code 3"


def test_every_child_hashes_alike_and_sees_none_of_the_users_python_paths(monkeypatch, tmp_path) -> None:
    """One hash seed in every child (PT2E's graph partitions follow set order), and isolation as
    `python -I` gives it: the user's PYTHONPATH and the current folder do not reach sys.path."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "shadow"))
    monkeypatch.setenv("PYTHONHASHSEED", "random")
    monkeypatch.chdir(tmp_path)
    hashes = []
    for _ in range(2):
        with Worker() as worker:
            hashes.append(worker.call(hash, "conv2d/partition"))
            path = worker.call(eval, "__import__('sys').path")
            assert str(tmp_path / "shadow") not in path and "" not in path and str(tmp_path) not in path
    assert hashes[0] == hashes[1]
