"""edgeq/aot's float32 kernels: models the real TFLite converter leaves unquantized, as C built by
gcc and clang with -Werror, byte for byte TFLM's float outputs.

The C does TFLM's float operations in TFLM's order, so the bytes match exactly: on this host expf
and tanhf are glibc's in both. The inputs include what shows a kernel's edges: sums that overflow
(TFLM clamps the infinity to FLT_MAX even with no fused activation), infinities and NaNs, -0.0 and
subnormals. One model holds every float kernel; hypothesis varies the shapes and options per kind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import c_outputs, plain_tflite, tflm_outputs

GCC = shutil.which("gcc")
pytestmark = [pytest.mark.skipif(GCC is None, reason="needs gcc"), pytest.mark.slow]

FLT_MAX = np.finfo(np.float32).max


def _keras():  # type: ignore[no-untyped-def]
    from edgeq._tf import tf

    tf()
    import keras

    return keras


def _inputs(shape: tuple[int, ...], seed: int, spread: float) -> np.ndarray:
    """Twelve samples: random normal ones, and the edge cases each kernel must treat as TFLM does."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, spread, size=(12, *shape)).astype(np.float32)
    x[0] = np.float32(3e38) * np.sign(x[0])  # sums and products overflow to infinities
    x[1].flat[0] = np.inf
    x[2].flat[0], x[2].flat[-1] = -np.inf, np.nan
    x[3] = -0.0
    x[4] *= np.float32(1e-41)  # subnormal
    x[5] *= np.float32(1e19)   # squares overflow
    x[6] = np.round(x[6])      # ties in pooling and softmax maxima
    return x


def _assert_bit_exact(tmp_path: Path, tflite: bytes, seed: int = 0, spread: float = 2.0) -> np.ndarray:
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(tflite)
    tmp_path.mkdir(parents=True, exist_ok=True)
    inputs = _inputs(tuple(info.input_tensors[0].shape[1:]), seed, spread)
    expected = tflm_outputs(tflite, inputs)
    got = c_outputs(tmp_path, tflite, inputs, tuple(info.output_tensors[0].shape), "float32").reshape(expected.shape)
    differ = np.nonzero(got.view(np.uint32) != expected.view(np.uint32))
    assert not differ[0].size, (len(differ[0]), expected[differ][:8], got[differ][:8])
    return expected


def _every_kernel_model():  # type: ignore[no-untyped-def]
    """One model with every float kernel (and the data-movement ops that copy any type), joined
    into one output."""
    keras = _keras()
    keras.utils.set_random_seed(3)
    L, ops = keras.layers, keras.ops
    x = L.Input((6, 5, 4), batch_size=1)
    a = L.Conv2D(6, 3, padding="same", activation="relu")(x)
    grouped = L.Conv2D(4, 2, groups=2)(x)
    d = L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", activation="relu6")(a)
    m = L.MaxPooling2D(2, padding="same")(a)
    p = L.AveragePooling2D(3, strides=2, padding="same")(a)
    s = L.Subtract()([L.Conv2D(12, 1)(m), L.Conv2D(12, 1)(L.GlobalAveragePooling2D(keepdims=True)(x))])
    mu = L.Multiply()([s, L.Activation("sigmoid")(L.Conv2D(12, 1)(m))])
    leaky = L.LeakyReLU(0.3)(L.Add()([mu, L.Activation("tanh")(d)]))
    swish = L.Activation("hard_swish")(L.Conv2D(3, 1)(leaky))
    t = L.Permute((3, 1, 2))(swish)
    padded = L.ZeroPadding2D(((1, 0), (0, 2)))(p)
    parts = ops.split(L.Dense(6)(L.Flatten()(grouped)), 2, axis=-1)
    unstacked = ops.unstack(ops.stack([parts[0], parts[1]], axis=1), axis=1)
    mean = ops.mean(padded, axis=[1, 3])
    joined = L.Concatenate()([L.Flatten()(t), L.Flatten()(padded), mean, unstacked[0] * unstacked[1]])
    y = L.Concatenate()([L.Softmax()(L.Dense(5)(joined)), L.ReLU()(L.Flatten()(padded)),
                         L.ReLU(max_value=6.0)(L.Flatten()(t))])
    return keras.Model(x, y)


