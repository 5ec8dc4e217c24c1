"""The stages a conversion runs in its child process, between loading and emitting: the model
loaded and the data checked against it and put in its layout, then the candidates (PTQ, QAT, both,
or what the recipe search chose) quantized and measured."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from edgeq.calibration import Dataset, validate_for_model
from edgeq.emulator.emulate import Emulation
from edgeq.frontends.base import DataSets, Frontend, Shapes, fixed_specs, sample_shapes
from edgeq.measure import Candidate, Measurer, PerLayer
from edgeq.pipeline.plan import Plan
from edgeq.progress import Progress, Step
from edgeq.quantize.recipe import Recipe
from edgeq.quantize.search import Choice
from edgeq.quantize.search_driver import Searched, search_recipe
from edgeq.quantize.training import QATResult, TrainSettings

PURPOSES = ("calibration", "evaluation", "training")


def load_checked(plan: Plan, on_step: Step) -> tuple[Frontend, DataSets, Shapes]:
    """The model, loaded safely, and each data set checked against its inputs at the shapes the
    conversion will use, in the layout the device takes: (model, (calibration, evaluation,
    training), sample shapes)."""
    model = plan.model.load(weights=plan.weights, trust_model=plan.trust_model, data=plan.data or plan.eval_data,
                            on_step=on_step)
    sets = _validated((plan.data, plan.eval_data, plan.train_data), model.source_specs)
    data, eval_data, train_data = model.as_model_takes(sets, on_step)
    data = data or train_data  # QAT without --calibration: the converter's ranges come from training data
    shapes = sample_shapes(model.input_specs, str(model.identity.path), plan.input_shapes, data or eval_data, on_step)
    model, shapes, sets = model.for_device((data, eval_data, train_data), shapes, on_step)
    return model, _validated(sets, fixed_specs(model.input_specs, shapes)), shapes


def _validated(sets: DataSets, specs: Any) -> DataSets:
    return tuple(None if d is None else validate_for_model(d, specs, purpose=p) for d, p in zip(sets, PURPOSES))


@dataclass(frozen=True)
class Made:
    """The candidates a conversion measured, and the one it writes."""

    candidates: dict[str, Candidate]  # "ptq", "qat" (both with --compare)
    chosen: Candidate
    emulation: Emulation  # the chosen one's, with PTQ's per-layer error under --compare
    recipe: Recipe
    method: str  # "ptq" or "qat"
    qat: QATResult | None = None
    searched: Searched | None = None


def made(model: Frontend, plan: Plan, measurer: Measurer, sets: DataSets, shapes: Shapes, on_step: Step,
         progress: Progress) -> Made:
    """PTQ, QAT or both (--compare), each quantized, emulated and checked; with --search, what it chose."""
    data, eval_data, train_data = sets
    measure = _measuring(measurer, shapes, data, eval_data, plan.per_layer, on_step, progress)
    candidates: dict[str, Candidate] = {}
    searched = qat_result = None
    if plan.search is not None:
        settings = plan.search.train_settings or TrainSettings()

        def here(choice: Choice, recipe: Recipe, full: bool) -> tuple[Candidate, QATResult | None]:
            if not choice.qat:
                return measure(model, "ptq", recipe, full), None
            trained, record = model.qat(train_data, settings, shapes, True, on_step, progress)
            return measure(trained, "qat", recipe, False), record

        searched = search_recipe(model.converter_source(shapes), plan.recipe, plan.profile, plan.search, data=data,
                                 debug_data=eval_data, measurer=measurer, measure_here=here,
                                 can_train=train_data is not None and model.can_train, per_layer=plan.per_layer,
                                 on_step=on_step)
        candidates["ptq"] = searched.written
    elif not plan.qat or plan.compare:
        candidates["ptq"] = measure(model, "ptq", plan.recipe, True)
    if plan.qat:
        assert train_data is not None
        trained, qat_result = model.qat(train_data, plan.train_settings or TrainSettings(), shapes,
                                        plan.recipe.per_channel, on_step, progress)
        candidates["qat"] = measure(trained, "qat", plan.recipe, True)
    chosen = candidates["qat" if plan.qat else "ptq"]
    emulation = chosen.emulation
    if plan.compare and candidates["ptq"].emulation.per_layer:
        # The debugger needs the float model, so only PTQ has per-layer statistics: show where PTQ loses.
        ptq = candidates["ptq"].emulation
        emulation = replace(emulation, per_layer=ptq.per_layer, per_layer_note=(
            "per-layer error of the PTQ model (QuantizationDebugger needs the float model; QAT carries fake-quant "
            "ranges of its own): " + ptq.per_layer_note))
    if searched is not None:
        return Made(candidates, chosen, emulation, searched.recipe, searched.method, searched.qat, searched)
    return Made(candidates, chosen, emulation, plan.recipe, "qat" if plan.qat else "ptq", qat_result)


def _measuring(measurer: Measurer, shapes: Shapes, data: Dataset | None, eval_data: Dataset | None,
               per_layer: bool, on_step: Step, progress: Progress
               ) -> Callable[[Frontend, str, Recipe, bool], Candidate]:
    """How a candidate is made and measured here: quantized by its frontend, calibrating on `data`,
    then measured; `full`: with the per-layer error (PTQ through the TFLite converter only)."""

    def measure(model: Frontend, method: str, recipe: Recipe, full: bool) -> Candidate:
        used = min(recipe.calibration_samples, data.num_samples) if data else 0
        on_step(f"{method.upper()}: converting to {recipe.mode}"
                + (f", calibrating on {used} samples of {data.name}" if data else ""))
        quantized = model.quantize(recipe, data, shapes, progress("calibrating", used) if progress and data else None)
        source = model.converter_source(shapes)
        layers: PerLayer | None = None
        if full and per_layer and method == "ptq" and source is not None:
            layers = lambda info: per_layer_errors(source, info, recipe, data, eval_data, on_step)  # noqa: E731
        return measurer.measure(quantized.model, quantized.names, mode=recipe.mode, input_dtype=recipe.input_dtype,
                                output_dtype=recipe.output_dtype, method=method, per_layer=layers)

    return measure


LARGE_MODEL_PARAMETER_BYTES = 1_000_000
"""Above this many bytes of int8 parameters the per-layer debugger, which converts and calibrates the
model once more, does so on fewer samples (16 to compare, at most 32 to calibrate) and says so; with
no evaluation data (--no-eval) it does not run at all: it is an evaluation, and the slowest part of a
convert that asked for none."""


def per_layer_errors(source: Any, info: Any, recipe: Recipe, calibration: Dataset | None,
                     eval_data: Dataset | None, on_step: Step) -> tuple[list[Any], str]:
    """The worst layers by TFLite's QuantizationDebugger (integer modes with calibration data only),
    and a note on them."""
    if recipe.mode != "int8" or calibration is None:
        return [], f"per-layer error needs an int8 model with calibration data (mode {recipe.mode})"
    from edgeq.iomap import to_graph_inputs
    from edgeq.quantize.debugger import per_layer_errors_of

    debug = eval_data or calibration
    samples, estimate = 64, ""
    if info.parameter_bytes > LARGE_MODEL_PARAMETER_BYTES and eval_data is None:
        note = (f"per-layer error not measured: no evaluation data for a model with {info.parameter_bytes / 1e6:.1f} "
                "MB of parameters, where TFLite's debugger would convert and calibrate it once more; pass --eval "
                "DATA for it")
        on_step(note)
        return [], note
    if info.parameter_bytes > LARGE_MODEL_PARAMETER_BYTES:
        # The debugger converts and calibrates the model again: on a large model, fewer samples for both
        samples = 16
        recipe = replace(recipe, calibration_samples=min(recipe.calibration_samples, calibration.num_samples, 32))
        estimate = (f" (an estimate: the model has {info.parameter_bytes / 1e6:.1f} MB of parameters, so the debugger "
                    f"recalibrates on {recipe.calibration_samples} samples)")
    shown = min(samples, debug.num_samples)
    on_step(f"per-layer error: TFLite QuantizationDebugger on {shown} samples of {debug.name}{estimate}")
    try:
        layers = per_layer_errors_of(source, recipe, calibration,
                                     to_graph_inputs(list(debug.inputs), source.input_names, info), samples=samples)
    except Exception as exc:  # diagnostic only (and on the debugger's private API): never fail a convert
        return [], f"TFLite's QuantizationDebugger failed: {type(exc).__name__}: {str(exc)[:200]}"
    # Ops that only move int8 values (RESHAPE, MAX_POOL_2D) show float round-off, not quantization error.
    worst = [layer for layer in layers if layer.rmse_over_scale > 1e-3][:8]
    return worst, (f"{len(layers)} quantized layers compared on {shown} samples of {debug.name}{estimate}; "
                   f"the {len(worst)} worst shown")
