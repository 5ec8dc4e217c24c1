"""The emulator and the gate, end to end: real converter, real LiteRT and TFLM, real CLI.

Accuracy is recomputed here independently of edgeq's code; the arena is confirmed by running
TFLM in a child process with exactly that arena and with 16 bytes less.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import predict, reported_runtime, run_edgeq, stand_in_a_cpu_whose_litert_differs
from edgeq.pipeline import ConvertOptions, convert

pytestmark = pytest.mark.slow

SECTIONS = ("## Accuracy", "## Sizes", "## Memory", "## Latency", "## Per-layer error", "## Checks", "## Reproduce")


@pytest.fixture(scope="module")
def mcu(tmp_path_factory, keras3_model_path):
    return convert(keras3_model_path, "mcu", ConvertOptions(calibration="digits",
                                                            outdir=tmp_path_factory.mktemp("emu-mcu")))


def _tflm_runs(model: Path, arena: int) -> bool:
    """Build the TFLM interpreter with `arena` bytes and invoke once, in a child process (may crash)."""
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from tflite_micro.python.tflite_micro import runtime
        model = open(sys.argv[1], "rb").read()
        try:
            it = runtime.Interpreter.from_bytes(model, arena_size={arena})
            d = it.get_input_details(0)
            it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
            it.invoke()
        except RuntimeError:
            sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, timeout=120)
    return proc.returncode == 0


def _assert_figures_recomputed(acc: dict, tflite: bytes, digits, float_predictions) -> None:  # type: ignore[no-untyped-def]
    """Every accuracy figure, recomputed one sample at a time in the runtime the report names."""
    labels = digits["eval"].labels
    quantized = predict(reported_runtime(acc), tflite, digits["eval"].inputs[0])
    assert acc["samples"] == len(labels) == 400
    assert acc["float_top1"] == pytest.approx(np.mean(float_predictions.argmax(1) == labels), abs=1e-6)
    assert acc["quantized_top1"] == pytest.approx(np.mean(quantized.argmax(1) == labels), abs=1e-6)
    assert acc["top1_agreement"] == pytest.approx(np.mean(quantized.argmax(1) == float_predictions.argmax(1)),
                                                  abs=1e-6)
    assert acc["drop_points"] == pytest.approx(100 * (acc["float_top1"] - acc["quantized_top1"]), abs=1e-4)
    err = acc["errors"][0]
    assert err["mean_abs"] == pytest.approx(np.mean(np.abs(float_predictions - quantized)), rel=1e-4, abs=1e-6)
    assert err["max_abs"] == pytest.approx(np.max(np.abs(float_predictions - quantized)), rel=1e-4, abs=1e-6)
    assert err["snr_db"] > 10 and 0.95 < err["cosine"] <= 1.0


def test_accuracy_matches_an_independent_computation(mcu, digits, float_predictions):
    """Whichever runtime this CPU led the emulator to (LiteRT where its kernels matched TFLM on the
    first 100 samples, TFLM otherwise), the figures are that runtime's."""
    acc = mcu.report.to_dict()["emulation"]["accuracy"]
    _assert_figures_recomputed(acc, (mcu.outdir / "my_model_2.tflite").read_bytes(), digits, float_predictions)
    conf = acc["confirmation"]
    assert conf["runtime"] == "tflm" and conf["samples"] == 100
    assert acc["runtime_used"] == ("litert" if conf["identical"] else "tflm")
    assert mcu.report.to_dict()["gate"]["passed"] is True


def test_where_litert_differs_from_tflm_every_figure_comes_from_tflm(keras3_model_path, digits, float_predictions,
                                                                     tmp_path, monkeypatch, capsys):
    """The branch a CPU with other LiteRT kernels takes, forced here on any machine."""
    from edgeq.isolation import Worker

    stand_in_a_cpu_whose_litert_differs(monkeypatch, sample=3)
    # In this process: the stand-in patches this process's LiteRT runner, not a child's.
    result = convert(keras3_model_path, "mcu", ConvertOptions(calibration="digits", outdir=tmp_path),
                     worker=Worker(in_process=True))
    acc = result.report.to_dict()["emulation"]["accuracy"]
    conf = acc["confirmation"]
    assert conf["identical"] is False and conf["differing_samples"] >= 1 and conf["max_lsb_difference"] >= 1
    assert acc["runtime_used"] == "tflm" and acc["kernels"] is None
    _assert_figures_recomputed(acc, (result.outdir / "my_model_2.tflite").read_bytes(), digits, float_predictions)
    md = (result.outdir / "report.md").read_text()
    summary = f"on {conf['differing_samples']} of the first 100 samples; the full set ran in TFLM."
    assert md.count("differed from TFLM") == 1 and summary in md, md
    assert result.report.to_dict()["gate"]["passed"] is True
    from edgeq.cli import _summary

    _summary(result.report)
    terminal = capsys.readouterr().out
    assert (f"(TFLM; LiteRT's kernels on this CPU differed from TFLM by up to {conf['max_lsb_difference']} LSB "
            f"on {conf['differing_samples']} of the first 100 samples)") in terminal, terminal


