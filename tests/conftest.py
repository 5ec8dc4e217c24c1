"""Session-wide fixtures: small models trained once on the bundled real digits set."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Before any test imports TensorFlow: the float reference outputs must match the CLI's bit for bit.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
ROOT = Path(__file__).resolve().parent.parent


def run_edgeq(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgeq", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def device_check_on_sim(model: Path, data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """`edgeq device-check` of `model` on `data` against `edgeq device-sim` in another process, as
    a user without a board runs them; the simulator is stopped after."""
    import signal

    sim = subprocess.Popen([sys.executable, "-m", "edgeq", "device-sim", str(model)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    port = sim.stdout.readline().strip() if sim.stdout else ""
    try:
        assert port.startswith("/dev/"), sim.stderr.read() if sim.stderr else port
        return run_edgeq("device-check", "-p", port, "-m", str(model), "-d", str(data), "-o", str(out))
    finally:
        sim.send_signal(signal.SIGINT)
        sim.communicate(timeout=30)


@pytest.fixture(scope="session")
def torch_trained(tmp_path_factory) -> Path:
    """cnn.pt, mlp.pt, calibration.npz and eval.npz (NCHW) from examples/torch_digits.py, trained
    once for the PyTorch and the ONNX tests."""
    pytest.importorskip("torch")  # the torch extra; scripts/setup installs it for the tests
    sys.path.insert(0, str(ROOT / "examples"))
    import torch_digits

    out = tmp_path_factory.mktemp("torch")
    torch_digits.main(out)  # 40 epochs, as the README's run: converged, so QAT's fine-tuning moves it little
    return out


@pytest.fixture(scope="session")
def digits():
    from edgeq.calibration import load_dataset

    return {split: load_dataset(f"digits:{split}") for split in ("train", "calibration", "eval")}


def _train_cnn(keras, digits, epochs: int):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_example_model import build_digits_cnn

    keras.utils.set_random_seed(1)
    model = build_digits_cnn(keras)
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(digits["train"].inputs[0], digits["train"].labels, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def keras3_model_path(tmp_path_factory, digits) -> Path:
    """A Keras 3 CNN trained on digits:train, saved under an awkward name (hyphen, space)."""
    import keras

    path = tmp_path_factory.mktemp("models") / "my-model 2.keras"
    _train_cnn(keras, digits, epochs=15).save(path)
    return path


@pytest.fixture(scope="session")
def keras2_h5_path(tmp_path_factory, digits) -> Path:
    """The same architecture built and trained with tf_keras (Keras 2), saved as .h5."""
    import tensorflow  # noqa: F401  (tf_keras needs TF imported first)
    import tf_keras

    path = tmp_path_factory.mktemp("models") / "k2_cnn.h5"
    _train_cnn(tf_keras, digits, epochs=15).save(path)
    return path


@pytest.fixture(scope="session")
def float_predictions(keras3_model_path, digits) -> np.ndarray:
    from edgeq.loading import load_model

    return load_model(keras3_model_path).predict(list(digits["eval"].inputs))[0]


LITERT_TFLM_MAX_LSB = 4
"""How far LiteRT's builtin kernels may be from TFLM at an int8 output. They run the same integer
arithmetic, but ruy picks its kernels by CPU features, and a requantization rounded one LSB
apart inside the network can grow in later layers: the digits CNN differed by 1 LSB on an AMD
EPYC (AVX2), and by 3 LSB on one of 400 samples with ruy's portable kernels (RUY_PATHS=1, see
scripts/kernel_paths.py). A wider gap means a broken kernel, not another CPU."""

LITERT_TFLM_MAX_DIFFERING = 0.10
"""Largest fraction of samples on which the two may differ at all (2 of 50 on that AMD EPYC)."""


def _quantize_like_tflite(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Written here, not taken from edgeq: round half away from zero in float32, as TFLite's QUANTIZE."""
    if not scale:
        return x.astype(dtype)
    v = x.astype(np.float32) / np.float32(scale)
    v = np.trunc(v + np.copysign(np.float32(0.5), v)) + np.float32(zero_point)
    info = np.iinfo(dtype)
    return np.clip(v, info.min, info.max).astype(dtype)


