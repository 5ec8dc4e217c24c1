"""The device protocol (docs/protocol.md): the Python codec alone, then against the C library for real."""

from __future__ import annotations

import os
import random
import select
import shutil
import struct
import subprocess
import time
import tty
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.device.protocol import (
    DEFAULT_MAX_PAYLOAD,
    SOF,
    BadCrc,
    BadLength,
    DType,
    ErrorCode,
    ErrorFrame,
    Frame,
    FrameDecoder,
    FrameType,
    HelloReply,
    InferReply,
    ProtocolError,
    WireTensor,
    TimeUnit,
    crc16_ccitt,
    encode_frame,
)

C_DIR = Path(__file__).resolve().parents[2] / "edgeq" / "device" / "c"


def frames(events):
    return [e for e in events if isinstance(e, Frame)]


# --- Python codec ----------------------------------------------------------------------------

def test_crc_check_value():
    assert crc16_ccitt(b"123456789") == 0x29B1
    assert crc16_ccitt(b"") == 0xFFFF


def test_frame_constants_are_the_c_headers():
    """protocol.py holds the host's one copy of the frame constants; the C headers hold the device's."""
    import re

    from edgeq.device import protocol

    c_dir = Path(__file__).resolve().parents[2] / "edgeq" / "device" / "c"
    header = (c_dir / "edgeq_protocol.h").read_text()
    defines = {m[0]: int(m[1]) for m in re.findall(r"#define (EDGEQ_\w+) (\d+)u", header)}
    assert defines["EDGEQ_HEADER_SIZE"] == protocol.HEADER_SIZE
    assert defines["EDGEQ_MAX_PAYLOAD"] == protocol.DEFAULT_MAX_PAYLOAD
    assert defines["EDGEQ_MAX_RANK"] == protocol.MAX_RANK
    assert f"#if EDGEQ_MAX_PAYLOAD < {protocol.MIN_PAYLOAD}u" in (c_dir / "edgeq_device.h").read_text()
    assert f"#if EDGEQ_MAX_PAYLOAD > {protocol.LENGTH_LIMIT}u" in header


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_host_and_device_crc_agree(tmp_path):
    """The device's CRC (edgeq_protocol.c) and the host's (binascii.crc_hqx) on the check string
    and on random frames' bytes."""
    c_dir = Path(__file__).resolve().parents[2] / "edgeq" / "device" / "c"
    rng = random.Random(7)
    samples = [b"123456789", b"", bytes(range(256))] + [rng.randbytes(rng.randrange(1, 300)) for _ in range(20)]
    main = tmp_path / "crc_main.c"
    main.write_text(
        '#include "edgeq_protocol.h"\n#include <stdio.h>\n#include <stdlib.h>\n'
        "int main(int argc, char **argv) {\n"
        "  unsigned char buf[4096]; size_t n = 0; int i;\n"
        "  for (i = 1; i < argc; i++) buf[n++] = (unsigned char)strtol(argv[i], NULL, 16);\n"
        '  printf("%04x\\n", edgeq_crc16(buf, n)); return 0;\n}\n')
    exe = tmp_path / "crc"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", f"-I{c_dir}", str(main), str(c_dir / "edgeq_protocol.c"),
                    "-o", str(exe)], check=True, capture_output=True)
    for data in samples:
        out = subprocess.run([str(exe), *(f"{b:02x}" for b in data)], capture_output=True, text=True, check=True)
        assert int(out.stdout, 16) == crc16_ccitt(data), data.hex()


def test_frame_layout_is_as_documented():
    raw = encode_frame(FrameType.INFER, 7, b"\x01\x02\x03")
    assert raw[:6] == bytes([SOF, 1, 0x02, 7, 3, 0])
    assert raw[6:9] == b"\x01\x02\x03"
    assert struct.unpack("<H", raw[9:])[0] == crc16_ccitt(raw[1:9])


def test_round_trip_and_empty_payload():
    d = FrameDecoder()
    assert d.feed(encode_frame(FrameType.HELLO, 0)) == [Frame(1, FrameType.HELLO, 0, b"")]
    payload = bytes(range(256)) * 16
    assert d.feed(encode_frame(FrameType.INFER, 255, payload)) == [Frame(1, FrameType.INFER, 255, payload)]
    assert not d.in_frame


def test_resync_after_garbage_and_byte_by_byte():
    d = FrameDecoder()
    stream = b"boot banner\r\n\x00\xff" + encode_frame(1, 1, b"a") + b"junk" + encode_frame(2, 2, b"bc")
    events = []
    for b in stream:
        events += d.feed(bytes([b]))
    assert events == [Frame(1, 1, 1, b"a"), Frame(1, 2, 2, b"bc")]


