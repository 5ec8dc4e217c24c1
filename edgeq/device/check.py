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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeq.device.link import DeviceError, DeviceLink, LinkPart
from edgeq.device.protocol import DType, HelloReply, TimeUnit, WireTensor
from edgeq.device.tensors import describe, nbytes, pack, unpack, wire_tensors
from edgeq.errors import EdgeqError
from edgeq.progress import Advance, Progress, Step
from edgeq.records import Record
from edgeq.report_meta import SCHEMA_VERSION, Versions
from edgeq.vocab import DeviceVerdict, Layout

REPORT_FILES = ("report.json", "report.md")
DEFAULT_BAUD = 115200
MAX_RESETS = 3
FIRST_DIFFERENCES = 10



class WrongFirmwareError(EdgeqError):
    """The device runs another model, or one with other inputs/outputs (exit 2: the input is wrong)."""


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
class Difference(Record):
    """One sample whose output bytes differ from the emulator's: the first differing output, how many
    elements differ and by how much at most (in LSB for integer outputs)."""

    sample: int
    output: int
    elements: int
    max_difference: float


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
class DeviceLatency(Record):
    """The device's own timing of each answered inference (`unit`: us, cycles, or instructions on
    an emulated core)."""

    unit: str
    samples: int
    median: float
    p90: float
    max: float
    min: float
    mean: float


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


@dataclass
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


def open_port(port: str, baud: int) -> Any:
    """A pyserial port for a device path or URL (socket://host:port, rfc2217://...)."""
    import serial

    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=0.02, write_timeout=10)
    except (serial.SerialException, ValueError, OSError) as exc:
        raise EdgeqError(f"cannot open serial port {port}: {exc}",
                         hint="check the port name (ls /dev/ttyACM* /dev/ttyUSB*), that no other program (a serial "
                              "monitor) holds it, and that you may use it (the 'dialout' group); without a board, "
                              "`edgeq device-sim MODEL.tflite` prints a port to use") from exc


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
    from edgeq.emulator.runtimes import quantize_inputs
    from edgeq.export.atomic import check_output_dir, write_files_atomically
    from edgeq.tflite.facts import input_specs
    from edgeq.tflite.strip import read_tflite_named

    model_path = Path(model_path)
    model, info = read_tflite_named(model_path)
    sha = hashlib.sha256(model).digest()
    check_output_dir(Path(output_dir), list(REPORT_FILES), overwrite=overwrite)
    dataset = _in_device_layout(load_dataset(data, default_split="eval"), model_path, model, info, on_step)
    dataset = validate_for_model(dataset, input_specs(info), purpose="evaluation")
    n = dataset.num_samples if limit is None else min(limit, dataset.num_samples)
    inputs = [x[:n] for x in dataset.inputs]
    labels = None if dataset.labels is None else dataset.labels[:n]
    wire_in, wire_out = wire_tensors(info)

    # The device gets exactly the bytes the emulator quantizes the float samples to.
    quantized = [quantize_inputs(x, np.dtype(t.dtype), t.scales[0] if t.scales else 0.0,
                                 t.zero_points[0] if t.zero_points else 0) for x, t in zip(inputs, info.input_tensors)]
    payloads = [pack([q[i:i + 1] for q in quantized], wire_in) for i in range(n)]

    emulated = _emulated(model, model_path, inputs, f"{n} samples of {dataset.name}", on_step, progress)
    expected = emulated.raw_outputs or []

    on_step(f"opening {port} at {baud} baud")
    serial_port = port_factory(port, baud)
    try:
        link = DeviceLink(serial_port, infer_timeout=timeout)
        on_step("HELLO: asking the device which model it runs")
        hello = link.hello()
        _verify(hello, sha, wire_in, wire_out, model_path)
        if len(payloads[0]) > hello.max_payload:
            raise WrongFirmwareError(
                f"one sample is {len(payloads[0]):,} bytes but the device accepts INFER frames of at most "
                f"{hello.max_payload:,} bytes (protocol version 1 does not split samples)",
                hint=f"rebuild the harness with -DEDGEQ_MAX_PAYLOAD={len(payloads[0])} or more (at most 65535)")
        run = _stream(link, payloads, wire_out, sha, wire_in, model_path, max_resets, on_step,
                      progress("device", n) if progress else None)
    finally:
        try:
            serial_port.close()
        except Exception:  # noqa: BLE001 (closing a port that went away must not hide the real error)
            pass

    report = _report(model_path, model, dataset.name, dataset.sha256, port, baud, hello, run, expected, labels,
                     emulated.outputs, wire_out, n)
    files = {"report.json": render_json(report), "report.md": render_markdown(report).encode()}
    written = write_files_atomically(Path(output_dir), files, overwrite=overwrite)
    return DeviceCheckResult(report, report.verdict, written)


def _emulated(model: bytes, model_path: Path, inputs: list[np.ndarray], what: str, on_step: Step,
              progress: Progress | None) -> Any:
    """The emulator's answer first: TFLM on this host, in a child process (it must not take
    device-check down with it)."""
    from edgeq.emulator.runtimes import run_tflm
    from edgeq.isolation import ChildCrashed, shared_worker

    on_step(f"emulator: running {what} in TFLite Micro on this host")
    n = len(inputs[0])
    try:
        return shared_worker().call(run_tflm, model, inputs,
                                    on_progress=progress("emulator (TFLM)", n) if progress else None)
    except RuntimeError as exc:
        raise EdgeqError(f"{model_path}: the emulator could not run the model: {exc}",
                         hint="check the model with `edgeq emulate` first") from exc
    except ChildCrashed as crash:
        raise EdgeqError(f"{model_path}: TFLite Micro {crash.how} running the model on this host"
                         + crash.last_words(), hint="check the model with `edgeq emulate` first") from None