def test_reported_arena_runs_in_tflm_and_16_bytes_less_does_not(mcu):
    ram = mcu.report.to_dict()["emulation"]["memory"]["ram"]
    arena = ram["tflm_arena"]
    model = mcu.outdir / "my_model_2.tflite"
    assert ram["needed_bytes"] == arena["smallest"] > 0
    assert _tflm_runs(model, arena["smallest"])
    assert not _tflm_runs(model, arena["smallest"] - 16)
    assert ram["firmware_arena_bytes"] == arena["smallest"] + mcu.target.memory.arena_margin_bytes
    header = (mcu.outdir / "my_model_2_model_data.h").read_text()
    assert f"k_my_model_2_tensor_arena_size = {ram['firmware_arena_bytes']};" in header
    assert ram["total_bytes"] == ram["firmware_arena_bytes"] + mcu.target.memory.reserved_ram_bytes


def test_reports_render(mcu):
    md = (mcu.outdir / "report.md").read_text()
    for section in SECTIONS:
        assert section in md, section
    arena = mcu.report.to_dict()["emulation"]["memory"]["ram"]["firmware_arena_bytes"]
    assert "**Gate: PASSED**" in md and f"_tensor_arena_size` = {arena:,} B" in md
    png = (mcu.outdir / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image

    image = matplotlib.image.imread(mcu.outdir / "report.png")
    assert image.shape[0] >= 300 and image.shape[1] >= 900
    latency = mcu.report.to_dict()["emulation"]["latency"]
    assert latency["total_ms"] > 0 and latency["total_macs"] > 0
    assert mcu.report.to_dict()["emulation"]["per_layer"]["worst"], "QuantizationDebugger gave no per-layer statistics"


def test_litert_targets_report_peak_activations(keras3_model_path, tmp_path):
    result = convert(keras3_model_path, "iot", ConvertOptions(calibration="digits", outdir=tmp_path))
    ram = result.report.to_dict()["emulation"]["memory"]["ram"]
    assert ram["tflm_arena"] is None and ram["firmware_arena_bytes"] is None
    act = ram["litert_activations"]
    assert 0 < act["peak_bytes"] <= act["total_activation_bytes"]
    assert result.report.to_dict()["emulation"]["accuracy"]["runtime_used"] == "litert"


def _dense_model(path: Path, units: int) -> None:
    """1024 -> units -> 10: about units * 1,034 int8 weight bytes."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(10)])
    model.save(path)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    _dense_model(root / "big.keras", 1100)  # ~1.14 MB of int8 weights: over the 1 MiB MCU flash
    rng = np.random.default_rng(0)
    np.savez(root / "cal.npz", x=rng.random((32, 1024), dtype=np.float32))
    return root


def test_too_large_model_fails_the_mcu_gate_and_fits_a_bigger_board(big_model, tmp_path):
    model, cal = big_model / "big.keras", big_model / "cal.npz"
    out = tmp_path / "mcu"
    proc = run_edgeq("convert", str(model), "-t", "mcu", "-c", str(cal), "-o", str(out))
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "flash" in proc.stderr and "exceeds" in proc.stderr and "fits: " in proc.stderr
    assert "stm32h743" in proc.stderr.split("fits: ")[1].splitlines()[0]
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["gate"] == {"passed": False, "failed": ["flash"], "forced": False}
    assert "FAILED" in (out / "report.md").read_text()

    bigger = tmp_path / "h7"
    proc = run_edgeq("convert", str(model), "-t", "stm32h743", "-c", str(cal), "-o", str(bigger))
    assert proc.returncode == 0, proc.stderr
    assert (bigger / "big_model_data.cc").exists() and (bigger / "big.tflite").exists()


def test_force_writes_the_outputs_and_marks_the_report(big_model, tmp_path):
    out = tmp_path / "forced"
    proc = run_edgeq("convert", str(big_model / "big.keras"), "-t", "mcu", "-c", str(big_model / "cal.npz"),
                     "-o", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert (out / "big.tflite").exists() and (out / "big_model_data.h").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["gate"] == {"passed": False, "failed": ["flash"], "forced": True}
    assert "--force" in (out / "report.md").read_text()


@pytest.mark.parametrize("mode, kernel", [("float16", "float16"), ("dynamic", "hybrid")])
def test_float16_and_dynamic_models_are_refused_for_mcu(keras3_model_path, tmp_path, mode, kernel):
    phone = convert(keras3_model_path, "phone", ConvertOptions(mode=mode, outdir=tmp_path / "phone"))
    proc = run_edgeq("emulate", str(phone.outdir / "my_model_2.tflite"), "--target", "mcu")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{kernel} " in proc.stderr and "kernels" in proc.stderr
    assert "CONV_2D" in proc.stderr or "FULLY_CONNECTED" in proc.stderr


def test_emulate_cli_agrees_with_convert(mcu, keras3_model_path, tmp_path):
    proc = run_edgeq("emulate", str(mcu.outdir / "my_model_2.tflite"), "--target", "mcu", "--data", "digits",
                     "--reference", str(keras3_model_path), "--json", "--report", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ours, theirs = report["emulation"], mcu.report.to_dict()["emulation"]
    assert ours["mode"] == "int8"
    for key in ("float_top1", "quantized_top1", "top1_agreement", "drop_points"):
        assert ours["accuracy"][key] == theirs["accuracy"][key], key
    assert ours["memory"]["ram"]["tflm_arena"] == theirs["memory"]["ram"]["tflm_arena"]
    assert ours["host_latency"]["median_us"] > 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.json", "report.md", "report.png"]


def test_unrepresentative_calibration_fails_the_accuracy_gate(mcu, keras3_model_path, digits, tmp_path):
    """Calibrated on inputs 20x too dark, activations saturate on real data: the drop is caught.
    The folder holds an earlier run's outputs: the rejected model must not survive next to its report."""
    dark = tmp_path / "dark.npz"
    np.savez(dark, x=digits["calibration"].inputs[0] * 0.05, y=digits["calibration"].labels)
    out = tmp_path / "o"
    shutil.copytree(mcu.outdir, out)
    proc = run_edgeq("convert", str(keras3_model_path), "-t", "mcu", "-c", str(dark), "--eval", "digits",
                     "-o", str(out), "--overwrite")
    assert proc.returncode == 3, proc.stderr
    assert "accuracy" in proc.stderr and "over the limit of 1" in proc.stderr and "calibration" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["failed"] == ["accuracy"]
    assert report["emulation"]["accuracy"]["drop_points"] > 1
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]


