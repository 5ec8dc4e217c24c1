"""`edgeq device-check`: run a data set on the device, compare every output with the emulator.

The emulator's answer comes first (TFLite Micro on this host, the runtime the firmware uses), so
each device output is checked the moment it arrives. The device must say, in HELLO, that it runs
exactly this model (SHA-256 and tensor layout); samples are then sent one INFER at a time over
`DeviceLink`, which retries what a serial line loses. Nothing is reported as accuracy without the
number of samples it covers: a run that stops early says where, why, and how many are missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeq.device.link import DeviceError, LinkPart
from edgeq.device.protocol import DType, WireTensor
from edgeq.device.session import (DEFAULT_BAUD, MAX_RESETS, DeviceLatency, Difference, Session,
                                  open_port, run_session)
from edgeq.device.tensors import nbytes
from edgeq.errors import EdgeqError
from edgeq.progress import Progress, Step
from edgeq.records import Record
from edgeq.report_meta import SCHEMA_VERSION, Versions
from edgeq.vocab import DeviceVerdict, Layout

REPORT_FILES = ("report.json", "report.md")
FIRST_DIFFERENCES = 10



@dataclass(frozen=True)
class CheckedModel(Record):
    """The .tflite the device was checked against."""

    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class CheckedData(Record):
    """The samples sent: the data set's name and SHA-256, how many were requested, labels or not."""

    name: str
    sha256: str
    samples: int
    labels: bool


@dataclass(frozen=True)
class DeviceTensor(Record):
    """A tensor as the device described it in HELLO (bytes: null for a dtype the host cannot size)."""

    dtype: str
    shape: list[int]
    scale: float
    zero_point: int
    bytes: int | None


@dataclass(frozen=True)
class DevicePart(Record):
    """The device as it answered HELLO: where it is, its protocol and frame size, the model it runs,
    its arena (size, and bytes used if it says), its tensors."""

    port: str
    baud: int
    protocol_version: int
    max_payload: int
    model_sha256: str
    arena_size: int
    arena_used: int
    inputs: list[DeviceTensor]
    outputs: list[DeviceTensor]


@dataclass(frozen=True)
class RunPart(Record):
    """How the run went: samples requested, answered and missing; where and why it stopped; the
    samples before which the device reset; samples resent; wall-clock seconds; the link's counts."""

    requested: int
    completed: int
    missing: int
    stopped_at: int | None
    stopped_because: str | None
    resets_before_samples: list[int]
    resent_samples: list[int]
    seconds: float
    link: LinkPart


@dataclass(frozen=True)
class Agreement(Record):
    """Answered samples compared byte for byte with the emulator (TFLM on this host)."""

    compared: int
    bit_exact: int
    differing: int
    first_differing: list[Difference]
    reference: str


@dataclass(frozen=True)
class DeviceAccuracy(Record):
    """Top-1 in percent (not fractions) of the device and of the emulator on the answered samples,
    and of the emulator on all requested ones; the note says what a partial run covers."""

    samples: int
    device_top1: float | None
    emulator_top1: float | None
    emulator_top1_all_requested: float | None
    note: str | None


@dataclass(frozen=True)
class DeviceReport(Record):
    """report.json of `edgeq device-check`: the model and data, the device, how the run went, the
    byte-for-byte agreement with the emulator, accuracy and the device's latency."""

    schema_version: Literal[1]  # SCHEMA_VERSION
    command: Literal["device-check"]
    versions: Versions
    verdict: DeviceVerdict
    model: CheckedModel
    data: CheckedData
    device: DevicePart
    run: RunPart
    agreement: Agreement
    accuracy: DeviceAccuracy
    latency: DeviceLatency | None


@dataclass(frozen=True)
class DeviceCheckResult:
    report: DeviceReport
    verdict: DeviceVerdict
    written: list[Path]

    def failure(self) -> EdgeqError | None:
        """What a run that did not pass means for the caller, as the error to raise: DeviceError
        (exit 4) when samples are missing, TargetCheckError (exit 3) when outputs differ."""
        from edgeq.errors import TargetCheckError

        run, agree = self.report.run, self.report.agreement
        if self.verdict == DeviceVerdict.INCOMPLETE:
            return DeviceError(f"the run stopped at sample {run.stopped_at} with {run.missing} of {run.requested} "
                               f"samples missing: {run.stopped_because}"
                               + (f" (and {agree.differing} answered samples differ from the emulator)"
                                  if agree.differing else ""),
                               hint="the accuracy in the report covers only the answered samples; fix the link or "
                                    "the device and run again")
        if self.verdict == DeviceVerdict.MISMATCH:
            first = ", ".join(str(d.sample) for d in agree.first_differing[:5])
            return TargetCheckError(f"the device differs from the emulator on {agree.differing} of {agree.compared} "
                                    f"samples (first: {first})",
                                    hint="see report.md; optimized kernels (CMSIS-NN) are meant to be bit-exact with "
                                         "TFLM's reference kernels, so a difference points at the build or the port")
        return None


