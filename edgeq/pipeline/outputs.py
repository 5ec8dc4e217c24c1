"""What a conversion writes: the model files (only when the gate passes, or --force), the C
sources of the target's runtime, the harness firmware, and report.json/.md/.png built once from
every stage's facts."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from edgeq.checks import Gate
from edgeq.export.c_arrays import ArenaSize, tflm_sources
from edgeq.frontends.base import Frontend, Prepared, Shapes
from edgeq.measure import Candidate
from edgeq.pipeline.plan import Plan
from edgeq.progress import Step
from edgeq.report import render_json, render_markdown, render_png
from edgeq.report_meta import SCHEMA_VERSION, Versions, sha256_path
from edgeq.report_types import (CalibrationPart, ComparisonRow, ConvertReport, EmulateReport, ModelInput, ModelPart,
                                Sizes, SourceModel, TargetPart)
from edgeq.tflite.strip import file_form, render_sidecar
from edgeq.vocab import Runtime

if TYPE_CHECKING:
    from edgeq.calibration import Dataset
    from edgeq.device.firmware import HarnessManifest
    from edgeq.pipeline.stages import Made


def emitted(plan: Plan, model: Frontend, made: Made, gate: Gate, on_step: Step
            ) -> tuple[dict[str, bytes], HarnessManifest | None]:
    """The model files (only if the gate passed, or --force): the .tflite, its names, the C sources
    of the target's runtime and the harness firmware with --harness; and the harness manifest."""
    name, profile, chosen, emulation = plan.name, plan.profile, made.chosen, made.emulation
    quantized, info = chosen.quantized, chosen.info
    files: dict[str, bytes] = {}
    if gate.passed or plan.force:
        # The .tflite in the standard form LiteRT loads; the lean form only in what is flashed (below).
        files[f"{name}.tflite"], sidecar = file_form(quantized, chosen.sidecar)
        if sidecar is not None:
            source_layout = model.source_layout()  # device-check transposes the user's data for the device
            sidecar = sidecar if source_layout is None else {**sidecar, "source_layout": source_layout}
            files[f"{name}_names.json"] = render_sidecar(sidecar)
        if profile.runtime == Runtime.C:
            from edgeq.aot.emit import aot_readme, emit_c

            sources = emit_c(name, quantized, info)
            files.update(sources.files)
            files["README.md"] = aot_readme(sources, emulation.latency.emulated)
        if profile.runtime == Runtime.TFLM:
            arena = emulation.memory.arena
            files.update(tflm_sources(name, quantized, info.all_op_names, alignment=profile.memory.tensor_alignment,
                                      arena=ArenaSize(arena.smallest, emulation.memory.margin) if arena else None,
                                      layout=model.layout()).files)
    if plan.harness and files and emulation.memory.arena:
        from edgeq.device.firmware import firmware_with_sizes

        on_step("writing the device-check harness firmware and compiling its C parts for Cortex-M4F")
        firmware, _ = firmware_with_sizes(quantized, info, name=name, target_name=profile.name,
                                          arena=ArenaSize(emulation.memory.arena.smallest, emulation.memory.margin),
                                          max_payload=plan.max_payload, alignment=profile.memory.tensor_alignment)
        files.update(firmware.files)
        return files, firmware.manifest
    if plan.harness and files:
        on_step("--harness: no harness firmware written, because TFLite Micro could not run the model "
                "(see the failed checks)")
    return files, None


def convert_report(plan: Plan, prepared: Prepared, made: Made, data: Dataset | None, shapes: Shapes, gate: Gate,
                   files: dict[str, bytes], harness: HarnessManifest | None) -> ConvertReport:
    """report.json, built once from every stage's facts: the method and what the stages changed on
    the way (folded BatchNorm, recurrent rewrites, QAT's training, the PTQ/QAT comparison, the
    search, the harness manifest)."""
    model, chosen, recipe, float_bytes = prepared.model, made.chosen, made.recipe, prepared.float_tflite
    info = chosen.info
    layout = model.layout()
    model_path = plan.model_path
    identity = model.identity
    source = SourceModel(str(model_path) if not model_path.exists() else model_path.name, identity.format,
                         identity.saved_by, sha256_path(identity.path), identity.parameter_count,
                         [ModelInput(s.name, list(s.shape), s.dtype, [1, *shape])
                          for s, shape in zip(model.input_specs, shapes)],
                         converted_by=identity.converted_by,
                         input_layout=layout if any(len(shape) == 3 for shape in shapes) else None)
    used = min(recipe.calibration_samples, data.num_samples) if data else 0
    return ConvertReport(
        method=made.method, folded_batchnorm=list(prepared.folded_batchnorm), recurrent=list(prepared.recurrent),
        qat=None if made.qat is None else made.qat.part(),
        comparison={k: comparison_row(c, float_bytes) for k, c in made.candidates.items()} if plan.compare else None,
        harness=harness, search=made.searched.part if made.searched else None,
        schema_version=SCHEMA_VERSION, versions=Versions.here(), input=source,
        calibration=None if data is None else CalibrationPart(data.name, data.sha256, data.num_samples, used),
        target=TargetPart.of(plan.profile), recipe=recipe,
        sizes=Sizes(quantized_tflite_bytes=info.file_bytes, parameter_bytes=info.parameter_bytes,
                    float32_tflite_bytes=len(float_bytes) if float_bytes is not None else None,
                    ratio=round(len(float_bytes) / info.file_bytes, 3) if float_bytes is not None else None,
                    names_stripped_bytes=(chosen.sidecar or {}).get("stripped_bytes", 0)),
        arena_plan=chosen.arena_plan, model=ModelPart.of(info), emulation=made.emulation.part(), checks=chosen.checks,
        gate=gate, outputs={n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())})


def comparison_row(candidate: Candidate, float_bytes: bytes | None) -> ComparisonRow:
    """One method's line of --compare's table."""
    acc, mem = candidate.emulation.accuracy, candidate.emulation.memory
    return ComparisonRow(
        float_top1=acc.float_top1 if acc else None, quantized_top1=acc.quantized_top1 if acc else None,
        drop_points=acc.drop_points if acc else None,
        snr_db=acc.errors[0].snr_db if acc and acc.errors else None, tflite_bytes=len(candidate.quantized),
        ratio=round(len(float_bytes) / len(candidate.quantized), 3) if float_bytes is not None else None,
        ram_bytes=mem.ram_needed,
        latency_ms=candidate.emulation.latency.part().total_ms, gate_passed=all(c.passed for c in candidate.checks))


def rendered_reports(report: ConvertReport | EmulateReport) -> dict[str, bytes]:
    return {"report.json": render_json(report), "report.md": render_markdown(report), "report.png": render_png(report)}