def test_multi_output_models_compare_each_output_with_its_own_float_output(tmp_path, digits):
    """The converter lists this model's outputs as ':1' before ':0'; pairing by position would
    compare a 3-way head with a 10-way one (or two different heads of the same shape)."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1), name="image")
    features = keras.layers.Flatten()(keras.layers.Conv2D(8, 3, activation="relu")(x))
    first = keras.layers.Dense(10, activation="softmax", name="digit")(features)
    second = keras.layers.Dense(3, activation="softmax", name="coarse")(keras.layers.Dense(16)(features))
    keras.Model(x, [first, second]).save(tmp_path / "two.keras")
    result = convert(tmp_path / "two.keras", "iot", ConvertOptions(calibration="digits", outdir=tmp_path / "o"))
    acc = result.report.to_dict()["emulation"]["accuracy"]
    assert len(acc["errors"]) == 2
    assert all(e["snr_db"] > 15 and e["cosine"] > 0.97 for e in acc["errors"]), acc["errors"]
    assert acc["top1_agreement"] > 0.9


def test_reference_without_data_is_bad_input(mcu, keras3_model_path):
    proc = run_edgeq("emulate", str(mcu.outdir / "my_model_2.tflite"), "--reference", str(keras3_model_path))
    assert proc.returncode == 2 and "--reference needs --data" in proc.stderr


def test_max_accuracy_drop_must_not_be_negative(mcu):
    proc = run_edgeq("emulate", str(mcu.outdir / "my_model_2.tflite"), "--max-accuracy-drop", "-1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
