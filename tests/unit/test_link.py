"""DeviceLink against a scripted port: what it accepts, what it resends, what it reports."""

from __future__ import annotations

import pytest

from edgeq.device.link import DeviceError, DeviceLink
from edgeq.device.protocol import FrameDecoder, FrameType, InferReply, TimeUnit, encode_frame


class ScriptedPort:
    """Answers each request with what `script(request_frame, n)` returns; no real time passes."""

    def __init__(self, script) -> None:
        self.script, self.timeout, self.baudrate = script, None, 115200
        self.pending, self.requests, self.flushes = b"", [], 0
        self.decoder = FrameDecoder(0xFFFF)

    def write(self, data: bytes) -> int:
        for frame in self.decoder.feed(data):
            self.requests.append(frame)
            self.pending += self.script(frame, len(self.requests))
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self.pending)

    def read(self, size: int = 1) -> bytes:
        out, self.pending = self.pending[:size], self.pending[size:]
        return out

    def reset_input_buffer(self) -> None:
        self.flushes += 1
        self.pending = b""


def reply(frame, count: int = 1, output: bytes = b"\x01\x02") -> bytes:
    return encode_frame(FrameType.INFER_REPLY, frame.seq, InferReply(5, TimeUnit.MICROSECONDS, count, output).build())


def test_a_reply_behind_garbage_in_the_same_read_is_taken():
    # a stray 0xA5 in a log line parses as a header; its "frame" fails the CRC, the reply after it is fine
    garbage = bytes([0xA5, 0x01, 0x82, 0x00, 0x02, 0x00, 0xAA, 0xBB, 0x00, 0x00])
    port = ScriptedPort(lambda frame, n: garbage + reply(frame))
    link = DeviceLink(port, infer_timeout=0.5)
    result = link.infer(b"x", sample=0)
    assert result.attempts == 1 and result.reply.output == b"\x01\x02"
    assert link.stats.bad_frames == 1 and link.stats.resends == 0


def test_leftovers_of_an_earlier_request_are_flushed_not_taken():
    port = ScriptedPort(lambda frame, n: reply(frame, count=n))
    link = DeviceLink(port, infer_timeout=0.5)
    link.infer(b"x", sample=0)
    port.pending = encode_frame(FrameType.INFER_REPLY, 200, InferReply(1, 0, 99, b"old").build())  # late extra
    result = link.infer(b"y", sample=1)
    assert result.reply.count == 2 and port.flushes == 2


def test_a_reply_to_an_earlier_attempt_of_the_same_sample_is_accepted():
    sent = []

    def script(frame, n):
        sent.append(frame)
        # the first request is answered late: its reply arrives after the resend, with the first seq
        return b"" if n == 1 else reply(sent[0], count=1)

    port = ScriptedPort(script)
    link = DeviceLink(port, infer_timeout=0.05, resend_pause=0)
    result = link.infer(b"x", sample=3)
    assert result.attempts == 2 and link.stats.timeouts == 1 and link.stats.stale_replies == 0


def test_port_errors_become_device_errors():
    class Unplugged(ScriptedPort):
        def read(self, size: int = 1) -> bytes:
            raise OSError(5, "Input/output error")  # what pyserial raises when a USB port vanishes

    link = DeviceLink(Unplugged(lambda frame, n: b""), infer_timeout=0.5)
    with pytest.raises(DeviceError, match="reading from the serial port failed") as err:
        link.infer(b"x", sample=0)
    assert err.value.exit_code == 4 and "native USB" in err.value.hint


def test_non_transient_errors_are_not_resent():
    from edgeq.device.protocol import ErrorCode, ErrorFrame

    port = ScriptedPort(lambda frame, n: encode_frame(FrameType.ERROR, frame.seq,
                                                      ErrorFrame(ErrorCode.INVOKE_FAILED, "boom").build()))
    link = DeviceLink(port, infer_timeout=0.5)
    with pytest.raises(DeviceError, match="sample 9: the device answered ERROR INVOKE_FAILED: boom"):
        link.infer(b"x", sample=9)
    assert len(port.requests) == 1
