"""The recipe search as `convert --search` runs it: the space made from the converter's own
conversions, each batch of candidates measured (here, in local processes or on Ray), the levers
offered when granularity alone does not keep the quality floor, and the chosen model held to that
floor. search.py chooses; this module measures, through what it is given: `measure_here` (a
candidate measured in this process, PTQ or QAT, as convert measures one) and the `Measurer`, whose
jobs run anywhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from edgeq.calibration import Dataset
from edgeq.checks import CheckResult
from edgeq.errors import ConversionError
from edgeq.measure import Candidate, Measured, Measurer
from edgeq.progress import Step
from edgeq.quantize.recipe import Recipe, recipe_for
from edgeq.quantize.search import Choice, Levers, Outcome, SearchPart, search
from edgeq.quantize.training import QATResult
from edgeq.targets import TargetProfile
from edgeq.vocab import CheckName

SEARCH_CALIBRATION_CAP = 1000  # the most calibration samples the search's calibration lever uses

MeasureHere = Callable[[Choice, Recipe, bool], tuple[Candidate, "QATResult | None"]]
"""(choice, its recipe, with per-layer error) -> the candidate measured here, and QAT's training record."""


@dataclass(frozen=True)
class SearchOptions:
    """--search: what the recipe search minimises and how much quality it may give up where there is
    no top-1 accuracy (the first output's SNR against the float model, in dB)."""

    objective: str = "ram"  # "ram", "flash" or "latency"
    max_snr_loss: float = 1.0
    min_snr: float | None = None  # an absolute floor (dB) in place of max_snr_loss
    exhaustive: bool = False  # every prefix of the order (`edgeq search`), not the bisection
    train: str | None = "auto"  # training data for QAT, the last resort ("auto": a bundled set's train split)
    train_settings: Any = None  # a TrainSettings (None: its defaults)
    workers: int | None = None  # candidates of a batch measured in this many local processes (None: one per
    # core; 1: here, one by one)
    ray: str | None = None  # a Ray cluster's address: candidates as Ray tasks instead


@dataclass(frozen=True)
class Searched:
    """What --search decided: the recipe, its record, how the chosen model was made, and that model
    (measured, and held to the search's floor)."""

    recipe: Recipe
    part: SearchPart
    written: Candidate
    method: str = "ptq"
    qat: QATResult | None = None  # QAT's training record, when QAT was chosen


class QualityFloor:
    """The least quality a candidate must keep where there is no top-1 accuracy or AUC: --min-snr, or
    the converter's default candidate's SNR less --max-snr-loss, fixed by the first one measured."""

    def __init__(self, min_snr: float | None, max_snr_loss: float) -> None:
        self.value, self.max_snr_loss = min_snr, max_snr_loss

    def outcome(self, m: Measured) -> Outcome:
        """A candidate as the search sees it."""
        by_name = dict(m.checks)
        quality = _quality(m)
        accurate = by_name[CheckName.ACCURACY]
        if m.drop_points is None and m.auc_drop_points is None and quality is not None:
            if self.value is None:
                self.value = quality - self.max_snr_loss
            accurate = accurate and quality >= self.value
        fits = by_name[CheckName.FLASH] and by_name[CheckName.RAM]
        others = all(passed for name, passed in m.checks if name != CheckName.ACCURACY)
        return Outcome(passed=others and accurate, fits=fits, accurate=accurate, ram_bytes=m.ram_bytes,
                       flash_bytes=m.flash_bytes, quality=quality, latency_ms=m.latency_ms,
                       failed=tuple(name for name, passed in m.checks if not passed)
                       + (() if accurate or not by_name[CheckName.ACCURACY] else ("quality floor",)),
                       metric=_quality_name(m))


def search_recipe(source: Any, base: Recipe, profile: TargetProfile, settings: SearchOptions, *,
                  data: Dataset | None, debug_data: Dataset | None, measurer: Measurer, measure_here: MeasureHere,
                  can_train: bool, per_layer: bool, on_step: Step) -> Searched:
    """The cheapest recipe for `source` (a ConverterSource) on `profile` that passes, and its model;
    when none passes, the converter's default, held to the floor so that the gate says so."""
    from edgeq.quantize.granularity import weighted_layers
    from edgeq.quantize.ptq import quantize

    on_step("search: converting with per-channel and with per-tensor weights, to mix them layer by layer")
    default = quantize(source, base, data)  # the converter's own choice, which the levers start from too
    layers = weighted_layers(default, quantize(source, replace(base, per_channel=False), data), source.label)
    measured: dict[Choice, tuple[Candidate, QATResult | None]] = {}
    floor = QualityFloor(settings.min_snr, settings.max_snr_loss)
    executor = _executor(settings)

    def here(choice: Choice) -> Measured:
        measured[choice] = measure_here(choice, choice_recipe(base, profile, choice), False)
        return measured[choice][0].measured()

    def evaluate(choices: list[Choice]) -> list[Outcome]:
        remote = [c for c in choices if not c.qat] if executor is not None and len(choices) > 1 else []
        jobs = []
        for choice in remote:
            recipe = choice_recipe(base, profile, choice)
            jobs.append(measurer.job(quantize(source, recipe, data), source, recipe.mode, recipe.input_dtype,
                                     recipe.output_dtype))
        done = dict(zip(remote, executor.map(jobs))) if remote else {}
        return [floor.outcome(done[c] if c in done else here(c)) for c in choices]

    try:
        result = search(layers, evaluate, objective=settings.objective, exhaustive=settings.exhaustive,
                        levers=lambda: _levers(source, default, base, profile, data, debug_data, can_train, on_step),
                        width=executor.width if executor is not None else 1, on_step=on_step)
    finally:
        if executor is not None:
            executor.close()
    choice = result.chosen if result.chosen is not None else Choice()
    recipe = choice_recipe(base, profile, choice)
    if not choice.qat and (per_layer or choice not in measured):  # the chosen one here, with per-layer error
        written, trained = measure_here(choice, recipe, True)
    else:
        written, trained = measured[choice]
    return Searched(recipe, result.part, held_to_floor(written, floor, settings), "qat" if choice.qat else "ptq",
                    trained if choice.qat else None)


