"""convert(): the one place that strings the stages together.

load target -> recipe -> data -> model -> quantize -> read back -> emulate -> check -> emit.
Everything that can fail fast (target, mode, data files, output folder) is checked before
TensorFlow is imported or a model is loaded. The gate decides what is emitted: a model that
fails a check gets its report (json, md, png) and nothing a firmware build could pick up.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgeq.calibration import (CalibrationWarning, Dataset, InputSpec, list_bundled, load_dataset,
                               validate_for_model)
from edgeq.checks import DEFAULT_MAX_ACCURACY_DROP, CheckInput, CheckResult, Gate, gate_summary, run_checks
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD
from edgeq.errors import CalibrationError, ConversionError, ModelLoadError, RecipeError, TargetCheckError
from edgeq.export.atomic import check_output_dir, write_files_atomically
from edgeq.export.c_arrays import ArenaSize, c_identifier, tflm_sources
from edgeq.iomap import to_graph_inputs
from edgeq.isolation import TENSORFLOW, ChildCrashed, Worker, shared_worker
from edgeq.quantize.recipe import DEFAULT_CALIBRATION_SAMPLES, Recipe, recipe_for
from edgeq.report import render_json, render_markdown, render_png
from edgeq.report_types import (SCHEMA_VERSION, ArenaPlanPart, CalibrationPart, ComparisonRow, ConvertReport,
                                EmulateReport, ModelInput, ModelPart, Reference, Sizes, SourceModel, TargetPart,
                                TfliteFile, Versions, sha256_path)
from edgeq.targets import TargetProfile, for_runtime, load_all, load_target
from edgeq.tflite.reader import ModelInfo, read_tflite
from edgeq.tflite.strip import render_sidecar
from edgeq.progress import Advance, Progress, Step, no_step
from edgeq.vocab import CheckName, Layout, Runtime, SourceFormat

if TYPE_CHECKING:
    from edgeq.frontends.onnx import OnnxSummary
    from edgeq.quantize.jobs import Measured
    from edgeq.quantize.search import Outcome, SearchPart

if TYPE_CHECKING:
    from edgeq.emulator.accuracy import LayerError
    from edgeq.device.firmware import HarnessManifest
    from edgeq.emulator.emulate import Emulation
    from edgeq.loading import ConverterSource, LoadedModel
    from edgeq.quantize.training import TrainSettings  # noqa: F811

REPORT_FILES = ("report.json", "report.md", "report.png")


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
    emulation: Emulation
    gate: Gate
    report: ConvertReport = field(repr=False)

    @property
    def size_ratio(self) -> float:
        return self.float_bytes / self.quantized_bytes


def output_names(name: str, target: TargetProfile, harness: bool = False) -> list[str]:
    names = [f"{name}.tflite", *REPORT_FILES]
    if target.runtime == Runtime.C:
        names += [f"{name}_names.json", f"{name}_model.c", f"{name}_model.h", "README.md"]
    if target.runtime == Runtime.TFLM:
        names += [f"{name}_names.json", f"{name}_model_data.cc", f"{name}_model_data.h", f"{name}_op_resolver.h"]
        if harness:
            from edgeq.device.firmware import harness_file_names

            names += [n for n in harness_file_names(name) if n not in names]
    return names


def default_split_of(calibration: str | None, split: str) -> str | None:
    """For a bundled calibration set ("digits"), another of its splits ("digits:eval")."""
    if not calibration or Path(calibration).exists():
        return None
    name, _, given = calibration.partition(":")
    bundled = {b.name: b for b in list_bundled()}
    if name in bundled and split in bundled[name].splits and given != split:
        return f"{name}:{split}"
    return None


def default_eval_set(calibration: str | None) -> str | None:
    """For a bundled calibration set ("digits"), its held-out split ("digits:eval")."""
    return default_split_of(calibration, "eval")


def fitting_targets(flash: int, ram: int, runtime: str | None = None) -> list[str]:
    """Bundled targets (of `runtime`, if given) whose budgets hold `flash` model bytes and `ram`
    arena/activation bytes."""
    names = []
    for t in load_all():
        if runtime and t.runtime != runtime:
            continue
        m = t.memory
        if (m.flash_bytes is None or flash + m.runtime_flash_bytes <= m.flash_bytes) and (
                m.ram_bytes is None or ram + m.arena_margin_bytes + m.reserved_ram_bytes <= m.ram_bytes):
            names.append(t.name)
    return names


@dataclass(frozen=True)
class QatOptions:
    """Quantization-aware training (tfmot), fine-tuned from the float model."""

    train: str | None = "auto"  # labelled training data; "auto": the bundled calibration set's train split
    settings: TrainSettings | None = None  # epochs, batch size, learning rate (None: TrainSettings())
    compare: bool = False  # also run PTQ on the same model and data and report both; the outputs are QAT's


@dataclass(frozen=True)
class HarnessOptions:
    """The device-check test-harness firmware (edgeq.device.firmware), written next to the C files."""

    max_payload: int = DEFAULT_MAX_PAYLOAD  # the largest protocol frame payload (EDGEQ_MAX_PAYLOAD)


@dataclass(frozen=True)
class ConvertOptions:
    """Everything `convert` can be asked, with the CLI's defaults."""

    mode: str | None = None  # None: the target's default mode
    calibration: str | None = None  # a bundled set ("digits", "NAME:SPLIT") or a .npz/.npy
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    evaluation: str | None = "auto"  # held-out data; "auto": the bundled set's eval split; None: no accuracy
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    qat: QatOptions | None = None  # None: post-training quantization
    harness: HarnessOptions | None = None  # None: no test-harness firmware
    force: bool = False  # write the outputs even if a check fails
    outdir: str | Path | None = None  # None: edgeq-out/<name>-<target>
    name: str | None = None  # base name of the outputs and C identifiers; None: the model file's
    overwrite: bool = False
    trust_model: bool = False  # allow Lambda layers and unregistered classes (runs the model's code)
    per_layer: bool = True  # TFLite's QuantizationDebugger on the worst layers (PTQ)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # for open dimensions, by input name
    runtime: str | None = None  # "c": a TFLM target's model as plain C (edgeq/aot); None: the target's runtime
    search: SearchOptions | None = None  # --search: the cheapest recipe that passes, per layer granularity
    recipe_file: str | Path | None = None  # --recipe: replay a recorded recipe (report.json or recipe.json)
    weights: str | Path | None = None  # a PyTorch nn.Module factory's state_dict (edgeq/frontends/torch.py)


@dataclass(frozen=True)
class SearchOptions:
    """--search: what the recipe search minimises and how much quality it may give up where there is
    no top-1 accuracy (the first output's SNR against the float model, in dB)."""

    objective: str = "ram"  # "ram", "flash" or "latency"
    max_snr_loss: float = 1.0
    min_snr: float | None = None  # an absolute floor (dB) in place of max_snr_loss
    exhaustive: bool = False  # every prefix of the order (`edgeq search`), not the bisection
    train: str | None = "auto"  # training data for QAT, the last resort ("auto": a bundled set's train split)
    train_settings: Any = None  # a qat.TrainSettings (None: its defaults)
    workers: int | None = None  # candidates of a batch measured in this many local processes (None: one per
    # core; 1: here, one by one)
    ray: str | None = None  # a Ray cluster's address: candidates as Ray tasks instead


def _profile(target: str | TargetProfile, runtime: str | None, harness: bool) -> TargetProfile:
    """The target convert works for: `runtime` swapped in, and --harness only where it applies."""
    profile = for_runtime(target if isinstance(target, TargetProfile) else load_target(target), runtime)
    if harness and profile.runtime == Runtime.C:
        raise RecipeError("--harness builds the TFLite Micro test firmware; the c runtime's firmware is built by "
                          "`edgeq device-sim --board mps2-an386 MODEL.tflite` (an emulated Cortex-M4)",
                          hint="drop --harness, or convert without --runtime c for a board's TFLM harness")
    if harness and profile.runtime != Runtime.TFLM:
        raise RecipeError(f"--harness builds TFLite Micro firmware, but target '{profile.name}' runs {profile.runtime}",
                          hint="drop --harness, or pick a microcontroller target such as --target mcu")
    return profile


