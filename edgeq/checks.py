"""Checks of a converted model against its target. One function per rule; its text is the
user's message. Each returns a CheckResult; the pipeline fails (exit 3) if any fails.

The emulator (accuracy, exact tensor arena) adds its checks here as it lands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeq.modes import MODES
from edgeq.quantize.recipe import Recipe
from edgeq.targets import TargetProfile
from edgeq.tflite.reader import FLOAT_DTYPES, ModelInfo


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_ops(info: ModelInfo, target: TargetProfile, recipe: Recipe) -> CheckResult:
    """Every op of the model has a kernel in the target's runtime."""
    missing = [op for op in info.all_op_names if op not in target.supported_ops]
    if missing:
        return CheckResult(
            "ops", False,
            f"{len(missing)} op(s) not supported by {target.name} ({target.ops.set}): {', '.join(missing)}",
            "replace the layers that produce them, or choose a target whose runtime has them",
        )
    return CheckResult("ops", True, f"all {len(info.all_op_names)} op types supported by {target.ops.set}")


def check_io_dtypes(info: ModelInfo, target: TargetProfile, recipe: Recipe) -> CheckResult:
    """Inputs and outputs have the dtypes the target demands in this mode."""
    bad = [
        f"{kind} '{t.name}' is {t.dtype}, expected {want}"
        for kind, tensors, want in (
            ("input", info.input_tensors, recipe.input_dtype),
            ("output", info.output_tensors, recipe.output_dtype),
        )
        for t in tensors
        if t.dtype != want
    ]
    if bad:
        return CheckResult("io_dtypes", False, "; ".join(bad), "the converter could not honour the I/O types")
    return CheckResult("io_dtypes", True, f"inputs {recipe.input_dtype}, outputs {recipe.output_dtype}")


def check_integer_only(info: ModelInfo, target: TargetProfile, recipe: Recipe) -> CheckResult:
    """An integer-only mode leaves no float tensor on a TFLM target (no float or hybrid kernels)."""
    if target.runtime != "tflm" or not MODES[recipe.mode].integer_only:
        return CheckResult("integer_only", True, "not required for this target and mode")
    floats = [t.name for t in info.tensors if t.dtype in FLOAT_DTYPES]
    if floats:
        return CheckResult(
            "integer_only", False,
            f"{len(floats)} float tensor(s) remain in an integer-only model: {', '.join(floats[:5])}",
            "some layer has no integer kernel; check `edgeq inspect` for the float ops",
        )
    return CheckResult("integer_only", True, "fully integer")


def check_flash(info: ModelInfo, target: TargetProfile, recipe: Recipe) -> CheckResult:
    """Model bytes plus the runtime's code fit in the target's flash."""
    budget = target.memory.flash_bytes
    need = info.file_bytes + target.memory.runtime_flash_bytes
    if budget is None:
        return CheckResult("flash", True, f"{need:,} B needed; target has no flash budget")
    if need > budget:
        return CheckResult(
            "flash", False,
            f"model {info.file_bytes:,} B + runtime {target.memory.runtime_flash_bytes:,} B = {need:,} B "
            f"exceeds flash {budget:,} B by {need - budget:,} B",
            "use a smaller model, int8 instead of a wider mode, or a target with more flash",
        )
    return CheckResult("flash", True, f"{need:,} B of {budget:,} B flash ({100 * need / budget:.1f}%)")


ALL_CHECKS = (check_ops, check_io_dtypes, check_integer_only, check_flash)


def run_checks(info: ModelInfo, target: TargetProfile, recipe: Recipe) -> list[CheckResult]:
    return [check(info, target, recipe) for check in ALL_CHECKS]
