"""Write a set of output files so that a failure never leaves half-written or lost files.

Each file is written to a temporary file in the destination folder, flushed and fsynced,
and only when *every* file of the set has been written are they moved into place with
os.replace (atomic per file on POSIX). A failure while writing (disk full, an exception,
KeyboardInterrupt) removes the temporary files and leaves existing outputs untouched. The
renames themselves are not one transaction: were one to fail, earlier files of the set
would already be new, but no file is ever partial.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from edgeq.errors import OutputError

TMP_PREFIX = ".edgeq-tmp-"


def check_output_dir(outdir: Path, filenames: list[str], *, overwrite: bool) -> None:
    """Fail early, before any expensive work, if the outputs could not be written."""
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(
            f"output path {outdir} is a file, not a folder",
            hint="pass -o with a folder path (it is created if missing)",
        )
    probe = outdir
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to {probe}: permission denied",
            hint="choose another output folder",
        )
    if not overwrite:
        existing = [name for name in filenames if (outdir / name).exists()]
        if existing:
            raise OutputError(
                f"{len(existing)} output file(s) already exist in {outdir}: {', '.join(existing)}",
                hint="pass --overwrite to replace them, or choose another output folder",
            )


def write_files_atomically(
    outdir: Path, files: Mapping[str, bytes], *, overwrite: bool, remove: Sequence[str] = ()
) -> list[Path]:
    """Write all `files` (name -> bytes) into `outdir`, each complete or not at all.

    `remove`: names of earlier outputs that must not survive this write (e.g. a model the gate
    now rejects, next to a report that says so); deleted only after every new file is in place.
    """
    check_output_dir(outdir, [*files, *remove], overwrite=overwrite)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {outdir}: {exc.strerror}") from exc

    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=f"-{name}", dir=outdir)
            tmp = Path(tmp_name)
            staged.append((tmp, outdir / name))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
        for tmp, final in staged:
            os.replace(tmp, final)
        for name in remove:
            (outdir / name).unlink(missing_ok=True)
        _fsync_dir(outdir)
    except OSError as exc:
        raise OutputError(
            f"writing outputs to {outdir} failed: {exc.strerror or exc}; "
            "no output was changed",
            hint="free disk space or choose another output folder",
        ) from exc
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [final for _, final in staged]


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