def convert(model_path: str | Path, target: str | TargetProfile = "mcu", options: ConvertOptions | None = None, *,
            on_step: Step = no_step, progress: Progress | None = None, worker: Worker | None = None
            ) -> ConvertResult:
    """Quantize (PTQ, or QAT), emulate, check and (if the gate passes, or `options.force`) emit.

    Raises GateError (exit 3) after writing the reports when a check fails and `force` is off.
    Loading, converting and running the model happen in `worker`'s child process (by default
    this process's shared one), so that a native crash ends the child with a message, not the
    caller; this process checks the inputs first and writes the outputs last.
    """
    o = options or ConvertOptions()
    calibration, evaluation, name = o.calibration, o.evaluation, o.name
    qat, compare, harness = o.qat is not None, o.qat is not None and o.qat.compare, o.harness is not None
    max_payload = o.harness.max_payload if o.harness else DEFAULT_MAX_PAYLOAD
    from edgeq.frontends.onnx import is_onnx_model
    from edgeq.frontends.torch import FACTORY, is_torch_model

    torch_model, onnx_model = is_torch_model(model_path), is_onnx_model(model_path)
    onnx_summary = None
    factory = FACTORY.match(str(model_path)) if torch_model else None
    model_path = Path(model_path)
    profile = _profile(target, o.runtime, harness)
    name = c_identifier(name or (factory.group(2) if factory else
                                 model_path.name.removesuffix(model_path.suffix) or model_path.name))
    out = Path(o.outdir) if o.outdir is not None else Path("edgeq-out") / f"{name}-{profile.name}"
    check_output_dir(out, output_names(name, profile, harness), overwrite=o.overwrite)
    recipe = _recipe(o, profile, model_path)
    eval_spec = default_eval_set(calibration) if evaluation == "auto" else evaluation
    eval_data = load_dataset(eval_spec, default_split="eval") if eval_spec else None
    train_data = _train_data(o.qat.train, calibration) if o.qat else _search_train(o.search, calibration)
    data: Dataset | None = load_dataset(calibration) if calibration and recipe.calibration_samples else None
    if torch_model:
        from edgeq.frontends.torch import check_torch_model

        check_torch_model(model_path, weights=o.weights, trust_model=o.trust_model)
        _check_torch_recipe(model_path, recipe, o)
    elif onnx_model:
        from edgeq.frontends.onnx import check_onnx_model

        onnx_summary = check_onnx_model(model_path)  # parsed (not its weights) here, before TensorFlow starts
        _check_onnx_recipe(model_path, o)
    else:
        from edgeq.loading import check_model_file

        check_model_file(model_path, trust_model=o.trust_model)  # a missing, mangled or Lambda model fails fast
    plan = _Plan(model_path=model_path, profile=profile, recipe=recipe, name=name, qat=qat, compare=compare,
                 data=data, eval_data=eval_data, train_data=train_data,
                 train_settings=o.qat.settings if o.qat else None, max_accuracy_drop=o.max_accuracy_drop,
                 force=o.force, trust_model=o.trust_model, per_layer=o.per_layer, harness=harness,
                 max_payload=max_payload, input_shapes=dict(o.input_shapes), search=o.search,
                 weights=Path(o.weights) if o.weights is not None else None, torch=torch_model,
                 onnx=onnx_summary)

    # Everything above fails fast, without TensorFlow. Everything below runs user models, so it
    # runs in the worker's child process; this process only writes the outputs.
    done = _run_isolated(worker or shared_worker(TENSORFLOW), plan, on_step, progress)
    on_step(f"writing {len(done.files)} files to {out}")
    # A rejected model must not sit next to a report that rejects it (left by an earlier run).
    stale = [n for n in output_names(name, profile, harness) if n not in done.files]
    written = write_files_atomically(out, done.files, overwrite=o.overwrite, remove=stale)
    result = ConvertResult(name, out, written, profile, recipe, done.float_bytes, done.quantized_bytes, done.info,
                           done.checks, done.emulation, done.gate, done.report)
    if not done.gate.passed and not o.force:
        where = f"no .tflite or C files written; the report is in {out}/report.md"
        if done.report.search is not None:
            where = f"{_search_summary(done.report.search)}\n{where}"
        raise GateError(done.checks, profile, result, where)
    return result


def _search_summary(search: SearchPart) -> str:
    """Why --search found nothing, its closest candidates, and what to relax."""
    accurate = [c for c in search.candidates if not {"quality floor", "accuracy"} & set(c.failed_checks)]
    fitting = [c for c in search.candidates if c.fits]
    near = ([accurate[-1]] if accurate else []) + ([fitting[0]] if fitting else []) or search.candidates[:1]
    rows = "; ".join(f"{c.label} (RAM {c.ram_bytes or 0:,} B, quality {c.quality}: fails "
                     f"{', '.join(c.failed_checks) or 'nothing'})" for c in near)
    return (f"--search tried {search.tried} recipes and none passes: {search.stopped_because}. Closest: {rows}. "
            "Relax: --max-snr-loss or --max-accuracy-drop (the floor), or a target with more RAM or flash")


@dataclass(frozen=True)
class _Plan:
    """A conversion's checked inputs: what the child process needs to do the work."""

    model_path: Path
    profile: TargetProfile
    recipe: Recipe
    name: str
    qat: bool
    compare: bool
    data: Dataset | None
    eval_data: Dataset | None
    train_data: Dataset | None
    train_settings: TrainSettings | None
    max_accuracy_drop: float
    force: bool
    trust_model: bool
    per_layer: bool
    harness: bool
    max_payload: int
    input_shapes: dict[str, tuple[int, ...]]
    search: SearchOptions | None = None
    weights: Path | None = None  # a torch factory's state_dict
    torch: bool = False  # a PyTorch model (edgeq/frontends/torch.py)
    onnx: OnnxSummary | None = None  # an ONNX model: what check_onnx_model read (edgeq/frontends/onnx.py)


@dataclass
class _Done:
    """What the child process hands back: every output file's bytes and what was measured."""

    files: dict[str, bytes]
    report: ConvertReport
    info: ModelInfo
    checks: list[CheckResult]
    emulation: Emulation
    gate: Gate
    float_bytes: int
    quantized_bytes: int


def _run_isolated(worker: Worker, plan: _Plan, on_step: Step, progress: Progress | None) -> _Done:
    """`_compute(plan)` in the worker's child, its steps and progress bars relayed here; a native
    crash becomes a ConversionError that names the step it happened in."""
    last = ["loading the model"]
    bars: dict[int, Advance] = {}

    def step(message: str) -> None:
        last[0] = message
        on_step(message)

    def bar(token: int, label: str, total: int) -> None:
        bars[token] = progress(label, total) if progress else (lambda done: None)

    def advance(token: int, done: int) -> None:
        bars.get(token, lambda done: None)(done)

    def warn(message: str) -> None:
        warnings.warn(message, CalibrationWarning, stacklevel=2)

    try:
        return worker.call(_compute, plan, isolate_runtimes=not worker.in_process,
                           callbacks={"step": step, "bar": bar, "advance": advance, "warn": warn})
    except ChildCrashed as crash:
        raise ConversionError(f"{plan.model_path}: the conversion {crash.how} while {last[0]}{crash.last_words()}",
                              hint=CONVERTER_HINT) from None


def _compute(plan: _Plan, *, isolate_runtimes: bool, step: Step, bar: Callable[[int, str, int], None],
             advance: Callable[[int, int], None], warn: Callable[[str], None]) -> _Done:
    """The conversion itself, in the worker's child: load, quantize, emulate, check, render.
    Steps, progress and edgeq's warnings about the data go back to the caller as they happen."""
    tokens = iter(range(1 << 30))

    def progress(label: str, total: int) -> Callable[[int], None]:
        token = next(tokens)
        bar(token, label, total)
        return lambda done: advance(token, done)

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, CalibrationWarning):
            warn(str(message))
        else:
            shown(message, category, *args, **kwargs)

    # Already in the child: the converter runs here. LiteRT and TFLM run one process further
    # down (no TensorFlow there): a runtime that aborts on a model is a failed check (exit 3)
    # that says so, and the conversion goes on to report it.
    runtimes = shared_worker() if isolate_runtimes else Worker(in_process=True)
    with warnings.catch_warnings():
        shown, warnings.showwarning = warnings.showwarning, show
        return _compute_with(plan, step, progress, runtimes)