EVERY_OP = {"ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "HARD_SWISH",
            "LEAKY_RELU", "LOGISTIC", "MAX_POOL_2D", "MEAN", "MUL", "PACK", "PAD", "RELU", "RELU6", "RESHAPE",
            "SOFTMAX", "SPLIT", "SUB", "TANH", "TRANSPOSE", "UNPACK"}


def _with_options(tflite: bytes, op_name: str, **options: float) -> bytes:
    """The model with the builtin options of each `op_name` op set (what Keras cannot: a softmax beta)."""
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeq.tflite.reader import read_tflite

    info = read_tflite(tflite)
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    for op in info.ops:
        if op.name == op_name:
            for key, value in options.items():
                setattr(obj.subgraphs[0].operators[op.index].builtinOptions, key, value)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def test_one_model_with_every_float_kernel_is_bit_exact_with_tflm(tmp_path: Path) -> None:
    from edgeq.aot import lower
    from edgeq.tflite.reader import read_tflite

    tflite = plain_tflite(_every_kernel_model(), io="float32")
    info = read_tflite(tflite)
    assert set(info.all_op_names) == EVERY_OP
    kernels = {s.op: s.kernel for s in lower.lower(tflite, info).steps}
    moved = {"RESHAPE", "SPLIT", "PACK", "UNPACK"}  # bytes of any type, through their quantized lowerings
    assert all(k.startswith("f32_") for op, k in kernels.items() if op not in moved), kernels
    expected = _assert_bit_exact(tmp_path / "a", tflite)
    assert (np.abs(expected) == FLT_MAX).any() and np.isnan(expected).any()  # the edge cases were reached
    _assert_bit_exact(tmp_path / "b", _with_options(tflite, "SOFTMAX", beta=0.37), seed=1)


def test_float_kernels_refuse_what_they_do_not_take(tmp_path: Path) -> None:
    from edgeq.aot.lower import lower
    from edgeq.errors import TargetCheckError
    from edgeq.tflite.reader import read_tflite

    tflite = _with_options(plain_tflite(_small_conv(), io="float32"), "CONV_2D", fusedActivationFunction=4)
    with pytest.raises(TargetCheckError, match="CONV_2D #0 has the fused activation TANH"):
        lower(tflite, read_tflite(tflite))


def _small_conv():  # type: ignore[no-untyped-def]
    keras = _keras()
    keras.utils.set_random_seed(1)
    x = keras.layers.Input((4, 4, 2), batch_size=1)
    return keras.Model(x, keras.layers.Conv2D(3, 2)(x))


@st.composite
def drawn(draw: st.DrawFn) -> dict:
    return {"h": draw(st.integers(2, 7)), "w": draw(st.integers(2, 7)), "c": draw(st.integers(1, 4)),
            "filters": draw(st.integers(1, 5)), "k": draw(st.integers(1, 3)), "stride": draw(st.integers(1, 2)),
            "same": draw(st.booleans()), "act": draw(st.sampled_from([None, "relu", "relu6"])),
            "seed": draw(st.integers(0, 10_000)), "spread": draw(st.sampled_from([0.5, 2.0, 30.0])),
            "pick": draw(st.integers(0, 5))}