def test_bad_crc_is_reported_and_next_frame_survives():
    bad = bytearray(encode_frame(FrameType.INFER, 9, b"hello"))
    bad[-1] ^= 0x01
    good = encode_frame(FrameType.INFER, 10, b"world")
    events = FrameDecoder().feed(bytes(bad) + good)
    assert isinstance(events[0], BadCrc) and events[0].seq == 9
    assert events[1:] == [Frame(1, FrameType.INFER, 10, b"world")]


def test_oversize_length_rejected_without_waiting_for_payload():
    d = FrameDecoder(max_payload=16)
    header = bytes([SOF, 1, 2, 0]) + struct.pack("<H", 17)
    events = d.feed(header)
    assert len(events) == 1 and isinstance(events[0], BadLength) and events[0].length == 17
    assert d.feed(encode_frame(1, 3, b"x" * 16)) == [Frame(1, 1, 3, b"x" * 16)]
    with pytest.raises(ValueError):
        encode_frame(1, 0, b"x" * 70000)


def test_reset_drops_partial_frame():
    d = FrameDecoder()
    assert d.feed(encode_frame(1, 1, b"abcdef")[:5]) == [] and d.in_frame
    d.reset()
    assert d.feed(encode_frame(1, 2)) == [Frame(1, 1, 2, b"")]


HELLO = HelloReply(
    model_sha256=bytes(range(32)), arena_size=65536, arena_used=12345,
    inputs=(WireTensor(DType.INT8, (1, 32, 32, 1), 0.5, -3),),
    outputs=(WireTensor(DType.INT8, (1, 32), 0.00390625, -128),),
)


def test_payload_round_trips():
    assert HelloReply.parse(HELLO.build()) == HELLO
    reply = InferReply(1234, TimeUnit.CYCLES, 77, b"\x01\x02")
    assert InferReply.parse(reply.build()) == reply
    err = ErrorFrame(ErrorCode.INVOKE_FAILED, "Invoke() returned 1 — arena too small")
    assert ErrorFrame.parse(err.build()) == err and err.code_name == "INVOKE_FAILED"


@pytest.mark.parametrize("cut", [0, 1, 5, 40, -1])
def test_truncated_or_padded_hello_reply_is_protocol_error(cut):
    raw = HELLO.build()
    bad = raw + b"\x00" if cut == -1 else raw[:cut]
    with pytest.raises(ProtocolError):
        HelloReply.parse(bad)
    with pytest.raises(ProtocolError):
        InferReply.parse(b"\x00\x01")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=600)),
                min_size=1, max_size=5),
       st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_property_random_payloads_round_trip_any_chunking(items, chunks):
    stream = b"".join(encode_frame(t, s, p) for t, s, p in items)
    d, events, pos, i = FrameDecoder(), [], 0, 0
    while pos < len(stream):
        n = chunks[i % len(chunks)]
        events += d.feed(stream[pos:pos + n])
        pos, i = pos + n, i + 1
    assert events == [Frame(1, t, s, p) for t, s, p in items]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.integers(0, 300))
def test_property_garbage_yields_only_frames_or_protocol_errors(garbage, max_payload):
    d = FrameDecoder(max_payload=max_payload)
    for event in d.feed(garbage) + d.feed(garbage[::-1]):
        assert isinstance(event, (Frame, ProtocolError))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=500).map(lambda b: b.replace(bytes([SOF]), b"")), st.binary(max_size=300))
def test_property_sof_free_noise_before_a_frame_is_skipped(noise, payload):
    assert FrameDecoder().feed(noise + encode_frame(2, 1, payload)) == [Frame(1, 2, 1, payload)]


# --- the C library, for real -----------------------------------------------------------------