def _compute_with(plan: _Plan, on_step: Step, progress: Progress, runtimes: Worker) -> _Done:
    """The conversion as stages: load -> prepare (fold, recurrent, float32) -> quantize and emulate
    (PTQ, QAT) -> check -> emit. Each stage hands the next what it made; none reaches back."""
    model, data, eval_data, train_data, shapes = _load_checked(plan, on_step)
    reference = model.predict(list(eval_data.inputs)) if eval_data is not None else None
    model, folded, recurrent, float_bytes = _prepared(model, plan, data or eval_data, shapes, on_step, runtimes)
    candidates, qat_result, searched = _candidates(model, plan, data, eval_data, train_data, reference, shapes,
                                                   on_step, progress, runtimes)
    method = searched.method if searched else "qat" if plan.qat else "ptq"
    chosen = candidates["qat" if plan.qat else "ptq"]
    recipe = searched.recipe if searched else plan.recipe
    qat_result = searched.qat if searched else qat_result
    checks, emulation, quantized, info = chosen.checks, chosen.emulation, chosen.quantized, chosen.info
    if plan.compare and candidates["ptq"].emulation.per_layer:
        # The debugger needs the float model, so only PTQ has per-layer statistics: show where PTQ loses.
        ptq = candidates["ptq"].emulation
        emulation = replace(emulation, per_layer=ptq.per_layer, per_layer_note=(
            "per-layer error of the PTQ model (QuantizationDebugger needs the float model; QAT carries fake-quant "
            "ranges of its own): " + ptq.per_layer_note))
    gate = gate_summary(checks, forced=plan.force)
    layout = _layout(plan, model)
    files, harness_manifest = _emitted(plan, chosen, emulation, gate, on_step, layout,
                                       Layout.NCHW if getattr(model, "device_layout", "") == Layout.NHWC else None)
    used = min(recipe.calibration_samples, data.num_samples) if data else 0
    how = dict(method=method, folded_batchnorm=list(folded), recurrent=recurrent,
               qat=None if qat_result is None else qat_result.part(),
               comparison={k: c.summary(float_bytes) for k, c in candidates.items()} if plan.compare else None,
               harness=harness_manifest, search=searched.part if searched else None)
    report = _report(model, plan.model_path, plan.profile, recipe, data, used, float_bytes, chosen, gate,
                     emulation, files, shapes, how, layout)
    files.update(_render_reports(report))
    return _Done(files, report, info, checks, emulation, gate, len(float_bytes), len(quantized))


def _load_checked(plan: _Plan, on_step: Step) -> tuple[Any, Dataset | None, Dataset | None, Dataset | None,
                                                        list[tuple[int, ...]]]:
    """The model, loaded safely, and each data set checked against its inputs at the shapes the
    conversion will use: (model, calibration, evaluation, training, sample shapes)."""
    model = _loaded(plan, on_step)
    if plan.qat and model.keras_model is None and not plan.torch:
        raise RecipeError(f"{plan.model_path}: quantization-aware training needs a Keras model (.keras or .h5), "
                          "not a SavedModel", hint="drop --qat for post-training quantization")
    sets = ((plan.data, "calibration"), (plan.eval_data, "evaluation"), (plan.train_data, "training"))
    # An ONNX model whose inputs onnx2tf moved to channels last still takes the user's NCHW data.
    source_specs = getattr(model, "source_specs", model.input_specs)
    data, eval_data, train_data = (None if d is None else validate_for_model(d, source_specs, purpose=p)
                                   for d, p in sets)
    if plan.onnx:
        data, eval_data, train_data = _onnx_arrays(model, (data, eval_data, train_data), on_step)
    data = data or train_data  # QAT without --calibration: the converter's ranges come from training data
    shapes = sample_shapes(model, plan.input_shapes, data or eval_data, on_step)
    if plan.torch:
        model, shapes, (data, eval_data, train_data) = _torch_layout(model, shapes, (data, eval_data, train_data),
                                                                     on_step)
    fixed = fixed_specs(model.input_specs, shapes)
    data, eval_data, train_data = (None if d is None else validate_for_model(d, fixed, purpose=p)
                                   for d, p in ((data, "calibration"), (eval_data, "evaluation"),
                                                (train_data, "training")))
    return model, data, eval_data, train_data, shapes


def _torch_layout(model: Any, shapes: list[tuple[int, ...]], sets: tuple[Dataset | None, ...], on_step: Step
                  ) -> tuple[Any, list[tuple[int, ...]], tuple[Dataset | None, ...]]:
    """Channels last on the device where that removes ops: a PyTorch model's multi-channel NCHW
    input makes the converter put a TRANSPOSE in front of the first convolution (TFLite computes
    NHWC). Both layouts are converted in float32 (cheap, and the chosen one is kept for the size
    reference); the one with fewer ops wins, and the data (NCHW, as the user has them) are
    transposed for it here, once, so every later stage sees one layout."""
    moved = model.channels_last(shapes)
    if moved is None:
        return model, shapes, sets
    last, last_shapes = moved
    on_step("comparing NCHW and NHWC device inputs (two float32 conversions)")
    first_ops = read_tflite(model.float_tflite(shapes)).ops
    last_ops = read_tflite(last.float_tflite(last_shapes)).ops
    if len(last_ops) >= len(first_ops):
        return model, shapes, sets
    saved = len(first_ops) - len(last_ops)
    on_step(f"channels last on the device: NHWC input saves {saved} op(s) "
            f"({', '.join(sorted({o.name for o in first_ops} - {o.name for o in last_ops}) or ['TRANSPOSE'])}); "
            "edgeq transposes the NCHW data for it")
    moved = [k for k, (s, ls) in enumerate(zip(shapes, last_shapes)) if len(s) == 3 and s != ls]
    last.saved_ops = saved
    return last, last_shapes, tuple(_channels_moved_last(d, moved) for d in sets)


def _onnx_arrays(model: Any, sets: tuple[Dataset | None, ...], on_step: Step) -> tuple[Dataset | None, ...]:
    """The user's arrays (checked in the ONNX model's input order and layout) as onnx2tf's model
    takes them: in its SavedModel's input order, and channels last where it moved them."""
    order, moved = model.input_order, model.moved_inputs
    if order != list(range(len(order))):
        names = tuple(spec.name for spec in model.input_specs)
        sets = tuple(None if d is None else replace(d, inputs=tuple(d.inputs[j] for j in order), input_names=names)
                     for d in sets)
    if moved:
        on_step("channels last on the device (onnx2tf: the inputs only convolutions read); edgeq transposes the "
                "NCHW data for it")
    return tuple(_channels_moved_last(d, moved) for d in sets)


def _channels_moved_last(data: Dataset | None, moved: Sequence[int]) -> Dataset | None:
    """`data` with the channels of inputs `moved` (NCHW) last: what a channels-last device takes."""
    if data is None:
        return None
    return replace(data, inputs=tuple(np.ascontiguousarray(np.moveaxis(x, 1, -1)) if k in moved else x
                                      for k, x in enumerate(data.inputs)))


def _loaded(plan: _Plan, on_step: Step) -> Any:
    """The Keras model (loading.py), or the PyTorch one (frontends/torch.py: its input shape comes
    from the data where the model does not say)."""
    if plan.torch:
        from edgeq.frontends.torch import load_torch_model

        data = plan.data or plan.eval_data
        on_step(f"loading {plan.model_path} (PyTorch and litert-torch start-up takes a few seconds)")
        return load_torch_model(str(plan.model_path), weights=plan.weights, trust_model=plan.trust_model,
                                example=[tuple(x.shape[1:]) for x in data.inputs] if data is not None else None)
    if plan.onnx:
        from edgeq.frontends.onnx import load_onnx_model

        return load_onnx_model(plan.model_path, calibration=plan.data or plan.eval_data, on_step=on_step,
                               summary=plan.onnx)
    from edgeq.loading import load_model

    on_step(f"loading {plan.model_path} (TensorFlow start-up takes a few seconds)")
    return load_model(plan.model_path, trust_model=plan.trust_model)


def _prepared(model: Any, plan: _Plan, sample: Dataset | None, shapes: list[tuple[int, ...]], on_step: Step,
              runtimes: Worker) -> tuple[Any, list[str], list[dict[str, Any]], bytes]:
    """The model as the converter should see it: Dense->BatchNormalization folded (for both methods:
    tfmot folds Conv+BN itself, not Dense+BN), recurrent layers made convertible; and its float32
    .tflite. (model, folded layers, recurrent notes, float32 bytes)."""
    from edgeq.quantize.ptq import convert_float32

    mode = plan.recipe.mode
    if plan.torch:
        on_step("converting to float32 with litert-torch (reference size)")
        return model, [], [], model.float_tflite(shapes)
    model, folded = _fold(model, plan.model_path, sample, on_step)
    keras_model = model
    model, recurrent = _recurrent(keras_model, plan.model_path, mode, sample, shapes, on_step)
    on_step("converting to float32 (reference size)")
    float_bytes = convert_float32(model.converter_source(shapes))
    if any(r.kind == "LSTM" and r.action.startswith("fused") for r in recurrent):
        difference = _float_difference(float_bytes, model.converter_source(shapes), model, sample, runtimes)
        if difference > FUSED_LSTM_TOLERANCE:
            on_step(f"TFLite's fused LSTM computes other outputs than Keras (max difference {difference:.3g} on the "
                    "float model): unrolling the LSTM instead")
            model, recurrent = _recurrent(keras_model, plan.model_path, mode, sample, shapes, on_step,
                                          unroll_lstm=True)
            recurrent = [n.with_action(f"; TFLite's fused LSTM was off by {difference:.3g} on the float model")
                         if n.kind == "LSTM" else n for n in recurrent]
            float_bytes = convert_float32(model.converter_source(shapes))
    return model, folded, recurrent, float_bytes


