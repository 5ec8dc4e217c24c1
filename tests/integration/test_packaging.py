"""The sdist and the wheel, built offline and used as a user gets them: outside the repository.

The wheel goes into a fresh venv that borrows this venv's site-packages for the heavy
dependencies (TensorFlow, LiteRT, TFLM) through a .pth file, and edgeq runs from a folder that
is not the checkout, so nothing can come from the repository by accident.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What a checkout holds besides its sources: never part of a build.
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".venv-lock", "edgeq-out", "build", "dist", "*.egg-info",
                                      "__pycache__", ".pytest_cache", ".hypothesis")


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """sdist and wheel, the wheel built from the sdist (python -m build's default), with the
    locked setuptools and no network (--no-isolation). Built from a copy: the checkout stays clean."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    out = root / "dist"
    proc = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,) = out.glob("edgeq-*.tar.gz")
    (wheel,) = out.glob("edgeq-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def _bundled_files() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / "edgeq" / "data").rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts)


def test_twine_check_passes(dists) -> None:
    proc = _run(sys.executable, "-m", "twine", "check", "--strict", dists["sdist"], dists["wheel"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_carries_the_targets_and_calibration_sets(dists) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
    bundled = _bundled_files()
    assert any(n.endswith("targets/mcu.toml") for n in bundled) and any(n.endswith("digits/eval.npz") for n in bundled)
    assert not [n for n in bundled if n not in names], "package data missing from the wheel"
    assert "edgeq/device/c/edgeq_protocol.c" in names and "edgeq/templates/edgeq_harness.cc.j2" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "examples/"))]


def test_sdist_holds_the_tests_the_scripts_and_the_lock(dists) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for wanted in ("tests/conftest.py", "tests/unit/test_lock.py", "scripts/setup", "scripts/test", "scripts/lock",
                   "scripts/build_calibration_sets.py", "requirements.lock", "requirements-nodeps.lock", "examples/digits_cnn.keras",
                   ".ci/run", "README.md", "pyproject.toml", *_bundled_files()):
        assert wanted in names, f"{wanted} missing from the sdist"
    assert not [n for n in names if "__pycache__" in n or n.startswith(".venv")]


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed, the heavy dependencies borrowed from this venv."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    proc = _run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "borrowed_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(borrowed)))
    proc = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", dists["wheel"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


def test_installed_wheel_finds_its_targets_and_data_outside_the_repo(installed, tmp_path) -> None:
    where = _run(installed / "bin" / "python", "-c", "import edgeq, edgeq.resources as r; "
                 "print(edgeq.__file__); print(r.targets_root()); print(r.calibration_root())", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).is_relative_to(installed) and not Path(line).is_relative_to(REPO), line
    targets = _run(installed / "bin" / "edgeq", "targets", "list", cwd=tmp_path)
    assert targets.returncode == 0, targets.stderr
    for name in ("mcu", "iot", "phone", "nrf52840", "stm32h743", "esp32s3", "rpi-zero-2w"):
        assert name in targets.stdout, name
    sets = _run(installed / "bin" / "edgeq", "calibration", "list", cwd=tmp_path)
    assert sets.returncode == 0 and "digits" in sets.stdout and "mnist" in sets.stdout, sets.stdout + sets.stderr


def test_environment_overrides_still_point_elsewhere(installed, tmp_path) -> None:
    mine = tmp_path / "my-targets"
    mine.mkdir()
    shutil.copy(REPO / "edgeq" / "data" / "targets" / "mcu.toml", mine / "only-mine.toml")
    (mine / "op_sets").mkdir()
    shutil.copy(REPO / "edgeq" / "data" / "targets" / "op_sets" / "tflm.toml", mine / "op_sets" / "tflm.toml")
    env = {"PATH": "/usr/bin:/bin", "EDGEQ_TARGETS_DIR": str(mine), "EDGEQ_CALIBRATION_DIR": str(tmp_path / "none")}
    targets = _run(installed / "bin" / "edgeq", "targets", "list", cwd=tmp_path, env=env)
    assert targets.returncode == 0, targets.stderr
    assert "only-mine" in targets.stdout and "nrf52840" not in targets.stdout, targets.stdout
    sets = _run(installed / "bin" / "edgeq", "calibration", "list", cwd=tmp_path, env=env)
    assert sets.returncode == 0 and "digits" not in sets.stdout, sets.stdout
    assert f"no bundled data sets in {tmp_path / 'none'} (set by EDGEQ_CALIBRATION_DIR)" in sets.stderr


def test_installed_wheel_converts_the_example_for_mcu(installed, tmp_path) -> None:
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "digits_cnn.keras", tmp_path / "examples")
    proc = _run(installed / "bin" / "edgeq", "convert", "examples/digits_cnn.keras", "--target", "mcu",
                "--calibration", "digits", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gate      PASSED" in proc.stdout
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(["digits_cnn.tflite", "digits_cnn_model_data.cc", "digits_cnn_model_data.h",
                              "digits_cnn_op_resolver.h", "digits_cnn_names.json", "report.json", "report.md",
                              "report.png"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    manifest = (REPO / "edgeq" / "data" / "calibration_sets" / "digits" / "manifest.toml").read_text()
    assert report["target"]["name"] == "mcu" and report["calibration"]["name"] == "digits:calibration"
    assert report["calibration"]["sha256"] in manifest
