"""What `convert` and `emulate_file` hand back, and the error (exit 3) that carries it when a check fails."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.checks import CheckResult, Gate
from edgeq.emulator.emulate import Emulation
from edgeq.errors import TargetCheckError
from edgeq.quantize.recipe import Recipe
from edgeq.report_types import ConvertReport, EmulateReport
from edgeq.targets import TargetProfile
from edgeq.tflite.reader import ModelInfo


@dataclass(frozen=True)
class ConvertResult:
    name: str
    outdir: Path
    files: list[Path]
    target: TargetProfile
    recipe: Recipe
    float_bytes: int  # 0 where the float32 .tflite was not built (a large Keras model)
    quantized_bytes: int
    info: ModelInfo
    checks: list[CheckResult]
    emulation: Emulation
    gate: Gate
    report: ConvertReport = field(repr=False)

    @property
    def size_ratio(self) -> float | None:
        return self.float_bytes / self.quantized_bytes if self.float_bytes else None


@dataclass(frozen=True)
class EmulateResult:
    info: ModelInfo
    target: TargetProfile
    checks: list[CheckResult]
    emulation: Emulation
    gate: Gate
    report: EmulateReport = field(repr=False)
    files: list[Path] = field(default_factory=list)


class GateError(TargetCheckError):
    """A check failed (exit 3). Carries the result, so callers can still show what was measured."""

    def __init__(self, checks: list[CheckResult], profile: TargetProfile, result: Any, where: str = "",
                 hint: str = "--force writes the outputs anyway and marks the report") -> None:
        failed = [c for c in checks if not c.passed]
        lines = "\n".join(f"  - {c.name}: {c.message}" + (f"\n    try: {c.hint}" if c.hint else "") for c in failed)
        super().__init__(f"the model does not pass the checks for target '{profile.name}':\n{lines}"
                         + (f"\n{where}" if where else ""), hint=hint)
        self.result = result