def _candidates(model: Any, plan: _Plan, data: Dataset | None, eval_data: Dataset | None,
                train_data: Dataset | None, reference: list[Any] | None, shapes: list[tuple[int, ...]],
                on_step: Step, progress: Progress, runtimes: Worker
                ) -> tuple[dict[str, _Candidate], Any, _Searched | None]:
    """PTQ, QAT or both (--compare), each quantized, emulated and checked; QAT's training record;
    with --search, the recipe it chose and what it measured."""
    candidates: dict[str, _Candidate] = {}
    emulated = dict(recipe=plan.recipe, data=data, name=plan.name, profile=plan.profile, eval_data=eval_data,
                    reference=reference, max_drop=plan.max_accuracy_drop, per_layer=plan.per_layer, on_step=on_step,
                    progress=progress, runtimes=runtimes, shapes=shapes)
    searched = None
    if plan.search is not None:
        candidates["ptq"], searched = _searched(model, plan, emulated, train_data)
    elif not plan.qat or plan.compare:
        candidates["ptq"] = _emulated(model, "ptq", **emulated)
    qat_result = None
    if plan.qat:
        assert train_data is not None
        from edgeq.quantize.training import TrainSettings

        qat_model, qat_result = _qat(model, plan.model_path, train_data, plan.train_settings or TrainSettings(),
                                     on_step, progress, shapes, plan.recipe.per_channel)
        candidates["qat"] = _emulated(qat_model, "qat", **emulated)
    return candidates, qat_result, searched


def _recipe(o: ConvertOptions, profile: TargetProfile, model_path: Path) -> Recipe:
    """The recipe convert follows: the target's (in --mode), or a replayed one (--recipe); checked
    against what --qat and --search can do with it."""
    qat = o.qat is not None
    recipe = recipe_for(profile, o.mode, have_calibration=o.calibration is not None or qat,
                        calibration_samples=o.calibration_samples)
    if o.recipe_file is not None:
        from edgeq.quantize.recipe import load_recipe

        recipe = load_recipe(Path(o.recipe_file), profile, recipe)
    if o.search is not None:
        _check_searchable(recipe, profile, qat, o.recipe_file)
    if qat and not recipe.per_channel:
        raise RecipeError(f"target '{profile.name}' wants per-tensor weights, but QAT trains with tfmot's default "
                          "scheme, which quantizes conv weights per channel",
                          hint="drop --qat (PTQ honours per_channel = false), or use a per-channel target")
    if qat and model_path.is_dir():
        raise RecipeError(f"{model_path}: quantization-aware training needs a Keras model (.keras or .h5), "
                          "not a SavedModel", hint="drop --qat for post-training quantization")
    if qat and recipe.mode != "int8":
        raise RecipeError(f"quantization-aware training makes int8 models; mode '{recipe.mode}' is not possible",
                          hint="drop --mode (or pass --mode int8), or drop --qat for PTQ in this mode")
    return recipe


def _check_torch_recipe(model_path: Path, recipe: Recipe, o: ConvertOptions) -> None:
    """What the PyTorch path does: PT2E int8, post-training or quantization-aware (an nn.Module)."""
    if o.search is not None:
        raise RecipeError(f"{model_path}: --search works on Keras and ONNX models only so far",
                          hint="drop it: PyTorch models get PT2E int8 (PTQ, or --qat)")
    if o.qat is not None and Path(str(model_path)).suffix.lower() == ".pt2":
        raise RecipeError(f"{model_path}: QAT trains the nn.Module, and a torch.export program is fixed at the batch "
                          "it was exported with", hint="pass package.module:factory with --weights for --qat")
    if recipe.mode != "int8":
        raise RecipeError(f"{model_path}: mode '{recipe.mode}' is not available for PyTorch models: litert-torch's PT2E "
                          "quantizer makes int8 (int16 activations are not among its configurations)",
                          hint="drop --mode (int8), or export the model to ONNX/Keras for the other modes")


def _check_onnx_recipe(model_path: Path, o: ConvertOptions) -> None:
    """An ONNX model takes the SavedModel path, which has every mode and the search; not QAT."""
    if o.qat is not None:
        raise RecipeError(f"{model_path}: quantization-aware training needs a Keras model; onnx2tf translates ONNX into "
                          "TensorFlow ops, which tfmot cannot train with fake quantization",
                          hint="drop --qat for post-training quantization (or train in PyTorch and pass the module)")
    if o.weights is not None:
        raise RecipeError(f"--weights {o.weights}: an .onnx file carries its own weights", hint="drop --weights")


def _check_searchable(recipe: Recipe, profile: TargetProfile, qat: bool, recipe_file: object) -> None:
    if qat or recipe_file is not None:
        raise RecipeError("--search chooses the recipe itself; it does not combine with --qat or --recipe",
                          hint="drop one of them (replay a searched recipe with --recipe alone)")
    if recipe.mode != "int8" or not recipe.per_channel:
        raise RecipeError(f"--search varies per-channel weights layer by layer, in int8; this conversion is "
                          f"{recipe.mode} with {'per-channel' if recipe.per_channel else 'per-tensor'} weights "
                          f"for target '{profile.name}'", hint="drop --mode, or use a per-channel int8 target")


@dataclass(frozen=True)
class _Searched:
    """What --search decided: the recipe, its record, and how the chosen model was made."""

    recipe: Recipe
    part: SearchPart
    method: str = "ptq"
    qat: Any = None  # QAT's training record, when QAT was chosen


SEARCH_CALIBRATION_CAP = 1000  # the most calibration samples the search's calibration lever uses


def _searched(model: Any, plan: _Plan, emulated: dict[str, Any], train_data: Dataset | None
              ) -> tuple[_Candidate, _Searched]:
    """The recipe search (edgeq/quantize/search.py) with convert's own measurement of each candidate;
    the chosen candidate (or, when none passes, the converter's default) and the search's record."""
    from edgeq.quantize.granularity import weighted_layers
    from edgeq.quantize.ptq import quantize
    from edgeq.quantize.search import Choice, search

    assert plan.search is not None
    base, on_step, data = plan.recipe, emulated["on_step"], emulated["data"]
    source = model.converter_source(emulated["shapes"])
    on_step("search: converting with per-channel and with per-tensor weights, to mix them layer by layer")
    layers = weighted_layers(quantize(source, base, data), quantize(source, replace(base, per_channel=False), data),
                             source.label)
    measured: dict[Choice, _Candidate] = {}
    trained: dict[str, Any] = {}
    floor: list[float] = []
    results: list[Measured] = []
    executor = _executor(plan)

    def here(choice: Choice) -> Measured:
        recipe = _choice_recipe(plan, choice)
        if choice.qat:
            from edgeq.quantize.training import TrainSettings

            qat_model, trained["record"] = _qat(model, plan.model_path, train_data,
                                                plan.search.train_settings or TrainSettings(), on_step,
                                                emulated["progress"])
            measured[choice] = _emulated(qat_model, "qat", **{**emulated, "recipe": recipe, "per_layer": False})
        else:
            measured[choice] = _emulated(model, "ptq", **{**emulated, "recipe": recipe, "per_layer": False})
        return _measured(measured[choice])

    def evaluate(choices: list[Choice]) -> list[Outcome]:
        remote = [c for c in choices if not c.qat] if executor is not None and len(choices) > 1 else []
        jobs = [_job(plan, emulated, source, quantize(source, _choice_recipe(plan, c), data), _choice_recipe(plan, c))
                for c in remote]
        done = dict(zip(remote, executor.map(jobs))) if remote else {}
        got = [done[c] if c in done else here(c) for c in choices]
        results.extend(got)
        if plan.search.min_snr is not None and not floor:
            floor.append(plan.search.min_snr)
        return [_outcome(m, floor, plan.search.max_snr_loss) for m in got]

    try:
        result = search(layers, evaluate, objective=plan.search.objective, exhaustive=plan.search.exhaustive,
                        levers=lambda: _levers(model, plan, emulated, source, train_data is not None),
                        width=executor.width if executor is not None else 1, on_step=on_step)
    finally:
        if executor is not None:
            executor.close()
    choice = result.chosen if result.chosen is not None else Choice()
    recipe = _choice_recipe(plan, choice)
    found = _Searched(recipe, replace(result.part, quality_metric=_quality_name(results[0]) if results else ""),
                      "qat" if choice.qat else "ptq", trained.get("record") if choice.qat else None)
    if not choice.qat and (plan.per_layer or choice not in measured):  # the chosen one here, with per-layer error
        written = _emulated(model, "ptq", **{**emulated, "recipe": recipe})
    else:
        written = measured[choice]
    return _held_to_floor(written, floor, plan.search), found


