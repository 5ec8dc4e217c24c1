"""requirements.lock: complete, hashed, within pyproject.toml's ranges, and what this venv holds.

scripts/setup installs from the lock, so two set-ups on different days get the same versions;
these tests catch a lock that drifted from pyproject.toml or a venv that drifted from the lock.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edgeq.targets import tomllib  # tomllib, or tomli on Python 3.10

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"


NODEPS_LOCK = REPO / "requirements-nodeps.lock"


def _entries(lock: Path = LOCK) -> list[tuple[str, str, Marker | None, list[str]]]:
    """(name, version, marker, hashes) for each pin; a requirement line continues over '\\' lines."""
    text = re.sub(r"\\\n\s*", " ", lock.read_text(encoding="utf-8"))
    entries = []
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        hashes = re.findall(r"--hash=(sha256:[0-9a-f]{64})", line)
        requirement = Requirement(line.split(" --hash", 1)[0])
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement} is not an exact pin"
        entries.append((canonicalize_name(requirement.name), spec.version, requirement.marker, hashes))
    return entries


def _applicable() -> dict[str, str]:
    """The pins whose markers hold on this interpreter: what setup installed here."""
    pins: dict[str, str] = {}
    for name, version, marker, _ in _entries():
        if marker is None or marker.evaluate():
            assert name not in pins, f"two pins of {name} apply on this Python"
            pins[name] = version
    return pins


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_pin_is_exact_and_hashed_and_the_header_says_when_and_which_tflm() -> None:
    entries = _entries()
    assert len(entries) > 50
    assert all(hashes for *_, hashes in entries), [name for name, *_, hashes in entries if not hashes]
    header = LOCK.read_text(encoding="utf-8").split("# -- end of header --")[0]
    assert re.search(r"Refreshed \d{4}-\d{2}-\d{2}\.", header), header
    tflm = re.search(r"tflite-micro==(\S+) \(built (\d{4}-\d{2}-\d{2})\)", header)
    assert tflm and dict((n, v) for n, v, *_ in entries)["tflite-micro"] == tflm.group(1)
    assert "scripts/lock" in header


def test_the_lock_satisfies_every_range_in_pyproject() -> None:
    """Direct dependencies, test extras and the build backend: each locked within its range."""
    project = _pyproject()
    wanted = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"],
              *project["build-system"]["requires"]]
    pins = _applicable()
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is in pyproject.toml but not in the lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {name}=={pins[name]}, outside pyproject.toml's {requirement}: run scripts/lock")


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO / ".venv").resolve(),
                    reason="runs in the venv scripts/setup made; another environment need not follow the lock")
def test_this_venv_holds_exactly_the_locked_versions() -> None:
    mismatched = {}
    for name, version in _applicable().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"locked vs installed: {mismatched}; run scripts/setup"


def test_the_no_deps_lock_holds_exactly_pyprojects_no_deps_packages_hashed() -> None:
    """onnx2tf and the like (pyproject.toml [tool.edgeq] no-deps): installed without their exact pins,
    which would downgrade TensorFlow; here with hashes, and in this venv at the locked version."""
    wanted = {canonicalize_name(Requirement(line).name): Requirement(line)
              for line in _pyproject()["tool"]["edgeq"]["no-deps"]}
    entries = _entries(NODEPS_LOCK)
    assert {name for name, *_ in entries} == set(wanted)
    for name, version, marker, hashes in entries:
        assert hashes and wanted[name].specifier.contains(version), (name, version)
        assert str(marker) == str(wanted[name].marker)
        if Path(sys.prefix).resolve() == (REPO / ".venv").resolve() and (marker is None or marker.evaluate()):
            assert metadata.version(name) == version, f"{name}: run scripts/setup"
