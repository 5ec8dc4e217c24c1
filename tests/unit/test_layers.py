"""The layers contract in pyproject.toml ([tool.importlinter]) holds: every room of edgeq imports only
the rooms below it, with no cycle; and the contract is real: an upward import breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(LINT.parent), "PYTHONPATH": str(folder)})


def test_the_house_keeps_its_layers() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """A copy of the package whose checked reader imports the driver: lint-imports names the arrow."""
    shutil.copytree(ROOT / "edgeq", tmp_path / "edgeq", ignore=shutil.ignore_patterns("__pycache__", "data",
                                                                                      "templates", "c"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    facts = tmp_path / "edgeq" / "tflite" / "facts.py"
    facts.write_text(facts.read_text() + "\n\ndef _upward() -> None:\n    import edgeq.pipeline  # noqa: F401\n")
    proc = _lint(tmp_path)
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert "edgeq.tflite.facts -> edgeq.pipeline" in proc.stdout, proc.stdout[-4000:]