C_DEVICE = r"""
/* Test-only fake device: answers the protocol on fd 0/1. "events" mode prints parser statuses. */
#include "edgeq_protocol.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static edgeq_parser parser;
static uint8_t tx[EDGEQ_MAX_FRAME];
static uint32_t count;

typedef size_t (*infer_fn)(const uint8_t *in, size_t n, uint8_t *out, size_t cap, uint32_t *time);

static size_t reverse_infer(const uint8_t *in, size_t n, uint8_t *out, size_t cap, uint32_t *time) {
    size_t i;
    if (n > cap) return (size_t)-1;
    for (i = 0; i < n; i++) out[i] = in[n - 1 - i];
    *time = 1000u + (uint32_t)n;
    return n;
}

static void write_all(const uint8_t *b, size_t n) {
    while (n) {
        ssize_t w = write(1, b, n);
        if (w < 0) { if (errno == EINTR) continue; _exit(3); }
        b += w; n -= (size_t)w;
    }
}

static void send_payload(uint8_t type, uint8_t seq, size_t len) {
    size_t n = edgeq_encode_frame(tx, sizeof tx, type, seq, tx + EDGEQ_HEADER_SIZE, len);
    if (n) write_all(tx, n);
}

static void send_error(uint8_t seq, uint8_t code, const char *msg) {
    send_payload(EDGEQ_ERROR, seq,
                 edgeq_build_error(tx + EDGEQ_HEADER_SIZE, EDGEQ_MAX_PAYLOAD, code, msg));
}

static void handle_frame(infer_fn infer) {
    uint8_t *pl = tx + EDGEQ_HEADER_SIZE;
    if (parser.version != EDGEQ_PROTOCOL_VERSION) {
        send_error(parser.seq, EDGEQ_ERR_BAD_VERSION, "protocol version 1 only");
        return;
    }
    if (parser.type == EDGEQ_HELLO) {
        static const edgeq_tensor_info in = {EDGEQ_DTYPE_INT8, 4, {1, 32, 32, 1}, 0.5f, -3};
        static const edgeq_tensor_info out = {EDGEQ_DTYPE_INT8, 2, {1, 32}, 0.00390625f, -128};
        uint8_t sha[32];
        int i;
        for (i = 0; i < 32; i++) sha[i] = (uint8_t)i;
        send_payload(EDGEQ_HELLO_REPLY, parser.seq,
                     edgeq_build_hello_reply(pl, EDGEQ_MAX_PAYLOAD, sha, 65536u, 12345u,
                                             &in, 1, &out, 1));
    } else if (parser.type == EDGEQ_INFER) {
        uint32_t t = 0;
        size_t n = infer(parser.payload, parser.length, pl + EDGEQ_INFER_REPLY_HEADER,
                         EDGEQ_MAX_PAYLOAD - EDGEQ_INFER_REPLY_HEADER, &t);
        if (n == (size_t)-1) { send_error(parser.seq, EDGEQ_ERR_BAD_PAYLOAD, "output too big"); return; }
        send_payload(EDGEQ_INFER_REPLY, parser.seq,
                     edgeq_build_infer_reply(pl, EDGEQ_MAX_PAYLOAD, t, EDGEQ_TIME_US, ++count, NULL, n));
    } else {
        send_error(parser.seq, EDGEQ_ERR_UNKNOWN_TYPE, "unknown frame type");
    }
}

int main(int argc, char **argv) {
    uint8_t buf[256];
    int events = argc > 1 && strcmp(argv[1], "events") == 0;
    edgeq_parser_init(&parser);
    for (;;) {
        ssize_t i, n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        for (i = 0; i < n; i++) {
            edgeq_status s = edgeq_parser_feed(&parser, buf[i]);
            if (events) {
                if (s == EDGEQ_FRAME_READY)
                    printf("F %u %u %u %u %04x\n", parser.version, parser.type, parser.seq,
                           parser.length, edgeq_crc16(parser.payload, parser.length));
                else if (s == EDGEQ_BAD_CRC) printf("C %u\n", parser.seq);
                else if (s == EDGEQ_BAD_LENGTH) printf("L %u\n", parser.length);
            } else if (s == EDGEQ_FRAME_READY) {
                handle_frame(reverse_infer);
            } else if (s == EDGEQ_BAD_CRC) {
                send_error(parser.seq, EDGEQ_ERR_BAD_CRC, "bad CRC, frame dropped");
            } else if (s == EDGEQ_BAD_LENGTH) {
                send_error(0, EDGEQ_ERR_BAD_LENGTH, "length above EDGEQ_MAX_PAYLOAD");
            }
        }
    }
}
"""


@pytest.fixture(scope="module")
def c_device(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("edgeq_c")
    (d / "device.c").write_text(C_DEVICE)
    exe = d / "device"
    subprocess.run([gcc, "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror",
                    "-O1", f"-I{C_DIR}", str(C_DIR / "edgeq_protocol.c"), str(d / "device.c"),
                    "-o", str(exe)], check=True, capture_output=True, text=True, timeout=60)
    return exe


class PtyDevice:
    """The compiled fake device on the slave side of a raw pty; the test speaks over the master."""

    def __init__(self, exe: Path) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        try:
            self.proc = subprocess.Popen([str(exe)], stdin=slave, stdout=slave, close_fds=True)
        finally:
            os.close(slave)
        self.decoder = FrameDecoder(max_payload=0xFFFF)

    def send(self, raw: bytes) -> None:
        view = memoryview(raw)
        while view:
            view = view[os.write(self.master, view):]

    def receive(self, timeout: float = 3.0) -> Frame | ProtocolError:
        deadline = time.monotonic() + timeout
        pending: list = []
        while not pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the C device")
            if select.select([self.master], [], [], left)[0]:
                pending += self.decoder.feed(os.read(self.master, 4096))
        assert len(pending) == 1, pending
        return pending[0]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)
        os.close(self.master)


