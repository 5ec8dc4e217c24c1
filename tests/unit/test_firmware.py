"""The generated test-harness firmware tree (edgeq/device/firmware.py) for a real int8 model: its
files, its config against the model, its C compiled and run with gcc, and its Cortex-M sizes from
the real arm-none-eabi toolchain. (edgeq_harness.cc needs TFLM's headers, which edgeq does not ship:
it is not compiled here.)"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from edgeq.device.cross_size import CrossCompileError, cross_compile
from edgeq.device.firmware import STATIC_FILES, Firmware, build_firmware
from edgeq.device.protocol import (
    DType,
    ErrorCode,
    ErrorFrame,
    FrameDecoder,
    FrameType,
    HelloReply,
    InferReply,
    WireTensor,
    encode_frame,
)
from edgeq.errors import EdgeqError, TargetCheckError
from edgeq.export.atomic import write_files_atomically
from edgeq.export.c_arrays import ArenaSize
from edgeq.tflite.reader import read_tflite

ROOT = Path(__file__).resolve().parents[2]
ARENA = ArenaSize(measured=2000, margin=1024)
HAVE_ARM = all(shutil.which(f"arm-none-eabi-{t}") for t in ("gcc", "g++", "size", "nm"))


@pytest.fixture(scope="module")
def model(tiny_cnn_tflite) -> bytes:
    return tiny_cnn_tflite["int8"]


@pytest.fixture(scope="module")
def info(model):
    return read_tflite(model, source="tiny-cnn.tflite")


@pytest.fixture(scope="module")
def firmware(model, info) -> Firmware:
    return build_firmware(model, info, name="tiny-cnn", arena=ARENA, target_name="mcu")


@pytest.fixture(scope="module")
def tree(firmware, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("firmware") / "tiny_cnn_firmware"
    write_files_atomically(out, firmware.files, overwrite=False)
    return out


def test_tree_holds_model_harness_ports_and_readme(firmware, model, tree):
    ident = "tiny_cnn"
    assert firmware.ident == ident
    expected = {f"{ident}_model_data.h", f"{ident}_model_data.cc", f"{ident}_op_resolver.h", "edgeq_harness.cc",
                "edgeq_harness_config.h", "edgeq_config.h", "README.md", "edgeq_firmware.json", *STATIC_FILES}
    assert set(firmware.files) == expected
    assert firmware.manifest.files == sorted(expected)
    for port in ("ports/arduino/edgeq_harness/edgeq_harness.ino", "ports/zephyr/CMakeLists.txt",
                 "ports/zephyr/prj.conf", "ports/zephyr/src/main.c", "ports/baremetal/main.c",
                 "ports/posix/edgeq_platform_posix.c"):
        assert (tree / port).is_file() and (tree / port).read_bytes() == firmware.files[port]
    # the static C files are the packaged ones, byte for byte
    assert firmware.files["edgeq_device.c"] == (ROOT / "edgeq/device/c/edgeq_device.c").read_bytes()

    digest = hashlib.sha256(model).hexdigest()
    config = firmware.files["edgeq_harness_config.h"].decode()
    sha_bytes = bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})",
                                                      config.split("#define EDGEQ_MODEL_SHA256 {")[1].split("}")[0]))
    assert sha_bytes == hashlib.sha256(model).digest()
    assert f'EDGEQ_MODEL_SHA256_HEX "{digest}"' in config and f'EDGEQ_MODEL_ID "{ident}"' in config
    assert "#define EDGEQ_MODEL_INPUT_BYTES 64u" in config and "#define EDGEQ_MODEL_OUTPUT_BYTES 10u" in config

    harness = firmware.files["edgeq_harness.cc"].decode()
    for needle in (f"tflite::GetModel(g_{ident}_model_data)", f"register_{ident}_ops(op_resolver)",
                   f"alignas(16) uint8_t tensor_arena[k_{ident}_tensor_arena_size]", "AllocateTensors()",
                   "arena_used_bytes()", "Invoke()", f"{ident}_op_resolver_t op_resolver", "TFLITE_SCHEMA_VERSION"):
        assert needle in harness, needle
    assert "$" not in harness  # every template placeholder was filled

    readme = firmware.files["README.md"].decode()
    for needle in (ident, digest, str(ARENA.total), "edgeq device-check --port", "edgeq device-sim",
                   "115200", "EDGEQ_MAX_PAYLOAD", "west build", "arduino-cli", "edgeq_platform_micros"):
        assert needle in readme, needle
    assert re.search(r"\$\{[a-z_]+\}", readme) is None  # no unfilled placeholder (shell's ${f##*/} is fine)

    m = firmware.manifest.to_dict()
    assert (m["model_id"], m["model_sha256"], m["model_bytes"], m["max_payload"]) == (ident, digest, len(model), 4096)
    assert m["arena"] == {"total": 3024, "measured": 2000, "margin": 1024, "symbol": f"k_{ident}_tensor_arena_size"}
    assert [(t["dtype"], t["shape"], t["bytes"]) for t in m["inputs"]] == [("int8", [1, 8, 8, 1], 64)]
    assert [(t["dtype"], t["shape"], t["bytes"]) for t in m["outputs"]] == [("int8", [1, 10], 10)]


def test_build_is_deterministic(model, info, firmware):
    assert build_firmware(model, info, name="tiny-cnn", arena=ARENA, target_name="mcu") == firmware


def test_oversize_inputs_and_outputs_refused(tiny_cnn_tflite, model, info):
    f32 = tiny_cnn_tflite["float32"]
    f32_info = read_tflite(f32, source="f32.tflite")
    with pytest.raises(TargetCheckError) as caught:
        build_firmware(f32, f32_info, name="f32", arena=ARENA, target_name="mcu", max_payload=200)
    assert "its inputs take 256 bytes" in caught.value.message and "200" in caught.value.message
    assert "--max-payload" in caught.value.hint and "256" in caught.value.hint and "65535" in caught.value.hint
    assert build_firmware(f32, f32_info, name="f32", arena=ARENA, target_name="mcu", max_payload=256)

    # outputs: the reply adds a 9-byte header (time, unit, count)
    out = info.output_tensors[0]
    wide = dataclasses.replace(out, shape=(1, 5000))
    tensors = tuple(wide if t.index == out.index else t for t in info.tensors)
    wide_info = dataclasses.replace(info, tensors=tensors)
    with pytest.raises(TargetCheckError, match=r"outputs take 5000 bytes \(\+9 reply header = 5009\)"):
        build_firmware(model, wide_info, name="w", arena=ARENA, target_name="mcu")
    assert build_firmware(model, wide_info, name="w", arena=ARENA, target_name="mcu", max_payload=5009)
    huge = dataclasses.replace(info, tensors=tuple(dataclasses.replace(wide, shape=(1, 70000)) if t.index == out.index
                                                   else t for t in info.tensors))
    with pytest.raises(TargetCheckError, match="65535-byte frame limit"):
        build_firmware(model, huge, name="h", arena=ARENA, target_name="mcu", max_payload=65535)
    # the HELLO reply (sha, arena, tensor list) must fit too: 45 + (10 + 4*4) + (10 + 4*2) = 89 bytes
    with pytest.raises(TargetCheckError, match="HELLO reply describing its tensors takes 89 bytes"):
        build_firmware(model, info, name="x", arena=ARENA, target_name="mcu", max_payload=88)
    assert build_firmware(model, info, name="x", arena=ARENA, target_name="mcu", max_payload=89)
    for bad in (63, 65536):
        with pytest.raises(EdgeqError, match="out of range"):
            build_firmware(model, info, name="x", arena=ARENA, target_name="mcu", max_payload=bad)


# A host main around the tree's own generated config: the real device loop + POSIX port, the
# model described by edgeq_harness_config.h, and a stand-in "inference" (copies input bytes).
HOST_MAIN = r"""
#include "edgeq_device.h"
#include "edgeq_harness_config.h"
#include <string.h>