def held_to_floor(candidate: Candidate, floor: QualityFloor, settings: SearchOptions) -> Candidate:
    """The written candidate with the search's SNR floor in its accuracy check: with --min-snr, a model
    that misses the floor fails the gate (exit 3) even where the accuracy check had no labels to use."""
    judged = QualityFloor(floor.value, settings.max_snr_loss).outcome(candidate.measured())
    if "quality floor" not in judged.failed:
        return candidate
    where = "--min-snr" if settings.min_snr is not None else \
        f"the converter's default less --max-snr-loss {settings.max_snr_loss}"
    failed = CheckResult(CheckName.ACCURACY, False,
                         f"SNR {judged.quality:.2f} dB (first output against the float model) is below the search's "
                         f"floor of {floor.value:.2f} dB ({where})",
                         hint="relax --min-snr, or give the search training data (--train) for QAT")
    return replace(candidate, checks=[failed if c.name == CheckName.ACCURACY else c for c in candidate.checks])


def choice_recipe(base: Recipe, profile: TargetProfile, choice: Choice) -> Recipe:
    """The recipe a search choice stands for."""
    if choice.int16x8:
        return recipe_for(profile, "int16x8", have_calibration=True, calibration_samples=base.calibration_samples)
    recipe = base.with_per_tensor(choice.per_tensor).with_int16(choice.int16)
    return replace(recipe, calibration_samples=choice.calibration_samples) if choice.calibration_samples else recipe


def _levers(source: Any, default: bytes, base: Recipe, profile: TargetProfile, data: Dataset | None,
            debug_data: Dataset | None, can_train: bool, on_step: Step) -> Levers:
    """What the search may try when no weight granularity keeps the floor, for this model, data and
    target: more calibration samples, int16 activations (worst layers in int8 first), QAT."""
    from edgeq.emulator.accuracy import short_layer_name
    from edgeq.quantize.ptq import quantize, wide

    more = min(data.num_samples, SEARCH_CALIBRATION_CAP) if data is not None else 0
    int16: list[tuple[str, ...]] = []
    allowed = "int16x8" in profile.quantization.modes and data is not None
    if allowed:
        from edgeq.quantize.int16 import int16_layers

        on_step("search: converting in int16x8 too, for int16 activations layer by layer")
        try:
            wide_layers = int16_layers(default, quantize(source, wide(base), data), source.label)
        except ConversionError as exc:
            on_step(f"search: no int16 activations per layer ({exc.message})")
            wide_layers = []
        errors = _int8_errors(source, default, base, data, debug_data or data, on_step) if len(wide_layers) > 1 else {}
        # A layer's output stays int16 only if the layers it feeds take int16 too: each step of the
        # order is a layer (the coarsest int8 output first) with the layers it feeds.
        order = sorted(wide_layers, key=lambda l: (-errors.get(short_layer_name(l.output), 0.0), l.op_index))
        int16 = [tuple(dict.fromkeys((l.name, *l.feeds))) for l in order]
    return Levers(calibration_samples=more if more > min(base.calibration_samples, more) else 0, int16=int16,
                  int16x8=allowed, qat=can_train)


def _int8_errors(source: Any, default: bytes, base: Recipe, data: Dataset, debug: Dataset, on_step: Step
                 ) -> dict[str, float]:
    """How coarse int8 is for each layer's output (the int8 step over the median magnitude of its float
    values, from TFLite's QuantizationDebugger), by the layer output's short name."""
    from edgeq.iomap import to_graph_inputs
    from edgeq.quantize.debugger import per_layer_errors_of
    from edgeq.tflite.reader import read_tflite

    on_step(f"search: ordering layers by how coarse int8 is for their outputs (QuantizationDebugger, "
            f"{min(64, debug.num_samples)} samples)")
    info = read_tflite(default, source=source.label)
    try:
        rows = per_layer_errors_of(source, base, data, to_graph_inputs(list(debug.inputs), source.input_names, info),
                                   samples=64)
    except Exception:  # the debugger's private API: order by graph position instead
        return {}
    return {r.layer: r.step_over_median for r in rows if math.isfinite(r.step_over_median)}


def _executor(settings: SearchOptions) -> Any:
    """Where a batch of candidates is measured: a Ray cluster, a local pool, or (None) here."""
    from edgeq.quantize.jobs import LocalPool, RayCluster

    if settings.ray:
        return RayCluster(settings.ray)
    workers = settings.workers or os.cpu_count() or 1
    return LocalPool(workers) if workers > 1 else None


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