def _in_device_layout(dataset: Any, model_path: Path, model: bytes, info: Any, on_step: Step) -> Any:
    """NCHW data (as a PyTorch user has them) for a model that edgeq moved to channels last (its
    names sidecar says `source_layout`): transposed to the device's NHWC, said out loud."""
    import dataclasses

    from edgeq.tflite.strip import read_sidecar

    sidecar = read_sidecar(model_path, model) or {}
    if sidecar.get("source_layout") != Layout.NCHW:
        return dataset
    inputs, moved = [], []
    for k, (x, t) in enumerate(zip(dataset.inputs, info.input_tensors)):
        device = tuple(t.shape[1:])
        if x.ndim == 4 and tuple(x.shape[1:]) != device and (x.shape[2], x.shape[3], x.shape[1]) == device:
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
            moved.append(k)
        inputs.append(x)
    if moved:
        on_step(f"{dataset.name}: NCHW data for a model that takes NHWC on the device: transposed")
    return dataclasses.replace(dataset, inputs=tuple(inputs))


def device_check(port: str, model_path: Path, data: str, *, baud: int = DEFAULT_BAUD, limit: int | None = None,
                 output_dir: Path = Path("device-check"), overwrite: bool = False, timeout: float | None = None,
                 max_resets: int = MAX_RESETS, on_step: Step = lambda message: None,
                 progress: Progress | None = None, port_factory: Callable[[str, int], Any] = open_port,
                 ) -> DeviceCheckResult:
    """Run `data` (a bundled set or .npz; its eval split by default) on the device at `port`."""
    from edgeq.calibration import load_dataset, validate_for_model
    from edgeq.export.atomic import check_output_dir, write_files_atomically
    from edgeq.tflite.facts import input_specs
    from edgeq.tflite.strip import read_flashed

    model_path = Path(model_path)
    model, info = read_flashed(model_path)
    check_output_dir(Path(output_dir), list(REPORT_FILES), overwrite=overwrite)
    dataset = _in_device_layout(load_dataset(data, default_split="eval"), model_path, model, info, on_step)
    dataset = validate_for_model(dataset, input_specs(info), purpose="evaluation")
    n = dataset.num_samples if limit is None else min(limit, dataset.num_samples)
    labels = None if dataset.labels is None else dataset.labels[:n]
    session = run_session(port, model, info, model_path, [x[:n] for x in dataset.inputs],
                          f"{n} samples of {dataset.name}", baud=baud, timeout=timeout, max_resets=max_resets,
                          on_step=on_step, progress=progress, port_factory=port_factory)
    report = _report(model_path, model, dataset.name, dataset.sha256, port, baud, session, labels)
    files = {"report.json": render_json(report), "report.md": render_markdown(report).encode()}
    written = write_files_atomically(Path(output_dir), files, overwrite=overwrite)
    return DeviceCheckResult(report, report.verdict, written)


def _top1(scores: np.ndarray, labels: np.ndarray | None) -> float | None:
    from edgeq.emulator.accuracy import top1_accuracy

    return None if scores.shape[0] == 0 else top1_accuracy(scores, labels)


def _percent_value(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 4)


def _report(model_path: Path, model: bytes, data_name: str, data_sha: str, port: str, baud: int, session: Session,
            labels: np.ndarray | None) -> DeviceReport:
    from edgeq.emulator.runtimes import dequantize

    run, hello, wire_out, emulated, n = session.run, session.hello, session.wire_out, session.emulated, session.requested
    done = sorted(run.outputs)
    differing = session.differences()
    device_scores = None
    if done:
        first = wire_out[0]
        raw = np.concatenate([run.outputs[i][0].reshape(1, *first.shape[1:]) for i in done])
        device_scores = dequantize(raw, first.scale, first.zero_point)
    done_labels = None if labels is None else labels[done]
    emulator_done = emulated[0][done] if done else None
    latency = session.latency()
    missing = n - len(done)
    verdict = DeviceVerdict.INCOMPLETE if missing else (DeviceVerdict.MISMATCH if differing else DeviceVerdict.PASS)
    device_top1 = _percent_value(_top1(device_scores, done_labels)) if device_scores is not None else None
    emulator_top1 = _percent_value(_top1(emulator_done, done_labels)) if emulator_done is not None else None
    return DeviceReport(
        schema_version=SCHEMA_VERSION, command="device-check", versions=Versions.here(), verdict=verdict,
        model=CheckedModel(model_path.name, len(model), hashlib.sha256(model).hexdigest()),
        data=CheckedData(data_name, data_sha, n, labels is not None),
        device=DevicePart(port, baud, hello.protocol_version, hello.max_payload, hello.model_sha256.hex(),
                          hello.arena_size, hello.arena_used, [_tensor(t) for t in hello.inputs],
                          [_tensor(t) for t in hello.outputs]),
        run=RunPart(n, len(done), missing, run.stopped_at, run.stopped, run.resets,
                    sorted(i for i, a in run.attempts.items() if a > 1), round(run.seconds, 3), run.link),
        agreement=Agreement(len(done), len(done) - len(differing), len(differing), differing[:FIRST_DIFFERENCES],
                            "TFLite Micro interpreter on this host (edgeq's emulator)"),
        accuracy=DeviceAccuracy(len(done), device_top1, emulator_top1,
                                _percent_value(_top1(emulated[0][:n], labels)),
                                None if not missing else f"{missing} of {n} samples missing: accuracy covers the "
                                                         f"{len(done)} the device answered"),
        latency=latency)


