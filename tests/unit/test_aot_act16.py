"""edgeq/aot's int16 activations (TFLite's int16x8 mode): SOFTMAX, LOGISTIC, TANH, RELU and RELU6
through the real converter, as C compiled with -Werror, byte for byte what TFLM's interpreter writes.

The activation reads the model's input, so that the drawn spread of the calibration data sets its
input scale. Edits to the .tflite reach what the converter does not write: LOGISTIC and TANH input
scales at (or within TFLM's 0.1% of) a power of two, which take TFLM's other path, other SOFTMAX
betas, a RELU6 zero point, and what TFLM refuses. The element-wise ops see every int16 code once;
SOFTMAX rows of random, narrow and extreme codes.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.errors import TargetCheckError
from tests.conftest import c_outputs, plain_tflite, tflm_outputs

GCC = shutil.which("gcc")
pytestmark = [pytest.mark.skipif(GCC is None, reason="needs gcc"), pytest.mark.slow]

OPS = {"softmax": "SOFTMAX", "logistic": "LOGISTIC", "tanh": "TANH", "relu": "RELU", "relu6": "RELU6"}
EVERY_CODE = np.arange(-(1 << 15), 1 << 15, dtype=np.int16).reshape(256, 256)
"""All 65536 int16 codes, as 256 samples of a 256-wide input."""


def _converted(kind: str, spread: float, seed: int, shape: tuple[int, ...] = (256,)) -> bytes:
    """One activation on the model's input, converted in int16x8 mode, calibrated on normal data of
    standard deviation `spread`."""
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    x = L.Input(shape, batch_size=1)
    layer = {"softmax": L.Softmax(), "logistic": L.Activation("sigmoid"), "tanh": L.Activation("tanh"),
             "relu": L.ReLU(), "relu6": L.ReLU(max_value=6.0)}[kind]
    data = np.random.default_rng(seed).normal(0, spread, size=(64, *shape)).astype(np.float32)
    return plain_tflite(keras.Model(x, layer(x)), io="int16", data=data)


def _edited(tflite: bytes, *, input_scale: float | None = None, output_scale: float | None = None,
            zero_point: int | None = None, beta: float | None = None) -> bytes:
    """The model with its one op's input scale, output scale, input and output zero point or
    softmax beta replaced."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = obj.subgraphs[0]
    op = graph.operators[0]
    source, target = graph.tensors[op.inputs[0]].quantization, graph.tensors[op.outputs[0]].quantization
    if input_scale is not None:
        source.scale = [input_scale]
    if output_scale is not None:
        target.scale = [output_scale]
    if zero_point is not None:
        source.zeroPoint = target.zeroPoint = [zero_point]
    if beta is not None:
        op.builtinOptions.beta = beta
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def _assert_bit_exact(tmp_path, tflite: bytes, inputs: np.ndarray, op: str) -> None:  # type: ignore[no-untyped-def]
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(tflite)
    assert info.all_op_names == (op,), info.all_op_names  # the op under test, alone and int16
    assert info.tensors[info.ops[0].inputs[0]].dtype == "int16"
    expected = tflm_outputs(tflite, inputs)[:, 0]
    got = c_outputs(tmp_path, tflite, inputs, inputs.shape[1:], "int16")
    assert got.tobytes() == expected.tobytes(), int(np.sum(got != expected))


@pytest.mark.parametrize("kind", ["logistic", "tanh", "relu", "relu6"])
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(spread=st.sampled_from([0.002, 0.3, 4.0, 90.0]), seed=st.integers(0, 1000))
def test_elementwise_int16_is_bit_exact_on_every_code(tmp_path_factory, kind: str, spread: float, seed: int) -> None:
    _assert_bit_exact(tmp_path_factory.mktemp(kind), _converted(kind, spread, seed), EVERY_CODE, OPS[kind])


@pytest.fixture(scope="module")
def converted() -> dict[str, bytes]:
    """Each op converted once (256 wide, calibrated on spread 1), for the edits below."""
    return {kind: _converted(kind, 1.0, 0) for kind in OPS}


@pytest.mark.parametrize(("kind", "edit"), [
    ("logistic", {"input_scale": 2.0 ** -12}), ("logistic", {"input_scale": 2.0 ** -12 * 1.0006}),
    ("logistic", {"input_scale": 2.0 ** -11}), ("tanh", {"input_scale": 2.0 ** -12}),
    ("tanh", {"input_scale": 2.0 ** -11 * 0.9995}), ("tanh", {"input_scale": 2.0 ** -10}),
    ("relu6", {"zero_point": -700}),
])
def test_edited_scales_are_bit_exact(tmp_path, converted: dict[str, bytes], kind: str, edit: dict) -> None:
    """LOGISTIC and TANH at TFLM's power-of-two input scales (a multiplier of 3 or 6 and no shift:
    2^-12 for both, 2^-11 for TANH only), within its 0.1% tolerance of them, and next to them; and
    RELU6 with a zero point, which TFLM's int16 RELU6 (unlike RELU) takes."""
    _assert_bit_exact(tmp_path, _edited(converted[kind], **edit), EVERY_CODE, OPS[kind])


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")  # depth 1: Keras's warning
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(spread=st.sampled_from([0.002, 0.3, 4.0, 90.0]), seed=st.integers(0, 1000), depth=st.integers(1, 40),
       rows=st.integers(1, 3), beta=st.sampled_from([None, 0.25, 3.0]))
def test_softmax_int16_is_bit_exact(tmp_path_factory, spread: float, seed: int, depth: int, rows: int,
                                    beta: float | None) -> None:
    tflite = _converted("softmax", spread, seed, (rows, depth))
    if beta is not None:
        tflite = _edited(tflite, beta=beta)
    rng = np.random.default_rng(seed)
    inputs = rng.integers(-(1 << 15), 1 << 15, size=(24, rows, depth)).astype(np.int16)
    inputs[:8] //= 256  # differences within the exp table's reach
    inputs[8], inputs[9] = 32767, -32768
    inputs[10].reshape(-1)[::2] = -32768
    inputs[10].reshape(-1)[1::2] = 32767
    _assert_bit_exact(tmp_path_factory.mktemp("softmax"), tflite, inputs, "SOFTMAX")


@pytest.mark.parametrize(("kind", "edit", "message"), [
    ("softmax", {"output_scale": 1 / 256}, "TFLM's int16 softmax needs 1/32768"),
    ("softmax", {"input_scale": 6.0}, "overflows int32"),
    ("softmax", {"zero_point": 3}, "takes zero point 0"),
    ("logistic", {"output_scale": 2.0 ** -14}, r"TFLM's int16 LOGISTIC writes 2\^-15"),
    ("tanh", {"input_scale": 6.0}, "outside what TFLM's int16 TANH handles"),
    ("relu", {"zero_point": -5}, "takes zero point 0"),
])
def test_int16_activations_refuse_what_tflm_refuses(converted: dict[str, bytes], kind: str, edit: dict,
                                                    message: str) -> None:
    from edgeq.aot.lower import lower
    from edgeq.tflite.reader import read_tflite

    tflite = _edited(converted[kind], **edit)
    with pytest.raises(TargetCheckError, match=message) as caught:
        lower(tflite, read_tflite(tflite))
    assert f"{OPS[kind]} #0" in str(caught.value)
