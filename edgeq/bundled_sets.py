"""The calibration sets edgeq ships (edgeq/data/calibration_sets/<name>/manifest.toml): what each
holds, where it came from, and its splits with their checksums. calibration.py loads them."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgeq.errors import CalibrationError
from edgeq.resources import calibration_root

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REBUILD_HINT = ("rebuild with `python scripts/build_calibration_sets.py`, restore them from git "
                "(`git checkout -- edgeq/data/calibration_sets`) or reinstall edgeq")


@dataclass(frozen=True)
class SplitInfo:
    file: str
    samples: int
    x_shape: tuple[int, ...]
    x_dtype: str
    classes: int
    y_dtype: str = ""
    sha256: str = ""
    class_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class BundledSet:
    name: str
    description: str
    source: str                        # "scikit-learn 1.9.1: sklearn.datasets.load_digits()"
    license: str
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    directory: Path = Path()
    preprocessing: str = ""
    origin: str = ""


def _read_manifest(directory: Path) -> BundledSet:
    path = directory / "manifest.toml"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read the manifest of bundled set '{directory.name}': {exc}",
                               hint=REBUILD_HINT) from exc
    try:
        splits = {
            split: SplitInfo(file=str(t["file"]), samples=int(t["samples"]), x_shape=tuple(int(d) for d in t["x_shape"]),
                             x_dtype=str(t["x_dtype"]), classes=int(t.get("classes", 0)), y_dtype=str(t.get("y_dtype", "")),
                             sha256=str(t["sha256"]).lower(), class_counts=tuple(int(c) for c in t.get("class_counts", ())))
            for split, t in doc["splits"].items()
        }
        src = doc.get("source", {})
        source = f"{src.get('package', '?')} {src.get('version', '?')}: {src.get('function', '?')}"
        return BundledSet(name=str(doc.get("name", directory.name)), description=str(doc.get("description", "")),
                          source=source, license=str(doc.get("license", "unknown")), splits=splits,
                          directory=directory, preprocessing=str(doc.get("preprocessing", "")),
                          origin=str(src.get("origin", "")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CalibrationError(f"{path}: manifest is missing or has a malformed field ({exc!r})",
                               hint="each [splits.<name>] table needs file, samples, x_shape, x_dtype and sha256; "
                                    + REBUILD_HINT) from exc


def list_bundled() -> list[BundledSet]:
    """The bundled sets, sorted by name (empty if the calibration folder is missing)."""
    root = calibration_root()
    if not root.is_dir():
        return []
    return [_read_manifest(d) for d in sorted(root.iterdir()) if (d / "manifest.toml").is_file()]
