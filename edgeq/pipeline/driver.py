"""convert(): the driver. One line per stage, parent and child apart.

In the parent: plan (every input checked before a framework starts), then the work in a child
process (a native crash there ends the child, with a message, not the caller), then the files
written at once. In the child: load -> prepare -> quantize and measure -> gate -> emit -> report.
Each stage hands the next what it made; none reaches back. The gate decides what is emitted: a
model that fails a check gets its report (json, md, png) and nothing a firmware build could pick up.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeq.calibration import CalibrationWarning
from edgeq.checks import CheckResult, Gate, gate_summary
from edgeq.emulator.emulate import Emulation
from edgeq.errors import ConversionError
from edgeq.export.atomic import write_files_atomically
from edgeq.isolation import TENSORFLOW, ChildCrashed, Worker, shared_worker
from edgeq.measure import Measurer
from edgeq.pipeline.options import ConvertOptions, output_names
from edgeq.pipeline.outputs import convert_report, emitted, rendered_reports
from edgeq.pipeline.plan import Plan, plan_conversion
from edgeq.pipeline.results import ConvertResult, GateError
from edgeq.pipeline.stages import load_checked, made
from edgeq.progress import Advance, Progress, Step, no_step
from edgeq.report_types import ConvertReport, StageTime
from edgeq.targets import TargetProfile
from edgeq.tflite.reader import ModelInfo

CONVERTER_HINT = ("EDGEQ_VERBOSE=1 shows the converter's full log; try another --mode, or replace the layers "
                  "the log names")


def convert(model_path: str | Path, target: str | TargetProfile = "mcu", options: ConvertOptions | None = None, *,
            on_step: Step = no_step, progress: Progress | None = None, worker: Worker | None = None
            ) -> ConvertResult:
    """Quantize (PTQ, or QAT), emulate, check and (if the gate passes, or `options.force`) emit.

    Raises GateError (exit 3) after writing the reports when a check fails and `force` is off.
    Loading, converting and running the model happen in `worker`'s child process (by default
    this process's shared one), so that a native crash ends the child with a message, not the
    caller; this process checks the inputs first and writes the outputs last.
    """
    plan = plan_conversion(model_path, target, options or ConvertOptions())
    done = _run_isolated(worker or shared_worker(TENSORFLOW), plan, on_step, progress)
    return _written(plan, done, on_step)


@dataclass(frozen=True)
class Done:
    """What the child process hands back: every output file's bytes and what was measured."""

    files: dict[str, bytes]
    report: ConvertReport
    info: ModelInfo
    checks: list[CheckResult]
    emulation: Emulation
    gate: Gate
    float_bytes: int
    quantized_bytes: int


class _Clock:
    """Wall time and peak memory stage by stage (report.json's `timings`)."""

    def __init__(self) -> None:
        self.stages: list[StageTime] = []
        self._last = time.perf_counter()

    def done(self, stage: str) -> None:
        import resource

        now = time.perf_counter()
        peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        self.stages.append(StageTime(stage, round(now - self._last, 3), round(peak_kb / 1024, 1)))
        self._last = now


def _compute_with(plan: Plan, on_step: Step, progress: Progress, runtimes: Worker) -> Done:
    """The conversion as stages, in the child: load -> prepare (fold, recurrent, float32) -> quantize
    and measure (PTQ, QAT, the search) -> gate -> emit -> report; each stage's time and memory go
    into the report."""
    from edgeq.device.qemu import on_emulated_board

    clock = _Clock()
    model, (data, eval_data, train_data), shapes = load_checked(plan, on_step)
    clock.done("load the model and the data")
    reference = None
    if eval_data is not None:
        from edgeq.budget import batch_note

        batch = model.reference_batch(list(eval_data.inputs))
        on_step(f"float reference: the model on {eval_data.num_samples} samples of {eval_data.name}"
                f"{batch_note(batch)}")
        reference = model.predict(list(eval_data.inputs), batch)
        clock.done("float reference outputs")
    prepared = model.prepared(plan.recipe.mode, data or eval_data, shapes, on_step, runtimes)
    clock.done("prepare (fold, recurrent rewrites, float32 conversion)")
    measurer = Measurer(plan.profile, plan.name, data, eval_data, reference, plan.max_accuracy_drop, runtimes,
                        on_step, progress, on_emulated_board, prepared.model.accuracy_hint)
    chosen = made(prepared.model, plan, measurer, (data, eval_data, train_data), shapes, on_step, progress)
    clock.done("quantize, emulate and check" + (" (the search)" if plan.search is not None else ""))
    gate = gate_summary(chosen.chosen.checks, forced=plan.force)
    files, harness = emitted(plan, prepared.model, chosen, gate, on_step)
    clock.done("write the outputs" + (" and the harness firmware" if harness is not None else ""))
    report = convert_report(plan, prepared, chosen, data, shapes, gate, files, harness)
    report = dataclasses.replace(report, timings=clock.stages)
    files.update(rendered_reports(report))
    return Done(files, report, chosen.chosen.info, chosen.chosen.checks, chosen.emulation, gate,
                len(prepared.float_tflite or b""), len(chosen.chosen.quantized))


