"""The host end of the device protocol: requests, replies, timeouts and bounded retries.

`DeviceLink` sends one request at a time and waits for the reply with the same seq, following
docs/protocol.md ("Timeouts and retries"). What can go wrong on a serial line is handled here and
counted in `LinkStats`: a reply that never comes, or comes damaged, is asked for again a bounded
number of times; a late reply to an earlier attempt is recognised by its seq and dropped; a device
that rebooted shows up as an inference count that went down. What cannot be retried (the device
says the model failed, or the link stays dead) becomes a `DeviceError` naming the sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from edgeq.device.protocol import (
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
    ProtocolError,
    encode_frame,
)
from edgeq.errors import EXIT_DEVICE, EdgeqError
from edgeq.records import Record

HELLO_TIMEOUT = 1.0
HELLO_ATTEMPTS = 5  # a board may still be booting (an Arduino resets when the port opens)
INFER_ATTEMPTS = 4  # the first try and 3 resends
MIN_INFER_TIMEOUT = 10.0
_READ_SLICE = 0.02  # seconds one read() may block; bounds how late a deadline is noticed
# Errors the device sends about the frame it received, not about the model: worth a resend.
_TRANSIENT = {ErrorCode.BAD_CRC, ErrorCode.BAD_LENGTH}


class Port(Protocol):
    """What DeviceLink needs from a port: pyserial's Serial (any URL) has all of it."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def reset_input_buffer(self) -> None: ...
    @property
    def in_waiting(self) -> int: ...


class DeviceError(EdgeqError):
    """The device or the link to it failed in a way retries did not fix. Exit code 4."""

    exit_code = EXIT_DEVICE


@dataclass
class LinkStats:
    requests: int = 0
    resends: int = 0
    timeouts: int = 0
    bad_frames: int = 0       # replies that failed their CRC or length check on the host
    device_errors: int = 0    # ERROR BAD_CRC / BAD_LENGTH frames: the device got our request damaged
    stale_replies: int = 0    # late replies to an earlier attempt, recognised by seq and dropped
    events: list[str] = field(default_factory=list)  # one line per problem, for the report

    def part(self) -> LinkPart:
        """What the report keeps: the counts, and the first 50 events."""
        return LinkPart(self.requests, self.resends, self.timeouts, self.bad_frames, self.device_errors,
                        self.stale_replies, self.events[:50])


@dataclass(frozen=True)
class LinkPart(Record):
    """How the serial link went: INFER requests sent, resent, timed out; replies damaged (bad CRC or
    length on the host), requests the device got damaged, late replies dropped; the first 50 events."""

    requests: int
    resends: int
    timeouts: int
    bad_frames: int
    device_errors: int
    stale_replies: int
    events: list[str]


@dataclass(frozen=True)
class InferResult:
    reply: InferReply
    attempts: int       # 1 when the first try was answered
    reset: bool         # the inference count went down since the previous reply: the device rebooted


