"""`edgeq convert --search` on a Dense autoencoder whose converter default does not fit a small
board's RAM: the search finds a recipe that fits, at least as good as per-tensor weights
everywhere, records it, and `--recipe` replays it byte for byte."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_edgeq, saved_dense_autoencoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> tuple[Path, Path]:
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    base = rng.normal(size=(8, 64)).astype(np.float32)
    x = (rng.normal(size=(400, 8)) @ base + 0.1 * rng.normal(size=(400, 64))).astype(np.float32)
    folder = tmp_path_factory.mktemp("search")
    saved_dense_autoencoder(folder, x, [(48, "relu"), (8, "relu"), (48, "relu"), (64, None)], epochs=8, name="ae")
    np.savez(folder / "ae.npz", x=x[:200])
    # Anomaly detection data: 12 normal files from the training distribution, 6 anomalous ones from
    # another, 10 samples each; y is per sample (the file's label), groups the file id.
    normal = (rng.normal(size=(120, 8)) @ base).astype(np.float32)
    odd = (rng.normal(size=(60, 8)) @ rng.normal(size=(8, 64)) * 1.5).astype(np.float32)
    np.savez(folder / "anomaly.npz", x=np.concatenate([normal, odd]), y=np.repeat([0, 1], [120, 60]),
             groups=np.repeat(np.arange(18), 10))
    return folder / "ae.keras", folder / "ae.npz"


def _board(folder: Path, ram: int) -> Path:
    path = folder / "small.toml"
    path.write_text(f'kind = "board"\ninherits = "mcu"\ndescription = "a small part"\n[memory]\n'
                    f"ram_bytes = {ram}\nreserved_ram_bytes = 1024\narena_margin_bytes = 0\n")
    return path


def _convert(model: Path, data: Path, target: Path | str, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    proc = run_edgeq("convert", str(model), "--target", str(target), "--calibration", str(data), "--eval", str(data),
                     "-o", str(out), *extra)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return proc, report


def test_search_fits_a_budget_the_default_exceeds_and_replays_byte_for_byte(autoencoder, tmp_path: Path) -> None:
    model, data = autoencoder
    roomy, report = _convert(model, data, _board(tmp_path, 1 << 20), tmp_path / "roomy", "--search")
    assert roomy.returncode == 0, roomy.stderr
    ends = {c["label"]: c for c in report["search"]["candidates"]}
    default, flat = ends["per channel everywhere (the converter's default)"], ends["per tensor everywhere"]
    assert flat["ram_bytes"] < default["ram_bytes"]  # TFLM keeps 8 bytes per FC output channel
    (tmp_path / "t").mkdir()
    tight = _board(tmp_path / "t", (default["ram_bytes"] + flat["ram_bytes"]) // 2)
    proc, report = _convert(model, data, tight, tmp_path / "out", "--search")
    assert proc.returncode == 0, proc.stderr
    search = report["search"]
    chosen = [c for c in search["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["passed"] and report["gate"]["passed"]
    by_label = {c["label"]: c for c in search["candidates"]}
    assert "ram" in by_label["per channel everywhere (the converter's default)"]["failed_checks"]
    assert chosen[0]["quality"] >= by_label["per tensor everywhere"]["quality"]
    assert report["recipe"]["per_tensor_layers"] == chosen[0]["per_tensor_layers"]
    assert "search" in proc.stdout and "> " in proc.stdout  # the table, the chosen row marked
    assert "## Recipe search" in (tmp_path / "out" / "report.md").read_text()
    replay, again = _convert(model, data, tight, tmp_path / "replay", "--recipe", str(tmp_path / "out" / "report.json"))
    assert replay.returncode == 0, replay.stderr
    models = {k: v for k, v in report["outputs"].items() if not k.startswith("report")}
    assert models and models == {k: v for k, v in again["outputs"].items() if not k.startswith("report")}


def test_search_refuses_what_it_cannot_combine_with(autoencoder, tmp_path: Path) -> None:
    model, data = autoencoder
    proc, _ = _convert(model, data, "mcu", tmp_path / "a", "--search", "--qat")
    assert proc.returncode == 2 and "--search" in proc.stderr and "Traceback" not in proc.stderr
    # Nothing fits (a budget below even per-tensor everywhere): exit 3, the closest recipes, what to relax.
    proc, report = _convert(model, data, _board(tmp_path, 2048), tmp_path / "none", "--search")
    assert proc.returncode == 3 and "Closest:" in proc.stderr and "Relax:" in proc.stderr
    assert report["search"]["tried"] == 2 and not any(c["chosen"] for c in report["search"]["candidates"])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc, _ = _convert(model, data, "mcu", tmp_path / "b", "--recipe", str(bad))
    assert proc.returncode == 2 and f"--recipe {bad}" in proc.stderr and "Traceback" not in proc.stderr


def test_edgeq_search_measures_every_prefix(autoencoder, tmp_path: Path) -> None:
    model, data = autoencoder
    proc = run_edgeq("search", str(model), "--target", "mcu", "--calibration", str(data), "--eval", str(data),
                     "-o", str(tmp_path / "all"))
    assert proc.returncode == 0, proc.stderr
    search = json.loads((tmp_path / "all" / "report.json").read_text())["search"]
    assert search["tried"] == search["layers"] + 1 == len(search["candidates"]) == 5  # 4 Dense layers: 0..4
    assert sum(c["chosen"] for c in search["candidates"]) == 1 and "measured every prefix" in search["stopped_because"]
    rams = [c["ram_bytes"] for c in search["candidates"]]
    assert rams == sorted(rams, reverse=True)  # each per-tensor layer frees arena bytes


def test_search_judges_an_anomaly_detector_by_its_per_file_auc(autoencoder, tmp_path: Path) -> None:
    model, data = autoencoder
    proc = run_edgeq("convert", str(model), "--target", "mcu", "--calibration", str(data), "--eval",
                     str(data.with_name("anomaly.npz")), "--search", "-o", str(tmp_path / "auc"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "auc" / "report.json").read_text())
    accuracy = report["emulation"]["accuracy"]
    assert accuracy["auc_files"] == 18 and 0.5 < accuracy["quantized_auc"] <= 1.0 and accuracy["float_auc"] > 0.5
    assert accuracy["quantized_top1"] is None  # y is a file's label, not a class of the 64 outputs
    assert "AUC" in report["search"]["quality_metric"] and "per-file AUC" in proc.stdout
    check = next(c for c in report["checks"] if c["name"] == "accuracy")
    assert check["passed"] and "per-file AUC" in check["message"]


def test_sweep_tables_every_model_on_every_target(autoencoder, tmp_path: Path) -> None:
    model, data = autoencoder
    small = _board(tmp_path, 2048)
    proc = run_edgeq("sweep", str(model), "--targets", f"mcu,{small}", "--calibration", str(data), "--eval", str(data),
                     "-o", str(tmp_path / "zoo"))
    assert proc.returncode == 0, proc.stderr
    import csv

    rows = list(csv.DictReader((tmp_path / "zoo" / "sweep.csv").read_text().splitlines()))
    assert [(r["model"], r["target"], r["passes"]) for r in rows] == [("ae.keras", "mcu", "yes"),
                                                                        ("ae.keras", "small", "no")]
    assert "ram" in rows[1]["failed checks"] and rows[0]["accuracy"].startswith("SNR")
    assert "1 of 2 pairs pass" in proc.stdout and (tmp_path / "zoo" / "sweep.md").exists()


@pytest.fixture(scope="module")
def outlier_regressor(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A Dense regressor with an outlier unit (scripts/reference_models.py): int8 misses an SNR floor
    that int16 keeps. Its folder also has train.npz (x, y) for QAT."""
    from edgeq._tf import tf

    tf()
    import keras

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from reference_models import outlier_regressor as build

    model, calib, held_out, _ = build(keras, tmp_path_factory.mktemp("outlier"))
    return model, calib, held_out


