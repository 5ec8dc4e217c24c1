"""Robustness of what edgeq writes (issue cases 9-12; docs/robustness.md lists them all).

9.  An output path that is a file or cannot be written: a clear error before any work.
10. Existing outputs kept unless --overwrite; a failure while writing (exception, KeyboardInterrupt,
    disk full) leaves the old files as they were and no .edgeq-tmp-* files.
11. C identifiers from any model name are valid and cannot inject anything into the C sources.
12. Same inputs, same versions: byte-identical outputs across processes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_edgeq
from edgeq.errors import OutputError
from edgeq.export import atomic
from edgeq.export.atomic import TMP_PREFIX, check_output_dir, write_files_atomically
from edgeq.export.c_arrays import _C_KEYWORDS, ArenaSize, c_identifier, model_data_sources, op_resolver_source
from edgeq.tflite.tflm_ops import RESOLVER_METHODS

NAME = "my_model_2"  # c_identifier("my-model 2"), the session model's file name
C_FILES = [f"{NAME}_model_data.cc", f"{NAME}_model_data.h", f"{NAME}_op_resolver.h", f"{NAME}_names.json"]
REPORTS = ["report.json", "report.md", "report.png"]


def assert_user_error(proc: subprocess.CompletedProcess[str], *words: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"{TMP_PREFIX}*")) if folder.exists() else []


def edgeq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeq", *args]


# -- session outputs: every convert runs twice, in separate processes, two at a time (2 cores) ---


@pytest.fixture(scope="module")
def runs(keras3_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """convert for mcu and iot, twice each, in separate processes: {"mcu-1": folder, ...}."""
    root = tmp_path_factory.mktemp("determinism")
    folders = {f"{t}-{i}": root / f"{t}-{i}" for t in ("mcu", "iot") for i in (1, 2)}
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    for pair in (("mcu-1", "mcu-2"), ("iot-1", "iot-2")):
        procs = [subprocess.Popen(edgeq_cmd("convert", str(keras3_model_path), "--target", key.split("-")[0],
                                            "-c", "digits", "-o", str(folders[key])),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for key in pair]
        for key, proc in zip(pair, procs):
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, (key, out, err)
    return folders


@pytest.fixture(scope="module")
def tflite(runs: dict[str, Path]) -> Path:
    return runs["mcu-1"] / f"{NAME}.tflite"


# -- 9: output path a file or not writable: error before any work --------------------------------

_WATCH = (
    "import sys, atexit\n"
    "atexit.register(lambda: print('\\nimported:', ' '.join(sorted(m for m in ('tensorflow', 'keras', 'tf_keras')"
    " if m in sys.modules)) or '-', file=sys.stderr))\n"
    "from edgeq.cli import main\n"
    "main(sys.argv[1:], prog_name='edgeq')\n"
)


def run_fast(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """The CLI in a child process that reports, at exit, whether TensorFlow or Keras was imported."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _WATCH, *args], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert "\nimported: -\n" in proc.stderr, proc.stderr  # no TensorFlow: nothing expensive was started
    proc.stderr = proc.stderr.split("\nimported:")[0] + "\n"
    return proc, elapsed


def commands(out: Path, tflite: Path) -> dict[str, list[str]]:
    return {
        "convert": ["convert", "m.keras", "-c", "digits", "-o", str(out)],
        "emulate --report": ["emulate", str(tflite), "--data", "digits", "--report", str(out)],
        "export-c": ["export-c", str(tflite), "-o", str(out)],
    }


@pytest.mark.parametrize("command", ["convert", "emulate --report", "export-c"])
def test_output_path_is_a_file_fails_fast(tmp_path, tflite, command):
    target = tmp_path / "out"
    target.write_text("keep me")
    proc, elapsed = run_fast(*commands(target, tflite)[command])
    assert_user_error(proc, "is a file, not a folder", "hint:")
    assert elapsed < 3, elapsed
    assert target.read_text() == "keep me"
    # a path *under* a file cannot be created either
    proc, _ = run_fast(*commands(target / "sub", tflite)[command])
    assert_user_error(proc, "is a file, not a folder")


