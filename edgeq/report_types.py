"""The reports edgeq writes, as types: `ConvertReport` (convert), `EmulateReport` (emulate) and,
from edgeq/device/check.py, `DeviceReport` (device-check).

Each report is a frozen record built once, from the parts the stages that measured them made:
the emulator's `EmulationPart`, the checks' `CheckResult`s and `Gate`, the recipe, the harness
manifest. `to_dict()` is report.json; the renderers in edgeq/report.py take the records.

`edgeq/report_schema.py` derives docs/report.schema.json from these types (scripts/gen_docs.py
writes it; a test fails while the file is stale). A change to a record's fields is a change of
report.json's schema: bump SCHEMA_VERSION (edgeq/report_meta.py) with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeq.checks import CheckResult, Gate
from edgeq.device.harness_manifest import HarnessManifest
from edgeq.emulator.emulate import EmulationPart
from edgeq.quantize.training import QatPart
from edgeq.quantize.recipe import Recipe
from edgeq.quantize.recurrent import RecurrentNote
from edgeq.quantize.search import SearchPart
from edgeq.records import Record, optional
from edgeq.report_meta import Versions, sha256_path
from edgeq.targets import Latency, Memory, OpSupport, Quantization, TargetProfile
from edgeq.tflite.arena_plan import ArenaPlanPart
from edgeq.tflite.reader import ModelInfo, TensorPart
from edgeq.vocab import Runtime



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
    ratio: float | None
    ram_bytes: int | None
    latency_ms: float
    gate_passed: bool


# -- the reports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageTime(Record):
    """One stage of a convert: its wall time and the peak resident memory of the conversion's
    process (and the processes it waited for) when it ended. Host-dependent by nature: the only
    part of report.json that differs between two runs of the same convert."""

    stage: str
    seconds: float
    peak_rss_mb: float


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
    timings: list[StageTime] | None = optional()  # where the minutes and the memory went, stage by stage


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