int edgeq_posix_wait_input(int timeout_ms);

static const uint8_t sha[32] = EDGEQ_MODEL_SHA256;
static const edgeq_tensor_info inputs[EDGEQ_MODEL_N_INPUTS] = EDGEQ_MODEL_INPUTS;
static const edgeq_tensor_info outputs[EDGEQ_MODEL_N_OUTPUTS] = EDGEQ_MODEL_OUTPUTS;
static edgeq_model_desc desc;
static edgeq_device device;

static int copy_infer(void *ctx, const uint8_t *in, size_t n_in, uint8_t *out, size_t n_out,
                      uint32_t *time, uint8_t *unit, const char **error) {
    (void)ctx; (void)error;
    memcpy(out, in, n_out < n_in ? n_out : n_in);
    *time = 7;
    *unit = EDGEQ_TIME_US;
    return 0;
}

int main(void) {
    desc.model_sha256 = sha;
    desc.arena_size = 1;
    desc.inputs = inputs;
    desc.n_inputs = EDGEQ_MODEL_N_INPUTS;
    desc.outputs = outputs;
    desc.n_outputs = EDGEQ_MODEL_N_OUTPUTS;
    desc.input_bytes = EDGEQ_MODEL_INPUT_BYTES;
    desc.output_bytes = EDGEQ_MODEL_OUTPUT_BYTES;
    edgeq_device_init(&device, &desc, copy_infer, NULL);
    for (;;)
        if (edgeq_device_poll(&device) == 0) edgeq_posix_wait_input(1);
}
"""


def compile_tree_host(tree: Path, out: Path) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    (out / "host_main.c").write_text(HOST_MAIN)
    exe = out / "host_device"
    proc = subprocess.run(
        ["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", f"-I{tree}", str(tree / "edgeq_protocol.c"),
         str(tree / "edgeq_device.c"), str(tree / "ports/posix/edgeq_platform_posix.c"), str(out / "host_main.c"),
         "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return exe


def talk(exe: Path, *frames: bytes) -> list:
    """Send the frames on stdin (then EOF: the POSIX port exits) and decode what came back."""
    proc = subprocess.run([str(exe)], input=b"".join(frames), capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return FrameDecoder(max_payload=0xFFFF).feed(proc.stdout)


def test_tree_c_compiles_with_gcc_and_describes_the_model(tree, model, tmp_path):
    exe = compile_tree_host(tree, tmp_path)
    hello, infer, short = talk(exe, encode_frame(FrameType.HELLO, 1),
                               encode_frame(FrameType.INFER, 2, bytes(range(64))), encode_frame(FrameType.INFER, 3, bytes(63)))
    reply = HelloReply.parse(hello.payload)
    assert len(hello.payload) == 89  # as build_firmware computes it for its payload check
    assert reply.model_sha256 == hashlib.sha256(model).digest()
    assert reply.max_payload == 4096
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    (i_det,), (o_det,) = it.get_input_details(), it.get_output_details()
    assert reply.inputs == (WireTensor(DType.INT8, (1, 8, 8, 1), i_det["quantization"][0], i_det["quantization"][1]),)
    assert reply.outputs == (WireTensor(DType.INT8, (1, 10), o_det["quantization"][0], o_det["quantization"][1]),)
    assert InferReply.parse(infer.payload) == InferReply(7, 0, 1, bytes(range(10)))
    err = ErrorFrame.parse(short.payload)
    assert err.code == ErrorCode.BAD_PAYLOAD and err.message == "INFER carries 63 bytes, the model takes 64"


def test_max_payload_reaches_every_translation_unit(model, info, tmp_path):
    fw = build_firmware(model, info, name="tiny-cnn", arena=ARENA, target_name="mcu", max_payload=100)
    assert "#define EDGEQ_MAX_PAYLOAD 100u" in fw.files["edgeq_config.h"].decode()
    tree = tmp_path / "tree"
    write_files_atomically(tree, fw.files, overwrite=False)
    exe = compile_tree_host(tree, tmp_path)
    hello, too_long = talk(exe, encode_frame(FrameType.HELLO, 1), encode_frame(FrameType.INFER, 2, bytes(101)))
    assert HelloReply.parse(hello.payload).max_payload == 100
    assert ErrorFrame.parse(too_long.payload).code == ErrorCode.BAD_LENGTH


def test_package_data_ships_the_tree_sources():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    packaged = [*(f"c/{p}" for p in STATIC_FILES), "c/edgeq_config.h"]
    for rel in packaged:
        assert (ROOT / "edgeq/device" / rel).is_file(), rel
        # setuptools' "**" spans folders; fnmatch's "*" does too, which is close enough here
        assert any(fnmatch(rel, g) for g in data["edgeq.device"]), rel
    templates = sorted(p.name for p in (ROOT / "edgeq" / "templates").iterdir() if p.is_file())
    assert "edgeq_harness.cc.j2" in templates and "model_data.h.j2" in templates
    for name in templates:
        assert any(fnmatch(name, g) for g in data["edgeq.templates"]), name


# --- the real Cortex-M toolchain --------------------------------------------------------------

arm = pytest.mark.skipif(not HAVE_ARM, reason="arm-none-eabi toolchain not installed")


@arm
def test_cross_compile_sizes(firmware, model, tree):
    size = cross_compile(firmware.files)
    assert size is not None
    assert size.compiler.startswith("arm-none-eabi-gcc")
    assert size.model_symbol == "g_tiny_cnn_model_data"
    assert size.model_section == ".rodata.g_tiny_cnn_model_data"  # const: flash, not RAM
    assert size.model_size == len(model)
    model_obj = size.objects["tiny_cnn_model_data.cc"]
    assert model_obj.data == 0 and model_obj.bss == 0 and model_obj.text >= len(model)
    for rel in ("edgeq_protocol.c", "edgeq_device.c", "ports/baremetal/main.c"):
        assert size.objects[rel].text > 0, rel
    assert size.objects["ports/baremetal/main.c"].bss > 0  # the micros() accumulator
    assert 0 < size.harness_flash < 8192  # small: no printf, no malloc
    # RAM: the device struct holds one payload (parser) and one frame (tx), nothing else big
    assert 2 * 4096 + 8 <= size.device_struct <= 2 * 4096 + 8 + 128
    assert size.harness_ram >= size.device_struct
    assert "edgeq_harness.cc" in size.note and "not compiled" in size.note
    # the same from a folder on disk
    assert cross_compile(tree) == size
    d = size.to_dict()
    assert d["model"]["bytes"] == len(model) and d["harness"]["device_struct"] == size.device_struct


@arm
def test_cross_compile_smaller_payload_shrinks_ram(model, info):
    small = cross_compile(build_firmware(model, info, name="tiny-cnn", arena=ARENA, target_name="mcu",
                                         max_payload=256).files)
    assert small is not None and small.max_payload == 256
    assert 2 * 256 + 8 <= small.device_struct <= 2 * 256 + 8 + 128


@arm
def test_cross_compile_reports_compiler_errors(firmware):
    broken = dict(firmware.files)
    broken["edgeq_device.c"] = broken["edgeq_device.c"] + b"\nstatic int unused_thing;\n"  # -Werror
    with pytest.raises(CrossCompileError) as caught:
        cross_compile(broken)
    assert "edgeq_device.c" in caught.value.message and "unused_thing" in caught.value.message


def test_cross_compile_without_toolchain_is_none(firmware, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cross_compile(firmware.files) is None


# The C++ side of the edgeq headers, as edgeq_harness.cc uses them (the TFLM parts aside): the
# generated config's initializers must be valid C++17 too (no narrowing, C linkage of the hooks).
CXX_MAIN = r"""
#include "edgeq_device.h"
#include "edgeq_harness.h"
#include "edgeq_harness_config.h"
#include "edgeq_platform.h"
#include "tiny_cnn_model_data.h"

