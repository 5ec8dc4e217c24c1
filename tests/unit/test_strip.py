"""edgeq.tflite.strip: the flashed model without names is bit-exact in TFLM, aligned, and named again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.tflite.reader import read_tflite
from edgeq.tflite.strip import read_tflite_named, render_sidecar, sidecar_path, strip_for_device

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def named() -> bytes:
    """The bundled example as the plain converter writes it: every tensor named, a signature."""
    import keras

    from conftest import plain_tflite
    from edgeq.calibration import load_dataset

    model = keras.saving.load_model(REPO / "examples" / "digits_cnn.keras", compile=False)
    return plain_tflite(model, data=load_dataset("digits:calibration").inputs[0])


def test_stripped_model_is_smaller_aligned_and_bit_exact_in_tflm(named) -> None:
    from ai_edge_litert import schema_py_generated as schema

    from edgeq.calibration import load_dataset
    from edgeq.emulator.runtimes import run_tflm

    info = read_tflite(named)
    stripped, sidecar = strip_for_device(named, info)
    assert len(stripped) < len(named) and sidecar["stripped_bytes"] == len(named) - len(stripped)
    bare = read_tflite(stripped)
    assert not any(t.name for t in bare.tensors) and bare.input_names == ("",) and bare.description == ""
    model = schema.Model.GetRootAs(stripped, 0)
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            assert buffer._tab.Vector(buffer._tab.Offset(4)) % 16 == 0, f"buffer {i} not 16-byte aligned"
    x = load_dataset("digits:eval").inputs[0][:64]
    before, after = run_tflm(named, [x]), run_tflm(stripped, [x])
    assert np.array_equal(before.raw_outputs[0], after.raw_outputs[0])
    assert sidecar["tensors"][0] == [t.name for t in info.tensors]
    # The biases of the per-channel convolutions and dense layers lost their (unused) scales.
    biases = {op.inputs[2] for op in info.ops if op.name in ("CONV_2D", "FULLY_CONNECTED") and len(op.inputs) > 2}
    assert biases and sidecar["bias_quantization_dropped"] == len(biases)
    assert all(not bare.tensors[b].scales and info.tensors[b].scales for b in biases)
    kept, _ = strip_for_device(named, info, lean=False)
    assert len(stripped) < len(kept) < len(named)
    assert all(read_tflite(kept).tensors[b].scales == info.tensors[b].scales for b in biases)


def test_lean_form_keeps_one_zero_point_per_weight_tensor_and_litert_gets_them_back(named) -> None:
    """TFLM reads one zero point as every channel's; LiteRT wants them all, so they are put back."""
    from ai_edge_litert import schema_py_generated as schema

    from edgeq.calibration import load_dataset
    from edgeq.emulator.runtimes import run_litert, run_tflm
    from edgeq.tflite.strip import litert_loadable

    info = read_tflite(named)
    stripped, sidecar = strip_for_device(named, info)
    per_channel = [t for t in info.tensors if len(t.scales) > 1 and t.is_constant and t.dtype == "int8"]
    assert per_channel and sidecar["zero_points_collapsed"] >= len(per_channel)
    root = schema.Model.GetRootAs(stripped, 0).Subgraphs(0)
    for t in per_channel:
        assert root.Tensors(t.index).Quantization().ZeroPointLength() == 1, t.name
    # The checked reader reads the collapsed form as TFLM does: a zero point for every channel.
    bare = read_tflite(stripped)
    assert all(bare.tensors[t.index].zero_points == t.zero_points == (0,) * len(t.scales) for t in per_channel)
    x = load_dataset("digits:eval").inputs[0][:64]
    assert np.array_equal(run_tflm(named, [x]).raw_outputs[0], run_tflm(stripped, [x]).raw_outputs[0])
    reopened = litert_loadable(stripped)
    assert reopened != stripped and litert_loadable(named) is named
    assert all(schema.Model.GetRootAs(reopened, 0).Subgraphs(0).Tensors(t.index).Quantization().ZeroPointLength()
               == len(t.scales) for t in per_channel)
    # run_litert opens the flashed model itself and gives the unstripped model's outputs.
    assert np.array_equal(run_litert(named, [x], kernels="builtin").raw_outputs[0],
                          run_litert(stripped, [x], kernels="builtin").raw_outputs[0])


def test_sidecar_names_the_stripped_model_only_when_it_matches(named, tmp_path) -> None:
    info = read_tflite(named)
    stripped, sidecar = strip_for_device(named, info)
    model = tmp_path / "m.tflite"
    model.write_bytes(stripped)
    sidecar_path(model).write_bytes(render_sidecar(sidecar))
    _, renamed = read_tflite_named(model)
    assert renamed.input_names == info.input_names and [t.name for t in renamed.tensors] == [t.name for t in info.tensors]
    other = dict(sidecar, model_sha256="0" * 64)
    sidecar_path(model).write_text(json.dumps(other))
    _, unnamed = read_tflite_named(model)
    assert unnamed.input_names == ("",)  # a sidecar for other bytes is ignored, not trusted
