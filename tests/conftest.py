"""Session-wide fixtures: small models trained once on the bundled real digits set."""

from __future__ import annotations

import os
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


def litert_predict(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Run a .tflite on float inputs in LiteRT, quantizing/dequantizing at the edges."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    results = []
    for sample in x:
        value = sample[None]
        if inp["dtype"] != np.float32:
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale + zp), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], value)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            scale, zp = out["quantization"]
            y = (y - zp) * scale
        results.append(y[0])
    return np.stack(results)


def plain_tflite(model, io: str = "int8", data: np.ndarray | None = None) -> bytes:  # type: ignore[no-untyped-def]
    """A Keras model through the plain TFLite converter (not edgeq): full integer with int8 or
    int16 activations, calibrated on `data[:200]` (default: 8 seeded random samples), or
    io="float32" for no quantization. For tests about a .tflite's structure, or edgeq vs plain."""
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
        converter.inference_input_type = getattr(tf, io)
        converter.inference_output_type = getattr(tf, io)
    return bytes(converter.convert())


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
