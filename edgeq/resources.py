"""Where the data that ships inside the package lives: target profiles and calibration sets.

Both are package data (edgeq/data/), found through importlib.resources, so an installed wheel
finds them as a checkout does. Environment variables point edgeq at other folders.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

TARGETS_DIR_ENV = "EDGEQ_TARGETS_DIR"
CALIBRATION_DIR_ENV = "EDGEQ_CALIBRATION_DIR"


def bundled_dir(name: str, env: str) -> Path:
    """The folder `edgeq/data/<name>` of the installed package, or $`env` when it is set."""
    override = os.environ.get(env)
    if override:
        return Path(override).expanduser()
    folder = resources.files("edgeq") / "data" / name
    if not isinstance(folder, Path):  # a zip import: the loaders read real files
        raise RuntimeError(f"edgeq's bundled {name} are not on the file system ({folder}); "
                           f"install edgeq as a wheel or set {env}")
    return folder


def targets_root() -> Path:
    """The folder of bundled target profiles; $EDGEQ_TARGETS_DIR overrides it."""
    return bundled_dir("targets", TARGETS_DIR_ENV)


def calibration_root() -> Path:
    """The folder holding one sub-folder per bundled data set; $EDGEQ_CALIBRATION_DIR overrides it."""
    return bundled_dir("calibration_sets", CALIBRATION_DIR_ENV)
