"""The plain-C device loop (edgeq/device/c/edgeq_device.c) with the POSIX port, compiled with gcc and
driven over a raw pty by the Python codec: replies, counts, every error path, the inter-byte timeout."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import tty
from pathlib import Path

import pytest

from edgeq.device.protocol import (
    DEFAULT_MAX_PAYLOAD,
    SOF,
    DType,
    ErrorCode,
    ErrorFrame,
    Frame,
    FrameDecoder,
    FrameType,
    HelloReply,
    InferReply,
    WireTensor,
    TimeUnit,
    encode_frame,
)
from test_protocol import PtyDevice

C_DIR = Path(__file__).resolve().parents[2] / "edgeq" / "device" / "c"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")

# A fake model behind the real device loop: output[i] = input[i % n_in] ^ 0x5A; an input starting
# with 0xEE makes the "inference" fail. argv: input_bytes output_bytes [notready].
TEST_MAIN = r"""
#include "edgeq_device.h"
#include <stdlib.h>
#include <string.h>

int edgeq_posix_wait_input(int timeout_ms);

static edgeq_device device;
static edgeq_tensor_info in_info = {EDGEQ_DTYPE_INT8, 2, {1, 0}, 0.5f, -3};
static edgeq_tensor_info out_info = {EDGEQ_DTYPE_INT8, 2, {1, 0}, 0.00390625f, -128};
static uint8_t sha[32];
static edgeq_model_desc desc;

static int xor_infer(void *ctx, const uint8_t *in, size_t n_in, uint8_t *out, size_t n_out,
                     uint32_t *time, uint8_t *unit, const char **error) {
    size_t i;
    if (ctx != &desc) { *error = "wrong context pointer"; return 1; }
    if (n_in && in[0] == 0xEE) { *error = "magic input rejected: Invoke() returned 1"; return 1; }
    for (i = 0; i < n_out; i++) out[i] = (uint8_t)(in[i % n_in] ^ 0x5A);
    *time = 1000u + (uint32_t)n_in;
    *unit = EDGEQ_TIME_CYCLES;
    return 0;
}

