"""edgeq.export.c_arrays: the model data and op resolver sources a firmware project compiles."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from edgeq.errors import TargetCheckError
from edgeq.export.c_arrays import ArenaSize, model_data_sources, op_resolver_source, tflm_sources

MODEL = bytes(range(256)) * 3 + b"\x00\x01\x02"  # not a model: the sources carry any bytes


def _array_bytes(source: str) -> bytes:
    body = source[source.index("{") + 1:source.index("};")]
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))


def test_model_data_carries_the_exact_bytes_aligned_with_their_size_and_hash() -> None:
    import hashlib

    files = model_data_sources("my-model 2", MODEL, alignment=8, arena=ArenaSize(measured=3840, margin=1024))
    header, source = files["my_model_2_model_data.h"].decode(), files["my_model_2_model_data.cc"].decode()
    assert _array_bytes(source) == MODEL
    assert "alignas(16) const unsigned char g_my_model_2_model_data[]" in source  # never below 16
    assert f"g_my_model_2_model_data_size = {len(MODEL)};" in source
    assert hashlib.sha256(MODEL).hexdigest() in header and hashlib.sha256(MODEL).hexdigest() in source
    assert "k_my_model_2_tensor_arena_size = 4864;" in header and "3840 bytes" in header
    assert "OfflineMemoryAllocation" not in header  # not a model with edgeq's arena plan
    assert "tensor_arena_size" not in model_data_sources("m", MODEL)["m_model_data.h"].decode()
    assert "alignas(64)" in model_data_sources("m", MODEL, alignment=64)["m_model_data.cc"].decode()


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_model_data_compiles_and_links_into_a_program_that_sees_the_bytes(tmp_path) -> None:
    for name, text in model_data_sources("net", MODEL, arena=ArenaSize(measured=100, margin=28)).items():
        (tmp_path / name).write_bytes(text)
    (tmp_path / "main.cc").write_text(
        '#include "net_model_data.h"\n#include <cstdio>\n'
        "int main() { unsigned sum = 0; for (unsigned i = 0; i < g_net_model_data_size; i++) sum += g_net_model_data[i];\n"
        '  std::printf("%u %u %u\\n", g_net_model_data_size, sum, k_net_tensor_arena_size);\n'
        "  return (reinterpret_cast<unsigned long>(g_net_model_data) % 16) != 0; }\n")
    exe = tmp_path / "main"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", str(tmp_path / "main.cc"),
                    str(tmp_path / "net_model_data.cc"), "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(MODEL)), str(sum(MODEL)), "128"]


def test_op_resolver_registers_exactly_the_models_ops_once() -> None:
    text = op_resolver_source("net", ["CONV_2D", "SOFTMAX", "CONV_2D", "FULLY_CONNECTED"])["net_op_resolver.h"].decode()
    assert "tflite::MicroMutableOpResolver<3>" in text and "k_net_op_count = 3;" in text
    assert [m for m in re.findall(r"resolver\.(\w+)\(\)", text)] == ["AddConv2D", "AddFullyConnected", "AddSoftmax"]


def test_an_op_without_a_tflm_kernel_is_a_target_error_naming_it() -> None:
    with pytest.raises(TargetCheckError) as caught:
        tflm_sources("net", MODEL, ["CONV_2D", "NOT_AN_OP"])
    assert "NOT_AN_OP" in caught.value.message and caught.value.hint