def _cannot_create_in(folder: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process cannot write to, even as root: chmod for others; for root a read-only
    tmpfs mount, else a folder of sysfs (which refuses new files even to root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(folder)],
                                                 capture_output=True).returncode == 0:
        try:
            assert _cannot_create_in(folder)
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    sysfs = Path("/sys/kernel")
    if sysfs.is_dir() and _cannot_create_in(sysfs):
        yield sysfs
        return
    pytest.skip("running as root with no way to make a read-only folder (no mount permission, no sysfs)")


@pytest.mark.parametrize("command", ["convert", "emulate --report", "export-c"])
def test_read_only_output_folder_fails_fast(unwritable_dir, tflite, command):
    for out in (unwritable_dir, unwritable_dir / "new-sub"):
        proc, elapsed = run_fast(*commands(out, tflite)[command])
        assert_user_error(proc, f"cannot write to {unwritable_dir}", "hint:")
        assert re.search(r"permission denied|read-only file system", proc.stderr), proc.stderr
        assert elapsed < 3, elapsed
    assert not (unwritable_dir / "new-sub").exists()


def test_check_output_dir_probe_leaves_nothing(tmp_path):
    check_output_dir(tmp_path / "a" / "b", ["x.tflite"], overwrite=False)
    assert list(tmp_path.iterdir()) == []


# -- 10: existing outputs kept; failures while writing change nothing ----------------------------