int main(int argc, char **argv) {
    int i;
    if (argc < 3) return 2;
    for (i = 0; i < 32; i++) sha[i] = (uint8_t)(i * 7 + 1);
    desc.model_sha256 = sha;
    desc.arena_size = 20000;
    desc.arena_used = 12345;
    desc.input_bytes = (size_t)atoi(argv[1]);
    desc.output_bytes = (size_t)atoi(argv[2]);
    in_info.dims[1] = (uint32_t)desc.input_bytes;
    out_info.dims[1] = (uint32_t)desc.output_bytes;
    desc.inputs = &in_info;
    desc.n_inputs = 1;
    desc.outputs = &out_info;
    desc.n_outputs = 1;
    desc.not_ready = (argc > 3 && strcmp(argv[3], "notready") == 0)
        ? "AllocateTensors() failed: k_test_tensor_arena_size (20000 bytes) is too small" : NULL;
    edgeq_device_init(&device, &desc, xor_infer, &desc);
    for (;;)
        if (edgeq_device_poll(&device) == 0) edgeq_posix_wait_input(1);
}
"""

CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]


def build_posix_device(tmpdir: Path, *, main_source: str = TEST_MAIN, extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile the device loop + POSIX port + `main_source` with gcc; returns the executable.

    The default main is the fake model above (argv: input_bytes output_bytes [notready])."""
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    main = tmpdir / "device_main.c"
    main.write_text(main_source)
    exe = tmpdir / "edgeq_posix_device"
    proc = subprocess.run(
        ["gcc", *CFLAGS, *extra_flags, f"-I{C_DIR}", str(C_DIR / "edgeq_protocol.c"), str(C_DIR / "edgeq_device.c"),
         str(C_DIR / "ports" / "posix" / "edgeq_platform_posix.c"), str(main), "-o", str(exe)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return exe


@pytest.fixture(scope="module")
def posix_device(tmp_path_factory) -> Path:
    return build_posix_device(tmp_path_factory.mktemp("edgeq_device"))


class Device(PtyDevice):
    """PtyDevice (tests/unit/test_protocol.py), started with command-line arguments."""

    def __init__(self, exe: Path, *args: str) -> None:  # noqa: super().__init__ starts exe without args
        self.master, slave = os.openpty()
        tty.setraw(slave)
        try:
            self.proc = subprocess.Popen([str(exe), *args], stdin=slave, stdout=slave, close_fds=True)
        finally:
            os.close(slave)
        self.decoder = FrameDecoder(max_payload=0xFFFF)

    def ask(self, frame_type: int, seq: int, payload: bytes = b"", **kw) -> Frame:
        self.send(encode_frame(frame_type, seq, payload, **kw))
        reply = self.receive()
        assert isinstance(reply, Frame), reply
        assert reply.seq == seq, (reply, seq)
        return reply

    def error(self, frame_type: int, seq: int, payload: bytes = b"", **kw) -> ErrorFrame:
        reply = self.ask(frame_type, seq, payload, **kw)
        assert reply.type == FrameType.ERROR, reply
        return ErrorFrame.parse(reply.payload)


@pytest.fixture
def start(posix_device):
    devices = []

    def _start(*args: str) -> Device:
        dev = Device(posix_device, *args)
        devices.append(dev)
        return dev

    yield _start
    for dev in devices:
        dev.close()


def test_hello_reply_carries_the_model_description(start):
    dev = start("40", "10")
    reply = dev.ask(FrameType.HELLO, 1)
    assert reply.type == FrameType.HELLO_REPLY
    hello = HelloReply.parse(reply.payload)
    assert hello == HelloReply(
        model_sha256=bytes((i * 7 + 1) & 0xFF for i in range(32)), arena_size=20000, arena_used=12345,
        inputs=(WireTensor(DType.INT8, (1, 40), 0.5, -3),),
        outputs=(WireTensor(DType.INT8, (1, 10), 0.00390625, -128),),
        max_payload=DEFAULT_MAX_PAYLOAD, protocol_version=1)
    # strict v1 payloads: a HELLO with a payload is malformed
    err = dev.error(FrameType.HELLO, 2, b"x")
    assert err.code == ErrorCode.BAD_PAYLOAD and "HELLO carries no payload, got 1 bytes" in err.message


def test_infer_replies_and_counts_inferences(start):
    dev = start("40", "10")
    for n in (1, 2, 3):
        data = bytes((n * 31 + i) & 0xFF for i in range(40))
        reply = dev.ask(FrameType.INFER, 10 + n, data)
        assert reply.type == FrameType.INFER_REPLY
        infer = InferReply.parse(reply.payload)
        assert infer.output == bytes(b ^ 0x5A for b in data[:10])
        assert (infer.time, infer.unit, infer.count) == (1040, TimeUnit.CYCLES, n)
    # failures do not count: the next success is 4
    err = dev.error(FrameType.INFER, 20, b"\xee" + bytes(39))
    assert err.code == ErrorCode.INVOKE_FAILED and err.message == "magic input rejected: Invoke() returned 1"
    assert dev.error(FrameType.INFER, 21, bytes(39)).code == ErrorCode.BAD_PAYLOAD
    assert InferReply.parse(dev.ask(FrameType.INFER, 22, bytes(40)).payload).count == 4


def test_output_wider_than_input_wraps(start):
    dev = start("3", "8")
    infer = InferReply.parse(dev.ask(FrameType.INFER, 1, b"\x00\x01\x02").payload)
    assert infer.output == bytes(b ^ 0x5A for b in b"\x00\x01\x02\x00\x01\x02\x00\x01")


def test_wrong_size_infer_is_bad_payload(start):
    dev = start("40", "10")
    for size in (0, 39, 41, 1000):
        err = dev.error(FrameType.INFER, size & 0xFF, bytes(size))
        assert err.code == ErrorCode.BAD_PAYLOAD
        assert err.message == f"INFER carries {size} bytes, the model takes 40"


def test_reply_above_max_payload_is_bad_payload(start):
    dev = start("4", str(DEFAULT_MAX_PAYLOAD - 8))  # reply = 9 + outputs = max + 1
    err = dev.error(FrameType.INFER, 5, bytes(4))
    assert err.code == ErrorCode.BAD_PAYLOAD
    assert f"INFER_REPLY would carry {DEFAULT_MAX_PAYLOAD + 1} bytes" in err.message
    dev2 = start("4", str(DEFAULT_MAX_PAYLOAD - 9))  # exactly max: fits
    assert len(InferReply.parse(dev2.ask(FrameType.INFER, 6, bytes(4)).payload).output) == DEFAULT_MAX_PAYLOAD - 9


def test_not_ready_answers_hello_but_refuses_infer(start):
    dev = start("40", "10", "notready")
    assert dev.ask(FrameType.HELLO, 1).type == FrameType.HELLO_REPLY
    err = dev.error(FrameType.INFER, 2, bytes(40))
    assert err.code == ErrorCode.NOT_READY
    assert err.message == "AllocateTensors() failed: k_test_tensor_arena_size (20000 bytes) is too small"


def test_bad_crc_bad_length_unknown_type_bad_version(start):
    dev = start("40", "10")
    corrupt = bytearray(encode_frame(FrameType.INFER, 33, bytes(40)))
    corrupt[10] ^= 0x01
    dev.send(bytes(corrupt))
    reply = dev.receive()
    assert isinstance(reply, Frame) and reply.type == FrameType.ERROR and reply.seq == 33
    assert ErrorFrame.parse(reply.payload).code == ErrorCode.BAD_CRC

    dev.send(bytes([SOF, 1, FrameType.INFER, 34]) + struct.pack("<H", DEFAULT_MAX_PAYLOAD + 1))
    reply = dev.receive()
    assert reply.type == FrameType.ERROR and reply.seq == 0
    err = ErrorFrame.parse(reply.payload)
    assert err.code == ErrorCode.BAD_LENGTH and str(DEFAULT_MAX_PAYLOAD + 1) in err.message

    err = dev.error(0x55, 35)
    assert err.code == ErrorCode.UNKNOWN_TYPE and err.message == "unknown frame type 85"
    reply = dev.ask(FrameType.HELLO, 36, version=2)
    assert reply.version == 1 and ErrorFrame.parse(reply.payload).code == ErrorCode.BAD_VERSION
    # garbage between frames is skipped and the device stays in sync
    dev.send(b"noise\r\n")
    assert dev.ask(FrameType.INFER, 37, bytes(40)).type == FrameType.INFER_REPLY


def test_interbyte_timeout_drops_a_partial_frame(start):
    dev = start("40", "10")
    # A header announcing 40 payload bytes, but only 5 sent: the device waits for 35 more.
    partial = encode_frame(FrameType.INFER, 50, bytes(40))[:11]
    whole = encode_frame(FrameType.HELLO, 51)

    dev.send(partial)
    time.sleep(0.15)  # > 100 ms idle mid-frame: the device drops the partial frame
    dev.send(whole)
    reply = dev.receive()
    assert (reply.type, reply.seq) == (FrameType.HELLO_REPLY, 51)

    # Without the pause the partial frame swallows the HELLO: no reply to it, and once the
    # announced length is complete the CRC fails (BAD_CRC for the partial frame's seq).
    dev.send(partial + whole + bytes(40))
    reply = dev.receive()
    assert reply.type == FrameType.ERROR and reply.seq == 50
    assert ErrorFrame.parse(reply.payload).code == ErrorCode.BAD_CRC
    assert dev.ask(FrameType.HELLO, 52).type == FrameType.HELLO_REPLY


def test_bytes_trickling_slower_than_the_timeout_never_make_a_frame(start):
    dev = start("40", "10")
    raw = encode_frame(FrameType.HELLO, 60)
    dev.send(raw[:4])
    time.sleep(0.06)
    dev.send(raw[4:])  # gaps under 100 ms: one frame
    assert dev.receive().seq == 60
    dev.send(raw[:4])
    time.sleep(0.25)
    dev.send(raw[4:])  # the first half was dropped; the rest holds no SOF: silence
    with pytest.raises(TimeoutError):
        dev.receive(timeout=0.5)
    assert dev.ask(FrameType.HELLO, 61).type == FrameType.HELLO_REPLY


def test_device_exits_when_the_host_hangs_up(posix_device):
    proc = subprocess.run([str(posix_device), "4", "4"], input=encode_frame(FrameType.HELLO, 1),
                          capture_output=True, timeout=10)
    assert proc.returncode == 0
    frames = FrameDecoder().feed(proc.stdout)
    assert len(frames) == 1 and frames[0].type == FrameType.HELLO_REPLY


# -- the real host side (DeviceLink over pyserial) against the compiled C device ---------------


class _CorruptFirstWrite:
    """A pyserial port whose first write has one bit flipped on the way, as a noisy line would."""

    def __init__(self, port) -> None:
        self._port, self.corrupted = port, False

    def write(self, data: bytes) -> int:
        if not self.corrupted:
            self.corrupted = True
            data = data[:-1] + bytes([data[-1] ^ 0x10])
        return self._port.write(data)

    def __getattr__(self, name):
        return getattr(self._port, name)

    def __setattr__(self, name, value):
        if name in ("_port", "corrupted"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._port, name, value)


@pytest.fixture
def c_device_port(posix_device):
    """The C device on a pty master; yields the slave's path for pyserial, like a USB serial port."""
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([str(posix_device), "40", "10"], stdin=master, stdout=master, close_fds=True)
    try:
        yield os.ttyname(slave)
    finally:
        proc.kill()
        proc.wait(timeout=5)
        os.close(master)
        os.close(slave)


def test_host_link_talks_to_the_c_device(c_device_port):
    from edgeq.device.session import open_port
    from edgeq.device.link import DeviceError, DeviceLink

    port = open_port(c_device_port, 115200)
    try:
        link = DeviceLink(port, infer_timeout=2.0)
        hello = link.hello()
        assert hello.inputs == (WireTensor(DType.INT8, (1, 40), 0.5, -3),) and hello.arena_used == 12345
        for n in range(1, 4):
            data = bytes((n * 13 + i) & 0xFF for i in range(40))
            result = link.infer(data, sample=n)
            assert result.reply.output == bytes(b ^ 0x5A for b in data[:10])
            assert (result.reply.count, result.attempts, result.reset) == (n, 1, False)
        with pytest.raises(DeviceError, match="sample 7: the device answered ERROR INVOKE_FAILED: magic input"):
            link.infer(b"\xee" + bytes(39), sample=7)
        with pytest.raises(DeviceError, match="ERROR BAD_PAYLOAD: INFER carries 39 bytes") as err:
            link.infer(bytes(39), sample=8)
        assert "--model the .tflite the firmware was generated from" in err.value.hint
        assert link.stats.resends == 0
    finally:
        port.close()


def test_host_resends_what_the_c_device_received_damaged(c_device_port):
    from edgeq.device.session import open_port
    from edgeq.device.link import DeviceLink

    port = open_port(c_device_port, 115200)
    try:
        noisy = _CorruptFirstWrite(port)
        link = DeviceLink(noisy, infer_timeout=2.0)
        result = link.infer(bytes(range(40)), sample=0)
        assert noisy.corrupted and result.attempts == 2 and result.reply.count == 1
        assert link.stats.device_errors == 1  # the C device answered ERROR BAD_CRC, the host sent again
        assert "BAD_CRC" in link.stats.events[0]
    finally:
        port.close()