class DeviceLink:
    """One device on one port. `hello()` first, then `infer()` per sample."""

    def __init__(self, port: Port, *, infer_timeout: float | None = None, hello_timeout: float = HELLO_TIMEOUT,
                 hello_attempts: int = HELLO_ATTEMPTS, infer_attempts: int = INFER_ATTEMPTS,
                 resend_pause: float = INTER_BYTE_TIMEOUT + 0.05) -> None:
        self.port = port
        self.port.timeout = _READ_SLICE
        self.infer_timeout = infer_timeout
        self.hello_timeout = hello_timeout
        self.hello_attempts = hello_attempts
        self.infer_attempts = infer_attempts
        self.resend_pause = resend_pause
        self.decoder = FrameDecoder(max_payload=0xFFFF)  # accept anything the u16 length allows
        self.stats = LinkStats()
        self.hello_reply: HelloReply | None = None
        self._seq = 0
        self._last_count: int | None = None

    # -- requests ---------------------------------------------------------------------------------

    def hello(self) -> HelloReply:
        """Ask the device what it runs. Raises DeviceError if it never answers sensibly."""
        frame, _ = self._request(FrameType.HELLO, b"", FrameType.HELLO_REPLY, timeout=self.hello_timeout,
                                 attempts=self.hello_attempts, what="HELLO")
        try:
            reply = HelloReply.parse(frame.payload)
        except ProtocolError as exc:
            raise DeviceError(f"the device's HELLO reply is malformed: {exc}",
                              hint="the firmware and this edgeq speak different protocol versions; regenerate "
                                   "the harness with `edgeq firmware` and reflash") from exc
        self.hello_reply = reply  # HELLO does not touch the inference count: a reset is still seen after it
        # Replies are at most the device's max payload: a false SOF then cannot hold the decoder long.
        self.decoder = FrameDecoder(max_payload=max(64, reply.max_payload))
        return reply

    def infer(self, payload: bytes, *, sample: int) -> InferResult:
        """Run one sample. Raises DeviceError (naming `sample`) when retries are exhausted."""
        if self.infer_timeout is not None:
            timeout = self.infer_timeout
        else:
            timeout = max(MIN_INFER_TIMEOUT, 1.0 + 2 * 10 * (len(payload) + 64) / max(self._baud(), 1))
        frame, attempts = self._request(FrameType.INFER, payload, FrameType.INFER_REPLY, timeout=timeout,
                                        attempts=self.infer_attempts, what=f"INFER for sample {sample}")
        try:
            reply = InferReply.parse(frame.payload)
        except ProtocolError as exc:
            raise DeviceError(f"sample {sample}: the device's INFER reply is malformed: {exc}",
                              hint="regenerate the harness with `edgeq firmware` and reflash") from exc
        reset = self._last_count is not None and _count_went_down(self._last_count, reply.count)
        self._last_count = reply.count
        return InferResult(reply, attempts, reset)

    # -- the exchange -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1  # 1..255: seq 0 is what the device uses when it cannot know
        return self._seq

    def _baud(self) -> int:
        return int(getattr(self.port, "baudrate", 115200) or 115200)

    def _request(self, frame_type: int, payload: bytes, expect: int, *, timeout: float, attempts: int,
                 what: str) -> tuple[Frame, int]:
        problems: list[str] = []
        sent: set[int] = set()  # every attempt's seq: INFER is idempotent, a reply to any of them will do
        self._flush()  # the host speaks first, so whatever is waiting now answers an earlier request
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self.stats.resends += 1
                time.sleep(self.resend_pause)  # lets the device's inter-byte timeout drop a partial frame
            seq = self._next_seq()
            sent.add(seq)
            self.stats.requests += 1
            self._write(encode_frame(frame_type, seq, payload, version=PROTOCOL_VERSION))
            outcome = self._await(sent, expect, timeout)
            if isinstance(outcome, Frame) and outcome.type == expect:
                return outcome, attempt
            if isinstance(outcome, Frame):  # an ERROR frame for this request
                error = _parse_error(outcome)
                if error.code not in _TRANSIENT:
                    raise DeviceError(f"{what}: the device answered ERROR {error.code_name}"
                                      + (f": {error.message}" if error.message else ""),
                                      hint=_error_hint(error.code))
                self.stats.device_errors += 1
                problem = f"the device received it damaged ({error.code_name})"
            else:
                problem = outcome
            problems.append(problem)
            self.stats.events.append(f"{what}, attempt {attempt}: {problem}")
        summary = "; ".join(f"attempt {i}: {p}" for i, p in enumerate(problems, 1))
        raise DeviceError(f"{what}: no valid reply after {attempts} attempts ({summary})",
                          hint="check the port, the baud rate (--baud) and the cable; a device that resets or "
                               "hangs on this sample may be out of stack or arena; a slow model needs a longer "
                               "--timeout")

    def _await(self, sent: set[int], expect: int, timeout: float) -> Frame | str:
        """The reply (or ERROR) to one of the `sent` seqs, or a string saying what went wrong.

        Every frame of a chunk is looked at before giving up on it: a reply right behind a damaged
        frame (a log line with a stray 0xA5, say) is still taken.
        """
        deadline = time.monotonic() + timeout
        last_byte = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                self.decoder.reset()
                self.stats.timeouts += 1
                return f"no reply within {timeout:g} s"
            chunk = self._read()
            now = time.monotonic()
            if not chunk:
                if self.decoder.in_frame and now - last_byte > INTER_BYTE_TIMEOUT:
                    self.decoder.reset()  # a frame that stopped halfway (dropped bytes) never completes
                continue
            last_byte = now
            damaged = None
            for event in self.decoder.feed(chunk):
                if isinstance(event, (BadCrc, BadLength)):
                    self.stats.bad_frames += 1
                    damaged = damaged or f"a damaged reply ({event})"
                elif event.type in (expect, FrameType.ERROR) and event.seq in sent:
                    return event
                elif event.type == FrameType.ERROR and event.seq == 0 and \
                        _parse_error(event).code == ErrorCode.BAD_LENGTH:
                    return event  # BAD_LENGTH carries seq 0: the device could not read ours
                else:
                    self.stats.stale_replies += 1
            if damaged:
                return damaged

    # -- the port ---------------------------------------------------------------------------------

    def _flush(self) -> None:
        self.decoder.reset()
        try:
            self.port.reset_input_buffer()
        except OSError as exc:  # pyserial's SerialException is an OSError
            raise _port_error("reading from", exc) from exc

    def _write(self, frame: bytes) -> None:
        try:
            if hasattr(self.port, "write_timeout"):  # a big frame at a low baud rate takes a while
                self.port.write_timeout = max(10.0, 3 * 10 * len(frame) / max(self._baud(), 1))
            self.port.write(frame)
        except OSError as exc:
            raise _port_error("writing to", exc) from exc

    def _read(self) -> bytes:
        try:
            return self.port.read(max(1, self.port.in_waiting))
        except OSError as exc:
            raise _port_error("reading from", exc) from exc


def _port_error(what: str, exc: OSError) -> DeviceError:
    return DeviceError(f"{what} the serial port failed: {exc}",
                       hint="a board with native USB drops its port when it resets; check the cable and power, "
                            "then run again")


def _count_went_down(last: int, now: int) -> bool:
    """True when `now` is not after `last` in u32 wrap-around order: the device counted from 1 again."""
    return not 0 < (now - last) % 2**32 < 2**31


def _parse_error(frame: Frame) -> ErrorFrame:
    try:
        return ErrorFrame.parse(frame.payload)
    except ProtocolError:
        return ErrorFrame(0, "(empty ERROR frame)")


def _error_hint(code: int) -> str:
    return {
        ErrorCode.NOT_READY: "the firmware could not set up the interpreter; the message says why (an arena too "
                             "small: regenerate with a larger --arena-margin)",
        ErrorCode.INVOKE_FAILED: "the model failed on the device: check the op resolver and the device log",
        ErrorCode.BAD_PAYLOAD: "the firmware was built for a model with different inputs: pass --model the .tflite "
                               "the firmware was generated from",
        ErrorCode.BAD_VERSION: "regenerate the harness with this edgeq (`edgeq firmware`) and reflash",
        ErrorCode.UNKNOWN_TYPE: "regenerate the harness with this edgeq (`edgeq firmware`) and reflash",
    }.get(code, "see docs/protocol.md for the error codes")