def test_search_gives_int16_activations_to_the_layers_int8_is_too_coarse_for(outlier_regressor,
                                                                              tmp_path: Path) -> None:
    model, calib, held_out = outlier_regressor

    def convert(out: str, *extra: str):  # type: ignore[no-untyped-def]
        proc = run_edgeq("convert", str(model), "--target", "mcu", "--calibration", str(calib), "--eval",
                         str(held_out), "-o", str(tmp_path / out), *extra)
        return proc, json.loads((tmp_path / out / "report.json").read_text())

    # int8 keeps about 15 dB here, int16 about 21 (scripts/bench_search.py): a floor of 18 dB sits
    # 3 dB from both, far more than calibration or kernels move either between machines.
    proc, report = convert("search", "--search", "--min-snr", "18")
    assert proc.returncode == 0, proc.stderr
    int8_snr = next(c["quality"] for c in report["search"]["candidates"]
                    if c["label"].startswith("per channel every"))
    assert int8_snr < 18
    search = report["search"]
    by_label = {c["label"]: c for c in search["candidates"]}
    assert "quality floor" in by_label["per channel everywhere (the converter's default)"]["failed_checks"]
    # More calibration first (it costs the device nothing), which does not fix an outlier channel.
    assert by_label["per channel everywhere (the converter's default), calibrated on 400 samples"
                    ]["calibration_samples"] == 400
    mixed = [c for c in search["candidates"] if c.get("int16_layers")]
    assert mixed and all(c["quality"] > int8_snr for c in mixed if c["passed"])
    fewest = min((c for c in mixed if c["passed"]), key=lambda c: len(c["int16_layers"]))
    assert 0 < len(fewest["int16_layers"]) < 3 and "int16 activations" in search["stopped_because"]
    chosen = [c for c in search["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["passed"] and chosen[0]["quality"] >= 18
    # The mixed recipe, replayed: int8 I/O, int16 inside, the same bytes twice.
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"mode": "int8", "per_channel": True, "int16_layers": fewest["int16_layers"]}))
    runs = [convert(f"replay{k}", "--recipe", str(recipe)) for k in range(2)]
    assert all(p.returncode == 0 for p, _ in runs), runs[0][0].stderr
    first, second = (r["outputs"]["reg.tflite"] for _, r in runs)
    assert first == second and runs[0][1]["recipe"]["int16_layers"] == sorted(fewest["int16_layers"])
    from edgeq.tflite.reader import read_tflite

    info = read_tflite((tmp_path / "replay0" / "reg.tflite").read_bytes())
    assert info.input_tensors[0].dtype == info.output_tensors[0].dtype == "int8"
    assert "int16" in {t.dtype for t in info.tensors} and "QUANTIZE" in info.all_op_names
    snr = runs[0][1]["emulation"]["accuracy"]["errors"][0]["snr_db"]
    assert abs(snr - fewest["quality"]) < 0.01  # the replay measures what the search measured


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc")
def test_search_for_the_c_runtime_uses_int16_layers_and_runs_bit_exact_on_the_board(outlier_regressor,
                                                                                     tmp_path: Path) -> None:
    """The c runtime has int16x8 kernels, so the search's int16 lever is open to it: the recipe it
    writes mixes int8 and int16 layers (QUANTIZE between them), and its C runs on the emulated
    Cortex-M4 bit-exact with TFLM."""
    model, calib, held_out = outlier_regressor
    out = tmp_path / "c"
    proc = run_edgeq("convert", str(model), "--target", "mcu", "--runtime", "c", "--calibration", str(calib),
                     "--eval", str(held_out), "--search", "--min-snr", "18", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    chosen = next(c for c in report["search"]["candidates"] if c["chosen"])
    assert chosen["passed"] and chosen["quality"] >= 18 and chosen.get("int16_layers"), chosen
    from edgeq.tflite.reader import read_tflite

    info = read_tflite((out / "reg.tflite").read_bytes())
    assert "int16" in {t.dtype for t in info.tensors} and "QUANTIZE" in info.all_op_names
    board = report["emulation"]["latency"]["emulated_board"]
    assert board["bit_exact"] >= 8 and board["instructions_median"] > 0
    assert "int16_t" in (out / "reg_model.c").read_text()


def test_search_ends_with_qat_where_int16_is_not_allowed(outlier_regressor, tmp_path: Path) -> None:
    model, calib, held_out = outlier_regressor
    proc = run_edgeq("convert", str(model), "--target", "stm32f072rb", "--calibration", str(calib), "--eval",
                     str(held_out), "--search", "--min-snr", "60", "--train", str(calib.with_name("train.npz")), "--epochs", "1",
                     "-o", str(tmp_path / "qat"))
    assert proc.returncode == 3, proc.stderr  # 60 dB is out of reach: nothing passes
    report = json.loads((tmp_path / "qat" / "report.json").read_text())
    search = report["search"]
    trained = [c for c in search["candidates"] if c.get("method") == "qat"]
    assert len(trained) == 1 and trained[0]["quality"] is not None and not trained[0]["chosen"]
    assert not any(c.get("int16_layers") or c.get("mode") for c in search["candidates"])  # the M0 allows int8 only
    assert "quantization-aware training did not pass either" in search["stopped_because"]
    assert "QAT" in search["space"] and "Closest:" in proc.stderr
