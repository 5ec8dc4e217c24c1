"""Property test of edgeq/aot: random small models (one to three ops of every kernel the C backend
has), through the real TFLite converter, as C compiled with -Werror, byte for byte TFLM's outputs.

Hypothesis draws the layer, its shape and its parameters; the examples are derandomized, so CI
tries the same models every run.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import plain_tflite

GCC = shutil.which("gcc")
pytestmark = [pytest.mark.skipif(GCC is None, reason="needs gcc"), pytest.mark.slow]

KINDS = ("conv", "depthwise", "dense", "max_pool", "avg_pool", "add", "mul", "concat", "pad", "relu", "relu6",
         "concat_input", "mean", "mean1d", "softmax")


@st.composite
def models(draw: st.DrawFn) -> dict:
    return {"h": draw(st.integers(2, 7)), "w": draw(st.integers(2, 7)), "c": draw(st.integers(1, 4)),
            "filters": draw(st.integers(1, 5)), "k": draw(st.integers(1, 3)), "stride": draw(st.integers(1, 2)),
            "same": draw(st.booleans()), "act": draw(st.sampled_from([None, "relu", "relu6"])),
            "seed": draw(st.integers(0, 10_000)), "spread": draw(st.sampled_from([0.5, 2.0, 8.0]))}


def _build(p: dict):  # type: ignore[no-untyped-def]
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(p["seed"])
    L = keras.layers
    x = L.Input((p["h"], p["w"], p["c"]), batch_size=1)
    pad = "same" if p["same"] else "valid"
    k = min(p["k"], p["h"], p["w"]) if pad == "valid" else p["k"]
    kind = p["kind"]
    if kind == "conv":
        y = L.Conv2D(p["filters"], k, strides=p["stride"], padding=pad, activation=p["act"])(x)
    elif kind == "depthwise":
        y = L.DepthwiseConv2D(k, strides=p["stride"], padding=pad, depth_multiplier=1 + p["filters"] % 2,
                              activation=p["act"])(x)
    elif kind == "dense":
        y = L.Dense(p["filters"] + 1, activation=p["act"])(L.Flatten()(x))
    elif kind in ("max_pool", "avg_pool"):
        pool = L.MaxPooling2D if kind == "max_pool" else L.AveragePooling2D
        y = pool(k, strides=p["stride"], padding=pad)(x)
    elif kind in ("add", "mul", "concat"):
        a = L.Conv2D(p["filters"], 1, activation=p["act"])(x)
        b = L.Conv2D(p["filters"], 1)(x)
        y = {"add": L.Add, "mul": L.Multiply, "concat": L.Concatenate}[kind]()([a, b])
    elif kind == "pad":
        y = L.ZeroPadding2D(((p["k"] - 1, p["stride"] - 1), (p["stride"], p["k"] % 2)))(L.Conv2D(p["filters"], 1)(x))
    elif kind in ("relu", "relu6"):  # on the input itself: nothing before it to fuse into
        y = L.Conv2D(p["filters"], 1)(L.ReLU(max_value=6.0 if kind == "relu6" else None)(x))
    elif kind == "concat_input":  # the input itself joins a computed tensor
        y = L.Concatenate()([x, L.Conv2D(p["filters"], 1)(x)])
    elif kind == "mean":
        y = L.GlobalAveragePooling2D(keepdims=p["same"])(L.Conv2D(p["filters"], 1, activation=p["act"])(x))
    elif kind == "mean1d":
        y = L.GlobalAveragePooling1D()(L.Reshape((p["h"] * p["w"], p["c"]))(x))
    else:
        y = L.Softmax()(L.Dense(p["filters"] + 2)(L.Flatten()(x)))
    model = keras.Model(x, y)
    rng = np.random.default_rng(p["seed"])
    data = rng.normal(0, p["spread"], size=(32, p["h"], p["w"], p["c"])).astype(np.float32)
    return model, data


def _run_c(tmp_path: Path, tflite: bytes, inputs: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    from edgeq.aot.emit import emit_c
    from edgeq.tflite.reader import read_tflite

    sources = emit_c("m", tflite, read_tflite(tflite))
    for name, text in sources.files.items():
        (tmp_path / name).write_bytes(text)
    lib = tmp_path / "libm.so"
    build = subprocess.run([GCC, "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC",
                            str(tmp_path / "m_model.c"), "-o", str(lib)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    invoke = ctypes.CDLL(str(lib)).m_invoke
    outs = []
    for x in inputs:
        x, out = np.ascontiguousarray(x), np.zeros(out_shape, dtype=np.int8)
        assert invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)) == 0
        outs.append(out)
    return np.stack(outs)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(drawn=models())
def test_random_models_are_bit_exact_with_tflm(tmp_path_factory, kind: str, drawn: dict) -> None:
    from tflite_micro.python.tflite_micro import runtime

    from edgeq.tflite.reader import read_tflite

    params = {**drawn, "kind": kind}
    model, data = _build(params)
    tflite = plain_tflite(model, io="int8", data=data)
    info = read_tflite(tflite)
    ops = set(info.all_op_names)
    from edgeq.aot.lower import KERNELS

    assert ops <= set(KERNELS), (params, ops)
    expected_op = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "dense": "FULLY_CONNECTED",
                   "max_pool": "MAX_POOL_2D", "avg_pool": "AVERAGE_POOL_2D", "add": "ADD", "mul": "MUL",
                   "concat": "CONCATENATION", "pad": "PAD", "relu": "RELU", "relu6": "RELU6",
                   "concat_input": "CONCATENATION", "mean": "MEAN", "mean1d": "MEAN",
                   "softmax": "SOFTMAX"}[kind]
    assert expected_op in ops, (kind, sorted(ops))  # the op under test is really in the model
    rng = np.random.default_rng(params["seed"])
    inputs = rng.integers(-128, 128, size=(12, *info.input_tensors[0].shape[1:]), dtype=np.int8)
    interp = runtime.Interpreter.from_bytes(tflite)
    expected = []
    for x in inputs:
        interp.set_input(x[None], 0)
        interp.invoke()
        expected.append(interp.get_output(0)[0].copy())
    got = _run_c(tmp_path_factory.mktemp("prop"), tflite, inputs, tuple(info.output_tensors[0].shape[1:]))
    assert got.tobytes() == np.stack(expected).tobytes(), params