@pytest.fixture
def device(c_device):
    dev = PtyDevice(c_device)
    yield dev
    dev.close()
    assert dev.proc.returncode is not None  # reaped: no zombie


def test_c_device_hello(device):
    device.send(encode_frame(FrameType.HELLO, 1))
    reply = device.receive()
    assert isinstance(reply, Frame) and (reply.type, reply.seq) == (FrameType.HELLO_REPLY, 1)
    assert HelloReply.parse(reply.payload) == HELLO


def test_c_device_infer_bad_crc_then_resync(device):
    data = bytes(random.Random(6).randrange(256) for _ in range(1024))
    device.send(encode_frame(FrameType.INFER, 2, data))
    reply = device.receive()
    assert (reply.type, reply.seq) == (FrameType.INFER_REPLY, 2)
    infer = InferReply.parse(reply.payload)
    assert infer.output == data[::-1] and infer.time == 2024 and infer.unit == TimeUnit.MICROSECONDS
    assert infer.count == 1

    corrupt = bytearray(encode_frame(FrameType.INFER, 3, data))
    corrupt[-2] ^= 0x40
    device.send(bytes(corrupt))
    reply = device.receive()
    assert reply.type == FrameType.ERROR
    assert ErrorFrame.parse(reply.payload).code == ErrorCode.BAD_CRC

    device.send(b"\x00garbage" + encode_frame(FrameType.INFER, 4, data[:100]))
    reply = device.receive()
    assert (reply.type, reply.seq) == (FrameType.INFER_REPLY, 4)
    assert InferReply.parse(reply.payload).output == data[:100][::-1]


def test_c_device_errors_for_version_type_and_length(device):
    device.send(encode_frame(0x55, 5, b"", version=2))
    assert ErrorFrame.parse(device.receive().payload).code == ErrorCode.BAD_VERSION
    device.send(encode_frame(0x55, 6))
    assert ErrorFrame.parse(device.receive().payload).code == ErrorCode.UNKNOWN_TYPE
    device.send(bytes([SOF, 1, FrameType.INFER, 7]) + struct.pack("<H", DEFAULT_MAX_PAYLOAD + 1))
    assert ErrorFrame.parse(device.receive().payload).code == ErrorCode.BAD_LENGTH
    device.send(encode_frame(FrameType.INFER, 8, b"\x07" * DEFAULT_MAX_PAYLOAD))  # reply would not fit
    assert ErrorFrame.parse(device.receive().payload).code == ErrorCode.BAD_PAYLOAD
    device.send(encode_frame(FrameType.HELLO, 9))
    assert device.receive().type == FrameType.HELLO_REPLY


def _random_stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(300):
        kind = rng.randrange(5)
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 300])))
        raw = encode_frame(rng.randrange(256), rng.randrange(256), payload, version=rng.randrange(3))
        if kind == 0:
            raw = bytearray(raw)
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            raw = bytes(raw)
        elif kind == 1:
            raw = bytes([SOF, 1, 2, 3]) + struct.pack("<H", rng.randrange(DEFAULT_MAX_PAYLOAD + 1, 65536))
        elif kind == 2:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(20))) + raw
        parts.append(raw)
    return b"".join(parts)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_parser_and_python_decoder_agree_on_the_same_stream(c_device, seed):
    stream = _random_stream(random.Random(seed))
    out = subprocess.run([str(c_device), "events"], input=stream, capture_output=True,
                         timeout=10, check=True).stdout.decode().splitlines()
    expected = []
    for e in FrameDecoder().feed(stream):
        if isinstance(e, Frame):
            expected.append(f"F {e.version} {e.type} {e.seq} {len(e.payload)} "
                            f"{crc16_ccitt(e.payload):04x}")
        elif isinstance(e, BadCrc):
            expected.append(f"C {e.seq}")
        else:
            expected.append(f"L {e.length}")
    assert out == expected
    assert any(x.startswith("C") for x in out) and any(x.startswith("L") for x in out)
