"""A device-check session: the emulator's answer first (TFLite Micro on this host, in a child
process), then HELLO (the device must run exactly this model), then every sample as one INFER over
`DeviceLink`, which retries what a serial line loses. What the device answered comes back as
values; `edgeq device-check` (check.py) turns them into its report, and the emulated board
(qemu.py) into its measurement.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.device.link import DeviceError, DeviceLink, LinkPart
from edgeq.device.protocol import HelloReply, TimeUnit, WireTensor
from edgeq.device.tensors import describe, pack, unpack, wire_tensors
from edgeq.errors import EdgeqError
from edgeq.progress import Advance, Progress, Step
from edgeq.records import Record
from edgeq.tflite.reader import ModelInfo

DEFAULT_BAUD = 115200
MAX_RESETS = 3


class WrongFirmwareError(EdgeqError):
    """The device runs another model, or one with other inputs/outputs (exit 2: the input is wrong)."""


@dataclass(frozen=True)
class Difference(Record):
    """One sample whose output bytes differ from the emulator's: the first differing output, how many
    elements differ and by how much at most (in LSB for integer outputs)."""

    sample: int
    output: int
    elements: int
    max_difference: float


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
class Session:
    """What one run of samples gave: the device's HELLO, its answers, and the emulator's outputs for
    the same samples (raw, as the device sends them, and dequantized)."""

    hello: HelloReply
    run: Run
    expected: list[np.ndarray]
    emulated: list[np.ndarray]
    wire_out: tuple[WireTensor, ...]
    requested: int

    def differences(self) -> list[Difference]:
        """Each answered sample whose output bytes differ from the emulator's (its first differing output)."""
        differing = []
        for i in sorted(self.run.outputs):
            for k, (got, want) in enumerate(zip(self.run.outputs[i], self.expected)):
                want_i = want[i:i + 1].reshape(got.shape).astype(got.dtype)
                if got.tobytes() != want_i.tobytes():  # bytes, not values: NaN == NaN, -0.0 != +0.0
                    wide = np.float64 if got.dtype.kind == "f" else np.int64
                    diff = np.abs(got.astype(wide) - want_i.astype(wide))
                    unequal = got.view(f"u{got.dtype.itemsize}") != want_i.view(f"u{got.dtype.itemsize}")
                    finite = np.nan_to_num(diff, nan=0.0, posinf=0.0)
                    differing.append(Difference(i, k, int(np.count_nonzero(unequal)), finite.max().item()))
                    break
        return differing

    def latency(self) -> DeviceLatency | None:
        """The device's own timing of the answered samples."""
        done = sorted(self.run.outputs)
        if not done:
            return None
        times = np.array([self.run.times[i] for i in done], dtype=np.float64)
        unit = TimeUnit(self.run.unit).label if self.run.unit in set(TimeUnit) else f"unit {self.run.unit}"
        return DeviceLatency(unit, len(done), median=float(np.median(times)), p90=float(np.percentile(times, 90)),
                             max=float(times.max()), min=float(times.min()), mean=round(float(times.mean()), 3))


def run_session(port: str, model: bytes, info: ModelInfo, model_path: Path, inputs: list[np.ndarray], what: str, *,
                baud: int = DEFAULT_BAUD, timeout: float | None = None, max_resets: int = MAX_RESETS,
                on_step: Step = lambda message: None, progress: Progress | None = None,
                port_factory: Callable[[str, int], Any] | None = None) -> Session:
    """`inputs` (float arrays in the model's input order, one row per sample; `what` names them) on
    the device at `port`, each answer checked against the emulator's as it arrives."""
    from edgeq.emulator.runtimes import quantize_inputs

    sha = hashlib.sha256(model).digest()
    n = len(inputs[0])
    wire_in, wire_out = wire_tensors(info)
    # The device gets exactly the bytes the emulator quantizes the float samples to.
    quantized = [quantize_inputs(x, np.dtype(t.dtype), t.scales[0] if t.scales else 0.0,
                                 t.zero_points[0] if t.zero_points else 0) for x, t in zip(inputs, info.input_tensors)]
    payloads = [pack([q[i:i + 1] for q in quantized], wire_in) for i in range(n)]

    emulated = _emulated(model, model_path, inputs, what, on_step, progress)
    expected = emulated.raw_outputs or []

    on_step(f"opening {port} at {baud} baud")
    serial_port = (port_factory or open_port)(port, baud)
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
    return Session(hello, run, expected, emulated.outputs, wire_out, n)


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


@dataclass(frozen=True)
class Run:
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
            advance: Advance | None) -> Run:
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
    return Run(outputs, times, unit, attempts, resets, stopped, stopped_at, time.monotonic() - start,
                link.stats.part())
