"""Property test of edgeq/aot: random small models (one to three ops of every kernel the C backend
has), through the real TFLite converter, as C compiled with -Werror, byte for byte TFLM's outputs.

Hypothesis draws the layer, its shape and its parameters; the examples are derandomized, so CI
tries the same models every run.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import c_outputs, plain_tflite

GCC = shutil.which("gcc")
pytestmark = [pytest.mark.skipif(GCC is None, reason="needs gcc"), pytest.mark.slow]

KINDS = ("conv", "depthwise", "dense", "max_pool", "avg_pool", "add", "mul", "concat", "pad", "relu", "relu6",
         "concat_input", "mean", "mean1d", "softmax", "logistic", "tanh", "hard_swish", "requantize", "float_io",
         "broadcast_add", "broadcast_mul", "mean_same_scale", "split", "split_v", "unpack", "pack", "lstm", "dilated",
         "padv2", "transpose", "mean_last")
EXPECTED_OP = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "dense": "FULLY_CONNECTED",
               "max_pool": "MAX_POOL_2D", "avg_pool": "AVERAGE_POOL_2D", "add": "ADD", "mul": "MUL",
               "concat": "CONCATENATION", "pad": "PAD", "relu": "RELU", "relu6": "RELU6",
               "concat_input": "CONCATENATION", "mean": "MEAN", "mean1d": "MEAN", "softmax": "SOFTMAX",
               "logistic": "LOGISTIC", "tanh": "TANH", "hard_swish": "HARD_SWISH", "requantize": "QUANTIZE",
               "float_io": "DEQUANTIZE", "broadcast_add": "ADD", "broadcast_mul": "MUL", "mean_same_scale": "MEAN",
               "split": "SPLIT", "split_v": "SPLIT_V", "unpack": "UNPACK", "pack": "PACK", "lstm": "TANH",
               "dilated": "CONV_2D", "padv2": "PADV2", "transpose": "TRANSPOSE", "mean_last": "MEAN"}


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
    elif kind == "softmax":
        y = L.Softmax()(L.Dense(p["filters"] + 2)(L.Flatten()(x)))
    elif kind in ("logistic", "tanh", "hard_swish"):
        y = L.Activation({"logistic": "sigmoid"}.get(kind, kind))(L.Conv2D(p["filters"], 1)(x))
    elif kind == "requantize":  # LOGISTIC's fixed output scale meets a conv's: the converter requantizes one
        y = L.Concatenate()([L.Activation("sigmoid")(x), L.Conv2D(p["filters"], 1)(x)])
    elif kind == "float_io":  # float32 in and out: QUANTIZE first, DEQUANTIZE last
        y = L.Conv2D(p["filters"], k, padding=pad, activation=p["act"])(x)
    elif kind in ("broadcast_add", "broadcast_mul"):  # [1, h, w, c] with [1, 1, 1, c] or [1, h, 1, c]
        a = L.Conv2D(p["filters"], 1)(x)
        b = L.Conv2D(p["filters"], 1)(L.AveragePooling2D((1, p["w"]))(x) if p["same"]
                                       else L.GlobalAveragePooling2D(keepdims=True)(x))
        y = (L.Add if kind == "broadcast_add" else L.Multiply)()([a, b])
    elif kind == "mean_same_scale":  # its output's quantization is then set to its input's
        y = L.GlobalAveragePooling2D()(L.Conv2D(p["filters"], 1)(x))
    elif kind == "transpose":  # channels first (as PyTorch and ONNX models keep them), or H and W swapped
        y = L.Conv2D(p["filters"], 1, activation=p["act"])(x)
        y = L.Permute((3, 1, 2))(y) if p["same"] else L.Conv2D(2, 1)(L.Permute((2, 1, 3))(y))
    elif kind == "mean_last":  # MEAN over trailing axes, including the last ([2, 3] of NCHW, or the channels)
        axes = [2, 3] if p["stride"] == 1 else [3]
        y = keras.ops.mean(L.Conv2D(p["filters"], 1)(x), axis=axes, keepdims=p["same"])
    elif kind == "padv2":  # padding with a value other than zero
        y = keras.ops.pad(L.Conv2D(p["filters"], 1)(x), [[0, 0], [1, p["k"] - 1], [p["stride"] - 1, 1], [0, 0]],
                          constant_values=0.5)
    elif kind in ("split", "split_v", "unpack", "pack"):
        ops = keras.ops
        z = L.Reshape((p["h"], p["w"] * p["c"]))(x)
        if kind == "split":
            y = L.Multiply()(ops.split(L.Dense(2 * p["filters"])(z), 2, axis=-1))
        elif kind == "split_v":  # unequal parts: the first 1, then the rest
            parts = ops.split(L.Dense(p["filters"] + 2)(z), [1], axis=-1)
            y = L.Concatenate()([L.Dense(3)(parts[0]), L.Dense(3)(parts[1])])
        elif kind == "unpack":
            y = L.Add()(ops.unstack(L.Dense(p["filters"])(z), axis=1)[:2])
        else:
            y = L.Flatten()(ops.stack([L.Dense(p["filters"])(z), L.Dense(p["filters"])(z)], axis=1 + p["k"] % 2))
    elif kind == "dilated":  # dilation 2 in one or both directions: the per-tap paths of CONV_2D and DEPTHWISE
        rate = (2, 1 + p["stride"] % 2) if p["same"] else (1 + p["stride"] % 2, 2)
        y = L.Conv2D(p["filters"], 2, dilation_rate=rate, padding="same")(x)
        y = L.DepthwiseConv2D(2, dilation_rate=rate, padding="same", activation=p["act"])(y)
    else:  # lstm, unrolled: FULLY_CONNECTED, SPLIT, LOGISTIC, TANH, MUL, ADD, UNPACK
        y = L.LSTM(p["filters"], unroll=True)(L.Reshape((p["h"], p["w"] * p["c"]))(x))
    model = keras.Model(x, y)
    rng = np.random.default_rng(p["seed"])
    data = rng.normal(0, p["spread"], size=(32, p["h"], p["w"], p["c"])).astype(np.float32)
    return model, data


def _assert_no_live_overlap(tflite: bytes) -> None:
    """No two tensors alive at the same step of the C share a byte of the arena. Written here from
    the steps alone, independent of the planner: a tensor lives from the step that writes it (the
    inputs from the start) to the last step that reads it (the outputs to the end)."""
    from edgeq.aot.lower import lower
    from edgeq.tflite.reader import read_tflite

    program = lower(tflite, read_tflite(tflite))
    end = len(program.steps)
    born = {t: -1 for t in program.inputs}
    dies = {t: end for t in program.outputs}
    for k, step in enumerate(program.steps):
        for t in step.outputs:
            born.setdefault(t, k)
        for t in step.inputs:
            dies[t] = max(dies.get(t, k), k)
    live = [t for t in program.offsets if t in born]
    for i, a in enumerate(live):
        for b in live[i + 1:]:
            together = born[a] <= dies.get(b, born[b]) and born[b] <= dies.get(a, born[a])
            apart = (program.offsets[a] + program.sizes[a] <= program.offsets[b]
                     or program.offsets[b] + program.sizes[b] <= program.offsets[a])
            assert not together or apart, (a, b, program.offsets[a], program.offsets[b])
        assert program.offsets[a] + program.sizes[a] <= program.arena_bytes


def _same_scale_mean(tflite: bytes) -> bytes:
    """The model with each MEAN's output quantized exactly as its input (TFLM has a path for it)."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = obj.subgraphs[0]
    for op in graph.operators:
        if obj.operatorCodes[op.opcodeIndex].builtinCode == 40:  # MEAN
            source, target = graph.tensors[op.inputs[0]].quantization, graph.tensors[op.outputs[0]].quantization
            target.scale, target.zeroPoint = list(source.scale), list(source.zeroPoint)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(drawn=models())
