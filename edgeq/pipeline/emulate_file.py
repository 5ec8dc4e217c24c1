"""emulate_file(): a .tflite converted anywhere, checked against a target as convert checks its own:
memory, latency, accuracy on the user's data, against the float model it came from if given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.calibration import Dataset, load_dataset, validate_for_model
from edgeq.checks import DEFAULT_MAX_ACCURACY_DROP, CheckInput, gate_summary
from edgeq.errors import CalibrationError, ModelLoadError
from edgeq.export.atomic import check_output_dir, write_files_atomically
from edgeq.measure import emulate_and_check
from edgeq.pipeline.options import REPORT_FILES
from edgeq.pipeline.outputs import rendered_reports
from edgeq.pipeline.results import EmulateResult, GateError
from edgeq.progress import Progress, Step
from edgeq.report_meta import SCHEMA_VERSION, Versions, sha256_path
from edgeq.report_types import EmulateReport, ModelPart, Reference, Sizes, TargetPart, TfliteFile
from edgeq.targets import TargetProfile, fitting_targets, load_target
from edgeq.tflite.reader import ModelInfo


def emulate_file(
    tflite_path: str | Path,
    target: str | TargetProfile = "mcu",
    *,
    data: str | None = None,
    reference: str | Path | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    report_dir: str | Path | None = None,
    overwrite: bool = False,
    trust_model: bool = False,
    on_step: Step = lambda message: None,
    progress: Progress | None = None,
) -> EmulateResult:
    """Check a .tflite converted anywhere against a target: memory, latency, and accuracy on `data`.

    `reference`: the float Keras model it came from, for accuracy drop and output error.
    Raises GateError (exit 3) when a check fails, after writing the reports to `report_dir`.
    """
    from edgeq.device.qemu import on_emulated_board
    from edgeq.tflite.facts import infer_mode, input_specs
    from edgeq.tflite.strip import read_tflite_named

    tflite_path = Path(tflite_path)
    if reference is not None and not data:
        raise CalibrationError("--reference needs --data: the float model is compared on that data",
                               hint="add --data SET (a bundled set such as 'digits', or your .npz)")
    profile = target if isinstance(target, TargetProfile) else load_target(target)
    if report_dir is not None:
        check_output_dir(Path(report_dir), list(REPORT_FILES), overwrite=overwrite)
    model_bytes, info = read_tflite_named(tflite_path)
    dataset = load_dataset(data, default_split="eval") if data else None
    if dataset is not None:
        dataset = validate_for_model(dataset, input_specs(info), purpose="evaluation")
    outputs = None if reference is None else _reference_outputs(Path(reference), tflite_path, info, dataset,
                                                                 trust_model, on_step)
    mode = infer_mode(info)
    input_dtype, output_dtype = profile.io_dtypes(mode)
    check_input = CheckInput(info, profile, mode, input_dtype, output_dtype, max_accuracy_drop=max_accuracy_drop,
                             fitting_targets=fitting_targets, model=model_bytes)
    checks, emulation = emulate_and_check(
        model_bytes, info, profile, check_input, data=dataset, reference=outputs, host_latency=True, on_step=on_step,
        progress=progress, on_board=on_emulated_board,
        per_layer_note="per-layer error comes with `edgeq convert`, which has the converter and calibration data")
    gate = gate_summary(checks)
    reference_file = None if reference is None else Reference(Path(reference).name, sha256_path(Path(reference)))
    report = EmulateReport(
        schema_version=SCHEMA_VERSION, versions=Versions.here(),
        input=TfliteFile(tflite_path.name, "tflite", sha256_path(tflite_path), reference_file),
        target=TargetPart.of(profile), sizes=Sizes(info.file_bytes, info.parameter_bytes), model=ModelPart.of(info),
        emulation=emulation.part(), checks=checks, gate=gate)
    files = []
    if report_dir is not None:
        on_step(f"writing the report to {report_dir}")
        files = write_files_atomically(Path(report_dir), rendered_reports(report), overwrite=overwrite)
    result = EmulateResult(info, profile, checks, emulation, gate, report, files)
    if not gate.passed:
        where = f"the report is in {report_dir}/report.md" if report_dir is not None else ""
        raise GateError(checks, profile, result, where, hint="convert again with another mode, QAT or a bigger "
                                                             "target; `edgeq convert --help` shows the options")
    return result


def _reference_outputs(reference: Path, tflite_path: Path, info: ModelInfo, dataset: Dataset | None,
                       trust_model: bool, on_step: Step) -> list[Any] | None:
    """The float model's outputs on `dataset`, after checking that it takes the .tflite's inputs."""
    from edgeq.loading import load_model
    from edgeq.tflite.facts import input_specs

    on_step(f"loading the float reference {reference} (TensorFlow start-up takes a few seconds)")
    ref_model = load_model(reference, trust_model=trust_model)
    theirs = [tuple(s.shape[1:]) for s in ref_model.input_specs]
    ours = [tuple(s.shape[1:]) for s in input_specs(info)]
    if theirs != ours:
        raise ModelLoadError(f"{reference}: the reference model takes inputs {theirs}, but {tflite_path.name} "
                             f"takes {ours}", hint="pass --reference the Keras model this .tflite was converted from")
    if dataset is None:
        return None
    return ref_model.predict(list(validate_for_model(dataset, ref_model.input_specs, purpose="evaluation").inputs))