@pytest.mark.parametrize("command", ["emulate --report", "export-c"])
def test_existing_outputs_kept_without_overwrite(tmp_path, tflite, command):
    """convert is covered in tests/integration/test_cli_errors.py."""
    out = tmp_path / "out"
    out.mkdir()
    name = "report.md" if command.startswith("emulate") else C_FILES[0]
    (out / name).write_bytes(b"precious")
    proc, _ = run_fast(*commands(out, tflite)[command])
    assert_user_error(proc, "already exist", name, "--overwrite")
    assert [p.name for p in out.iterdir()] == [name]
    assert (out / name).read_bytes() == b"precious"
    proc = run_edgeq(*commands(out, tflite)[command], "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (out / name).read_bytes() != b"precious"
    assert leftovers(out) == []


OLD = {"a.tflite": b"old a", "b.cc": b"old b", "c.h": b"old c"}
NEW = {"a.tflite": b"new a" * 100, "b.cc": b"new b" * 100, "c.h": b"new c" * 100}


@pytest.fixture
def old_outputs(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for name, data in OLD.items():
        (out / name).write_bytes(data)
    (out / "stale.tflite").write_bytes(b"old stale")
    return out


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def fail_on_second(real, exc: BaseException):  # type: ignore[no-untyped-def]
    calls = []

    def fake(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        if len(calls) == 2:
            raise exc
        return real(*args, **kwargs)

    return fake


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["fsync", "replace"])  # while writing the second file / moving it in place
@pytest.mark.parametrize("exc", [ENOSPC, KeyboardInterrupt(), RuntimeError("bug")], ids=["ENOSPC", "SIGINT", "bug"])
def test_failure_while_writing_keeps_old_files(old_outputs, monkeypatch, where, exc):
    before = contents(old_outputs)
    monkeypatch.setattr(atomic.os, where, fail_on_second(getattr(os, where), exc))
    expected = OutputError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected) as caught:
        write_files_atomically(old_outputs, NEW, overwrite=True, remove=["stale.tflite"])
    monkeypatch.undo()
    if isinstance(exc, OSError):
        assert "no space left on device" in caught.value.message
        assert "no output was changed" in caught.value.message
    assert contents(old_outputs) == before  # nothing new, nothing lost, stale file not removed
    assert leftovers(old_outputs) == []


@pytest.mark.parametrize("exc", [ENOSPC, KeyboardInterrupt()], ids=["ENOSPC", "SIGINT"])
def test_failure_in_a_new_folder_leaves_no_files(tmp_path, monkeypatch, exc):
    out = tmp_path / "fresh"
    monkeypatch.setattr(atomic.os, "replace", fail_on_second(os.replace, exc))
    with pytest.raises(OutputError if isinstance(exc, OSError) else KeyboardInterrupt):
        write_files_atomically(out, NEW, overwrite=False)
    assert list(out.iterdir()) == []


def test_remove_only_after_success(old_outputs):
    written = write_files_atomically(old_outputs, NEW, overwrite=True, remove=["stale.tflite", "never-there.h"])
    assert [p.name for p in written] == list(NEW)
    assert contents(old_outputs) == NEW
    assert leftovers(old_outputs) == []


def test_remove_refuses_without_overwrite(old_outputs):
    with pytest.raises(OutputError, match="already exist"):
        write_files_atomically(old_outputs, {"new.md": b"x"}, overwrite=False, remove=["stale.tflite"])
    assert (old_outputs / "stale.tflite").exists() and not (old_outputs / "new.md").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 128 KiB tmpfs: a real 'No space left on device'."""
    folder = tmp_path / "disk"
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(folder)], capture_output=True,
                          text=True) if shutil.which("mount") else None
    if proc is None or proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() if proc else 'no mount command'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_disk_full_keeps_old_files(tiny_disk):
    out = tiny_disk / "out"
    write_files_atomically(out, OLD | {"stale.tflite": b"old stale"}, overwrite=False)
    before = contents(out)
    big = {"a.tflite": b"x" * 60_000, "b.cc": b"y" * 100_000, "c.h": b"z"}
    with pytest.raises(OutputError) as caught:
        write_files_atomically(out, big, overwrite=True, remove=["stale.tflite"])
    assert "no space left on device" in caught.value.message and "no output was changed" in caught.value.message
    assert caught.value.hint and "disk space" in caught.value.hint
    assert contents(out) == before
    assert leftovers(tiny_disk) == []


def test_cli_disk_full_keeps_old_files(tiny_disk, tflite):
    """A second export-c needs room for the new files beside the old; the disk keeps half of that."""
    out = tiny_disk / "c"
    assert run_edgeq("export-c", str(tflite), "-o", str(out)).returncode == 0
    before = contents(out)
    written = sum(len(b) for b in before.values())
    (tiny_disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(tiny_disk).free - written // 2))
    proc = run_edgeq("export-c", str(tflite), "-o", str(out), "--overwrite", "--arena-margin", "2048")
    assert_user_error(proc, "no space left on device", "no output was changed", "hint:")
    assert contents(out) == before
    assert leftovers(tiny_disk) == []


_INTERRUPT = (
    "import os, sys\n"
    "real, calls = os.replace, []\n"
    "def replace(*a, **k):\n"
    "    calls.append(a)\n"
    "    if len(calls) == 2:\n"
    "        raise KeyboardInterrupt\n"
    "    return real(*a, **k)\n"
    "os.replace = replace\n"
    "from edgeq.cli import main\n"
    "main(sys.argv[1:], prog_name='edgeq')\n"
)


@pytest.mark.parametrize("command", ["export-c", "emulate --report"])
def test_cli_interrupted_while_writing(tmp_path, tflite, command):
    """Ctrl-C (KeyboardInterrupt) between two renames: exit 130, old files back, no temp files."""
    out = tmp_path / "out"
    args = commands(out, tflite)[command]
    assert run_edgeq(*args).returncode == 0
    before = contents(out)
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT, *args, "--overwrite",
                           *(["--arena-margin", "4096"] if command == "export-c" else [])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert "interrupted; no output was changed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert contents(out) == before
    assert leftovers(out) == []


# -- 11: C identifiers and injection -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=300))
def test_c_identifier_property(name):
    ident = c_identifier(name)
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", ident), ident
    assert ident not in _C_KEYWORDS
    assert len(ident) <= 64
    assert c_identifier(ident) == ident  # stable: what export-c and convert derive agrees


@pytest.mark.parametrize("keyword", ["int", "class", "asm", "nullptr", "static_assert", "co_await", "and", "typename",
                                     "char8_t", "thread_local", "xor_eq", "concept", "requires", "decltype"])
def test_c_identifier_is_never_a_keyword(keyword):
    assert c_identifier(keyword) == f"model_{keyword}"
    assert c_identifier(keyword.upper()) == f"model_{keyword}"


NASTY = [
    "my-model 2", "  spaces  ", "3d-net", "int", "class", "Ünïcödé módel", "模型", "🙂", "",
    "*/ #include <evil>", "a\n#define x 1\n// ", 'name"; system("rm -rf /"); //', "\\\n??/ ??=",
    "x" * 500, "_" * 80, "-" * 5 + "9" * 100, "model__name__", "NUL\x00byte",
]


def _resolver_stub(root: Path) -> None:
    methods = "\n".join(f"  TfLiteStatus {m}() {{ return ++added <= N ? kTfLiteOk : kTfLiteError; }}"
                        for m in sorted(set(RESOLVER_METHODS.values())))
    path = root / "tensorflow/lite/micro/micro_mutable_op_resolver.h"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#pragma once\nenum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 };\nnamespace tflite {\n"
                    f"template <unsigned int N> class MicroMutableOpResolver {{\n public:\n  unsigned int added = 0;\n"
                    f"{methods}\n}};\n}}\n")


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_nasty_names_compile_and_do_not_leak(tmp_path):
    _resolver_stub(tmp_path)
    model = bytes(range(256)) * 3
    main_lines = []
    for i, name in enumerate(NASTY):
        folder = tmp_path / f"n{i}"
        folder.mkdir()
        files = model_data_sources(name, model, arena=ArenaSize(1000, 24)) | op_resolver_source(
            name, ["CONV_2D", "FULLY_CONNECTED", "SOFTMAX"])
        ident = c_identifier(name)
        assert sorted(files) == sorted(f"{ident}{s}" for s in ("_model_data.cc", "_model_data.h", "_op_resolver.h"))
        for fname, data in files.items():
            data.decode("ascii")  # no raw non-ASCII text
            (folder / fname).write_bytes(data)
            text = data.decode()
            if name.strip() and not re.fullmatch(r"[a-z0-9_]+", name):
                assert name not in text, (name, fname)
            for fragment in ("*/", "#include <evil>", "system(", "#define x", "??", "\\\n", "\x00"):
                assert fragment not in text, (fragment, name, fname)
        build = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", f"{ident}_model_data.cc",
                                "-o", "data.o"], cwd=folder, capture_output=True, text=True)
        assert build.returncode == 0, (name, build.stderr)
        main_lines.append(f'#include "n{i}/{ident}_model_data.h"\n#include "n{i}/{ident}_op_resolver.h"\n')
    (tmp_path / "all.cc").write_text("".join(dict.fromkeys(main_lines)) + "int main() { return 0; }\n")
    build = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", str(tmp_path), "-c", "all.cc",
                            "-o", "all.o"], cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr


def test_export_c_with_an_injection_name(tmp_path, tflite):
    name = "*/ #include <evil>"
    proc = run_edgeq("export-c", str(tflite), "-o", str(tmp_path), "--name", name)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["include_evil_model_data.cc", "include_evil_model_data.h", "include_evil_op_resolver.h"]
    for path in tmp_path.iterdir():
        assert name not in path.read_text() and "<evil>" not in path.read_text()


# -- 12: determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("target, names", [
    ("mcu", [f"{NAME}.tflite", *C_FILES, *REPORTS]),
    ("iot", [f"{NAME}.tflite", *REPORTS]),
])
def test_convert_is_byte_identical_across_processes(runs, target, names):
    first, second = runs[f"{target}-1"], runs[f"{target}-2"]
    assert sorted(p.name for p in first.iterdir()) == sorted(names)
    assert sorted(p.name for p in second.iterdir()) == sorted(names)
    for name in names:
        if name == "report.json":  # identical but for `timings`, each stage's wall time and memory on this host
            one, two = (json.loads((run / name).read_text()) for run in (first, second))
            assert [t["stage"] for t in one.pop("timings")] == [t["stage"] for t in two.pop("timings")]
            assert one == two, f"{target}: report.json differs beyond its timings"
            continue
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{target}: {name} differs"
    report = json.loads((first / "report.json").read_text())
    assert report["emulation"]["host_latency"] is None  # no host latency: only the stage timings vary


def test_emulate_json_identical_except_host_latency(tflite):
    reports = []
    for _ in range(2):
        proc = run_edgeq("emulate", str(tflite), "--data", "digits", "--json")
        assert proc.returncode == 0, proc.stderr
        reports.append(json.loads(proc.stdout))
    for report in reports:
        host = report["emulation"].pop("host_latency")
        assert host is not None and host["varies_between_runs"] is True
    assert reports[0] == reports[1]