def _held_to_floor(candidate: _Candidate, floor: list[float], search: SearchOptions) -> _Candidate:
    """The written candidate with the search's SNR floor in its accuracy check: with --min-snr, a model
    that misses the floor fails the gate (exit 3) even where the accuracy check had no labels to use."""
    m = _measured(candidate)
    outcome = _outcome(m, list(floor), search.max_snr_loss)
    if "quality floor" not in outcome.failed:
        return candidate
    where = "--min-snr" if search.min_snr is not None else \
        f"the converter's default less --max-snr-loss {search.max_snr_loss}"
    failed = CheckResult(CheckName.ACCURACY, False,
                         f"SNR {outcome.quality:.2f} dB (first output against the float model) is below the search's "
                         f"floor of {floor[0]:.2f} dB ({where})",
                         hint="relax --min-snr, or give the search training data (--train) for QAT")
    return replace(candidate, checks=[failed if c.name == CheckName.ACCURACY else c for c in candidate.checks])


def _choice_recipe(plan: _Plan, choice: Any) -> Recipe:
    """The recipe a search choice stands for."""
    base = plan.recipe
    if choice.int16x8:
        return recipe_for(plan.profile, "int16x8", have_calibration=True, calibration_samples=base.calibration_samples)
    recipe = base.with_per_tensor(choice.per_tensor).with_int16(choice.int16)
    return replace(recipe, calibration_samples=choice.calibration_samples) if choice.calibration_samples else recipe


def _levers(model: Any, plan: _Plan, emulated: dict[str, Any], source: Any, can_train: bool) -> Any:
    """What the search may try when no weight granularity keeps the floor, for this model, data and
    target: more calibration samples, int16 activations (worst layers in int8 first), QAT."""
    from edgeq.quantize.ptq import quantize, wide
    from edgeq.quantize.search import Levers

    base, data, on_step = plan.recipe, emulated["data"], emulated["on_step"]
    more = min(data.num_samples, SEARCH_CALIBRATION_CAP) if data is not None else 0
    int16: list[tuple[str, ...]] = []
    allowed = "int16x8" in plan.profile.quantization.modes and data is not None
    if allowed:
        from edgeq.quantize.int16 import int16_layers

        on_step("search: converting in int16x8 too, for int16 activations layer by layer")
        try:
            wide_layers = int16_layers(quantize(source, base, data), quantize(source, wide(base), data), source.label)
        except ConversionError as exc:
            on_step(f"search: no int16 activations per layer ({exc.message})")
            wide_layers = []
        errors = _int8_errors(source, plan, emulated) if len(wide_layers) > 1 else {}
        from edgeq.emulator.accuracy import _short_name

        # A layer's output stays int16 only if the layers it feeds take int16 too: each step of the
        # order is a layer (the coarsest int8 output first) with the layers it feeds.
        order = sorted(wide_layers, key=lambda l: (-errors.get(_short_name(l.output), 0.0), l.op_index))
        int16 = [tuple(dict.fromkeys((l.name, *l.feeds))) for l in order]
    return Levers(calibration_samples=more if more > min(base.calibration_samples, more) else 0, int16=int16,
                  int16x8=allowed, qat=can_train and model.keras_model is not None)


def _int8_errors(source: Any, plan: _Plan, emulated: dict[str, Any]) -> dict[str, float]:
    """How coarse int8 is for each layer's output (the int8 step over the median magnitude of its float
    values, from TFLite's QuantizationDebugger), by the layer output's short name."""
    import math

    from edgeq.emulator.accuracy import per_layer_errors_of

    data = emulated["data"]
    debug = emulated["eval_data"] or data
    emulated["on_step"](f"search: ordering layers by how coarse int8 is for their outputs (QuantizationDebugger, "
                        f"{min(64, debug.num_samples)} samples)")
    from edgeq.quantize.ptq import quantize

    info = read_tflite(quantize(source, plan.recipe, data), source=f"{plan.name}.tflite")
    try:
        rows = per_layer_errors_of(source, plan.recipe, data, to_graph_inputs(list(debug.inputs), source.input_names,
                                                                             info), samples=64)
    except Exception:  # the debugger's private API: order by graph position instead
        return {}
    return {r.layer: r.step_over_median for r in rows if math.isfinite(r.step_over_median)}


def _executor(plan: _Plan) -> Any:
    """Where a batch of candidates is measured: a Ray cluster, a local pool, or (None) here."""
    from edgeq.quantize.jobs import LocalPool, RayCluster

    assert plan.search is not None
    if plan.search.ray:
        return RayCluster(plan.search.ray)
    import os

    workers = plan.search.workers or os.cpu_count() or 1
    return LocalPool(workers) if workers > 1 else None


def _job(plan: _Plan, emulated: dict[str, Any], source: Any, model: bytes, recipe: Recipe) -> Any:
    """A candidate as a job: its quantized model and what measuring needs, all as values."""
    from edgeq.quantize.jobs import RecipeJob

    return RecipeJob(model, tuple(source.input_names), tuple(source.output_names), recipe, plan.name, plan.profile,
                     emulated["data"], emulated["eval_data"], emulated["reference"], plan.max_accuracy_drop)


def _measured(candidate: _Candidate) -> Measured:
    """A candidate measured here, as a job would hand it back."""
    from edgeq.quantize.jobs import Measured

    acc, memory = candidate.emulation.accuracy, candidate.emulation.memory
    return Measured(tuple((c.name, c.passed) for c in candidate.checks), memory.ram_total, memory.flash_total,
                    acc.quantized_top1 if acc else None, acc.drop_points if acc else None,
                    acc.quantized_auc if acc else None, acc.auc_drop_points if acc else None,
                    acc.errors[0].snr_db if acc and acc.errors else None, candidate.emulation.latency.total_ms)


def _quality(m: Measured) -> float | None:
    if m.quantized_auc is not None:
        return round(100 * m.quantized_auc, 3)
    if m.quantized_top1 is not None and m.drop_points is not None:
        return round(100 * m.quantized_top1, 3)
    return None if m.snr_db is None else round(m.snr_db, 3)


def _quality_name(m: Measured) -> str:
    if m.quantized_auc is not None:
        return "per-file AUC (x100) of the reconstruction error, anomaly detection"
    if m.drop_points is not None:
        return "top-1 accuracy (%) on the evaluation data"
    return "SNR (dB) of the first output against the float model"


def _outcome(m: Measured, floor: list[float], max_snr_loss: float) -> Outcome:
    """A candidate as the search sees it. Without top-1 accuracy or AUC, the floor is `floor[0]` if set
    (--min-snr), else the first candidate's (the converter's default) SNR less `max_snr_loss` dB."""
    from edgeq.quantize.search import Outcome

    by_name = dict(m.checks)
    quality = _quality(m)
    accurate = by_name[CheckName.ACCURACY]
    if m.drop_points is None and m.auc_drop_points is None and quality is not None:
        if not floor:
            floor.append(quality - max_snr_loss)
        accurate = accurate and quality >= floor[0]
    fits = by_name[CheckName.FLASH] and by_name[CheckName.RAM]
    others = all(passed for name, passed in m.checks if name != CheckName.ACCURACY)
    return Outcome(passed=others and accurate, fits=fits, accurate=accurate, ram_bytes=m.ram_bytes,
                   flash_bytes=m.flash_bytes, quality=quality, latency_ms=m.latency_ms,
                   failed=tuple(name for name, passed in m.checks if not passed)
                   + (() if accurate or not by_name[CheckName.ACCURACY] else ("quality floor",)))