def _tensor(t: WireTensor) -> DeviceTensor:
    known = t.dtype in DType._value2member_map_
    return DeviceTensor(DType(t.dtype).name.lower() if known else str(t.dtype), list(t.shape), t.scale, t.zero_point,
                        nbytes(t) if known else None)


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


def render_json(report: DeviceReport) -> bytes:
    return (json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def render_markdown(report: DeviceReport) -> str:
    run, agree, acc, lat, dev, model = (report.run, report.agreement, report.accuracy, report.latency, report.device,
                                        report.model)
    verdict = {"pass": "PASS: every sample bit-exact with the emulator",
               "mismatch": f"MISMATCH: {agree.differing} of {agree.compared} samples differ from the emulator",
               "incomplete": f"INCOMPLETE: {run.missing} of {run.requested} samples missing"}[report.verdict]
    lines = [f"# Device check: {model.file}", "", f"**{verdict}**", "",
             f"- model: `{model.file}`, {model.bytes:,} bytes, "
             f"sha256 `{model.sha256[:16]}…` (the device reported the same)",
             f"- data: {report.data.name}, {run.requested} samples",
             f"- device: {dev.port} at {dev.baud} baud; arena {dev.arena_size:,} B"
             + (f", {dev.arena_used:,} B used" if dev.arena_used else "")
             + f"; frames up to {dev.max_payload:,} B", "",
             "| | value |", "|---|---:|",
             f"| samples answered | {run.completed} of {run.requested} |",
             f"| bit-exact with the emulator (TFLM) | {agree.bit_exact} of {agree.compared} |",
             f"| top-1 on the device | {_fmt_pct(acc.device_top1)} |",
             f"| top-1 in the emulator, same samples | {_fmt_pct(acc.emulator_top1)} |"]
    if lat:
        lines += [f"| latency median / p90 / max ({lat.unit}) | {lat.median:,.0f} / {lat.p90:,.0f} / {lat.max:,.0f} |"]
    lines += [f"| requests resent | {run.link.resends} |", f"| device resets | {len(run.resets_before_samples)} |", ""]
    if acc.note:
        lines += [f"Note: {acc.note}.", ""]
    if run.stopped_because:
        lines += [f"The run stopped at sample {run.stopped_at}: {run.stopped_because}", ""]
    if agree.first_differing:
        lines += ["## First differing samples", "", "| sample | output | elements differing | max difference (LSB) |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {d.sample} | {d.output} | {d.elements} | {d.max_difference} |" for d in agree.first_differing]
        lines += [""]
    if run.link.events:
        lines += ["## Link events", ""] + [f"- {e}" for e in run.link.events] + [""]
    return "\n".join(lines)


def summary_lines(report: DeviceReport) -> list[str]:
    """What the terminal shows after a run."""
    run, agree, acc, lat = report.run, report.agreement, report.accuracy, report.latency
    out = [f"samples answered: {run.completed} of {run.requested}"
           + (f" (stopped at sample {run.stopped_at})" if run.missing else ""),
           f"bit-exact with the emulator: {agree.bit_exact} of {agree.compared}",
           f"top-1: device {_fmt_pct(acc.device_top1)}, emulator {_fmt_pct(acc.emulator_top1)}"
           + (f" (on the {acc.samples} answered samples; {run.missing} missing)" if run.missing else "")]
    if lat and lat.unit == "instructions":
        out.append(f"measured on the emulated core: median {lat.median:,.0f} instructions per inference, "
                   f"max {lat.max:,.0f} (deterministic: QEMU counts them)")
    elif lat:
        out.append(f"latency ({lat.unit}): median {lat.median:,.0f}, p90 {lat.p90:,.0f}, max {lat.max:,.0f}")
    if run.link.resends or run.resets_before_samples:
        out.append(f"link: {run.link.resends} resend(s), {run.link.timeouts} timeout(s), "
                   f"{run.link.bad_frames} damaged repl(ies), {len(run.resets_before_samples)} device reset(s)")
    for d in agree.first_differing[:3]:
        out.append(f"differs: sample {d.sample} output {d.output}: {d.elements} element(s), "
                   f"up to {d.max_difference} LSB")
    return out
