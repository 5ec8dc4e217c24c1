"""Quantization-aware training through `edgeq convert`: Keras 3 and Keras 2 models, PTQ vs QAT,
BatchNormalization folding, and the errors a user meets. Real tfmot, converter, LiteRT and TFLM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import predict, reported_runtime, run_edgeq
from edgeq.pipeline import ConvertOptions, QatOptions, convert
from edgeq.quantize.training import TrainSettings
from edgeq.tflite.reader import read_tflite_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compared(keras3_model_path, tmp_path_factory):
    """The Keras 3 digits CNN, PTQ and QAT side by side for the MCU class."""
    options = ConvertOptions(calibration="digits", outdir=tmp_path_factory.mktemp("qat-compare"),
                             qat=QatOptions(settings=TrainSettings(epochs=8), compare=True))
    return convert(keras3_model_path, "mcu", options)


def test_keras3_qat_keeps_accuracy_against_ptq_and_float(compared, digits, float_predictions):
    """QAT ends no more than 0.5 points below PTQ or float. The issue's stricter PTQ criterion
    (0.2 points) is less than one sample of digits:eval (0.25 points), so it is measured by
    scripts/bench_qat.py on both sets and quoted in the README, not asserted on one seed here."""
    rows = compared.report.to_dict()["comparison"]
    ptq, qat = 100 * rows["ptq"]["quantized_top1"], 100 * rows["qat"]["quantized_top1"]
    float_top1 = 100 * rows["qat"]["float_top1"]
    assert qat >= ptq - 0.5, rows
    assert qat >= float_top1 - 0.5, rows
    # The numbers are the emitted model's own: recompute QAT's accuracy independently, in the
    # runtime the report names (TFLM, or LiteRT where it matched TFLM on this CPU).
    tflite = (compared.outdir / "my_model_2.tflite").read_bytes()
    runtime = reported_runtime(compared.report.to_dict()["emulation"]["accuracy"])
    mine = np.mean(predict(runtime, tflite, digits["eval"].inputs[0]).argmax(1) == digits["eval"].labels)
    assert 100 * mine == pytest.approx(qat, abs=1e-4)
    assert float_top1 == pytest.approx(100 * np.mean(float_predictions.argmax(1) == digits["eval"].labels))


def test_qat_output_is_a_full_int8_model_with_its_report(compared):
    report = compared.report.to_dict()
    assert report["method"] == "qat" and report["qat"]["bridged"] is True
    assert 1 <= report["qat"]["epochs_run"] <= 8 and report["qat"]["history"]["val_loss"]
    assert "sparse_categorical_crossentropy" in report["qat"]["loss"]
    info = read_tflite_file(compared.outdir / "my_model_2.tflite")
    assert info.is_fully_integer and report["gate"]["passed"]
    md = (compared.outdir / "report.md").read_text()
    assert "## Quantization-aware training" in md and "## PTQ vs QAT" in md


def test_keras2_h5_goes_through_qat_end_to_end(keras2_h5_path, tmp_path, digits):
    proc = run_edgeq("convert", str(keras2_h5_path), "-t", "nrf52840", "-c", "digits", "--qat", "--epochs", "3",
                     "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "int8 QAT" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "qat" and report["qat"]["epochs_run"] <= 3
    acc = report["emulation"]["accuracy"]
    assert acc["drop_points"] <= 1.0 and acc["quantized_top1"] >= 0.9
    assert (tmp_path / "k2_cnn_model_data.h").exists()


def test_dense_batchnorm_is_folded_and_beats_the_plain_converter(tmp_path, digits):
    """Dense->BatchNormalization: edgeq folds the pair; smaller file, no larger arena, outputs as good."""
    import keras

    from conftest import plain_tflite
    from edgeq.emulator.memory import measure_tflm_arena

    keras.utils.set_random_seed(3)
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(), layers.Dense(32), layers.BatchNormalization(),
                              layers.ReLU(), layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits["train"].inputs[0], digits["train"].labels, epochs=5, verbose=0)
    model.save(tmp_path / "bn.keras")
    result = convert(tmp_path / "bn.keras", "mcu", ConvertOptions(calibration="digits", outdir=tmp_path / "o"))
    dense, bn = model.layers[1].name, model.layers[2].name
    assert result.report.to_dict()["folded_batchnorm"] == [f"{dense}+{bn}"]
    ours = (tmp_path / "o" / "bn.tflite").read_bytes()
    plain = plain_tflite(model, data=digits["calibration"].inputs[0])
    assert len(ours) < len(plain)
    assert measure_tflm_arena(ours).smallest <= measure_tflm_arena(plain).smallest
    x, y = digits["eval"].inputs[0], digits["eval"].labels
    reference = model.predict(x, verbose=0)
    # In TFLM, the device's runtime; one sample of slack, as the weights come from this CPU's training.
    ours_out, plain_out = predict("tflm", ours, x), predict("tflm", plain, x)
    assert np.abs(ours_out - reference).mean() <= np.abs(plain_out - reference).mean() + 1e-6
    assert np.mean(ours_out.argmax(1) == y) >= np.mean(plain_out.argmax(1) == y) - 1 / len(y)
    # tfmot folds Conv+BN itself but not Dense+BN: without edgeq's fold, QAT leaves a float island.
    qat = convert(tmp_path / "bn.keras", "mcu", ConvertOptions(calibration="digits", outdir=tmp_path / "q",
                                                               qat=QatOptions(settings=TrainSettings(epochs=1))))
    assert qat.info.is_fully_integer and qat.gate.passed
    assert qat.report.to_dict()["folded_batchnorm"] == [f"{dense}+{bn}"]


def test_qat_refuses_per_tensor_targets(keras3_model_path, tmp_path):
    board = tmp_path / "pt.toml"
    board.write_text('inherits = "mcu"\nkind = "board"\ndescription = "per-tensor"\n'
                     '[quantization]\nper_channel = false\n')
    proc = run_edgeq("convert", str(keras3_model_path), "-t", str(board), "-c", "digits", "--qat",
                     "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "per-tensor" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_qat_refusals_are_bad_input(keras3_model_path, tmp_path):
    proc = run_edgeq("convert", str(keras3_model_path), "-c", "digits", "--qat", "--mode", "int16x8",
                     "-o", str(tmp_path / "a"))
    assert proc.returncode == 2 and "int8" in proc.stderr and "Traceback" not in proc.stderr
    np.savez(tmp_path / "own.npz", x=np.zeros((4, 8, 8, 1), np.float32) + 0.5)
    proc = run_edgeq("convert", str(keras3_model_path), "-c", str(tmp_path / "own.npz"), "--qat",
                     "-o", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--train" in proc.stderr and "Traceback" not in proc.stderr
