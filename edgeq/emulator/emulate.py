"""emulate(): a quantized model in the runtime its device uses, measured before anything is emitted.

Memory (flash, and the exact TFLM arena or LiteRT's peak activations), latency (MACs x the
target's cycle costs, plus LiteRT on this host) and, with data, accuracy against the float
model. The results feed the checks in edgeq/checks.py; nothing here decides pass or fail.

TFLM runs in this process only after the arena search ran the model in a child process:
an unsupported or malformed model must not take the caller down with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from edgeq.calibration import Dataset
from edgeq.emulator.accuracy import AccuracyMetrics, AccuracyPart, Evaluation, LayerError, LayerErrorPart, compare, evaluate
from edgeq.emulator.latency import (EmulatedBoardPart, HostLatency, HostLatencyPart, LatencyEstimate, LatencyPart,
                                    estimate_latency, measure_host_latency)
from edgeq.emulator.activations import peak_activation_memory
from edgeq.emulator.memory import ArenaMeasurement, measure_tflm_arena
from edgeq.emulator.memory_report import MemoryPart, MemoryReport
from edgeq.errors import EdgeqError, ModelLoadError, TargetCheckError
from edgeq.iomap import from_graph_outputs, natural_output_names, to_graph_inputs
from edgeq.isolation import ChildCrashed, Worker, shared_worker
from edgeq.targets import TargetProfile
from edgeq.tflite.facts import infer_mode
from edgeq.tflite.reader import ModelInfo
from edgeq.progress import Progress, Step, no_progress, no_step
from edgeq.records import Record
from edgeq.vocab import Runtime

OnBoard = Callable[[bytes, list[np.ndarray], Step], EmulatedBoardPart | None]
"""Runs a model's C on a board and measures it there (graph-ordered float inputs), or says why not
through the step callback and returns None."""


@dataclass(frozen=True)
class DataPart(Record):
    """A data set the model was evaluated on: its name, SHA-256, size and whether it has labels."""

    name: str
    sha256: str
    samples: int
    labels: bool

    @classmethod
    def of(cls, data: Dataset) -> DataPart:
        return cls(data.name, data.sha256, data.num_samples, data.labels is not None)


@dataclass(frozen=True)
class PerLayerPart(Record):
    """The layers where quantization loses most (worst first), and what was compared."""

    worst: list[LayerErrorPart]
    note: str


@dataclass(frozen=True)
class EmulationPart(Record):
    """What the emulator measured: memory, latency (estimated, and on this host), and with data,
    accuracy and the per-layer error."""

    mode: str
    runtime: Runtime
    data: DataPart | None
    accuracy: AccuracyPart | None
    per_layer: PerLayerPart
    memory: MemoryPart
    latency: LatencyPart
    host_latency: HostLatencyPart | None

@dataclass(frozen=True)
class Emulation:
    target: TargetProfile
    mode: str
    memory: MemoryReport
    latency: LatencyEstimate
    host: HostLatency | None = None
    data: DataPart | None = None      # the evaluation set's identity (not its arrays)
    evaluation: Evaluation | None = None
    accuracy: AccuracyMetrics | None = None
    per_layer: list[LayerError] = field(default_factory=list)
    per_layer_note: str = ""

    def part(self) -> EmulationPart:
        return EmulationPart(
            mode=self.mode, runtime=self.target.runtime, data=self.data,
            accuracy=None if self.accuracy is None else self.accuracy.part(self.evaluation),
            per_layer=PerLayerPart([e.part() for e in self.per_layer], self.per_layer_note),
            memory=self.memory.part(), latency=self.latency.part(),
            host_latency=None if self.host is None else self.host.part())


def _check_reference(reference: list[np.ndarray], quantized: list[np.ndarray], info: ModelInfo) -> None:
    ref = [tuple(r.shape[1:]) for r in reference]
    quant = [tuple(q.shape[1:]) for q in quantized]
    if ref != quant:
        raise ModelLoadError(f"the float reference model's outputs {ref} do not match the outputs of "
                             f"{info.source} {quant}",
                             hint="compare against the Keras model this .tflite was converted from")


def measure_memory(model: bytes, info: ModelInfo, target: TargetProfile, *, can_run_tflm: bool,
                   source: str) -> MemoryReport:
    m = target.memory
    common = dict(flash_model=len(model), flash_runtime=m.runtime_flash_bytes, flash_budget=m.flash_bytes,
                  reserved=m.reserved_ram_bytes, ram_budget=m.ram_bytes)
    if not target.runtime.micro:
        act = peak_activation_memory(info, alignment=m.tensor_alignment)
        return MemoryReport(ram_label="peak activations", ram_needed=act.peak_bytes, margin=m.arena_margin_bytes,
                            activations=act, **common)
    if not can_run_tflm:
        return MemoryReport(ram_label="arena", ram_needed=None, margin=m.arena_margin_bytes, attempted=False,
                            note="TFLM cannot run this model (see the failed checks)", **common)
    try:
        arena = measure_tflm_arena(model, source=source)
    except TargetCheckError as exc:
        return MemoryReport(ram_label="arena", ram_needed=None, margin=m.arena_margin_bytes, note=exc.message,
                            **common)
    if target.runtime == Runtime.C:  # TFLM's arena stays measured: the emulator runs the model in TFLM
        return _c_memory(model, info, arena, m.arena_margin_bytes, common)
    return MemoryReport(ram_label="arena", ram_needed=arena.smallest, margin=m.arena_margin_bytes, arena=arena,
                        **common)


def _c_memory(model: bytes, info: ModelInfo, arena: ArenaMeasurement, margin: int,
              common: dict[str, Any]) -> MemoryReport:
    """The c runtime's RAM: edgeq's static activation arena, planned at generation time."""
    from edgeq.aot.lower import lower

    try:
        planned = lower(model, info).arena_bytes
    except TargetCheckError as exc:
        return MemoryReport(ram_label="static arena", ram_needed=None, margin=margin, arena=arena, note=exc.message,
                            **common)
    return MemoryReport(ram_label="static arena", ram_needed=planned, margin=margin, arena=arena, **common)


def emulate(
    model: bytes,
    info: ModelInfo,
    target: TargetProfile,
    *,
    data: Dataset | None = None,
    reference: Sequence[np.ndarray] | None = None,
    can_run_tflm: bool = True,
    confirm_samples: int = 100,
    host_latency: bool = True,
    on_step: Step = no_step,
    progress: Progress = no_progress,
    worker: Worker | None = None,
    output_names: Sequence[str] | None = None,
    on_board: OnBoard | None = None,
) -> Emulation:
    """Measure `model` (already read back as `info`) for `target`; evaluate it on `data` if given.

    `reference`: the float model's outputs on `data` (one array per output), for accuracy drop
    and output error. `can_run_tflm`: False when static checks found ops or kernels TFLM lacks.
    The data's arrays are matched to the model's inputs by name (`data.input_names`, else the
    .tflite's own order), and the outputs to `reference` by `output_names` (default output_0,
    output_1, ... as edgeq's export names them). LiteRT and TFLM run in `worker`'s child
    process (this process's shared one by default), so a crash in a runtime cannot end the caller.
    `on_board`: for the c runtime, what runs the model's C on an (emulated) board and measures it
    there (edgeq.device.qemu.on_emulated_board); the emulator itself knows no board.
    """
    mode = infer_mode(info)
    if target.runtime.micro and can_run_tflm:
        on_step("measuring the exact tensor arena in TFLite Micro (each trial in a child process)")
    memory = measure_memory(model, info, target, can_run_tflm=can_run_tflm, source=info.source)
    tflm_ok = target.runtime.micro and memory.arena is not None
    measured = dict(target=target, mode=mode, memory=memory, latency=estimate_latency(info, target))
    if not host_latency and data is None:
        return Emulation(**measured)
    runner = worker or shared_worker()
    host = None
    if host_latency:
        try:
            host = runner.call(measure_host_latency, model)
        except (EdgeqError, ChildCrashed):
            host = None  # a diagnostic: LiteRT failures show up in the evaluation anyway
    if data is None:
        return Emulation(**measured, host=host)
    evaluation = _evaluation(model, info, target, data, tflm_ok, memory, confirm_samples, on_step, progress, runner)
    if on_board is not None and target.runtime == Runtime.C and tflm_ok and memory.ram_needed is not None:
        inputs = to_graph_inputs(list(data.inputs), data.input_names or info.input_names, info)
        measured["latency"] = replace(measured["latency"], emulated=on_board(model, inputs, on_step))
    outputs = output_names if output_names is not None else natural_output_names(info)
    quantized = from_graph_outputs(evaluation.result.outputs, outputs, info)
    if reference is not None:
        _check_reference(list(reference), quantized, info)
    accuracy = compare(None if reference is None else list(reference), quantized, data.labels,
                       inputs=np.asarray(data.inputs[0]) if len(data.inputs) == 1 else None, groups=data.groups)
    return Emulation(**measured, host=host, data=DataPart.of(data), evaluation=evaluation, accuracy=accuracy)


def _evaluation(model: bytes, info: ModelInfo, target: TargetProfile, data: Dataset, tflm_ok: bool,
                memory: MemoryReport, confirm_samples: int, on_step: Step, progress: Progress,
                runner: Worker) -> Evaluation:
    """`data` through the target's runtime (TFLM where it can run the model, else LiteRT), in `runner`."""
    runtime = Runtime.TFLM if tflm_ok else Runtime.LITERT
    note = "" if tflm_ok or not target.runtime.micro else " (TFLM cannot run it; LiteRT instead)"
    if tflm_ok and target.runtime == Runtime.C:
        note = " (the c runtime's outputs are TFLM's, byte for byte)"
    on_step(f"evaluating on {data.num_samples} samples of {data.name} in {runtime}{note}")
    arena = memory.firmware_arena if tflm_ok else None
    names = data.input_names or info.input_names
    try:
        return runner.call(
            evaluate, model, to_graph_inputs(list(data.inputs), names, info), runtime=runtime,
            confirm_samples=confirm_samples, arena_size=arena, on_progress=progress("evaluating", data.num_samples))
    except (RuntimeError, ValueError) as exc:
        raise TargetCheckError(f"{info.source}: {runtime} could not run the model on {data.name}: {exc}",
                               hint="check the model with `edgeq inspect`; EDGEQ_VERBOSE=1 shows the runtime's log")
    except ChildCrashed as crash:
        raise TargetCheckError(f"{info.source}: {'TFLite Micro' if runtime == 'tflm' else 'LiteRT'} {crash.how} "
                               f"running the model on {data.name}" + crash.last_words(),
                               hint="check the model with `edgeq inspect`; EDGEQ_VERBOSE=1 shows the runtime's "
                                    "log") from None
