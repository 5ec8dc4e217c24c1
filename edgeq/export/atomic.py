"""Write a set of output files so that a failure never leaves half-written or lost files.

Names are relative paths, "/" separated; they may lead into subfolders ("ports/zephyr/src/main.c"),
which are created as needed (never above the output folder: absolute names and ".." are refused).
Each file is written to a temporary file in its destination folder, flushed and fsynced.
Only when *every* file of the set has been written are they moved into place with os.replace
(atomic per file on POSIX). Before the first rename, every existing output the set replaces
or removes is kept under a hard link (a copy where links are not supported), so a failure
during the renames (disk full, an exception, KeyboardInterrupt) puts the old files back. On
any failure the temporary files are removed, subfolders created for the set are removed again,
and existing outputs are left as they were.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Mapping, Sequence

from edgeq.errors import OutputError

TMP_PREFIX = ".edgeq-tmp-"


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return (exc.strerror or str(exc)).lower()


def _check_names(names: Sequence[str]) -> None:
    """Output names are relative paths inside the output folder: no absolute path, no "..", no "."."""
    for name in names:
        if (not name or "\\" in name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive
                or any(part in ("", ".", "..") for part in name.split("/"))):
            raise OutputError(f"refusing to write output {name!r}: names must be relative paths inside the output "
                              "folder (no absolute path, no '..')", hint="this is a bug in edgeq; please report it")
    as_set = set(names)
    for name in names:
        for parent in PurePosixPath(name).parents:
            if str(parent) in as_set:
                raise OutputError(f"output {str(parent)!r} would be both a file and the folder of {name!r}",
                                  hint="this is a bug in edgeq; please report it")


def _folders(names: Sequence[str]) -> list[str]:
    """Every subfolder the names lead into, parents before children ("a", "a/b", ...)."""
    found = {str(parent) for name in names for parent in PurePosixPath(name).parents if str(parent) != "."}
    return sorted(found, key=lambda f: (f.count("/"), f))


def check_output_dir(outdir: Path, filenames: list[str], *, overwrite: bool) -> None:
    """Fail early, before any expensive work, if the outputs could not be written."""
    outdir = Path(outdir)
    _check_names(filenames)
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(
            f"output path {outdir} is a file, not a folder",
            hint="pass -o with a folder path (it is created if missing)",
        )
    probe = outdir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(
            f"cannot create output folder {outdir}: {probe} is a file, not a folder",
            hint="pass -o with a folder path (it is created if missing)",
        )
    hint = "choose another output folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {probe}: permission denied", hint=hint)
    # os.access says yes to root everywhere, and knows nothing of read-only mounts: try it.
    try:
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-probe", dir=probe)
    except OSError as exc:
        raise OutputError(f"cannot write to {probe}: {_reason(exc)}", hint=hint) from exc
    try:
        os.close(fd)
    finally:
        Path(name).unlink(missing_ok=True)
    for folder in _folders(filenames):
        if os.path.lexists(outdir / folder) and not (outdir / folder).is_dir():
            raise OutputError(
                f"cannot create folder {outdir / folder}: it is a file, not a folder",
                hint="move that file away, or choose another output folder",
            )
    if not overwrite:
        existing = [name for name in filenames if (outdir / name).exists()]
        if existing:
            raise OutputError(
                f"{len(existing)} output file(s) already exist in {outdir}: {', '.join(existing)}",
                hint="pass --overwrite to replace them, or choose another output folder",
            )


def _keep_old(path: Path) -> Path:
    """A second name for `path` in its folder (hard link, or a copy), to put it back on failure."""
    backup = path.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}-old-{path.name}"
    try:
        os.link(path, backup, follow_symlinks=False)
    except OSError:
        shutil.copy2(path, backup, follow_symlinks=False)
    return backup


# One function, though over 60 lines: it is one transaction, and its state (staged, backups,
# changed, created) must be in one try/except/finally for the roll-back to see all of it.
def write_files_atomically(
    outdir: Path, files: Mapping[str, bytes], *, overwrite: bool, remove: Sequence[str] = ()
) -> list[Path]:
    """Write all `files` (name -> bytes) into `outdir`: all of them, or none and the old ones kept.

    `remove`: names of earlier outputs that must not survive this write (e.g. a model the gate
    now rejects, next to a report that says so); deleted only after every new file is in place,
    and restored like the others if anything fails.
    """
    outdir = Path(outdir)
    remove = [name for name in remove if name not in files]
    check_output_dir(outdir, [*files, *remove], overwrite=overwrite)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {outdir}: {_reason(exc)}",
                          hint="choose another output folder") from exc

    staged: list[tuple[Path, Path]] = []
    backups: dict[Path, Path] = {}  # existing output -> its kept old version
    changed: list[Path] = []  # outputs already replaced or removed, in order
    created: list[Path] = []  # subfolders made for this set, parents first
    failed = True
    try:
        for folder in _folders(list(files)):
            path = outdir / folder
            if not os.path.lexists(path):
                path.mkdir()
                created.append(path)
        for name, data in files.items():
            final = outdir / name
            fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=f"-{final.name}", dir=final.parent)
            tmp = Path(tmp_name)
            staged.append((tmp, final))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
        stale = [outdir / name for name in remove if os.path.lexists(outdir / name)]
        for final in [final for _, final in staged] + stale:
            if os.path.lexists(final):
                backups[final] = _keep_old(final)
        for tmp, final in staged:
            changed.append(final)
            os.replace(tmp, final)
        for final in stale:
            changed.append(final)
            final.unlink()
        for folder in {final.parent for final in changed} | {outdir, *(p.parent for p in created)}:
            _fsync_dir(folder)
        failed = False
    except BaseException as exc:
        restored = _roll_back(changed, backups)
        if isinstance(exc, OSError):
            what = "no output was changed" if restored else "some old outputs could not be restored"
            raise OutputError(
                f"writing outputs to {outdir} failed: {_reason(exc)}; {what}",
                hint="free disk space or choose another output folder",
            ) from exc
        raise
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for backup in backups.values():
            backup.unlink(missing_ok=True)
        if failed:
            for folder in reversed(created):  # children first; only if nothing else appeared in them
                try:
                    folder.rmdir()
                except OSError:
                    pass
    return [final for _, final in staged]


def _roll_back(changed: list[Path], backups: dict[Path, Path]) -> bool:
    """Put back what `changed` replaced or removed; a new file that had no old version goes."""
    ok = True
    for final in reversed(changed):
        try:
            if final in backups:
                os.replace(backups[final], final)
            else:
                final.unlink(missing_ok=True)
        except OSError:
            ok = False
    return ok


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
