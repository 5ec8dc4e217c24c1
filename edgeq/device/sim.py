"""`edgeq device-sim`: a virtual device on a pseudo-terminal, running the model in TFLite Micro.

It behaves like the generated harness firmware (edgeq/device/c/edgeq_device.c): the same frames,
error codes, inter-byte timeout and inference count, with TFLM's Python interpreter doing what
`Invoke()` does on the board. So `edgeq device-check` can be tried, and tested, over a real serial
port without hardware. Faults can be injected to see the host cope:

    drop@N[:K]   drop K bytes (default 3) from the middle of the reply to INFER number N
    crc@N        flip a bit of that reply's CRC
    slow@N[:S]   answer INFER number N only after S seconds (default 2)
    reset@N      reboot on INFER number N: no reply, a boot banner, the count starts again
    mute@N       stop answering anything from INFER number N on (a hung device)
    flip@N       flip a bit of the output, in a valid frame (a device that computes wrong answers)
    wrong-hash   answer HELLO with another model's hash (the wrong firmware)

N counts the INFER frames the device receives, from 0, resends included.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.device.protocol import (
    DEFAULT_MAX_PAYLOAD,
    INFER_REPLY_HEADER,
    INTER_BYTE_TIMEOUT,
    PROTOCOL_VERSION,
    BadCrc,
    BadLength,
    ErrorCode,
    ErrorFrame,
    Frame,
    FrameDecoder,
    FrameType,
    HelloReply,
    InferReply,
    TimeUnit,
    encode_frame,
)
from edgeq.device.tensors import nbytes, numpy_dtype, unpack, wire_tensors
from edgeq.errors import EdgeqError
from edgeq.tflite.reader import ModelInfo

BOOT_BANNER = b"\r\nedgeq-sim: boot\r\n"
REBOOT_SECONDS = 0.2
FAULT_KINDS = ("drop", "crc", "slow", "reset", "mute", "flip", "wrong-hash")
_DEFAULT_ARG = {"drop": 3.0, "slow": 2.0}


@dataclass(frozen=True)
class Fault:
    kind: str
    at: int | None = None     # the INFER frame it applies to (0-based); None for wrong-hash
    arg: float | None = None  # bytes dropped, or seconds of delay

    def __str__(self) -> str:
        text = self.kind if self.at is None else f"{self.kind}@{self.at}"
        return text if self.arg is None else f"{text}:{self.arg:g}"


def parse_fault(spec: str) -> Fault:
    """'crc@3', 'slow@5:1.5', 'wrong-hash' -> Fault; ValueError with the accepted syntax otherwise."""
    usage = ("faults: drop@N[:BYTES], crc@N, slow@N[:SECONDS], reset@N, mute@N, flip@N, wrong-hash "
             "(N = the INFER frame, counted from 0)")
    text = spec.strip().lower()
    head, _, arg_text = text.partition(":")
    kind, _, at_text = head.partition("@")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault '{spec}'; {usage}")
    if kind == "wrong-hash":
        if at_text or arg_text:
            raise ValueError(f"'wrong-hash' takes no position or argument; {usage}")
        return Fault(kind)
    if not at_text.isdigit():
        raise ValueError(f"fault '{spec}' needs the INFER frame it applies to, e.g. {kind}@3; {usage}")
    arg = None
    if arg_text:
        if kind not in _DEFAULT_ARG:
            raise ValueError(f"fault '{kind}' takes no argument; {usage}")
        try:
            arg = float(arg_text)
        except ValueError:
            raise ValueError(f"fault '{spec}': '{arg_text}' is not a number; {usage}") from None
        if arg < 0 or (kind == "drop" and (arg != int(arg) or arg < 1)):
            raise ValueError(f"fault '{spec}': {'a whole number of bytes' if kind == 'drop' else 'seconds'} "
                             f"above zero expected; {usage}")
    elif kind in _DEFAULT_ARG:
        arg = _DEFAULT_ARG[kind]
    return Fault(kind, int(at_text), arg)


class TflmModel:
    """The model in TFLM's interpreter, fed and read as raw bytes like the firmware's tensors."""

    def __init__(self, model: bytes, info: ModelInfo, arena_size: int, arena_needed: int | None = None) -> None:
        from edgeq._tf import captured_output
        from tflite_micro.python.tflite_micro import runtime

        self.inputs, self.outputs = wire_tensors(info)
        self.input_bytes = sum(nbytes(t) for t in self.inputs)
        self.output_bytes = sum(nbytes(t) for t in self.outputs)
        self.not_ready: str | None = None
        self._interp = None
        if arena_needed is not None and arena_size < arena_needed:
            # Not tried in this process: TFLM can crash, not fail, when the arena is a little short.
            self.not_ready = (f"AllocateTensors failed: the model needs a {arena_needed}-byte arena, "
                              f"this device has {arena_size} bytes")
            return
        try:
            with captured_output():
                self._interp = runtime.Interpreter.from_bytes(model, arena_size=arena_size)
        except (RuntimeError, ValueError) as exc:
            self.not_ready = f"AllocateTensors failed with a {arena_size}-byte arena: {exc}"

    def run(self, payload: bytes) -> tuple[bytes, int]:
        """Output bytes and the microseconds Invoke() took."""
        from edgeq._tf import captured_output

        assert self._interp is not None
        for i, array in enumerate(unpack(payload, self.inputs)):
            self._interp.set_input(array, i)
        with captured_output():
            start = time.perf_counter_ns()
            self._interp.invoke()
            elapsed = time.perf_counter_ns() - start
        out = b"".join(np.ascontiguousarray(self._interp.get_output(i), dtype=numpy_dtype(t.dtype)).tobytes()
                       for i, t in enumerate(self.outputs))
        return out, max(1, elapsed // 1000)


class SimDevice:
    """Serves the protocol on a file descriptor (a pty master) until `stop` is set."""

    def __init__(self, model: bytes, info: ModelInfo, *, arena_size: int, arena_used: int = 0,
                 arena_needed: int | None = None, faults: Sequence[Fault] = (),
                 max_payload: int = DEFAULT_MAX_PAYLOAD, log: Callable[[str], None] = lambda line: None) -> None:
        """`arena_needed`: the smallest arena that runs the model (measured in a child process); a
        smaller `arena_size` makes the device NOT_READY, as AllocateTensors failing does on a board."""
        self.runner = TflmModel(model, info, arena_size, arena_needed)
        self.sha256 = hashlib.sha256(model).digest()
        self.arena_size, self.arena_used = arena_size, arena_used
        self.faults = list(faults)
        self.max_payload = max_payload
        self.log = log
        self.decoder = FrameDecoder(max_payload)
        self.infer_seen = 0   # INFER frames received, resends included (fault positions count these)
        self.count = 0        # inferences since "boot", as the firmware counts them
        self.muted = False
        self.served = 0

    # -- the loop ---------------------------------------------------------------------------------

    def serve(self, fd: int, stop: threading.Event) -> None:
        last_byte = time.monotonic()
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            now = time.monotonic()
            if not ready:
                if self.decoder.in_frame and now - last_byte > INTER_BYTE_TIMEOUT:
                    self.decoder.reset()
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO while no one holds the other end open
                time.sleep(0.05)
                continue
            if self.decoder.in_frame and now - last_byte > INTER_BYTE_TIMEOUT:
                self.decoder.reset()
            last_byte = now
            for event in self.decoder.feed(data):
                if self.muted:
                    continue
                reply = self._answer(event, fd)
                if reply:
                    _write_all(fd, reply)
                last_byte = time.monotonic()  # answering may take long: the next bytes are not late

    def _answer(self, event: Frame | Exception, fd: int) -> bytes | None:
        if isinstance(event, BadCrc):
            return self._error(event.seq, ErrorCode.BAD_CRC, "bad CRC, frame dropped")
        if isinstance(event, BadLength):
            return self._error(0, ErrorCode.BAD_LENGTH, f"length above {self.max_payload}")
        assert isinstance(event, Frame)
        if event.version != PROTOCOL_VERSION:
            return self._error(event.seq, ErrorCode.BAD_VERSION, f"protocol version {PROTOCOL_VERSION} only")
        if event.type == FrameType.HELLO:
            if event.payload:  # strict v1 payloads, as edgeq_device.c
                return self._error(event.seq, ErrorCode.BAD_PAYLOAD,
                                   f"HELLO carries no payload, got {len(event.payload)} bytes")
            return self._hello(event.seq)
        if event.type == FrameType.INFER:
            return self._infer(event, fd)
        return self._error(event.seq, ErrorCode.UNKNOWN_TYPE, f"unknown frame type 0x{event.type:02x}")

    def _hello(self, seq: int) -> bytes:
        sha = self.sha256
        if any(f.kind == "wrong-hash" for f in self.faults):
            sha = hashlib.sha256(b"another model" + sha).digest()
        reply = HelloReply(sha, self.arena_size, self.arena_used, self.runner.inputs, self.runner.outputs,
                           max_payload=self.max_payload).build()
        if len(reply) > self.max_payload:  # as edgeq_device.c: a reply never exceeds the frame limit
            return self._error(seq, ErrorCode.BAD_PAYLOAD, f"the HELLO reply needs {len(reply)} bytes, "
                                                           f"EDGEQ_MAX_PAYLOAD is {self.max_payload}")
        return encode_frame(FrameType.HELLO_REPLY, seq, reply)

    def _infer(self, frame: Frame, fd: int) -> bytes | None:
        index = self.infer_seen
        self.infer_seen += 1
        faults = {f.kind: f for f in self.faults if f.at == index}
        if "mute" in faults:
            self.log(f"fault {faults['mute']}: no more answers")
            self.muted = True
            return None
        if "reset" in faults:
            self.log(f"fault {faults['reset']}: rebooting")
            self._reboot(fd)
            return None
        runner = self.runner
        if runner.not_ready:
            return self._error(frame.seq, ErrorCode.NOT_READY, runner.not_ready)
        if len(frame.payload) != runner.input_bytes:
            return self._error(frame.seq, ErrorCode.BAD_PAYLOAD,
                               f"INFER carries {len(frame.payload)} bytes, the model takes {runner.input_bytes}")
        if runner.output_bytes + INFER_REPLY_HEADER > self.max_payload:
            return self._error(frame.seq, ErrorCode.BAD_PAYLOAD, "the outputs do not fit one frame")
        try:
            output, micros = runner.run(frame.payload)
        except RuntimeError as exc:
            return self._error(frame.seq, ErrorCode.INVOKE_FAILED, f"Invoke() failed: {exc}")
        self.count = (self.count + 1) % 2**32
        self.served += 1
        if "flip" in faults:
            self.log(f"fault {faults['flip']}: flipping a bit of the output")
            output = bytes([output[0] ^ 0x01]) + output[1:]
        raw = bytearray(encode_frame(FrameType.INFER_REPLY, frame.seq,
                                     InferReply(min(micros, 2**32 - 1), TimeUnit.MICROSECONDS, self.count,
                                                output).build()))
        if "crc" in faults:
            self.log(f"fault {faults['crc']}: corrupting the reply's CRC")
            raw[-1] ^= 0x01
        if "drop" in faults:
            k = int(faults["drop"].arg or 3)
            middle = len(raw) // 2
            self.log(f"fault {faults['drop']}: dropping {k} bytes of the reply")
            del raw[middle:middle + k]
        if "slow" in faults:
            self.log(f"fault {faults['slow']}: answering after {faults['slow'].arg:g} s")
            time.sleep(faults["slow"].arg or 0.0)
        return bytes(raw)

    def _reboot(self, fd: int) -> None:
        time.sleep(REBOOT_SECONDS)
        while select.select([fd], [], [], 0)[0]:  # what arrived while booting is lost
            try:
                if not os.read(fd, 65536):
                    break
            except OSError:
                break
        self.decoder.reset()
        self.count = 0
        _write_all(fd, BOOT_BANNER)

    def _error(self, seq: int, code: ErrorCode, message: str) -> bytes:
        return encode_frame(FrameType.ERROR, seq, ErrorFrame(int(code), message).build())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [], 0.05)


@dataclass
class VirtualPort:
    """A pseudo-terminal pair: the device serves the master; `path` is the serial port to open."""

    master: int
    slave: int
    path: str

    @classmethod
    def open(cls) -> VirtualPort:
        import tty

        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
        return cls(master, slave, os.ttyname(slave))

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass(frozen=True)
class Serving:
    """A virtual board that is ready: the model it runs, the port to open (and its stable link),
    its arena and the faults it will inject."""

    model: Path
    port: str
    link: Path | None
    arena: int
    faults: tuple[Fault, ...]


def serve_model(model_path: Path, stop: threading.Event, *, faults: Sequence[str] = (), link_path: Path | None = None,
                arena: int | None = None, arena_margin: int = 1024, max_payload: int = DEFAULT_MAX_PAYLOAD,
                on_ready: Callable[[Serving], None] = lambda serving: None,
                log: Callable[[str], None] = lambda line: None) -> int:
    """Serve `model_path` as a virtual board on a new pseudo-terminal until `stop` is set; the
    number of inferences it served.

    Everything a user can get wrong is checked before the port opens (the fault specs, the model,
    TFLM's kernels, --link); then the arena is measured in a child process (default size: the
    smallest that runs + `arena_margin`, as `edgeq firmware` sizes it), and `on_ready` hears where
    the board is. `link_path`, a symlink to the port, is removed again when serving ends.
    """
    from edgeq.emulator.memory import measure_tflm_arena
    from edgeq.checks import require_tflm_kernels
    from edgeq.tflite.strip import read_flashed

    try:
        parsed = tuple(parse_fault(spec) for spec in faults)
    except ValueError as exc:
        raise EdgeqError(f"--fault: {exc}", hint="e.g. --fault crc@3 --fault reset@10") from None
    data, info = read_flashed(Path(model_path))  # what edgeq's firmware would carry for this file
    require_tflm_kernels(info)
    if link_path is not None and os.path.lexists(link_path) and not link_path.is_symlink():
        raise EdgeqError(f"--link {link_path} exists and is not a symlink; edgeq will not replace it",
                         hint="pass a new path, e.g. /tmp/edgeq-device")
    measured = measure_tflm_arena(data, source=str(model_path))
    size = arena if arena is not None else measured.smallest + arena_margin
    port = VirtualPort.open()
    try:
        device = SimDevice(data, info, arena_size=size, arena_used=measured.recorded_total,
                           arena_needed=measured.smallest, faults=parsed, max_payload=max_payload, log=log)
        if link_path is not None:
            if link_path.is_symlink():
                link_path.unlink()
            link_path.symlink_to(port.path)
        on_ready(Serving(Path(model_path), port.path, link_path, size, parsed))
        device.serve(port.master, stop)
    finally:
        port.close()
        if link_path is not None and link_path.is_symlink():
            link_path.unlink()
    return device.served