def _verify(hello: HelloReply, sha: bytes, wire_in: tuple[WireTensor, ...], wire_out: tuple[WireTensor, ...],
            model_path: Path) -> None:
    hint = (f"flash the firmware generated for this model (`edgeq firmware {model_path.name} -o DIR`), or pass "
            "--model the .tflite the firmware was generated from")
    if hello.model_sha256 != sha:
        raise WrongFirmwareError(f"wrong firmware: the device runs a model with SHA-256 {hello.model_sha256.hex()[:16]}…, "
                                 f"but {model_path.name} has {sha.hex()[:16]}…", hint=hint)
    for what, theirs, ours in (("input", hello.inputs, wire_in), ("output", hello.outputs, wire_out)):
        if len(theirs) != len(ours):
            raise WrongFirmwareError(f"wrong firmware: the device reports {len(theirs)} {what}(s), "
                                     f"{model_path.name} has {len(ours)}", hint=hint)
        for i, (a, b) in enumerate(zip(theirs, ours)):
            if (a.dtype, a.shape, a.zero_point) != (b.dtype, b.shape, b.zero_point) or \
                    np.float32(a.scale) != np.float32(b.scale):
                raise WrongFirmwareError(f"wrong firmware: the device's {what} {i} is {describe(a)}, "
                                         f"{model_path.name} has {describe(b)}", hint=hint)


@dataclass
class _Run:
    outputs: dict[int, list[np.ndarray]]
    times: dict[int, int]
    unit: int
    attempts: dict[int, int]
    resets: list[int]
    stopped: str | None
    stopped_at: int | None
    seconds: float
    link: LinkPart


def _stream(link: DeviceLink, payloads: list[bytes], wire_out: tuple[WireTensor, ...], sha: bytes,
            wire_in: tuple[WireTensor, ...], model_path: Path, max_resets: int, on_step: Step,
            advance: Advance | None) -> _Run:
    outputs: dict[int, list[np.ndarray]] = {}
    times: dict[int, int] = {}
    attempts: dict[int, int] = {}
    resets: list[int] = []
    unit = TimeUnit.MICROSECONDS
    stopped = stopped_at = None
    start = time.monotonic()
    for i, payload in enumerate(payloads):
        try:
            result = link.infer(payload, sample=i)
            if result.reset:
                resets.append(i)
                on_step(f"the device reset before answering sample {i} (its inference count started again); "
                        "checking it with HELLO")
                if len(resets) > max_resets:
                    raise DeviceError(f"the device reset {len(resets)} times (before samples "
                                      f"{', '.join(map(str, resets))}); stopping",
                                      hint="a device that keeps resetting is short of stack, arena or power")
                _verify(link.hello(), sha, wire_in, wire_out, model_path)
            decoded = unpack(result.reply.output, wire_out)
        except (DeviceError, WrongFirmwareError) as exc:
            stopped, stopped_at = exc.message, i
            on_step(f"stopped at sample {i}: {exc.message}")
            break
        except ValueError as exc:  # a reply of the wrong size: a firmware bug, not a line fault
            stopped, stopped_at = f"sample {i}: the device returned output of {exc}", i
            break
        outputs[i] = decoded
        times[i] = result.reply.time
        unit = result.reply.unit
        attempts[i] = result.attempts
        if advance:
            advance(i + 1)
    return _Run(outputs, times, unit, attempts, resets, stopped, stopped_at, time.monotonic() - start,
                link.stats.part())


# -- the report ---------------------------------------------------------------------------------


def _top1(scores: np.ndarray, labels: np.ndarray | None) -> float | None:
    from edgeq.emulator.accuracy import top1_accuracy

    return None if scores.shape[0] == 0 else top1_accuracy(scores, labels)


def _percent_value(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 4)


def _report(model_path: Path, model: bytes, data_name: str, data_sha: str, port: str, baud: int, hello: HelloReply,
            run: _Run, expected: list[np.ndarray], labels: np.ndarray | None, emulated: list[np.ndarray],
            wire_out: tuple[WireTensor, ...], n: int) -> DeviceReport:
    from edgeq.emulator.runtimes import dequantize

    done = sorted(run.outputs)
    differing = []
    for i in done:
        for k, (got, want) in enumerate(zip(run.outputs[i], expected)):
            want_i = want[i:i + 1].reshape(got.shape).astype(got.dtype)
            if got.tobytes() != want_i.tobytes():  # bytes, not values: NaN == NaN, -0.0 != +0.0
                wide = np.float64 if got.dtype.kind == "f" else np.int64
                diff = np.abs(got.astype(wide) - want_i.astype(wide))
                unequal = got.view(f"u{got.dtype.itemsize}") != want_i.view(f"u{got.dtype.itemsize}")
                finite = np.nan_to_num(diff, nan=0.0, posinf=0.0)
                differing.append(Difference(i, k, int(np.count_nonzero(unequal)), finite.max().item()))
                break
    device_scores = None
    if done:
        first = wire_out[0]
        raw = np.concatenate([run.outputs[i][0].reshape(1, *first.shape[1:]) for i in done])
        device_scores = dequantize(raw, first.scale, first.zero_point)
    done_labels = None if labels is None else labels[done]
    emulator_done = emulated[0][done] if done else None
    times = np.array([run.times[i] for i in done], dtype=np.float64)
    unit = TimeUnit(run.unit).label if run.unit in set(TimeUnit) else f"unit {run.unit}"
    latency = None if not done else DeviceLatency(
        unit, len(done), median=float(np.median(times)), p90=float(np.percentile(times, 90)), max=float(times.max()),
        min=float(times.min()), mean=round(float(times.mean()), 3))
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
