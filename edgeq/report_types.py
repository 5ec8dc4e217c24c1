"""The reports edgeq writes, as types: `ConvertReport` (convert), `EmulateReport` (emulate) and,
from edgeq/device/check.py, `DeviceReport` (device-check).

Each report is a frozen record built once, from the parts the stages that measured them made:
the emulator's `EmulationPart`, the checks' `CheckResult`s and `Gate`, the recipe, the harness
manifest. `to_dict()` is report.json; the renderers in edgeq/report.py take the records.

`report_schema()` derives docs/report.schema.json from these types (scripts/gen_docs.py writes
it; a test fails while the file is stale). A change to a record's fields is a change of
report.json's schema: bump SCHEMA_VERSION with it.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from edgeq.checks import CheckResult, Gate
from edgeq.device.firmware import HarnessManifest
from edgeq.emulator.emulate import EmulationPart
from edgeq.quantize.qat import QatPart
from edgeq.quantize.recipe import Recipe
from edgeq.quantize.recurrent import RecurrentNote
from edgeq.quantize.search import SearchPart
from edgeq.records import Record, json_schema, key, optional
from edgeq.targets import Latency, Memory, OpSupport, Quantization, TargetProfile
from edgeq.tflite.reader import ModelInfo, TensorPart
from edgeq.vocab import Runtime

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


@dataclass(frozen=True)
class ModelInput(Record):
    """One input of the source model: its declared shape (null: dynamic), dtype, and the shape it
    was converted at (batch 1)."""

    name: str
    shape: list[int | None]
    dtype: str
    converted_shape: list[int]


@dataclass(frozen=True)
class SourceModel(Record):
    """The model `convert` read: file name (no directory), format, which Keras saved it, SHA-256
    (of every file, for a SavedModel folder), parameter count, inputs; and for a model of another
    framework translated into TensorFlow (ONNX), what translated it and how closely it agrees."""

    model: str
    format: str
    saved_by: str
    sha256: str
    parameters: int
    inputs: list[ModelInput]
    converted_by: str | None = None
    input_layout: str | None = None  # a 4-D input's order where the file does not say (PyTorch, ONNX: NCHW)


@dataclass(frozen=True)
class Reference(Record):
    """The float model `emulate --reference` compared against."""

    model: str
    sha256: str


@dataclass(frozen=True)
class TfliteFile(Record):
    """The .tflite `emulate` checked, and the float model it was compared against, if any."""

    model: str
    format: Literal["tflite"]
    sha256: str
    reference: Reference | None


@dataclass(frozen=True)
class CalibrationPart(Record):
    """The representative data the converter calibrated with."""

    name: str
    sha256: str
    samples_available: int
    samples_used: int


@dataclass(frozen=True)
class TargetPart(Record):
    """The target profile as loaded (inheritance resolved): file names and SHA-256 of the profiles
    in its chain, no absolute paths."""

    name: str
    kind: str
    description: str
    runtime: Runtime
    cpu: str
    clock_mhz: float
    quantization: Quantization
    ops: OpSupport
    memory: Memory
    latency: Latency
    inherits: str | None
    source: str
    chain: list[str]
    chain_files: list[str]
    supported_ops: list[str]
    op_set_source: str
    sha256: dict[str, str]

    @classmethod
    def of(cls, profile: TargetProfile) -> TargetPart:
        # File names and hashes only: absolute paths would make reports differ between checkouts.
        p = profile
        return cls(p.name, p.kind, p.description, p.runtime, p.cpu, p.clock_mhz, p.quantization, p.ops, p.memory,
                   p.latency, p.inherits, p.source.name, list(p.chain), [f.name for f in p.chain_files],
                   sorted(p.supported_ops), p.op_set_source, {f.name: sha256_path(f) for f in p.chain_files})


# -- what came out --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes(Record):
    """File sizes: the quantized .tflite and its parameters; for `convert`, also the float32 .tflite,
    the ratio float32 / quantized and the bytes of names left out of the flashed model."""

    quantized_tflite_bytes: int
    parameter_bytes: int
    float32_tflite_bytes: int | None = optional()
    ratio: float | None = optional()
    names_stripped_bytes: int | None = optional()


@dataclass(frozen=True)
class ArenaPlanPart(Record):
    """edgeq's own arena plan against TFLM's: both planners' activation bytes, the lower bound (the
    most bytes alive at once), the first-fit order that won, the flash the plan costs; where it
    was worth measuring, the smallest arena without and with it; whether the model carries it."""

    kept: bool
    tflm_head_bytes: int
    planned_head_bytes: int
    lower_bound_bytes: int
    order: str
    extra_flash_bytes: int
    arena_bytes: int | None = optional()
    planned_arena_bytes: int | None = optional()


@dataclass(frozen=True)
class ModelPart(Record):
    """The quantized model as read back from its bytes: fully integer or not, op counts, I/O tensors."""

    fully_integer: bool
    ops: dict[str, int]
    inputs: list[TensorPart]
    outputs: list[TensorPart]

    @classmethod
    def of(cls, info: ModelInfo) -> ModelPart:
        return cls(info.is_fully_integer, info.op_counts(), [info.tensors[i].part() for i in info.inputs],
                   [info.tensors[i].part() for i in info.outputs])


@dataclass(frozen=True)
class ComparisonRow(Record):
    """One method of `convert --qat --compare` (PTQ or QAT), on the same data."""

    float_top1: float | None
    quantized_top1: float | None
    drop_points: float | None
    snr_db: float | None
    tflite_bytes: int
    ratio: float
    ram_bytes: int | None
    latency_ms: float
    gate_passed: bool


# -- the reports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertReport(Record):
    """report.json of `edgeq convert`: what was done (method, recipe, the changes made on the way),
    with what (model, data, target, versions), to what (sizes, the model, every output's SHA-256),
    and what the emulator and the checks found."""

    schema_version: Literal[1]  # SCHEMA_VERSION
    versions: Versions
    method: Literal["ptq", "qat"]
    input: SourceModel
    calibration: CalibrationPart | None
    target: TargetPart
    recipe: Recipe
    sizes: Sizes
    arena_plan: ArenaPlanPart | None
    model: ModelPart
    emulation: EmulationPart
    checks: list[CheckResult]
    gate: Gate
    outputs: dict[str, str]
    folded_batchnorm: list[str]
    recurrent: list[RecurrentNote]
    qat: QatPart | None
    comparison: dict[str, ComparisonRow] | None
    harness: HarnessManifest | None
    search: SearchPart | None = optional()  # --search: every candidate measured, and why it stopped


@dataclass(frozen=True)
class EmulateReport(Record):
    """report.json of `edgeq emulate`: a .tflite converted anywhere, checked against a target."""

    schema_version: Literal[1]  # SCHEMA_VERSION
    versions: Versions
    input: TfliteFile
    target: TargetPart
    sizes: Sizes
    model: ModelPart
    emulation: EmulationPart
    checks: list[CheckResult]
    gate: Gate


def report_schema() -> dict[str, Any]:
    """docs/report.schema.json: every report.json (and precision.json) edgeq writes is one of these records."""
    from edgeq.device.check import DeviceReport
    from edgeq.precision.simulate import PrecisionReport

    return json_schema(
        {"convert": ConvertReport, "emulate": EmulateReport, "device-check": DeviceReport,
         "precision": PrecisionReport},
        title=f"edgeq report.json, schema version {SCHEMA_VERSION}",
        description=("The report.json that `edgeq convert`, `edgeq emulate` and `edgeq device-check` write, and "
                     "the precision.json of `edgeq precision`. Generated from the report records "
                     "(edgeq/report_types.py and the parts it names) by scripts/gen_docs.py; do not edit."),
        schema_id=SCHEMA_ID)
