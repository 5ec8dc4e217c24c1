"""Hostile and broken inputs through the real CLI (`python -m edgeq` in a child process).

Every case checks the house rules for a user error: exit code 2 (bad input) or 3 (the model
does not fit the target), an `error:` line that names the problem, a `hint:` line, no
traceback, and no partial output. Cases that tests/integration/test_cli_errors.py already
runs through the CLI are not repeated here.

Most bad inputs are refused before TensorFlow is imported (well under a second each); the
few that need a real model share tiny models built once per module.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from conftest import run_edgeq
from tflite_mutations import input_quantization as _input_quant
from tflite_mutations import (buffer_index_out_of_range, opcode_index_out_of_range, patched, same_tensor_in_and_out,
                              tensor_index_out_of_range)


# -- helpers --------------------------------------------------------------------------------------


def assert_user_error(proc: subprocess.CompletedProcess[str], *words: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("error: ") for line in lines), proc.stderr
    assert any(line.strip().startswith("hint: ") for line in lines), proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def assert_no_output(folder: Path) -> None:
    assert not folder.exists() or not any(folder.iterdir()), sorted(p.name for p in folder.iterdir())


def run_with_env(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeq", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, **env})


# -- module fixtures: tiny models ---------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_mod():  # type: ignore[no-untyped-def]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    return keras


@pytest.fixture(scope="module")
def int8_model(tiny_cnn_tflite: dict[str, bytes]) -> bytes:
    return tiny_cnn_tflite["int8"]


@pytest.fixture(scope="module")
def int8_path(tmp_path_factory, int8_model: bytes) -> Path:
    path = tmp_path_factory.mktemp("tflite") / "small.tflite"
    path.write_bytes(int8_model)
    return path


@pytest.fixture(scope="module")
def dense_keras(keras_mod, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """Input (4,) -> Dense(3): the cheapest real model for calibration-data cases."""
    keras = keras_mod
    inputs = keras.Input((4,))
    path = tmp_path_factory.mktemp("models") / "dense.keras"
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs)).save(path)
    return path


# -- 1. paths: missing, a directory, an unsupported extension -------------------------------------

TFLITE_COMMANDS = {
    "inspect": lambda f, out: ["inspect", str(f)],
    "emulate": lambda f, out: ["emulate", str(f), "--report", str(out)],
    "export-c": lambda f, out: ["export-c", str(f), "-o", str(out)],
}


def _tflite_cmd(command: str, file: Path, out: Path) -> list[str]:
    return TFLITE_COMMANDS[command](file, out)


@pytest.mark.parametrize("command", ["emulate", "export-c"])
def test_missing_tflite(tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    proc = run_edgeq(*_tflite_cmd(command, tmp_path / "none.tflite", out))
    assert_user_error(proc, "none.tflite", "no such file")
    assert_no_output(out)


@pytest.mark.parametrize("command", ["inspect", "emulate", "export-c"])
def test_directory_instead_of_tflite(tmp_path: Path, command: str) -> None:
    folder = tmp_path / "model.tflite"
    folder.mkdir()
    out = tmp_path / "out"
    proc = run_edgeq(*_tflite_cmd(command, folder, out))
    assert_user_error(proc, "model.tflite", "is a directory", ".tflite file")
    assert_no_output(out)


@pytest.mark.parametrize("command", ["inspect", "emulate", "export-c"])
@pytest.mark.parametrize("name, content, words", [
    ("model.onnx", b"\x08\x07\x12\x04onnx" + bytes(64), ["model.onnx", "TFL3", ".tflite"]),
    ("model.keras", b"PK\x03\x04" + bytes(64), ["model.keras", "TFL3", "edgeq convert"]),
])
def test_unsupported_format_for_tflite_commands(tmp_path: Path, command: str, name: str, content: bytes,
                                                words: list[str]) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out"
    proc = run_edgeq(*_tflite_cmd(command, path, out))
    assert_user_error(proc, *words)
    assert_no_output(out)


def test_convert_directory_that_is_not_a_savedmodel(tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "variables").mkdir()
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(folder), "-c", "digits", "-o", str(out))
    assert_user_error(proc, "exported", "saved_model.pb", ".keras", ".h5")
    assert_no_output(out)


def test_convert_tflite_is_not_a_keras_model(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(path), "-c", "digits", "-o", str(out))
    assert_user_error(proc, "unsupported model format '.tflite'", ".keras", ".h5", "SavedModel")
    assert_no_output(out)


# -- 2. empty, truncated, random, wrong identifier -------------------------------------------------

BAD_FILES: dict[str, tuple[Callable[[bytes], bytes], list[str]]] = {
    "empty": (lambda m: b"", ["the file is empty"]),
    "truncated": (lambda m: m[: len(m) // 2], ["bad.tflite"]),
    "random": (lambda m: np.random.default_rng(3).bytes(3000), ["identifier", "TFL3"]),
    "wrong-identifier": (lambda m: m[:4] + b"TFL2" + m[8:], ["b'TFL2'", "TFL3"]),
}


@pytest.mark.parametrize("command", ["inspect", "emulate", "export-c"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_tflite_file(tmp_path: Path, int8_model: bytes, command: str, kind: str) -> None:
    if (command, kind) == ("inspect", "empty"):
        pytest.skip("covered by tests/integration/test_cli_errors.py")
    make, words = BAD_FILES[kind]
    path = tmp_path / "bad.tflite"
    path.write_bytes(make(int8_model))
    out = tmp_path / "out"
    proc = run_edgeq(*_tflite_cmd(command, path, out))
    assert_user_error(proc, "bad.tflite", *words)
    assert_no_output(out)


# -- 3. structurally broken .tflite ----------------------------------------------------------------


STRUCTURAL = {
    "tensor-index": (tensor_index_out_of_range, ["refers to tensor 57", "has only"]),
    "opcode-index": (opcode_index_out_of_range, ["uses operator code 8", "only 8 operator codes"]),
    "buffer-index": (buffer_index_out_of_range, ["tensor 3 (", "uses buffer"]),
    "same-in-out": (same_tensor_in_and_out, ["(MAX_POOL_2D)", "as both input and output"]),
    "scale-zero": (_input_quant(scale=[0.0]), ["scale 0.0"]),
    "scale-nan": (_input_quant(scale=[float("nan")]), ["scale nan"]),
    "scale-inf": (_input_quant(scale=[float("inf")]), ["scale inf"]),
    "zero-point": (_input_quant(zeroPoint=[300]), ["zero point 300", "-128..127"]),
}


@pytest.mark.parametrize("command", ["inspect", "emulate"])
@pytest.mark.parametrize("case", list(STRUCTURAL))
def test_structurally_broken_tflite(tmp_path: Path, int8_model: bytes, command: str, case: str) -> None:
    mutate, words = STRUCTURAL[case]
    path = tmp_path / "broken.tflite"
    path.write_bytes(patched(int8_model, mutate))
    out = tmp_path / "out"
    proc = run_edgeq(*_tflite_cmd(command, path, out))
    assert_user_error(proc, "broken.tflite", *words)
    assert_no_output(out)


# -- 4. Lambda layers: refused unless --trust-model, never retried unsafely -------------------------


@pytest.fixture(scope="module")
def lambda_models(keras_mod, tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    keras = keras_mod
    inputs = keras.Input((4,))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    folder = tmp_path_factory.mktemp("lambda")
    paths = {"keras": folder / "lambda.keras", "h5": folder / "lambda.h5"}
    for path in paths.values():
        model.save(path)
    return paths


@pytest.mark.slow
def test_lambda_in_h5_refused_through_cli(tmp_path: Path, lambda_models: dict[str, Path]) -> None:
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(lambda_models["h5"]), "-t", "phone", "-m", "float32", "--no-eval",
                     "-o", str(out))
    assert_user_error(proc, "lambda.h5", "Lambda", "--trust-model")
    assert_no_output(out)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_lambda_loaded_once_and_only_safely(lambda_models: dict[str, Path], fmt: str, monkeypatch) -> None:
    """Without trust: refused from the file's config, before Keras deserializes anything. With
    trust: one attempt, safe mode off."""
    import keras

    from edgeq.errors import ModelLoadError
    from edgeq.loading import load_model

    calls: list[Any] = []
    real = keras.saving.load_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("safe_mode", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", spy)
    with pytest.raises(ModelLoadError, match="Lambda") as caught:
        load_model(lambda_models[fmt])
    assert calls == []
    assert "--trust-model" in (caught.value.hint or "")
    calls.clear()
    load_model(lambda_models[fmt], trust_model=True)
    assert calls == [False]


# -- 5. hostile .keras archives ---------------------------------------------------------------------

METADATA = '{"keras_version": "3.10.0", "date_saved": "2025-01-01@00:00:00"}'


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("metadata.json", METADATA)
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/edgeq-evil.txt", "weights/../../evil.txt",
                                    "C:\\evil.txt"])
def test_keras_archive_with_path_traversal(tmp_path: Path, member: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    model = _zip(work / "model.keras", {"config.json": b"{}", member: b"owned"})
    assert member in zipfile.ZipFile(model).namelist()
    out = work / "out"
    proc = run_edgeq("convert", str(model), "-c", "digits", "-o", str(out), cwd=work)
    assert_user_error(proc, "model.keras", repr(member), "outside the archive")
    assert_no_output(out)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/edgeq-evil.txt").exists()
    assert sorted(p.name for p in work.iterdir()) == ["model.keras"]


def test_keras_zip_bomb_by_compression_ratio(tmp_path: Path) -> None:
    """16 MiB of zeros in ~50 bytes of bzip2: refused from the central directory, nothing inflated."""
    model = _zip(tmp_path / "bomb.keras", {"model.weights.h5": bytes(16 * 1024 * 1024)}, zipfile.ZIP_BZIP2)
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(model), "-c", "digits", "-o", str(out))
    assert_user_error(proc, "bomb.keras", "model.weights.h5", "zip bomb", "more than 1000x")
    assert_no_output(out)


def test_keras_archive_declaring_more_than_2_gib(tmp_path: Path) -> None:
    """A central directory that claims 3 GiB (cheap to forge): refused before anything is read."""
    from edgeq.loading import MAX_ARCHIVE_BYTES

    model = _zip(tmp_path / "huge.keras", {"model.weights.h5": b"\0" * 64}, zipfile.ZIP_STORED)
    data = bytearray(model.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last central directory entry: model.weights.h5
    claimed = 3 * 1024**3
    assert claimed > MAX_ARCHIVE_BYTES
    data[entry + 20:entry + 28] = struct.pack("<II", claimed // 100, claimed)  # compressed, uncompressed
    model.write_bytes(bytes(data))
    assert zipfile.ZipFile(model).getinfo("model.weights.h5").file_size == claimed
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(model), "-c", "digits", "-o", str(out))
    assert_user_error(proc, "huge.keras", f"{claimed + len(METADATA):,} bytes", f"{MAX_ARCHIVE_BYTES:,}",
                      "EDGEQ_MAX_ARCHIVE_BYTES")
    assert_no_output(out)


def test_archive_limit_from_environment(tmp_path: Path) -> None:
    model = _zip(tmp_path / "model.keras", {"model.weights.h5": bytes(200_000)})
    out = tmp_path / "out"
    proc = run_with_env("convert", str(model), "-c", "digits", "-o", str(out),
                        env={"EDGEQ_MAX_ARCHIVE_BYTES": "100000"})
    assert_user_error(proc, "model.keras", "limit of 100,000 bytes", "EDGEQ_MAX_ARCHIVE_BYTES")
    assert_no_output(out)
    proc = run_with_env("convert", str(model), "-c", "digits", "-o", str(out),
                        env={"EDGEQ_MAX_ARCHIVE_BYTES": "lots"})
    assert_user_error(proc, "EDGEQ_MAX_ARCHIVE_BYTES='lots'", "positive number of bytes")
    assert_no_output(out)


# -- 6. calibration data ----------------------------------------------------------------------------


@pytest.mark.parametrize("arrays, words", [
    (lambda: {"x": np.array([{"a": 1}] * 4, dtype=object)}, ["array 'x'", "pickle"]),
    (lambda: {"x": np.zeros((0, 4), np.float32)}, ["0 samples"]),
    (lambda: {"x": np.zeros((10, 4), np.float32), "y": np.zeros(7, np.int64)},
     ["labels 'y' do not match", "7 labels for 10 samples"]),
])
def test_bad_calibration_file_through_convert(tmp_path: Path, dense_keras: Path, arrays, words) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "cal.npz"
    np.savez(data, **arrays())
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(dense_keras), "-t", "phone", "-c", str(data), "--no-eval", "-o", str(out))
    assert_user_error(proc, "cal.npz", *words)
    assert_no_output(out)


@pytest.mark.slow
def test_string_calibration_data_through_convert(tmp_path: Path, dense_keras: Path) -> None:
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.array([["a", "b", "c", "d"]] * 5))
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(dense_keras), "-t", "phone", "-c", str(data), "--no-eval", "-o", str(out))
    assert_user_error(proc, "cal.npz", "string data", "float32", "array 'x'")
    assert_no_output(out)


@pytest.mark.parametrize("arrays, words", [
    (lambda: {"x0": np.zeros((5, 8, 8, 1), np.float32), "x1": np.zeros((5, 8, 8, 1), np.float32)},
     ["1 input(s)", "2 input array(s)"]),
    (lambda: {"x": np.zeros((5, 8, 8, 3), np.float32)}, ["per-sample shape (8, 8, 3)", "(8, 8, 1)"]),
    (lambda: {"x": np.where(np.arange(5)[:, None, None, None] == 3, np.inf, 0.5)
              * np.ones((5, 8, 8, 1), np.float32)}, ["sample 3", "NaN or Inf"]),
    (lambda: {"x": np.array([["a"] * 8] * 8).reshape(1, 8, 8, 1)}, ["string data"]),
])
def test_bad_evaluation_data_through_emulate(tmp_path: Path, int8_path: Path, arrays, words) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "eval.npz"
    np.savez(data, **arrays())
    out = tmp_path / "out"
    proc = run_edgeq("emulate", str(int8_path), "--data", str(data), "--report", str(out))
    assert_user_error(proc, "eval.npz", *words)
    assert_no_output(out)


@pytest.mark.slow
def test_constant_calibration_data_warns_and_converts(tmp_path: Path, dense_keras: Path) -> None:
    data = tmp_path / "const.npz"
    np.savez(data, x=np.zeros((16, 4), np.float32))
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(dense_keras), "-t", "phone", "-c", str(data), "--no-eval", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "every value is 0" in proc.stderr and "zero range" in proc.stderr, proc.stderr
    assert (out / "dense.tflite").is_file()


# -- 7. target profiles by path -----------------------------------------------------------------------


def _profile(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


BAD_PROFILES = {
    "unknown-key": ('inherits = "mcu"\nkind = "board"\n[memory]\nflash_byte = 1\n',
                    ["[memory] unknown key 'flash_byte'", "did you mean 'flash_bytes'"]),
    "wrong-type": ('inherits = "mcu"\nkind = "board"\nclock_mhz = "fast"\n',
                   ["key 'clock_mhz'", "a finite number", "'fast'"]),
    "negative-budget": ('inherits = "mcu"\nkind = "board"\n[memory]\nram_bytes = -4096\n',
                        ["key 'memory.ram_bytes'", "-4096", ">= 1"]),
    "missing-parent": ('inherits = "mcuu"\nkind = "board"\n', ["'inherits'", "'mcuu'", "not a known profile"]),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_bad_target_profile_by_path(tmp_path: Path, case: str) -> None:
    text, words = BAD_PROFILES[case]
    profile = _profile(tmp_path, "myboard", text)
    out = tmp_path / "out"
    proc = run_edgeq("convert", "m.keras", "-t", str(profile), "-c", "digits", "-o", str(out))
    assert_user_error(proc, "myboard.toml", *words)
    assert_no_output(out)


def test_target_profile_inheritance_cycle(tmp_path: Path) -> None:
    _profile(tmp_path, "board_b", 'inherits = "board_a"\nkind = "board"\n')
    first = _profile(tmp_path, "board_a", 'inherits = "board_b"\nkind = "board"\n')
    out = tmp_path / "out"
    proc = run_edgeq("convert", "m.keras", "-t", str(first), "-c", "digits", "-o", str(out))
    assert_user_error(proc, "board_a.toml", "inheritance cycle", "board_a -> board_b -> board_a")
    assert_no_output(out)


def test_target_profile_path_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_edgeq("emulate", "m.tflite", "-t", str(tmp_path / "nope.toml"), "--report", str(out))
    assert_user_error(proc, "nope.toml", "does not exist")
    assert_no_output(out)


def test_unknown_target_name_through_emulate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_edgeq("emulate", "m.tflite", "-t", "esp32", "--report", str(out))
    assert_user_error(proc, "unknown target 'esp32'", "esp32s3", "nrf52840", "stm32h743")
    assert_no_output(out)


# -- 8. models that cannot go to any board ------------------------------------------------------------


@pytest.mark.slow
def test_model_too_large_for_every_mcu(tmp_path: Path, keras_mod) -> None:  # type: ignore[no-untyped-def]
    """1.2 MB of int8 weights (over mcu's flash) and a 512 KiB activation (over every MCU's RAM)."""
    keras = keras_mod
    inputs = keras.Input((128, 128, 3))
    x = keras.layers.Conv2D(32, 3, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(1024)(x)
    outputs = keras.layers.Dense(1200)(x)
    model = tmp_path / "big.keras"
    keras.Model(inputs, outputs).save(model)
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.random.default_rng(0).random((4, 128, 128, 3), dtype=np.float32))
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(model), "-t", "mcu", "-c", str(data), "--no-eval", "-o", str(out))
    assert_user_error(proc, "does not fit mcu", "exceeds flash 1,048,576 B by", "exceeds RAM 262,144 B by",
                      code=3)
    fits = [line for line in proc.stderr.splitlines() if "fits:" in line]
    assert fits and not any(board in line for line in fits for board in ("mcu", "nrf52840", "esp32s3", "stm32h743"))
    # The gate writes its report and nothing a firmware build could pick up.
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]


@pytest.mark.slow
def test_op_no_tflite_builtin_covers(tmp_path: Path, keras_mod) -> None:  # type: ignore[no-untyped-def]
    """keras.ops.erf lowers to tf.Erf, which only TF Select (Flex) has; edgeq does not enable it."""
    import inspect

    from edgeq.quantize import ptq

    keras = keras_mod
    inputs = keras.Input((4,))
    model = tmp_path / "erf.keras"
    keras.Model(inputs, keras.layers.Dense(2)(keras.ops.erf(inputs))).save(model)
    out = tmp_path / "out"
    proc = run_edgeq("convert", str(model), "-t", "phone", "-m", "float32", "--no-eval", "-o", str(out))
    assert_user_error(proc, "erf.keras", "tf.Erf", "no TFLite builtin", "TF Select")
    assert_no_output(out)
    assert "SELECT_TF_OPS" not in inspect.getsource(ptq)