def _written(plan: Plan, done: Done, on_step: Step) -> ConvertResult:
    """The child's files written at once (a rejected model must not sit next to a report that
    rejects it, left by an earlier run); GateError when a check failed and --force is off."""
    out = plan.outdir
    on_step(f"writing {len(done.files)} files to {out}")
    stale = [n for n in output_names(plan.name, plan.profile, plan.harness) if n not in done.files]
    written = write_files_atomically(out, done.files, overwrite=plan.overwrite, remove=stale)
    result = ConvertResult(plan.name, out, written, plan.profile, plan.recipe, done.float_bytes,
                           done.quantized_bytes, done.info, done.checks, done.emulation, done.gate, done.report)
    if not done.gate.passed and not plan.force:
        where = f"no .tflite or C files written; the report is in {out}/report.md"
        if done.report.search is not None:
            where = f"{_search_summary(done.report.search)}\n{where}"
        raise GateError(done.checks, plan.profile, result, where)
    return result


def _search_summary(search: Any) -> str:
    """Why --search found nothing, its closest candidates, and what to relax."""
    accurate = [c for c in search.candidates if not {"quality floor", "accuracy"} & set(c.failed_checks)]
    fitting = [c for c in search.candidates if c.fits]
    near = ([accurate[-1]] if accurate else []) + ([fitting[0]] if fitting else []) or search.candidates[:1]
    rows = "; ".join(f"{c.label} (RAM {c.ram_bytes or 0:,} B, quality {c.quality}: fails "
                     f"{', '.join(c.failed_checks) or 'nothing'})" for c in near)
    return (f"--search tried {search.tried} recipes and none passes: {search.stopped_because}. Closest: {rows}. "
            "Relax: --max-snr-loss or --max-accuracy-drop (the floor), or a target with more RAM or flash")


class _Relay:
    """The child's steps, progress bars and warnings, relayed to the caller's callbacks as they happen;
    the last step named, for a crash's message."""

    def __init__(self, on_step: Step, progress: Progress | None) -> None:
        self.on_step, self.progress = on_step, progress
        self.last = "loading the model"
        self.bars: dict[int, Advance] = {}

    def step(self, message: str) -> None:
        self.last = message
        self.on_step(message)

    def bar(self, token: int, label: str, total: int) -> None:
        self.bars[token] = self.progress(label, total) if self.progress else (lambda done: None)

    def advance(self, token: int, done: int) -> None:
        self.bars.get(token, lambda done: None)(done)

    @staticmethod
    def warn(message: str) -> None:
        warnings.warn(message, CalibrationWarning, stacklevel=2)


def _run_isolated(worker: Worker, plan: Plan, on_step: Step, progress: Progress | None) -> Done:
    """`_compute(plan)` in the worker's child, its steps and progress bars relayed here; a native
    crash becomes a ConversionError that names the step it happened in."""
    relay = _Relay(on_step, progress)
    try:
        return worker.call(_compute, plan, isolate_runtimes=not worker.in_process,
                           callbacks={"step": relay.step, "bar": relay.bar, "advance": relay.advance,
                                      "warn": relay.warn})
    except ChildCrashed as crash:
        raise ConversionError(f"{plan.model_path}: the conversion {crash.how} while {relay.last}"
                              f"{crash.last_words()}", hint=CONVERTER_HINT) from None


def _compute(plan: Plan, *, isolate_runtimes: bool, step: Step, bar: Callable[[int, str, int], None],
             advance: Callable[[int, int], None], warn: Callable[[str], None]) -> Done:
    """The conversion itself, in the worker's child. Steps, progress and edgeq's warnings about the
    data go back to the caller as they happen."""
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