def _emitted(plan: _Plan, chosen: _Candidate, emulation: Emulation, gate: Gate, on_step: Step,
             layout: str | None = None, source_layout: str | None = None
             ) -> tuple[dict[str, bytes], HarnessManifest | None]:
    """The model files (only if the gate passed, or --force): the .tflite, its names, the C sources
    for TFLM targets and the harness firmware with --harness; and the harness manifest. `layout`:
    how the C header describes a 4-D input; `source_layout`: the layout the user's data have where
    the device takes another (the names sidecar says so, and device-check transposes for it)."""
    name, profile, quantized, info = plan.name, plan.profile, chosen.quantized, chosen.info
    files: dict[str, bytes] = {}
    if gate.passed or plan.force:
        files[f"{name}.tflite"] = quantized
        if chosen.sidecar is not None:
            sidecar = chosen.sidecar if source_layout is None else {**chosen.sidecar, "source_layout": source_layout}
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
                                      layout=layout
                                      ).files)
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


CONVERTER_HINT = ("EDGEQ_VERBOSE=1 shows the converter's full log; try another --mode, or replace the layers "
                  "the log names")


def sample_shapes(model: LoadedModel, given: dict[str, tuple[int, ...]], data: Dataset | None,
                  on_step: Step) -> list[tuple[int, ...]]:
    """Each input's sample shape for the converter: given by --input-shape, else the model's own,
    else (for open dimensions) the data's, said out loud. Never silently 1."""
    names = [spec.name for spec in model.input_specs]
    unknown = [n for n in given if n not in names and n not in [m.split(":")[0] for m in names]]
    if unknown:
        raise ModelLoadError(f"--input-shape names {', '.join(unknown)}, but the model's inputs are "
                             f"{', '.join(n.split(':')[0] for n in names)}",
                             hint="pass --input-shape <input name>=<d1>,<d2>,... (no batch dimension)")
    shapes = []
    for k, spec in enumerate(model.input_specs):
        dims = tuple(spec.shape[1:])
        chosen = given.get(spec.name, given.get(spec.name.split(":")[0]))
        if chosen is not None:
            if len(chosen) != len(dims) or any(d is not None and d != c for d, c in zip(dims, chosen)):
                raise ModelLoadError(f"--input-shape {spec.name}={','.join(map(str, chosen))} does not fit the "
                                     f"model's input shape {_dims(dims)}",
                                     hint="give every dimension but the batch, keeping the fixed ones")
            shapes.append(tuple(chosen))
        elif None not in dims:
            shapes.append(tuple(int(d) for d in dims))
        elif data is not None:
            shape = tuple(int(d) for d in data.inputs[k].shape[1:])
            on_step(f"input '{spec.name}' has open dimensions {_dims(dims)}: converting for {_dims(shape)}, the shape of "
                    f"{data.name}; pass --input-shape {spec.name.split(':')[0]}=... to choose another")
            shapes.append(shape)
        else:
            raise ModelLoadError(f"{model.path}: input '{spec.name}' has open dimensions {_dims(dims)}, and a device "
                                 "needs fixed ones", hint=f"pass --input-shape {spec.name.split(':')[0]}="
                                 + ",".join("N" if d is None else str(d) for d in dims) + " (N: the size you want)")
    return shapes


def _dims(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def fixed_specs(specs: Sequence[InputSpec], shapes: Sequence[tuple[int, ...]]) -> list[InputSpec]:
    """The model's input specs with the sample shapes chosen for conversion."""
    return [replace(spec, shape=(None, *shape)) for spec, shape in zip(specs, shapes)]


@dataclass
class _Candidate:
    """One way of quantizing the model, emulated and checked (PTQ, QAT; both with --compare)."""

    quantized: bytes
    info: ModelInfo
    checks: list[CheckResult]
    emulation: Emulation
    sidecar: dict[str, Any] | None = None  # the names taken out of the flashed model (TFLM targets)
    arena_plan: ArenaPlanPart | None = None  # whether edgeq's arena plan was tried, and kept (TFLM targets)

    def summary(self, float_bytes: bytes) -> ComparisonRow:
        acc, mem = self.emulation.accuracy, self.emulation.memory
        return ComparisonRow(
            float_top1=acc.float_top1 if acc else None, quantized_top1=acc.quantized_top1 if acc else None,
            drop_points=acc.drop_points if acc else None,
            snr_db=acc.errors[0].snr_db if acc and acc.errors else None, tflite_bytes=len(self.quantized),
            ratio=round(len(float_bytes) / len(self.quantized), 3), ram_bytes=mem.ram_needed,
            latency_ms=self.emulation.latency.part().total_ms, gate_passed=all(c.passed for c in self.checks))


def _search_train(search: SearchOptions | None, calibration: str | None) -> Dataset | None:
    """--search's training data for QAT, its last resort: --train, else a bundled set's train split, else none."""
    if search is None or search.train is None:
        return None
    spec = default_split_of(calibration, "train") if search.train == "auto" else search.train
    return load_dataset(spec, default_split="train") if spec else None


def _train_data(train: str | None, calibration: str | None) -> Dataset:
    spec = default_split_of(calibration, "train") if train == "auto" else train
    if not spec:
        raise CalibrationError("quantization-aware training needs training data with labels",
                               hint="pass --train SET (a bundled set such as 'digits', or your .npz with x and y)")
    return load_dataset(spec, default_split="train")


def _fold(model: Any, model_path: Path, sample: Dataset | None, on_step: Step) -> tuple[Any, tuple[str, ...]]:
    """Dense->BatchNormalization pairs folded into the Dense, verified on `sample` (1e-5)."""
    if model.keras_model is None or sample is None:
        return model, ()
    from edgeq.loading import from_keras_object
    from edgeq.quantize.fold import fold_dense_batchnorm

    result = fold_dense_batchnorm(model.keras_model, [x[:32] for x in sample.inputs])
    if not result.folded:
        return model, ()
    on_step(f"folded BatchNormalization into Dense: {', '.join(result.folded)} "
            f"(max output difference {result.max_abs_difference:.1e})")
    return from_keras_object(result.model, model_path, model.format), result.folded


FUSED_LSTM_TOLERANCE = 1e-3
"""Largest output difference, float model vs its float .tflite, accepted from the fused LSTM op."""


def _float_difference(float_tflite: bytes, source: ConverterSource, model: Any, sample: Dataset | None,
                      worker: Worker) -> float:
    """Max abs difference between the Keras model and its float32 .tflite, on up to 32 samples."""
    from edgeq.emulator.runtimes import run_litert
    from edgeq.iomap import from_graph_outputs, natural_output_names

    if sample is None:
        return 0.0
    xs = [x[:32] for x in sample.inputs]
    info = read_tflite(float_tflite)
    run = worker.call(run_litert, float_tflite, to_graph_inputs(xs, source.input_names, info), kernels="builtin")
    ours = from_graph_outputs(run.outputs, list(source.output_names) or natural_output_names(info), info)
    theirs = model.predict(xs)
    return max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(ours, theirs))


def _recurrent(model: Any, model_path: Path, mode: str, sample: Dataset | None, shapes: list[tuple[int, ...]],
               on_step: Step, *, unroll_lstm: bool = False) -> tuple[Any, list[dict[str, Any]]]:
    """LSTM, GRU and SimpleRNN layers rewritten into what converts for `mode` (quantize/recurrent.py)."""
    if model.keras_model is None or sample is None:
        return model, []
    from edgeq.loading import from_keras_object
    from edgeq.quantize.recurrent import prepare_recurrent

    rewritten, notes = prepare_recurrent(model.keras_model, mode, list(sample.inputs), shapes,
                                         unroll_lstm=unroll_lstm)
    for note in notes:
        on_step(f"recurrent layer '{note.layer}' ({note.kind}): {note.action}")
    if rewritten is model.keras_model:
        return model, notes
    return from_keras_object(rewritten, model_path, model.format), notes