def _build(kind: str, p: dict):  # type: ignore[no-untyped-def]
    keras = _keras()
    keras.utils.set_random_seed(p["seed"])
    L, ops = keras.layers, keras.ops
    x = L.Input((p["h"], p["w"], p["c"]), batch_size=1)
    pad = "same" if p["same"] else "valid"
    k = min(p["k"], p["h"], p["w"])
    outputs = []
    if kind == "conv":  # CONV_2D (dilated, grouped), DEPTHWISE_CONV_2D, FULLY_CONNECTED
        dilation = 1 + p["pick"] % 2 if p["stride"] == 1 and pad == "same" else 1
        y = L.Conv2D(2 * p["filters"], k, strides=p["stride"], padding=pad, dilation_rate=dilation,
                     activation=p["act"])(x)
        y = L.DepthwiseConv2D(k, strides=3 - p["stride"], padding="same", depth_multiplier=1 + p["pick"] % 3,
                              dilation_rate=1, activation=p["act"], use_bias=p["pick"] < 3)(y)
        if p["c"] % 2 == 0:
            outputs.append(L.Flatten()(L.Conv2D(2 * p["filters"], 1, groups=2, activation=p["act"])(x)))
        outputs.append(L.Dense(p["filters"] + 1, activation=p["act"], use_bias=p["pick"] % 2 == 0)(L.Flatten()(y)))
    elif kind == "pool":  # MAX_POOL_2D, AVERAGE_POOL_2D, MEAN over various axes
        for pool in (L.MaxPooling2D, L.AveragePooling2D):
            outputs.append(L.Flatten()(pool(k, strides=p["stride"], padding=pad)(x)))
        axes = [[1, 2], [3], [1, 3], [2], [1, 2, 3], [0, 2]][p["pick"]]
        # Over the batch axis too, kept so that the result stays one sample for Flatten and Concatenate
        outputs.append(L.Flatten()(ops.mean(x, axis=axes, keepdims=p["same"] or 0 in axes)))
    elif kind == "elementwise":  # ADD, SUB, MUL broadcast or with a constant; the element-wise activations
        a = L.Conv2D(p["filters"], 1)(x)
        others = [L.Conv2D(p["filters"], 1)(L.GlobalAveragePooling2D(keepdims=True)(x)),
                  L.Conv2D(p["filters"], 1)(L.AveragePooling2D((1, p["w"]))(x)),
                  L.Conv2D(p["filters"], 1)(L.AveragePooling2D((p["h"], 1))(x))]
        b = others[p["pick"] % 3]
        merged = [L.Add()([a, b]), L.Subtract()([b, a]), L.Multiply()([a, b])]
        constant = np.random.default_rng(p["seed"]).normal(size=(p["filters"],)).astype(np.float32)
        merged += [ops.add(a, constant), ops.multiply(constant, a), ops.subtract(a, np.float32(0.75))]
        acts = [L.ReLU(), L.ReLU(max_value=6.0), L.LeakyReLU(0.1 + p["pick"] / 3), L.Activation("sigmoid"),
                L.Activation("tanh"), L.Activation("hard_swish")]
        outputs = [L.Flatten()(acts[(i + p["pick"]) % 6](m)) for i, m in enumerate(merged)]
    else:  # shape: PAD, PADV2, TRANSPOSE, CONCATENATION, SPLIT, SPLIT_V, PACK, UNPACK, then SOFTMAX
        y = L.Conv2D(p["filters"] + 1, 1, activation=p["act"])(x)  # two channels or more: a real transpose
        outputs.append(L.Flatten()(ops.pad(y, [[0, 0], [1, p["k"] - 1], [p["stride"] - 1, 1], [0, 0]],
                                           constant_values=0.5 if p["same"] else 0.0)))
        outputs.append(L.Flatten()(L.Permute((3, 1, 2))(y) if p["same"] else L.Permute((2, 1, 3))(y)))
        z = L.Reshape((p["h"], p["w"] * (p["filters"] + 1)))(y)
        first, rest = ops.split(L.Dense(p["k"] + 2)(z), [1], axis=-1)
        halves = ops.split(L.Dense(4)(z), 2, axis=-1)
        outputs.append(L.Flatten()(L.Concatenate()([first, rest, *halves])))
        stacked = ops.stack([L.Dense(3)(z), L.Dense(3)(z)], axis=1 + p["k"] % 2)
        outputs.append(L.Add()(ops.unstack(stacked, axis=1)[:2]) if p["k"] % 2 else L.Flatten()(stacked))
        return keras.Model(x, L.Softmax()(L.Concatenate()([L.Flatten()(o) for o in outputs])))
    return keras.Model(x, L.Concatenate()(outputs) if len(outputs) > 1 else outputs[0])


EXPECTED = {"conv": {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}, "pool": {"MAX_POOL_2D", "AVERAGE_POOL_2D"},
            "elementwise": {"ADD", "SUB", "MUL"}, "shape": {"TRANSPOSE", "CONCATENATION", "SPLIT_V", "SOFTMAX"}}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(p=drawn())
def test_random_float_models_are_bit_exact_with_tflm(tmp_path_factory, kind: str, p: dict) -> None:
    from edgeq.aot.kernels import FLOAT_KERNELS
    from edgeq.tflite.reader import read_tflite

    tflite = plain_tflite(_build(kind, p), io="float32")
    ops = set(read_tflite(tflite).all_op_names)
    assert EXPECTED[kind] <= ops and (kind != "shape" or ops & {"PAD", "PADV2"}), (kind, sorted(ops))
    assert ops <= set(FLOAT_KERNELS) | {"RESHAPE", "SPLIT", "SPLIT_V", "PACK", "UNPACK"}, sorted(ops)
    _assert_bit_exact(tmp_path_factory.mktemp(kind), tflite, p["seed"], p["spread"])