def predict_raw(runtime: str, tflite: bytes, x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """The first output of a one-input .tflite on float samples `x`, run one sample at a time in
    `runtime`, before dequantizing: (outputs, scale, zero point).

    runtime: "litert" (LiteRT's builtin kernels, the ones edgeq compares with TFLM), "xnnpack"
    (LiteRT's default, XNNPACK applied, as on a phone) or "tflm" (TensorFlow Lite Micro).
    Independent of edgeq's runtimes module, so a test can check which runtime made a figure; only
    a model flashed for TFLM goes through `litert_loadable` first, as it must for LiteRT to open it.
    """
    if runtime == "tflm":
        from tflite_micro.python.tflite_micro import runtime as micro

        interp = micro.Interpreter.from_bytes(tflite)
        inp, out = interp.get_input_details(0), interp.get_output_details(0)

        def invoke(q: np.ndarray) -> np.ndarray:
            interp.set_input(q, 0)
            interp.invoke()
            return np.array(interp.get_output(0), copy=True)
    else:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = {"litert": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, "xnnpack": OpResolverType.AUTO}
        from edgeq.tflite.strip import litert_loadable

        lite = Interpreter(model_content=litert_loadable(tflite), experimental_op_resolver_type=resolver[runtime])
        lite.allocate_tensors()
        inp, out = lite.get_input_details()[0], lite.get_output_details()[0]

        def invoke(q: np.ndarray) -> np.ndarray:
            lite.set_tensor(inp["index"], q)
            lite.invoke()
            return lite.get_tensor(out["index"])
    in_scale, in_zero = _scale_zero(inp)
    rows = [invoke(_quantize_like_tflite(sample[None], np.dtype(inp["dtype"]), in_scale, in_zero))[0] for sample in x]
    scale, zero = _scale_zero(out)
    return np.stack(rows), scale, zero


def _scale_zero(detail: dict) -> tuple[float, int]:
    quantization = detail.get("quantization_parameters") or {}
    scales, zeros = quantization.get("scales", ()), quantization.get("zero_points", ())
    if len(scales):
        return float(scales[0]), int(zeros[0])
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def predict(runtime: str, tflite: bytes, x: np.ndarray) -> np.ndarray:
    """predict_raw's outputs, dequantized to float32."""
    raw, scale, zero = predict_raw(runtime, tflite, x)
    if not scale:
        return raw.astype(np.float32)
    return ((raw.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)


def reported_runtime(accuracy: dict) -> str:
    """predict()'s name for the runtime and kernels a report's accuracy section says it used."""
    used, kernels = accuracy["runtime_used"], accuracy["kernels"]
    assert (used, kernels) in (("tflm", None), ("litert", "builtin"), ("litert", "default")), accuracy
    return "tflm" if used == "tflm" else ("litert" if kernels == "builtin" else "xnnpack")


def plain_tflite(model, io: str = "int8", data: np.ndarray | None = None) -> bytes:  # type: ignore[no-untyped-def]
    """A Keras model through the plain TFLite converter (not edgeq): full integer with int8 or
    int16 activations, calibrated on `data[:200]` (default: 8 seeded random samples), io="float32_io"
    for int8 inside float32 I/O (QUANTIZE in, DEQUANTIZE out), or io="float32" for no quantization. For tests about a .tflite's structure, or edgeq vs plain."""
    from edgeq._tf import tf as load_tf

    tf = load_tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if io != "float32":
        rng = np.random.default_rng(0)
        shapes = [tuple(i.shape[1:]) for i in model.inputs]

        def representative():  # type: ignore[no-untyped-def]
            if data is not None:
                for i in range(min(200, len(data))):
                    yield [data[i:i + 1]]
                return
            for _ in range(8):
                yield [rng.random((1, *s), dtype=np.float32) for s in shapes]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 if io == "int16"
            else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io != "float32_io":
            converter.inference_input_type = getattr(tf, io)
            converter.inference_output_type = getattr(tf, io)
    return bytes(converter.convert())


def saved_dense_autoencoder(folder: Path, x: np.ndarray, layers: list[tuple[int, str | None]], *, epochs: int,
                            batch_size: int = 32, name: str | None = None) -> Path:
    """A Keras Dense stack (units, activation per layer) trained to reproduce `x` (Adam, MSE) and
    saved as folder/ae.keras. Seed Keras first: the layers are made here, after the caller's data."""
    import keras

    model = keras.Sequential([keras.layers.Input((x.shape[1],)),
                              *[keras.layers.Dense(units, activation=activation) for units, activation in layers]],
                             name=name)
    model.compile("adam", "mse")
    model.fit(x, x, epochs=epochs, batch_size=batch_size, verbose=0)
    model.save(folder / "ae.keras")
    return folder / "ae.keras"


def tflm_outputs(model: bytes, inputs: np.ndarray, arena_size: int | None = None) -> np.ndarray:
    """The first output of `model` in the TFLM Python interpreter for each sample of `inputs` (one
    invoke each), stacked: shape (samples, *output shape). `arena_size`: None for the interpreter's
    default."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(model, **({"arena_size": arena_size} if arena_size else {}))
    outs = []
    for x in inputs:
        interp.set_input(x[None], 0)
        interp.invoke()
        outs.append(interp.get_output(0).copy())
    return np.stack(outs)


@pytest.fixture(scope="session")
def tiny_cnn_tflite() -> dict[str, bytes]:
    """A tiny Keras 3 CNN through the plain converter, float32 and full int8 (untrained: for tests
    about a .tflite's structure)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return {"float32": plain_tflite(model, io="float32"), "int8": plain_tflite(model)}


def stand_in_a_cpu_whose_litert_differs(monkeypatch: pytest.MonkeyPatch, sample: int = 3) -> None:
    """Make the emulator meet a CPU where LiteRT's kernels differ from TFLM, on any machine: the
    real LiteRT run, with the first element of `sample`'s first output moved by one LSB."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeq.emulator import accuracy
    from edgeq.tflite.strip import litert_loadable

    real = accuracy.run_litert

    def run_litert(model: bytes, inputs, **kwargs):  # type: ignore[no-untyped-def]
        result = real(model, inputs, **kwargs)
        raw, out = result.raw_outputs[0], result.outputs[0]
        scale, _ = _scale_zero(Interpreter(model_content=litert_loadable(model)).get_output_details()[0])
        assert raw.dtype.kind == "i" and scale, "the stand-in needs a quantized output"
        step = 1 if raw.flat[sample * raw[0].size] < np.iinfo(raw.dtype).max else -1
        raw.reshape(len(raw), -1)[sample, 0] += step
        out.reshape(len(out), -1)[sample, 0] += np.float32(step * scale)
        return result

    monkeypatch.setattr(accuracy, "run_litert", run_litert)


C_FLAGS = ["-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def _invoke_all(lib: Path, inputs: np.ndarray, out_shape: tuple[int, ...], out_dtype: str) -> np.ndarray:
    invoke = ctypes.CDLL(str(lib)).m_invoke
    outs = []
    for x in inputs:
        x, out = np.ascontiguousarray(x), np.zeros(out_shape, dtype=out_dtype)
        assert invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)) == 0
        outs.append(out)
    return np.stack(outs)


def c_outputs(tmp_path: Path, tflite: bytes, inputs: np.ndarray, out_shape: tuple[int, ...],
              out_dtype: str) -> np.ndarray:
    """The first output of `tflite`'s plain C (edgeq.aot) for each sample of `inputs`, built by gcc
    and run here; also built and run by clang (the same bytes, or the test fails), and compiled for
    a Cortex-M4 with its DSP loops, where those compilers are here."""
    from edgeq.aot.emit import emit_c
    from edgeq.tflite.reader import read_tflite

    sources = emit_c("m", tflite, read_tflite(tflite))
    for name, text in sources.files.items():
        (tmp_path / name).write_bytes(text)
    source = str(tmp_path / "m_model.c")
    results = []
    for compiler in (shutil.which("gcc"), shutil.which("clang")):
        if compiler is None:
            continue
        lib = tmp_path / f"libm_{Path(compiler).name}.so"
        build = subprocess.run([compiler, *C_FLAGS, "-shared", "-fPIC", source, "-o", str(lib)], capture_output=True,
                               text=True)
        assert build.returncode == 0, (compiler, build.stderr)
        results.append(_invoke_all(lib, inputs, out_shape, out_dtype))
    arm = shutil.which("arm-none-eabi-gcc")
    if arm:
        build = subprocess.run([arm, "-mcpu=cortex-m4", "-mthumb", *C_FLAGS, "-c", source, "-o",
                                str(tmp_path / "m_m4.o")], capture_output=True, text=True)
        assert build.returncode == 0, build.stderr
    assert all(r.tobytes() == results[0].tobytes() for r in results[1:]), "gcc and clang builds disagree"
    return results[0]