def _qat(model: Any, model_path: Path, train: Dataset, settings: TrainSettings, on_step: Step,
         progress: Progress | None, shapes: list[tuple[int, ...]] | None = None, per_channel: bool = True
         ) -> tuple[Any, Any]:
    from edgeq.loading import from_keras_object
    from edgeq.quantize.qat import quantization_aware_train

    torch_model = SourceFormat.pytorch(getattr(model, "format", ""))
    on_step(f"{'PT2E ' if torch_model else ''}quantization-aware training on {train.num_samples} samples of {train.name} "
            f"(up to {settings.epochs} epochs, early stopping on validation loss)")
    state: dict[str, Any] = {"epoch": 0}

    def on_batch(index: int, per_epoch: int) -> None:  # one bar over every batch of every epoch
        if "bar" not in state:
            state["bar"], state["total"] = progress("training", settings.epochs * per_epoch), settings.epochs * per_epoch
        state["bar"](state["epoch"] * per_epoch + index + 1)

    def on_epoch(epoch: int, total: int, logs: dict[str, Any]) -> None:
        state["epoch"] = epoch + 1

    try:
        if torch_model:
            trained, result = model.qat_trained(shapes, train, settings, per_channel,
                                                on_batch=on_batch if progress else None)
        else:
            result = quantization_aware_train(model.keras_model, train, settings,
                                              on_epoch=on_epoch if progress else None,
                                              on_batch=on_batch if progress else None)
    except CalibrationError as exc:
        if exc.message.startswith(train.name):
            raise
        raise CalibrationError(f"training data '{train.name}': {exc.message}", hint=exc.hint) from exc
    if "bar" in state:
        state["bar"](state["total"])  # early stopping ends before the last batch
    best = (result.best_epoch or result.epochs_run) - 1
    kept = {k: v[best] for k, v in result.history.items() if len(v) > best}
    on_step(f"trained {result.epochs_run} epoch(s){' (stopped early)' if result.stopped_early else ''}; "
            f"kept epoch {best + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(kept.items()))
            + f"; loss {result.loss}, {result.loss_source.split(':')[0]}")
    if torch_model:
        return trained, result
    return from_keras_object(result.model, model_path, model.format), result


def _emulated(model: Any, method: str, *, recipe: Recipe, data: Dataset | None, name: str, profile: TargetProfile,
              eval_data: Dataset | None, reference: list[Any] | None, max_drop: float, per_layer: bool,
              on_step: Step, progress: Progress | None, runtimes: Worker,
              shapes: list[tuple[int, ...]]) -> _Candidate:
    from edgeq.quantize.ptq import quantize

    used = min(recipe.calibration_samples, data.num_samples) if data else 0
    on_step(f"{method.upper()}: converting to {recipe.mode}"
            + (f", calibrating on {used} samples of {data.name}" if data else ""))
    if SourceFormat.pytorch(getattr(model, "format", "")):  # PT2E (frontends/torch.py)
        assert data is not None
        quantized = model.quantized(shapes, data, recipe.calibration_samples, recipe.per_channel,
                                    progress("calibrating", used) if progress else None)
        return measured_model(quantized, model, method=method, recipe=recipe, data=data, name=name, profile=profile,
                              eval_data=eval_data, reference=reference, max_drop=max_drop, per_layer=None,
                              on_step=on_step, progress=progress, runtimes=runtimes)
    source = model.converter_source(shapes)
    quantized = quantize(source, recipe, data, progress("calibrating", used) if progress and data else None)
    return measured_model(quantized, source, method=method, recipe=recipe, data=data, name=name, profile=profile,
                          eval_data=eval_data, reference=reference, max_drop=max_drop,
                          per_layer=(lambda info: _per_layer(source, info, recipe, data, eval_data, on_step))
                          if per_layer and method == "ptq" else None,
                          on_step=on_step, progress=progress, runtimes=runtimes)


def measured_model(quantized: bytes, names: Any, *, method: str, recipe: Recipe, data: Dataset | None, name: str,
                   profile: TargetProfile, eval_data: Dataset | None, reference: list[Any] | None, max_drop: float,
                   per_layer: Callable[[ModelInfo], tuple[list[LayerError], str]] | None, on_step: Step,
                   progress: Progress | None, runtimes: Worker) -> _Candidate:
    """A quantized model measured as convert measures it (stripped for TFLM, emulated, checked); no
    TensorFlow needed: `names` only gives the graph's input and output names (a ConverterSource, or
    anything with `input_names` and `output_names`), and `reference` the float model's outputs."""
    info = read_tflite(quantized, source=f"{name}.tflite")
    sidecar = plan_record = None
    if profile.runtime.micro:  # the device gets the model without the strings TFLM never reads
        quantized, info, sidecar, plan_record = _stripped(quantized, info, names, data or eval_data, runtimes,
                                                          profile)
    # No host timing here: convert's report must be byte-identical between runs (`edgeq emulate` times it).
    checks, emulation = emulate_and_check(
        quantized, info, profile, CheckInput(info, profile, recipe.mode, recipe.input_dtype, recipe.output_dtype,
                                             max_accuracy_drop=max_drop, fitting_targets=fitting_targets,
                                             model=quantized,
                                             pytorch=SourceFormat.pytorch(getattr(names, "format", ""))),
        data=eval_data, reference=reference, host_latency=False, on_step=on_step, progress=progress,
        per_layer=(lambda: per_layer(info)) if per_layer else None,
        per_layer_note=("per-layer error is measured for PTQ: TFLite's QuantizationDebugger needs the float model, "
                        "and a QAT model carries fake-quant ranges of its own") if method == "qat" else "",
        worker=runtimes, output_names=names.output_names)
    return _Candidate(quantized, info, checks, emulation, sidecar, plan_record)


def _stripped(model: bytes, info: ModelInfo, source: ConverterSource, sample: Dataset | None,
              worker: Worker, profile: TargetProfile
              ) -> tuple[bytes, ModelInfo, dict[str, Any], ArenaPlanPart | None]:
    """The model without names, signatures and metadata, its info with the names put back, its names
    sidecar and the arena plan's record. The lean form (no bias scales, one zero point for all-zero per-channel ones)
    where it gives TFLM's outputs bit for bit on up to 32 samples; otherwise only the strings go."""
    from edgeq.tflite.strip import strip_for_device, with_names

    inputs = None if sample is None else to_graph_inputs([x[:32] for x in sample.inputs], source.input_names, info)
    # The leaner form first, where TFLM can vouch for it; unchecked, only the names go.
    for lean in ((True, False) if inputs is not None else (False,)):
        stripped, sidecar = strip_for_device(model, info, lean=lean)
        same = True if inputs is None else _identical_in_tflm(worker, model, stripped, inputs)
        if same is None:  # TFLM cannot run the model at all; the checks will say why
            stripped, sidecar = strip_for_device(model, info, lean=False)
            same = True
        if same:
            stripped, record = _with_arena_plan(stripped, read_tflite(stripped, source=info.source), inputs, worker,
                                                profile)
            if record is not None:
                sidecar["arena_plan"] = record.to_dict()
                if record.kept:
                    sidecar["model_sha256"] = hashlib.sha256(stripped).hexdigest()
            return stripped, with_names(read_tflite(stripped, source=info.source), sidecar), sidecar, record
    raise ConversionError(f"{info.source}: without its names the model gives other outputs in TFLM",
                          hint="report this model; its names should not matter to TFLM")


def _with_arena_plan(model: bytes, info: ModelInfo, inputs: list[Any] | None, worker: Worker,
                     profile: TargetProfile) -> tuple[bytes, ArenaPlanPart | None]:
    """`model` with edgeq's arena plan (TFLM's OfflineMemoryAllocation), where TFLM's smallest arena
    then shrinks by a larger share of the target's RAM than the plan takes of its flash, and the
    outputs stay bit for bit; and the record of what was tried (None: nothing was)."""
    from edgeq.emulator.memory import measure_tflm_arena, recorded_arena
    from edgeq.tflite.arena_plan import with_plan

    planned = None if inputs is None else with_plan(model, info)
    if planned is None:
        return model, None
    candidate, plan = planned
    extra_flash = len(candidate) - len(model)
    memory = profile.memory
    # RAM bytes worth one byte of flash on this target (4 on the mcu profile); 1 if it does not say.
    worth = memory.ram_bytes / memory.flash_bytes if memory.ram_bytes and memory.flash_bytes else 1.0
    try:
        head, planned_head = (recorded_arena(m, source=info.source)[1] for m in (model, candidate))
        tried = dict(tflm_head_bytes=head, planned_head_bytes=planned_head, lower_bound_bytes=plan.lower_bound,
                     order=plan.order, extra_flash_bytes=extra_flash)
        if head - planned_head <= extra_flash * worth:  # the arena can shrink by no more than the head
            return model, ArenaPlanPart(kept=False, **tried)
        smallest, planned_smallest = (measure_tflm_arena(m, source=info.source).smallest for m in (model, candidate))
    except TargetCheckError:  # TFLM cannot run it; the checks will say why
        return model, None
    kept = (smallest - planned_smallest > extra_flash * worth
            and _identical_in_tflm(worker, model, candidate, inputs) is True)
    record = ArenaPlanPart(kept=kept, arena_bytes=smallest, planned_arena_bytes=planned_smallest, **tried)
    return (candidate if kept else model), record


