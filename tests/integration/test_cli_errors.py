"""Bad input through the real CLI: exit code 2 (3 for a failed target check), a message that
names the problem, no traceback, and nothing written or lost."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import run_edgeq


def assert_user_error(proc, *words: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def test_unknown_target_lists_valid_names(tmp_path):
    proc = run_edgeq("convert", "whatever.keras", "--target", "mcuu", "-o", str(tmp_path / "o"))
    assert_user_error(proc, "unknown target 'mcuu'", "nrf52840", "did you mean 'mcu'")


def test_mode_the_target_forbids(tmp_path):
    proc = run_edgeq("convert", "m.keras", "--target", "mcu", "--mode", "float16", "-o", str(tmp_path / "o"))
    assert_user_error(proc, "does not allow mode 'float16'", "int8")


def test_int8_without_calibration_data(tmp_path):
    proc = run_edgeq("convert", "m.keras", "--target", "mcu", "-o", str(tmp_path / "o"))
    assert_user_error(proc, "needs calibration data", "--calibration")


def test_missing_calibration_file(tmp_path):
    proc = run_edgeq("convert", "m.keras", "-c", str(tmp_path / "nope.npz"), "-o", str(tmp_path / "o"))
    assert_user_error(proc, "nope.npz")


def test_unknown_bundled_set(tmp_path):
    proc = run_edgeq("convert", "m.keras", "-c", "digitz", "-o", str(tmp_path / "o"))
    assert_user_error(proc, "digitz", "digits")


@pytest.mark.parametrize("make, words", [
    (lambda p: None, ["does not exist"]),
    (lambda p: p.mkdir(), ["not a SavedModel"]),
    (lambda p: p.write_bytes(b"not a zip"), ["not a zip"]),
])
def test_bad_model_paths(tmp_path, make, words):
    model = tmp_path / "model.keras"
    make(model)
    proc = run_edgeq("convert", str(model), "-c", "digits", "-o", str(tmp_path / "o"))
    assert_user_error(proc, *words)


def test_unsupported_model_extension_lists_formats(tmp_path):
    model = tmp_path / "model.pb"  # a TF1 frozen graph
    model.write_bytes(b"\0")
    proc = run_edgeq("convert", str(model), "-c", "digits", "-o", str(tmp_path / "o"))
    assert_user_error(proc, "unsupported model format", ".keras", ".h5", "SavedModel", ".onnx", ".pt2")


def test_output_path_is_a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("keep me")
    proc = run_edgeq("convert", "m.keras", "-c", "digits", "-o", str(target))
    assert_user_error(proc, "is a file")
    assert target.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        proc = run_edgeq("convert", "m.keras", "-c", "digits", "-o", str(folder))
        assert_user_error(proc, "permission denied")
    finally:
        folder.chmod(0o700)


@pytest.mark.slow
def test_existing_outputs_are_kept_without_overwrite(tmp_path, keras3_model_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "my_model_2.tflite").write_bytes(b"precious")
    proc = run_edgeq("convert", str(keras3_model_path), "-c", "digits", "-o", str(out))
    assert_user_error(proc, "already exist", "--overwrite")
    assert (out / "my_model_2.tflite").read_bytes() == b"precious"
    proc = run_edgeq("convert", str(keras3_model_path), "-c", "digits", "-o", str(out), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (out / "my_model_2.tflite").read_bytes()[4:8] == b"TFL3"
    assert not [p for p in out.iterdir() if p.name.startswith(".edgeq-tmp")]


@pytest.mark.slow
def test_calibration_data_of_the_wrong_shape_names_the_file(tmp_path, keras3_model_path):
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.zeros((10, 28, 28, 1), np.float32))
    proc = run_edgeq("convert", str(keras3_model_path), "-c", str(data), "-o", str(tmp_path / "o"))
    assert_user_error(proc, "cal.npz", "(8, 8, 1)")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_calibration_data_with_nan_names_the_sample(tmp_path, keras3_model_path):
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    x[7, 3, 3, 0] = np.nan
    data = tmp_path / "cal.npz"
    np.savez(data, x=x)
    proc = run_edgeq("convert", str(keras3_model_path), "-c", str(data), "-o", str(tmp_path / "o"))
    assert_user_error(proc, "sample 7")


@pytest.mark.slow
def test_lambda_layer_refused_unless_trusted(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    proc = run_edgeq("convert", str(path), "-c", "digits", "-o", str(tmp_path / "o"))
    assert_user_error(proc, "Lambda", "--trust-model")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, words", [
    (b"", ["empty"]),
    (b"\x00" * 64, ["TFL3"]),
])
def test_inspect_bad_tflite(tmp_path, content, words):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    proc = run_edgeq("inspect", str(path))
    assert_user_error(proc, "bad.tflite", *words)


def test_inspect_missing_file(tmp_path):
    assert_user_error(run_edgeq("inspect", str(tmp_path / "none.tflite")), "none.tflite")


def test_export_c_refuses_ops_tflm_lacks(tmp_path):
    """A LiteRT-only op (GELU) has no TFLM kernel: exit 3, nothing written."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def gelu(x):
        return tf.nn.gelu(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([gelu.get_concrete_function()])
    path = tmp_path / "gelu.tflite"
    path.write_bytes(converter.convert())
    proc = run_edgeq("export-c", str(path), "-o", str(tmp_path / "c"))
    assert_user_error(proc, "GELU", "Lite Micro", code=3)
    assert not (tmp_path / "c").exists()
