"""The edgeq device protocol, version 1: framing, CRC and payload codecs. Pure bytes, no I/O.

The normative description is docs/protocol.md; edgeq/device/c/edgeq_protocol.c is the device side
and must stay byte-for-byte compatible with this module (tests/unit/test_protocol.py checks both).

Frame: SOF 0xA5 | version u8 | type u8 | seq u8 | length u16 LE | payload | CRC-16/CCITT-FALSE u16 LE,
the CRC covering version..payload.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass, field
from enum import IntEnum

SOF = 0xA5
PROTOCOL_VERSION = 1
HEADER_SIZE = 6  # SOF, version, type, seq, length (2)
CRC_SIZE = 2
FRAME_OVERHEAD = HEADER_SIZE + CRC_SIZE
DEFAULT_MAX_PAYLOAD = 4096  # the C side's EDGEQ_MAX_PAYLOAD default
MIN_PAYLOAD = 64  # edgeq_device.h refuses smaller (a HELLO_REPLY needs room)
LENGTH_LIMIT = 0xFFFF  # what the u16 length field can carry
MAX_RANK = 8  # edgeq_protocol.h's EDGEQ_MAX_RANK: dimensions a tensor description carries
INFER_REPLY_HEADER = 9  # time u32 | unit u8 | count u32, before the output bytes
INTER_BYTE_TIMEOUT = 0.1  # seconds idle mid-frame after which either end drops a partial frame


class FrameType(IntEnum):
    HELLO = 0x01
    INFER = 0x02
    HELLO_REPLY = 0x81
    INFER_REPLY = 0x82
    ERROR = 0xEE


class ErrorCode(IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2
    UNKNOWN_TYPE = 3
    BAD_VERSION = 4
    INVOKE_FAILED = 5
    NOT_READY = 6
    BAD_PAYLOAD = 7


class TimeUnit(IntEnum):
    MICROSECONDS = 0
    CYCLES = 1
    INSTRUCTIONS = 2  # an emulated core counting instructions (QEMU, -icount shift=0)

    @property
    def label(self) -> str:
        return {0: "us", 1: "cycles", 2: "instructions"}[self.value]


class DType(IntEnum):
    """TFLite schema TensorType values, so a device can copy them from the flatbuffer."""

    FLOAT32 = 0
    FLOAT16 = 1
    INT32 = 2
    UINT8 = 3
    INT64 = 4
    INT16 = 7
    INT8 = 9


class ProtocolError(Exception):
    """Something on the wire is not a valid protocol message. Not user-facing by itself."""


class BadCrc(ProtocolError):
    """A frame arrived whose CRC does not match; the decoder skipped it and stays in sync."""

    def __init__(self, message: str, *, seq: int, frame_type: int) -> None:
        super().__init__(message)
        self.seq = seq
        self.frame_type = frame_type


class BadLength(ProtocolError):
    """A header announced a payload longer than the receiver accepts; the decoder resumed hunting."""

    def __init__(self, message: str, *, length: int) -> None:
        super().__init__(message)
        self.length = length


def crc16_ccitt(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR (check value 0x29B1).

    `binascii.crc_hqx` is this CRC with the init value as its argument. The device side computes it
    in edgeq_protocol.c; tests/unit/test_protocol.py pins both to the same values.
    """
    return binascii.crc_hqx(data, crc)


def encode_frame(frame_type: int, seq: int, payload: bytes = b"", *,
                 version: int = PROTOCOL_VERSION) -> bytes:
    if not 0 <= frame_type <= 0xFF or not 0 <= seq <= 0xFF or not 0 <= version <= 0xFF:
        raise ValueError("frame type, seq and version are single bytes")
    if len(payload) > LENGTH_LIMIT:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the {LENGTH_LIMIT}-byte frame limit")
    body = struct.pack("<BBBH", version, frame_type, seq, len(payload)) + bytes(payload)
    return bytes([SOF]) + body + struct.pack("<H", crc16_ccitt(body))


@dataclass(frozen=True)
class Frame:
    version: int
    type: int
    seq: int
    payload: bytes


