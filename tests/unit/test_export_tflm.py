"""edgeq.pipeline.exports: the library calls behind export-c and firmware, usable without the CLI."""

from __future__ import annotations

import pytest

from edgeq.errors import EdgeqError
from edgeq.pipeline.exports import build_firmware, export_c
from edgeq.targets import load_target


def test_export_c_writes_the_three_sources_with_the_measured_arena(tiny_cnn_tflite, tmp_path) -> None:
    from edgeq.emulator.memory import measure_tflm_arena

    model = tmp_path / "tiny.tflite"
    model.write_bytes(tiny_cnn_tflite["int8"])
    written, opened = export_c(model, tmp_path / "c", arena_margin=100)
    assert sorted(p.name for p in written) == ["tiny_model_data.cc", "tiny_model_data.h", "tiny_op_resolver.h"]
    assert opened.arena.smallest == measure_tflm_arena(tiny_cnn_tflite["int8"]).smallest
    header = (tmp_path / "c" / "tiny_model_data.h").read_text()
    assert f"k_tiny_tensor_arena_size = {opened.arena.smallest + 100};" in header


def test_firmware_is_for_tflm_targets_only(tiny_cnn_tflite, tmp_path) -> None:
    model = tmp_path / "tiny.tflite"
    model.write_bytes(tiny_cnn_tflite["int8"])
    with pytest.raises(EdgeqError) as caught:
        build_firmware(model, load_target("iot"), outdir=tmp_path / "fw")
    assert "harness firmware is for TFLite Micro" in caught.value.message
    assert not (tmp_path / "fw").exists()
