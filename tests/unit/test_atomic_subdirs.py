"""write_files_atomically / check_output_dir with names in subfolders (a firmware tree's ports/...):
all or nothing, folders it created removed again on failure, names outside the folder refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edgeq.errors import OutputError
from edgeq.export import atomic
from edgeq.export.atomic import TMP_PREFIX, check_output_dir, write_files_atomically

TREE = {
    "README.md": b"readme",
    "edgeq_device.c": b"device",
    "ports/zephyr/src/main.c": b"zephyr main",
    "ports/zephyr/prj.conf": b"conf",
    "ports/baremetal/main.c": b"bare metal",
    "ports/arduino/edgeq_harness/edgeq_harness.ino": b"sketch",
}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (contents) and folder (None) under `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_writes_subfolders(tmp_path):
    out = tmp_path / "fw"
    written = write_files_atomically(out, TREE, overwrite=False)
    assert [p.relative_to(out).as_posix() for p in written] == list(TREE)
    files = {k: v for k, v in snapshot(out).items() if v is not None}
    assert files == TREE
    assert (out / "ports" / "zephyr" / "src").is_dir()
    assert not [p for p in out.rglob(f"{TMP_PREFIX}*")]
    # existing files in subfolders count as existing outputs
    with pytest.raises(OutputError, match="ports/zephyr/src/main.c"):
        write_files_atomically(out, {"ports/zephyr/src/main.c": b"new"}, overwrite=False)
    write_files_atomically(out, {"ports/zephyr/src/main.c": b"new"}, overwrite=True)
    assert (out / "ports/zephyr/src/main.c").read_bytes() == b"new"


class Boom(Exception):
    pass


def fail_on_call(real, n: int, exc: BaseException):  # type: ignore[no-untyped-def]
    calls = []

    def fake(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        if len(calls) == n:
            raise exc
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize("where,n", [("fsync", 3), ("replace", 4), ("replace", 6)])
@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt(), Boom()],
                         ids=["ENOSPC", "SIGINT", "bug"])
def test_failure_leaves_no_new_files_or_folders(tmp_path, monkeypatch, where, n, exc):
    out = tmp_path / "fw"
    out.mkdir()
    (out / "ports").mkdir()  # an existing folder stays, and keeps its old file
    (out / "ports" / "keep.txt").write_bytes(b"old")
    (out / "README.md").write_bytes(b"old readme")
    before = snapshot(out)
    monkeypatch.setattr(atomic.os, where, fail_on_call(getattr(os, where), n, exc))
    with pytest.raises(OutputError if isinstance(exc, OSError) else type(exc)):
        write_files_atomically(out, TREE, overwrite=True)
    monkeypatch.undo()
    assert snapshot(out) == before  # no ports/zephyr, ports/baremetal, ...; README back


def test_failure_creating_a_folder_mid_way(tmp_path, monkeypatch):
    out = tmp_path / "fw"
    real_mkdir = Path.mkdir
    made = []

    def mkdir(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.name == "src":  # after ports/ and ports/zephyr/ were made
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        made.append(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(OutputError, match="permission denied; no output was changed"):
        write_files_atomically(out, TREE, overwrite=False)
    monkeypatch.undo()
    assert out / "ports" in made and out / "ports" / "zephyr" in made
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["../escape.c", "ports/../../escape.c", "/etc/passwd", "a//b.c", "./a.c",
                                  "ports/./a.c", "", "ports/", "ports\\x.c", "C:x.c"])
def test_names_outside_the_folder_refused(tmp_path, name):
    out = tmp_path / "fw"
    with pytest.raises(OutputError, match="refusing to write output"):
        write_files_atomically(out, {"ok.c": b"x", name: b"x"}, overwrite=True)
    with pytest.raises(OutputError, match="refusing to write output"):
        check_output_dir(out, [name], overwrite=True)
    assert not out.exists()
    assert not (tmp_path / "escape.c").exists()


def test_file_in_the_way_of_a_subfolder(tmp_path):
    out = tmp_path / "fw"
    out.mkdir()
    (out / "ports").write_bytes(b"a file")
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        check_output_dir(out, list(TREE), overwrite=True)
    with pytest.raises(OutputError, match="both a file and the folder"):
        check_output_dir(out, ["a/b.c", "a"], overwrite=True)
    assert (out / "ports").read_bytes() == b"a file"