class FrameDecoder:
    """Incremental decoder: feed() any chunking of the byte stream, get frames and error events.

    Events are Frame or ProtocolError instances (BadCrc, BadLength) returned, never raised, so one
    damaged frame never loses the frames after it. Resync rule (identical in the C parser): bytes
    are discarded until SOF; a header with length > max_payload is dropped (BAD_LENGTH) and hunting
    resumes at the byte after the length field; a frame with a bad CRC is dropped whole (BAD_CRC).
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= LENGTH_LIMIT:
            raise ValueError(f"max_payload must be in 0..{LENGTH_LIMIT}")
        self.max_payload = max_payload
        self._buf = bytearray()

    def reset(self) -> None:
        """Forget a partial frame (call after an inter-byte timeout)."""
        self._buf.clear()

    @property
    def in_frame(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | ProtocolError]:
        buf = self._buf
        buf += data
        events: list[Frame | ProtocolError] = []
        while True:
            start = buf.find(SOF)
            if start < 0:
                buf.clear()
                break
            if start:
                del buf[:start]
            if len(buf) < HEADER_SIZE:
                break
            version, frame_type, seq, length = struct.unpack_from("<BBBH", buf, 1)
            if length > self.max_payload:
                events.append(BadLength(f"frame announces {length} payload bytes, limit is "
                                        f"{self.max_payload}", length=length))
                del buf[:HEADER_SIZE]
                continue
            total = FRAME_OVERHEAD + length
            if len(buf) < total:
                break
            (crc_rx,) = struct.unpack_from("<H", buf, HEADER_SIZE + length)
            crc = crc16_ccitt(memoryview(buf)[1:HEADER_SIZE + length])
            if crc != crc_rx:
                events.append(BadCrc(f"CRC mismatch (got 0x{crc_rx:04X}, computed 0x{crc:04X}) "
                                     f"in a {length}-byte frame", seq=seq, frame_type=frame_type))
            else:
                events.append(Frame(version, frame_type, seq, bytes(buf[HEADER_SIZE:HEADER_SIZE + length])))
            del buf[:total]
        return events


# --- payloads ---------------------------------------------------------------------------------

class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = bytes(data), 0, what

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProtocolError(f"{self.what} payload truncated at byte {self.pos} "
                                f"({len(self.data)} bytes in all)")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what} payload has {len(self.data) - self.pos} trailing bytes")


@dataclass(frozen=True)
class WireTensor:
    dtype: int
    shape: tuple[int, ...]
    scale: float = 0.0
    zero_point: int = 0

    def build(self) -> bytes:
        if len(self.shape) > 0xFF:
            raise ValueError("rank above 255")
        return (struct.pack("<BB", self.dtype, len(self.shape))
                + struct.pack(f"<{len(self.shape)}I", *self.shape)
                + struct.pack("<fi", self.scale, self.zero_point))

    @classmethod
    def _read(cls, r: _Reader) -> WireTensor:
        dtype, rank = r.take("<BB")
        shape = r.take(f"<{rank}I")
        scale, zero_point = r.take("<fi")
        return cls(dtype, tuple(shape), scale, zero_point)


@dataclass(frozen=True)
class HelloReply:
    model_sha256: bytes
    arena_size: int
    arena_used: int
    inputs: tuple[WireTensor, ...]
    outputs: tuple[WireTensor, ...]
    max_payload: int = DEFAULT_MAX_PAYLOAD
    protocol_version: int = PROTOCOL_VERSION

    def build(self) -> bytes:
        if len(self.model_sha256) != 32:
            raise ValueError("model_sha256 must be 32 bytes")
        if len(self.inputs) > 0xFF or len(self.outputs) > 0xFF:
            raise ValueError("more than 255 inputs or outputs")
        out = struct.pack("<BH", self.protocol_version, self.max_payload) + self.model_sha256
        out += struct.pack("<II", self.arena_size, self.arena_used)
        out += bytes([len(self.inputs)]) + b"".join(t.build() for t in self.inputs)
        out += bytes([len(self.outputs)]) + b"".join(t.build() for t in self.outputs)
        return out

    @classmethod
    def parse(cls, payload: bytes) -> HelloReply:
        r = _Reader(payload, "HELLO_REPLY")
        version, max_payload = r.take("<BH")
        (sha,) = r.take("<32s")
        arena_size, arena_used = r.take("<II")
        (n_in,) = r.take("<B")
        inputs = tuple(WireTensor._read(r) for _ in range(n_in))
        (n_out,) = r.take("<B")
        outputs = tuple(WireTensor._read(r) for _ in range(n_out))
        r.done()
        return cls(sha, arena_size, arena_used, inputs, outputs, max_payload, version)


@dataclass(frozen=True)
class InferReply:
    time: int
    unit: int
    count: int  # inferences since the device booted, this one included: it going down means a reset
    output: bytes = field(default=b"")

    def build(self) -> bytes:
        return struct.pack("<IBI", self.time, self.unit, self.count) + bytes(self.output)

    @classmethod
    def parse(cls, payload: bytes) -> InferReply:
        r = _Reader(payload, "INFER_REPLY")
        time, unit, count = r.take("<IBI")
        return cls(time, unit, count, r.rest())


@dataclass(frozen=True)
class ErrorFrame:
    code: int
    message: str = ""

    def build(self) -> bytes:
        return bytes([self.code]) + self.message.encode("utf-8")

    @classmethod
    def parse(cls, payload: bytes) -> ErrorFrame:
        r = _Reader(payload, "ERROR")
        (code,) = r.take("<B")
        return cls(code, r.rest().decode("utf-8", errors="replace"))

    @property
    def code_name(self) -> str:
        try:
            return ErrorCode(self.code).name
        except ValueError:
            return f"code {self.code}"