def test_random_models_are_bit_exact_with_tflm(tmp_path_factory, kind: str, drawn: dict) -> None:
    from tflite_micro.python.tflite_micro import runtime

    from edgeq.tflite.reader import read_tflite

    params = {**drawn, "kind": kind}
    model, data = _build(params)
    tflite = plain_tflite(model, io="float32_io" if kind == "float_io" else "int8", data=data)
    if kind == "mean_same_scale":
        tflite = _same_scale_mean(tflite)
    info = read_tflite(tflite)
    ops = set(info.all_op_names)
    from edgeq.aot.lower import KERNELS

    assert ops <= set(KERNELS), (params, ops)
    assert EXPECTED_OP[kind] in ops, (kind, sorted(ops))  # the op under test is really in the model
    rng = np.random.default_rng(params["seed"])
    shape = (12, *info.input_tensors[0].shape[1:])
    if info.input_tensors[0].dtype == "float32":
        inputs = rng.normal(0, params["spread"], size=shape).astype(np.float32)
        # Half the samples sit on exact halves of the input scale, where rounding half away from zero shows.
        scale = np.float32(info.tensors[info.ops[0].outputs[0]].scales[0])
        inputs[::2] = (rng.integers(-140, 140, size=inputs[::2].shape) + 0.5).astype(np.float32) * scale
    else:
        inputs = rng.integers(-128, 128, size=shape, dtype=np.int8)
    interp = runtime.Interpreter.from_bytes(tflite)
    expected = []
    for x in inputs:
        interp.set_input(x[None], 0)
        interp.invoke()
        expected.append(interp.get_output(0)[0].copy())
    out = info.output_tensors[0]
    _assert_no_live_overlap(tflite)
    got = c_outputs(tmp_path_factory.mktemp("prop"), tflite, inputs, tuple(out.shape[1:]), out.dtype)
    assert got.tobytes() == np.stack(expected).tobytes(), params
