"""Measuring one quantized model as `convert` measures it: stripped to what the device flashes,
emulated in the target's runtime, every check run. `Measurer` holds what stays the same for every
candidate of a conversion (target, data, the float reference, the runtimes' process); convert, the
recipe search and the search's jobs on other processes or machines all measure through it.
No TensorFlow here: a model's signature names come with it, and the float outputs are given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from edgeq.calibration import Dataset
from edgeq.checks import CheckInput, CheckResult, run_checks
from edgeq.emulator.accuracy import LayerError
from edgeq.emulator.emulate import Emulation, OnBoard
from edgeq.errors import ConversionError, TargetCheckError
from edgeq.iomap import to_graph_inputs
from edgeq.isolation import ChildCrashed, Worker
from edgeq.progress import Progress, Step, no_step
from edgeq.targets import TargetProfile, fitting_targets
from edgeq.tflite.arena_plan import ArenaPlanPart
from edgeq.tflite.reader import ModelInfo, read_tflite
from edgeq.vocab import CheckName

PerLayer = Callable[[ModelInfo], tuple[list[LayerError], str]]
"""The worst layers of a model and a note on them (TFLite's QuantizationDebugger, from the caller)."""

QAT_PER_LAYER_NOTE = ("per-layer error is measured for PTQ: TFLite's QuantizationDebugger needs the float model, "
                      "and a QAT model carries fake-quant ranges of its own")


class Names(Protocol):
    """Anything that gives a model's signature input and output names, in its order."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


@dataclass(frozen=True)
class Candidate:
    """One way of quantizing the model, emulated and checked (PTQ, QAT; both with --compare)."""

    quantized: bytes
    info: ModelInfo
    checks: list[CheckResult]
    emulation: Emulation
    sidecar: dict[str, Any] | None = None  # the names taken out of the flashed model (TFLM targets)
    arena_plan: ArenaPlanPart | None = None  # whether edgeq's arena plan was tried, and kept (TFLM targets)

    def measured(self) -> Measured:
        """What the search sees of it, as a job would hand it back."""
        acc, memory = self.emulation.accuracy, self.emulation.memory
        return Measured(tuple((c.name, c.passed) for c in self.checks), memory.ram_total, memory.flash_total,
                        acc.quantized_top1 if acc else None, acc.drop_points if acc else None,
                        acc.quantized_auc if acc else None, acc.auc_drop_points if acc else None,
                        acc.errors[0].snr_db if acc and acc.errors else None, self.emulation.latency.total_ms)


@dataclass(frozen=True)
class Measured:
    """A candidate as the search sees it: every check (name, passed), the RAM and flash totals, the accuracy."""

    checks: tuple[tuple[str, bool], ...]
    ram_bytes: int | None
    flash_bytes: int
    quantized_top1: float | None
    drop_points: float | None
    quantized_auc: float | None
    auc_drop_points: float | None
    snr_db: float | None
    latency_ms: float | None = None


@dataclass(frozen=True)
class Measurer:
    """Measures candidates for one target on one conversion's data."""

    profile: TargetProfile
    name: str  # the model's base name, for messages
    data: Dataset | None  # calibration data: 32 samples check that stripping changes no output
    eval_data: Dataset | None
    reference: list[Any] | None  # the float model's outputs on eval_data
    max_drop: float
    runtimes: Worker = field(repr=False)
    on_step: Step = no_step
    progress: Progress | None = None
    on_board: OnBoard | None = None  # the c runtime on an emulated board (device.qemu.on_emulated_board)
    accuracy_hint: str | None = None  # the frontend's own levers, for the accuracy check's hint

    def measure(self, quantized: bytes, names: Names, *, mode: str, input_dtype: str, output_dtype: str,
                method: str = "ptq", per_layer: PerLayer | None = None) -> Candidate:
        """`quantized` (made in `mode` with these I/O types) stripped for TFLM, emulated, checked."""
        profile = self.profile
        info = read_tflite(quantized, source=f"{self.name}.tflite")
        sidecar = plan_record = None
        if profile.runtime.micro:  # the device gets the model without the strings TFLM never reads
            quantized, info, sidecar, plan_record = _stripped(quantized, info, names, self.data or self.eval_data,
                                                              self.runtimes, profile)
        # No host timing here: convert's report must be byte-identical between runs (`edgeq emulate` times it).
        checks, emulation = emulate_and_check(
            quantized, info, profile, CheckInput(info, profile, mode, input_dtype, output_dtype,
                                                 max_accuracy_drop=self.max_drop, fitting_targets=fitting_targets,
                                                 model=quantized, accuracy_hint=self.accuracy_hint),
            data=self.eval_data, reference=self.reference, host_latency=False, on_step=self.on_step,
            progress=self.progress, per_layer=(lambda: per_layer(info)) if per_layer else None,
            per_layer_note=QAT_PER_LAYER_NOTE if method == "qat" else "", worker=self.runtimes,
            output_names=names.output_names, on_board=self.on_board)
        return Candidate(quantized, info, checks, emulation, sidecar, plan_record)

    def job(self, quantized: bytes, names: Names, mode: str, input_dtype: str, output_dtype: str) -> RecipeJob:
        """`quantized` as a job that measures it as `measure` would, anywhere (without progress bars)."""
        return RecipeJob(quantized, tuple(names.input_names), tuple(names.output_names), mode, input_dtype,
                         output_dtype, self.name, self.profile, self.data, self.eval_data, self.reference,
                         self.max_drop)


@dataclass(frozen=True)
class RecipeJob:
    """A candidate as a job: its quantized model and what measuring it needs, all as values (frozen
    dataclasses pickle as they are), so it runs in another process or on another machine."""

    model: bytes  # the candidate's .tflite
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    mode: str
    input_dtype: str
    output_dtype: str
    name: str
    profile: TargetProfile
    calibration: Dataset | None
    evaluation: Dataset | None
    reference: list[Any] | None  # the float model's outputs on `evaluation`
    max_accuracy_drop: float


def measure_job(job: RecipeJob) -> Measured:
    """One candidate, measured as convert measures a model (the function the executors map)."""
    from edgeq.device.qemu import on_emulated_board
    from edgeq.isolation import shared_worker

    measurer = Measurer(job.profile, job.name, job.calibration, job.evaluation, job.reference, job.max_accuracy_drop,
                        shared_worker(), on_board=on_emulated_board)
    return measurer.measure(job.model, job, mode=job.mode, input_dtype=job.input_dtype,
                            output_dtype=job.output_dtype).measured()


def _stripped(model: bytes, info: ModelInfo, source: Names, sample: Dataset | None,
              worker: Worker, profile: TargetProfile
              ) -> tuple[bytes, ModelInfo, dict[str, Any], ArenaPlanPart | None]:
    """The model without names, signatures and metadata, its info with the names put back, its names
    sidecar and the arena plan's record. The lean form (no bias scales, one zero point for all-zero per-channel ones)
    where it gives TFLM's outputs bit for bit on up to 32 samples; otherwise only the strings go."""
    from edgeq.tflite.strip import canonical, strip_for_device, with_names

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
            stripped = canonical(stripped)  # the bytes the written .tflite gives back (strip.read_flashed)
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
                      output_names: Sequence[str] | None = None, on_board: OnBoard | None = None
                      ) -> tuple[list[CheckResult], Emulation]:
    """Static checks, then the emulator (TFLM only if they allow it), then every check again.

    `per_layer`: what gives the worst layers and a note on them, run after the emulator; without
    it, `per_layer_note` says why there are none."""
    from edgeq.emulator.emulate import emulate

    static = {c.name: c for c in run_checks(check_input)}
    runnable = all(static[n].passed for n in (CheckName.MODE, CheckName.OPS, CheckName.KERNELS))
    emulation = emulate(model, info, profile, data=data, reference=reference, can_run_tflm=runnable,
                        host_latency=host_latency, on_step=on_step, worker=worker, output_names=output_names,
                        on_board=on_board, **({"progress": progress} if progress else {}))
    layers, note = per_layer() if per_layer else ([], per_layer_note)
    emulation = replace(emulation, per_layer=layers, per_layer_note=note)
    checks = run_checks(replace(check_input, memory=emulation.memory, accuracy=emulation.accuracy))
    return checks, emulation
