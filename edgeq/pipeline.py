"""convert(): the one place that strings the stages together.

load target -> recipe -> calibration data -> model -> quantize -> read back -> check -> emit.
Everything that can fail fast (target, mode, data file, output folder) is checked before
TensorFlow is imported or a model is loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeq.calibration import Dataset, load_dataset, validate_for_model
from edgeq.checks import CheckResult, run_checks
from edgeq.errors import TargetCheckError
from edgeq.export.atomic import check_output_dir, write_files_atomically
from edgeq.export.c_arrays import c_identifier, tflm_sources
from edgeq.quantize.recipe import DEFAULT_CALIBRATION_SAMPLES, Recipe, recipe_for
from edgeq.report import SCHEMA_VERSION, library_versions, render_json, sha256_path
from edgeq.targets import TargetProfile, load_target
from edgeq.tflite.reader import ModelInfo, read_tflite

Step = Callable[[str], None]


@dataclass
class ConvertResult:
    name: str
    outdir: Path
    files: list[Path]
    target: TargetProfile
    recipe: Recipe
    float_bytes: int
    quantized_bytes: int
    info: ModelInfo
    checks: list[CheckResult]
    report: dict[str, Any] = field(repr=False)

    @property
    def size_ratio(self) -> float:
        return self.float_bytes / self.quantized_bytes


def output_names(name: str, target: TargetProfile) -> list[str]:
    names = [f"{name}.tflite", "report.json"]
    if target.runtime == "tflm":
        names += [f"{name}_model_data.cc", f"{name}_model_data.h", f"{name}_op_resolver.h"]
    return names


def convert(
    model_path: str | Path,
    target: str | TargetProfile = "mcu",
    *,
    mode: str | None = None,
    calibration: str | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    outdir: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    trust_model: bool = False,
    on_step: Step = lambda message: None,
) -> ConvertResult:
    model_path = Path(model_path)
    profile = target if isinstance(target, TargetProfile) else load_target(target)
    name = c_identifier(name or model_path.name.removesuffix(model_path.suffix) or model_path.name)
    out = Path(outdir) if outdir is not None else Path("edgeq-out") / f"{name}-{profile.name}"
    check_output_dir(out, output_names(name, profile), overwrite=overwrite)
    recipe = recipe_for(profile, mode, have_calibration=calibration is not None,
                        calibration_samples=calibration_samples)
    data: Dataset | None = load_dataset(calibration) if calibration and recipe.calibration_samples else None

    on_step(f"loading {model_path} (TensorFlow start-up takes a few seconds)")
    from edgeq.loading import load_model
    from edgeq.quantize.ptq import convert_float32, quantize

    model = load_model(model_path, trust_model=trust_model)
    if data is not None:
        data = validate_for_model(data, model.input_specs, purpose="calibration")

    on_step("converting to float32 (reference size)")
    float_bytes = convert_float32(model)
    used = min(recipe.calibration_samples, data.num_samples) if data else 0
    on_step(f"quantizing: {recipe.mode}" + (f", calibrating on {used} samples of {data.name}" if data else ""))
    quantized = quantize(model, recipe, data)
    info = read_tflite(quantized, source=f"{name}.tflite")

    checks = run_checks(info, profile, recipe)
    failed = [c for c in checks if not c.passed]
    if failed:
        lines = "\n".join(f"  - {c.name}: {c.message}" + (f" (try: {c.hint})" if c.hint else "") for c in failed)
        raise TargetCheckError(f"the converted model does not fit target '{profile.name}':\n{lines}")

    files: dict[str, bytes] = {f"{name}.tflite": quantized}
    if profile.runtime == "tflm":
        files.update(tflm_sources(name, quantized, info.all_op_names,
                                 alignment=profile.memory.tensor_alignment).files)
    report = _report(model, model_path, profile, recipe, data, used, float_bytes, info, checks, files)
    files["report.json"] = render_json(report)
    on_step(f"writing {len(files)} files to {out}")
    written = write_files_atomically(out, files, overwrite=overwrite)
    return ConvertResult(name, out, written, profile, recipe, len(float_bytes), len(quantized), info, checks, report)


def _report(model: Any, model_path: Path, profile: TargetProfile, recipe: Recipe, data: Dataset | None,
            used: int, float_bytes: bytes, info: ModelInfo, checks: list[CheckResult],
            files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "versions": library_versions(),
        "input": {
            "model": model_path.name,
            "format": model.format,
            "saved_by": model.saved_by,
            "sha256": sha256_path(model_path),
            "parameters": model.parameter_count,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in model.input_specs],
        },
        "calibration": None if data is None else {
            "name": data.name, "sha256": data.sha256, "samples_available": data.num_samples, "samples_used": used,
        },
        # File names and hashes only: absolute paths would make reports differ between checkouts.
        "target": profile.to_dict() | {"source": profile.source.name,
                                       "chain_files": [p.name for p in profile.chain_files],
                                       "sha256": {p.name: sha256_path(p) for p in profile.chain_files}},
        "recipe": recipe.to_dict(),
        "sizes": {
            "float32_tflite_bytes": len(float_bytes),
            "quantized_tflite_bytes": info.file_bytes,
            "ratio": round(len(float_bytes) / info.file_bytes, 3),
            "parameter_bytes": info.parameter_bytes,
        },
        "model": {
            "fully_integer": info.is_fully_integer,
            "ops": info.op_counts(),
            "inputs": [info.tensors[i].to_dict() for i in info.inputs],
            "outputs": [info.tensors[i].to_dict() for i in info.outputs],
        },
        "checks": [c.to_dict() for c in checks],
        "outputs": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())},
    }