def _identical_in_tflm(worker: Worker, model: bytes, stripped: bytes, inputs: list[Any]) -> bool | None:
    """Whether both give TFLM's outputs bit for bit; None when TFLM cannot run even `model`."""
    from edgeq.emulator.runtimes import tflm_outputs_identical

    try:
        return bool(worker.call(tflm_outputs_identical, model, stripped, inputs))
    except ChildCrashed:
        return None
    except (RuntimeError, ValueError):  # TFLM refused one of them: this form will not do, unless it
        try:                            # refuses the model itself (an op it lacks: the checks say so)
            worker.call(tflm_outputs_identical, model, model, inputs)
        except (ChildCrashed, RuntimeError, ValueError):
            return None
        return False


def emulate_and_check(model: bytes, info: ModelInfo, profile: TargetProfile, check_input: CheckInput, *,
                      data: Dataset | None, reference: list[Any] | None, host_latency: bool, on_step: Step,
                      progress: Progress | None,
                      per_layer: Callable[[], tuple[list[LayerError], str]] | None = None,
                      per_layer_note: str = "", worker: Worker | None = None,
                      output_names: Sequence[str] | None = None) -> tuple[list[CheckResult], Emulation]:
    """Static checks, then the emulator (TFLM only if they allow it), then every check again.

    `per_layer`: what gives the worst layers and a note on them, run after the emulator; without
    it, `per_layer_note` says why there are none."""
    from edgeq.emulator.emulate import emulate

    static = {c.name: c for c in run_checks(check_input)}
    runnable = all(static[n].passed for n in (CheckName.MODE, CheckName.OPS, CheckName.KERNELS))
    emulation = emulate(model, info, profile, data=data, reference=reference, can_run_tflm=runnable,
                        host_latency=host_latency, on_step=on_step, worker=worker, output_names=output_names,
                        **({"progress": progress} if progress else {}))
    layers, note = per_layer() if per_layer else ([], per_layer_note)
    emulation = replace(emulation, per_layer=layers, per_layer_note=note)
    checks = run_checks(replace(check_input, memory=emulation.memory, accuracy=emulation.accuracy))
    return checks, emulation


class GateError(TargetCheckError):
    """A check failed (exit 3). Carries the result, so callers can still show what was measured."""

    def __init__(self, checks: list[CheckResult], profile: TargetProfile, result: Any, where: str = "",
                 hint: str = "--force writes the outputs anyway and marks the report") -> None:
        failed = [c for c in checks if not c.passed]
        lines = "\n".join(f"  - {c.name}: {c.message}" + (f"\n    try: {c.hint}" if c.hint else "") for c in failed)
        super().__init__(f"the model does not pass the checks for target '{profile.name}':\n{lines}"
                         + (f"\n{where}" if where else ""), hint=hint)
        self.result = result


def _per_layer(source: ConverterSource, info: ModelInfo, recipe: Recipe, calibration: Dataset | None,
               eval_data: Dataset | None, on_step: Step) -> tuple[list[LayerError], str]:
    """The worst layers by TFLite's QuantizationDebugger (integer modes with calibration data only),
    and a note on them."""
    if recipe.mode != "int8" or calibration is None:
        return [], f"per-layer error needs an int8 model with calibration data (mode {recipe.mode})"
    from edgeq.emulator.accuracy import per_layer_errors_of

    debug = eval_data or calibration
    on_step(f"per-layer error: TFLite QuantizationDebugger on {min(64, debug.num_samples)} samples of {debug.name}")
    try:
        layers = per_layer_errors_of(source, recipe, calibration,
                                     to_graph_inputs(list(debug.inputs), source.input_names, info), samples=64)
    except Exception as exc:  # diagnostic only (and on the debugger's private API): never fail a convert
        return [], f"TFLite's QuantizationDebugger failed: {type(exc).__name__}: {str(exc)[:200]}"
    # Ops that only move int8 values (RESHAPE, MAX_POOL_2D) show float round-off, not quantization error.
    worst = [layer for layer in layers if layer.rmse_over_scale > 1e-3][:8]
    return worst, (f"{len(layers)} quantized layers compared on {min(64, debug.num_samples)} samples of "
                   f"{debug.name}; the {len(worst)} worst shown")


def _render_reports(report: ConvertReport | EmulateReport) -> dict[str, bytes]:
    return {"report.json": render_json(report), "report.md": render_markdown(report), "report.png": render_png(report)}


def _layout(plan: _Plan, model: Any = None) -> str | None:
    """How the C header and the report describe a 4-D input: as the PyTorch or ONNX model takes it,
    or channels last where edgeq moved them (fewer ops), or nothing where a Keras model says it."""
    if plan.torch and getattr(model, "device_layout", "") == Layout.NHWC:
        saved = getattr(model, "saved_ops", 0)
        return (f"NHWC: edgeq moved the PyTorch model's channels last ({saved} op{'s' if saved != 1 else ''} fewer "
                "than NCHW); feed H x W x C bytes (NCHW data transposed)")
    if plan.torch:
        return "NCHW, as the PyTorch model takes it"
    if plan.onnx and getattr(model, "device_layout", "") == Layout.NHWC:
        return ("NHWC: onnx2tf moved the ONNX model's channels last (only convolutions read the input, so no "
                "TRANSPOSE); feed H x W x C bytes (NCHW data transposed)")
    if plan.onnx:
        return "NCHW, as the ONNX model takes it"  # ONNX's Conv is channels-first
    return None


def _report(model: Any, model_path: Path, profile: TargetProfile, recipe: Recipe, data: Dataset | None,
            used: int, float_bytes: bytes, chosen: _Candidate, gate: Gate, emulation: Emulation,
            files: dict[str, bytes], shapes: list[tuple[int, ...]], how: dict[str, Any],
            layout: str | None = None) -> ConvertReport:
    """report.json, built once from every stage's facts. `how`: the method and what the stages
    changed on the way (folded BatchNorm, recurrent rewrites, QAT's training, the PTQ/QAT
    comparison, the harness manifest)."""
    info = chosen.info
    file = getattr(model, "path", model_path)  # a torch factory's file is its state_dict
    source = SourceModel(str(model_path) if not model_path.exists() else model_path.name, model.format,
                         model.saved_by, sha256_path(file),
                         model.parameter_count,
                         [ModelInput(s.name, list(s.shape), s.dtype, [1, *shape])
                          for s, shape in zip(model.input_specs, shapes)],
                         converted_by=getattr(model, "converted_by", None),
                         input_layout=layout if any(len(shape) == 3 for shape in shapes) else None)
    return ConvertReport(
        **how, schema_version=SCHEMA_VERSION, versions=Versions.here(), input=source,
        calibration=None if data is None else CalibrationPart(data.name, data.sha256, data.num_samples, used),
        target=TargetPart.of(profile), recipe=recipe,
        sizes=Sizes(quantized_tflite_bytes=info.file_bytes, parameter_bytes=info.parameter_bytes,
                    float32_tflite_bytes=len(float_bytes), ratio=round(len(float_bytes) / info.file_bytes, 3),
                    names_stripped_bytes=(chosen.sidecar or {}).get("stripped_bytes", 0)),
        arena_plan=chosen.arena_plan, model=ModelPart.of(info), emulation=emulation.part(), checks=chosen.checks,
        gate=gate, outputs={n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())})


@dataclass
class EmulateResult:
    info: ModelInfo
    target: TargetProfile
    checks: list[CheckResult]
    emulation: Emulation
    gate: Gate
    report: EmulateReport = field(repr=False)
    files: list[Path] = field(default_factory=list)


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
        progress=progress,
        per_layer_note="per-layer error comes with `edgeq convert`, which has the converter and calibration data")
    gate = gate_summary(checks)
    reference_file = None if reference is None else Reference(Path(reference).name, sha256_path(Path(reference)))
    report = EmulateReport(
        schema_version=SCHEMA_VERSION, versions=Versions.here(),
        input=TfliteFile(tflite_path.name, "tflite", sha256_path(tflite_path), reference_file),
        target=TargetPart.of(profile), sizes=Sizes(info.file_bytes, info.parameter_bytes), model=ModelPart.of(info),
        emulation=emulation.part(), checks=checks, gate=gate)
    result = EmulateResult(info, profile, checks, emulation, gate, report)
    if report_dir is not None:
        on_step(f"writing the report to {report_dir}")
        result.files = write_files_atomically(Path(report_dir), _render_reports(report), overwrite=overwrite)
    if not gate.passed:
        where = f"the report is in {report_dir}/report.md" if report_dir is not None else ""
        raise GateError(checks, profile, result, where, hint="convert again with another mode, QAT or a bigger "
                                                             "target; `edgeq convert --help` shows the options")
    return result