static_assert(EDGEQ_MODEL_INPUT_BYTES <= EDGEQ_MAX_PAYLOAD, "inputs fit");
static_assert(EDGEQ_MODEL_OUTPUT_BYTES + EDGEQ_INFER_REPLY_HEADER <= EDGEQ_MAX_PAYLOAD, "outputs fit");
namespace {
const uint8_t model_sha256[32] = EDGEQ_MODEL_SHA256;
edgeq_tensor_info input_infos[EDGEQ_MODEL_N_INPUTS] = EDGEQ_MODEL_INPUTS;
edgeq_tensor_info output_infos[EDGEQ_MODEL_N_OUTPUTS] = EDGEQ_MODEL_OUTPUTS;
alignas(16) uint8_t tensor_arena[k_tiny_cnn_tensor_arena_size];
}
extern "C" void edgeq_harness_setup(void) {}
extern "C" void edgeq_harness_poll(void) {}
int main() {
    return (model_sha256[0] == g_tiny_cnn_model_data[0] && input_infos[0].rank == 4 &&
            output_infos[0].dims[1] == 10 && tensor_arena[0] == 0) ? 0 : 1;
}
"""


def test_headers_and_generated_config_are_valid_cpp(tree, tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    (tmp_path / "cxx_main.cc").write_text(CXX_MAIN)
    proc = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wnarrowing", f"-I{tree}", str(tmp_path / "cxx_main.cc"),
         str(tree / "tiny_cnn_model_data.cc"), "-fsyntax-only"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
