"""End to end: a trained Keras model through the real converter, read back, run in the real
LiteRT and TFLM interpreters, and its C arrays compiled with the real host compiler."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import (LITERT_TFLM_MAX_DIFFERING, LITERT_TFLM_MAX_LSB, predict, predict_raw, reported_runtime,
                      run_edgeq)
from edgeq.pipeline import ConvertOptions, convert
from edgeq.tflite.reader import read_tflite_file
from edgeq.tflite.strip import read_flashed
from edgeq.tflite.tflm_ops import RESOLVER_METHODS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(tmp_path_factory, keras3_model_path):
    """One conversion per class target, shared by the tests below."""
    results = {}
    for target in ("mcu", "iot", "phone", "mcu-c"):
        out = tmp_path_factory.mktemp(f"out-{target}")
        results[target] = convert(keras3_model_path, target, ConvertOptions(calibration="digits", outdir=out))
    return results


@pytest.mark.parametrize("target", ["mcu", "iot", "phone"])
def test_quantized_model_agrees_with_float_model(converted, target, digits, float_predictions):
    result = converted[target]
    tflite = (result.outdir / f"{result.name}.tflite").read_bytes()
    quantized = predict(reported_runtime(result.report.to_dict()["emulation"]["accuracy"]), tflite, digits["eval"].inputs[0])
    agreement = np.mean(quantized.argmax(1) == float_predictions.argmax(1))
    accuracy = np.mean(quantized.argmax(1) == digits["eval"].labels)
    assert agreement >= 0.97, f"{target}: int8 vs float top-1 agreement {agreement:.3f}"
    assert accuracy >= 0.90, f"{target}: int8 accuracy {accuracy:.3f}"
    assert result.quantized_bytes < result.float_bytes / 2


def test_mcu_outputs_are_tflm_ready(converted):
    result = converted["mcu"]
    names = sorted(p.name for p in result.outdir.iterdir())
    assert names == sorted([
        "my_model_2.tflite", "my_model_2_model_data.cc", "my_model_2_model_data.h",
        "my_model_2_op_resolver.h", "my_model_2_names.json", "report.json", "report.md", "report.png",
    ])
    info = read_tflite_file(result.outdir / "my_model_2.tflite")
    assert info.is_fully_integer
    assert [info.tensors[i].dtype for i in info.inputs + info.outputs] == ["int8", "int8"]
    # Batch fixed to 1: the dynamic-batch Flatten ops are gone.
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(info.all_op_names)
    report = json.loads((result.outdir / "report.json").read_text())
    assert report["recipe"]["mode"] == "int8" and report["target"]["name"] == "mcu"
    flashed, _ = read_flashed(result.outdir / "my_model_2.tflite")
    assert report["sizes"]["quantized_tflite_bytes"] == len(flashed)  # what goes on the device
    assert report["calibration"]["samples_used"] == 200
    assert report["outputs"]["my_model_2.tflite"]
    assert all(c["passed"] for c in report["checks"])


@pytest.mark.parametrize("target", ["mcu", "iot", "phone", "mcu-c"])
def test_litert_loads_every_tflite_edgeq_writes(converted, target):
    """The .tflite is in the standard form for every target, so LiteRT (and every evaluation script
    built on its loader) opens it and runs it; the lean form with one zero point for all channels
    is only in the flashed bytes, and the file gives exactly those bytes back."""
    from ai_edge_litert.interpreter import Interpreter

    out = converted[target].outdir
    path = out / "my_model_2.tflite"
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
    interpreter.invoke()
    assert np.isfinite(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(np.float64)).all()
    if target.startswith("mcu"):
        names = json.loads((out / "my_model_2_names.json").read_text())
        flashed, _ = read_flashed(path)
        assert names["zero_points_collapsed"] > 0 and names["flashed_sha256"] != names["model_sha256"]
        assert len(flashed) < path.stat().st_size
        import hashlib

        assert hashlib.sha256(flashed).hexdigest() == names["flashed_sha256"]


def test_litert_float_io_targets(converted):
    for target in ("iot", "phone"):
        info = read_tflite_file(converted[target].outdir / "my_model_2.tflite")
        assert [info.tensors[i].dtype for i in info.inputs + info.outputs] == ["float32", "float32"]
        assert not (converted[target].outdir / "my_model_2_model_data.cc").exists()


def test_tflm_and_litert_stay_close_and_the_report_says_which_ran(converted, digits):
    """TFLM (the device's runtime) and LiteRT's builtin kernels give the same int8 outputs or
    outputs a few LSB apart. Which samples differ, if any, belongs to this CPU: LiteRT picks its
    kernels by CPU features. The report's confirmation must describe this machine's difference
    exactly, and the emulator must have run TFLM wherever LiteRT differed on the confirmation subset."""
    tflite = (converted["mcu"].outdir / "my_model_2.tflite").read_bytes()
    x = digits["eval"].inputs[0]
    micro, _, _ = predict_raw("tflm", tflite, x)
    lite, _, _ = predict_raw("litert", tflite, x)
    lsb = np.abs(micro.astype(np.int64) - lite.astype(np.int64))
    assert lsb.max() <= LITERT_TFLM_MAX_LSB, f"LiteRT and TFLM differ by {lsb.max()} LSB"
    assert np.count_nonzero(lsb.max(axis=1)) <= LITERT_TFLM_MAX_DIFFERING * len(x)
    acc = converted["mcu"].report.to_dict()["emulation"]["accuracy"]
    conf = acc["confirmation"]
    head = lsb[:conf["samples"]]
    differing = int(np.count_nonzero(head.max(axis=1)))
    assert conf["differing_samples"] == differing
    assert conf["max_lsb_difference"] == int(head.max())
    assert conf["identical"] is (differing == 0)
    assert reported_runtime(acc) == ("litert" if differing == 0 else "tflm")


def test_op_resolver_lists_exactly_the_models_ops(converted):
    out = converted["mcu"].outdir
    header = (out / "my_model_2_op_resolver.h").read_text()
    info = read_tflite_file(out / "my_model_2.tflite")
    called = re.findall(r"resolver\.(Add\w+)\(\)", header)
    assert sorted(called) == sorted(RESOLVER_METHODS[op] for op in info.all_op_names)
    assert len(set(called)) == len(called)
    count = int(re.search(r"MicroMutableOpResolver<(\d+)>", header).group(1))
    assert count == len(info.all_op_names) == len(called)


CHECK_PROGRAM = r"""
#include <cstdint>
#include <cstdio>
#include <vector>
#include "my_model_2_model_data.h"
#include "my_model_2_op_resolver.h"

int main(int argc, char** argv) {
  if (argc < 2) return 11;
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 10;
  std::vector<unsigned char> bytes;
  int c;
  while ((c = std::fgetc(f)) != EOF) bytes.push_back(static_cast<unsigned char>(c));
  std::fclose(f);
  if (bytes.size() != g_my_model_2_model_data_size) { std::printf("size %zu != %u\n", bytes.size(), g_my_model_2_model_data_size); return 1; }
  for (size_t i = 0; i < bytes.size(); ++i) if (bytes[i] != g_my_model_2_model_data[i]) { std::printf("byte %zu differs\n", i); return 2; }
  if (reinterpret_cast<std::uintptr_t>(g_my_model_2_model_data) % 16 != 0) { std::printf("misaligned\n"); return 3; }
  auto resolver = make_my_model_2_op_resolver();
  if (resolver.added != k_my_model_2_op_count) { std::printf("ops %u\n", resolver.added); return 4; }
  std::printf("ok %u bytes, %u ops, arena %u\n", g_my_model_2_model_data_size, resolver.added,
              k_my_model_2_tensor_arena_size);
  return 0;
}
"""


def _resolver_interface(tmp: Path) -> None:
    """TFLM's MicroMutableOpResolver *interface* (its Add methods, from the method table), so the
    generated header is compiled for real: a misspelt method or a wrong N fails to build/run.
    TFLM's own headers are not installable from a package registry."""
    methods = "\n".join(
        f"  TfLiteStatus {m}() {{ return ++added <= N ? kTfLiteOk : kTfLiteError; }}"
        for m in sorted(set(RESOLVER_METHODS.values()))
    )
    path = tmp / "tensorflow/lite/micro/micro_mutable_op_resolver.h"
    path.parent.mkdir(parents=True)
    path.write_text(
        "#pragma once\nenum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 };\nnamespace tflite {\n"
        f"template <unsigned int N> class MicroMutableOpResolver {{\n public:\n  unsigned int added = 0;\n{methods}\n}};\n}}\n"
    )


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs the host C++ compiler")
def test_c_arrays_compile_and_match_the_tflite(converted, tmp_path):
    out = converted["mcu"].outdir
    (tmp_path / "check.cc").write_text(CHECK_PROGRAM)
    _resolver_interface(tmp_path)
    exe = tmp_path / "check"
    build = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", str(out), "-I", str(tmp_path),
         str(tmp_path / "check.cc"), str(out / "my_model_2_model_data.cc"), "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    flashed = tmp_path / "flashed.tflite"  # the lean form the C array holds, derived from the written file
    flashed.write_bytes(read_flashed(out / "my_model_2.tflite")[0])
    run = subprocess.run([str(exe), str(flashed)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.startswith("ok ")
    arena = converted["mcu"].report.to_dict()["emulation"]["memory"]["ram"]["firmware_arena_bytes"]
    assert run.stdout.strip().endswith(f"arena {arena}")


def test_cli_run_is_byte_identical_to_library_run(converted, keras3_model_path, tmp_path):
    """Determinism across processes: same inputs and versions give the same bytes."""
    out = tmp_path / "again"
    proc = run_edgeq("convert", str(keras3_model_path), "--target", "mcu", "--calibration", "digits", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "wrote to" in proc.stdout and "smaller" in proc.stdout
    first = converted["mcu"].outdir
    for path in sorted(first.iterdir()):
        if path.name == "report.json":  # the same but for the host's timings, stage by stage
            again, before = (json.loads(p.read_text()) for p in (out / path.name, path))
            assert [t["stage"] for t in again.pop("timings")] == [t["stage"] for t in before.pop("timings")]
            assert again == before, "report.json differs between runs beyond its timings"
            continue
        assert (out / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs between runs"
    timings = json.loads((first / "report.json").read_text())["timings"]
    assert timings[0]["stage"].startswith("load") and all(t["seconds"] >= 0 for t in timings)
    assert all(0 < a["peak_rss_mb"] <= b["peak_rss_mb"] for a, b in zip(timings, timings[1:]))


def test_keras2_h5_and_savedmodel_convert_for_mcu(keras2_h5_path, tmp_path, digits):
    import tf_keras

    result = convert(keras2_h5_path, "mcu", ConvertOptions(calibration="digits", outdir=tmp_path / "h5"))
    assert result.info.is_fully_integer
    model = tf_keras.models.load_model(keras2_h5_path, compile=False)
    saved = tmp_path / "k2_savedmodel"
    model.save(saved, save_format="tf")
    result_sm = convert(saved, "mcu", ConvertOptions(calibration="digits", outdir=tmp_path / "sm", name="k2 saved"))
    assert result_sm.name == "k2_saved" and result_sm.info.is_fully_integer
    for res in (result, result_sm):
        tflite = (res.outdir / f"{res.name}.tflite").read_bytes()
        predictions = predict("tflm", tflite, digits["eval"].inputs[0])
        assert np.mean(predictions.argmax(1) == digits["eval"].labels) >= 0.9


def test_int16x8_on_request(keras3_model_path, tmp_path):
    result = convert(keras3_model_path, "mcu", ConvertOptions(mode="int16x8", calibration="digits", outdir=tmp_path))
    info = result.info
    assert [info.tensors[i].dtype for i in info.inputs] == ["int16"]
    assert result.recipe.activations == "int16"


def test_float16_for_phone_needs_no_calibration(keras3_model_path, tmp_path):
    result = convert(keras3_model_path, "phone", ConvertOptions(mode="float16", outdir=tmp_path))
    assert "float16" in {t.dtype for t in result.info.tensors}
    assert result.report.to_dict()["calibration"] is None


def test_export_c_and_inspect_cli(converted, tmp_path):
    tflite = converted["mcu"].outdir / "my_model_2.tflite"
    proc = run_edgeq("export-c", str(tflite), "-o", str(tmp_path), "--name", "3rd model")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model_3rd_model_model_data.cc", "model_3rd_model_model_data.h", "model_3rd_model_op_resolver.h"]
    # The C array holds the flashed (lean) form, which the written file gives back
    flashed = len(read_flashed(tflite)[0])
    assert (tmp_path / "model_3rd_model_model_data.cc").read_bytes().count(b"0x") == flashed < tflite.stat().st_size
    proc = run_edgeq("inspect", str(tflite), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["fully_integer"] is True
    proc = run_edgeq("inspect", str(tflite))
    assert "fully integer" in proc.stdout and "CONV_2D" in proc.stdout


def test_user_profile_by_path_inheriting_a_bundled_class(keras3_model_path, tmp_path):
    board = tmp_path / "boards" / "my-board.toml"
    board.parent.mkdir()
    board.write_text('inherits = "mcu"\nkind = "board"\ndescription = "mine"\n[memory]\nflash_bytes = 131_072\n')
    result = convert(keras3_model_path, str(board), ConvertOptions(calibration="digits", outdir=tmp_path / "o"))
    target = result.report.to_dict()["target"]
    assert target["chain_files"] == ["my-board.toml", "mcu.toml"]
    assert set(target["sha256"]) == {"my-board.toml", "mcu.toml"}
    assert result.target.memory.flash_bytes == 131_072 and result.target.memory.ram_bytes == 262_144


def test_flash_budget_exceeded_is_a_target_check_failure(keras3_model_path, tmp_path):
    board = tmp_path / "tiny.toml"
    board.write_text('inherits = "mcu"\nkind = "board"\ndescription = "too small"\n[memory]\nflash_bytes = 65_536\n')
    proc = run_edgeq("convert", str(keras3_model_path), "--target", str(board), "-c", "digits", "-o", str(tmp_path / "o"))
    assert proc.returncode == 3, proc.stderr
    assert "flash" in proc.stderr and "exceeds" in proc.stderr and "Traceback" not in proc.stderr
    # The gate writes the report, never the model files.
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["report.json", "report.md", "report.png"]
