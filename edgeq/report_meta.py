"""What every report carries, whichever command wrote it: the schema version, the versions of the
packages that made it, and file hashes. A bottom module: the device check, the converter and the
emulator all stamp their reports with it."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgeq.records import Record, key

SCHEMA_VERSION = 1
SCHEMA_ID = "https://github.com/edgeq/edgeq/blob/main/docs/report.schema.json"


@dataclass(frozen=True)
class Versions(Record):
    """The versions of Python and of the packages that made the report ("not installed" if absent)."""

    python: str
    edgeq: str
    tensorflow: str
    keras: str
    tf_keras: str = key("tf-keras")
    tensorflow_model_optimization: str = key("tensorflow-model-optimization")
    ai_edge_litert: str = key("ai-edge-litert")
    tflite_micro: str = key("tflite-micro")
    numpy: str

    @classmethod
    def here(cls) -> Versions:
        def version(name: str) -> str:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                return "not installed"

        return cls(platform.python_version(), version("edgeq"), version("tensorflow"), version("keras"),
                   version("tf-keras"), version("tensorflow-model-optimization"), version("ai-edge-litert"),
                   version("tflite-micro"), version("numpy"))

    def items(self) -> list[tuple[str, str]]:
        return sorted(self.to_dict().items())


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# -- what went in ---------------------------------------------------------------------------------
