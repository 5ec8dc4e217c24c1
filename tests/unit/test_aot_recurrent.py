"""edgeq/aot's recurrent kernels, UNIDIRECTIONAL_SEQUENCE_LSTM and SVDF, byte for byte TFLM's over
several calls in a row: both keep state between calls (TFLM's variable tensors), so the C and the
TFLM interpreter each run the same inputs one call after another, then both reset and run again.

The LSTM comes from the real converter (tf_keras' LSTM, full int8); the converter has no path to
SVDF, so its model is built here as a flatbuffer with random weights and scales TFLM accepts.
Hypothesis draws the sizes and seeds (derandomized: CI runs the same models every time).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.errors import TargetCheckError
from tests.conftest import C_FLAGS, plain_tflite

GCC = shutil.which("gcc")
pytestmark = [pytest.mark.skipif(GCC is None, reason="needs gcc"), pytest.mark.slow]

CALLS = 7
RESET_AT = 5  # the C and TFLM both reset before this call, and must then give what a fresh start gives


def _run_c(tmp_path: Path, tflite: bytes, inputs: np.ndarray, resets: tuple[int, ...] = (RESET_AT,)) -> list[bytes]:
    """The model's outputs (all of them, as bytes) for each call of the plain C, one call after the
    other, `<name>_reset()` before the calls in `resets`; built and run with gcc and with clang (the
    same bytes, or the test fails), and compiled for a Cortex-M4 where arm-none-eabi-gcc is here."""
    from edgeq.aot.emit import emit_c
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(tflite)
    sources = emit_c("m", tflite, info)
    for name, text in sources.files.items():
        (tmp_path / name).write_bytes(text)
    source = str(tmp_path / "m_model.c")
    arm = shutil.which("arm-none-eabi-gcc")
    if arm:
        build = subprocess.run([arm, "-mcpu=cortex-m4", "-mthumb", *C_FLAGS, "-c", source, "-o",
                                str(tmp_path / "m_m4.o")], capture_output=True, text=True)
        assert build.returncode == 0, build.stderr
    runs = []
    for compiler in filter(None, (GCC, shutil.which("clang"))):
        lib = tmp_path / f"libm_{Path(compiler).name}.so"
        build = subprocess.run([compiler, *C_FLAGS, "-shared", "-fPIC", source, "-o", str(lib)], capture_output=True,
                               text=True)
        assert build.returncode == 0, (compiler, build.stderr)
        c = ctypes.CDLL(str(lib))
        calls = []
        for k, x in enumerate(inputs):
            if k in resets:
                c.m_reset()
            x = np.ascontiguousarray(x)
            outs = [np.zeros(t.shape, dtype=t.dtype) for t in info.output_tensors]
            pointers = [a.ctypes.data_as(ctypes.c_void_p) for a in (x, *outs)]
            assert c.m_invoke(*pointers) == 0
            calls.append(b"".join(o.tobytes() for o in outs))
        runs.append(calls)
    assert all(r == runs[0] for r in runs[1:]), "gcc and clang builds disagree"
    return runs[0]


def _run_tflm(tflite: bytes, inputs: np.ndarray, resets: tuple[int, ...] = (RESET_AT,)) -> list[bytes]:
    """The same in one TFLM interpreter, kept from call to call, `reset()` before the calls in `resets`."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite)
    count = _output_count(tflite)
    calls = []
    for k, x in enumerate(inputs):
        if k in resets:
            interp.reset()
        interp.set_input(x, 0)
        interp.invoke()
        calls.append(b"".join(np.asarray(interp.get_output(i)).tobytes() for i in range(count)))
    return calls


def _output_count(tflite: bytes) -> int:
    from edgeq.tflite.reader import read_tflite

    return len(read_tflite(tflite).outputs)


def _assert_same(tmp_path: Path, tflite: bytes, inputs: np.ndarray) -> list[bytes]:
    expected = _run_tflm(tflite, inputs)
    got = _run_c(tmp_path, tflite, inputs)
    assert got == expected, [k for k, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert len(set(expected)) > 1, "the outputs never change: the comparison would prove little"
    # After the reset, the first call gives what it gives a fresh interpreter.
    assert expected[RESET_AT] == _run_tflm(tflite, inputs[RESET_AT:RESET_AT + 1], resets=())[0]
    return got


# --- UNIDIRECTIONAL_SEQUENCE_LSTM ---------------------------------------------------------------


def _lstm_tflite(steps: int, features: int, units: tuple[int, int], seed: int, spread: float) -> bytes:
    """Two tf_keras LSTMs, one on the other (the converter fuses each into an
    UNIDIRECTIONAL_SEQUENCE_LSTM), every step's output flattened into an int8 Dense layer: full
    int8. `spread` scales the random kernels, so that gates saturate as well as sit in their middle."""
    from edgeq._tf import tf

    tf()
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    L = tf_keras.layers
    model = tf_keras.Sequential([tf_keras.Input((steps, features), batch_size=1),
                                 L.LSTM(units[0], return_sequences=True), L.LSTM(units[1], return_sequences=True),
                                 L.Flatten(), L.Dense(3)])
    for layer in model.layers[:2]:
        kernel, recurrent, bias = layer.get_weights()
        layer.set_weights([kernel * spread, recurrent * spread, bias])
    data = np.random.default_rng(seed).normal(0, 1.5, size=(32, steps, features)).astype(np.float32)
    tflite = plain_tflite(model, data=data)
    assert _ops(tflite)[:2] == ["UNIDIRECTIONAL_SEQUENCE_LSTM"] * 2, _ops(tflite)
    return tflite


def _ops(tflite: bytes) -> list[str]:
    from edgeq.tflite.reader import read_tflite

    return [op.name for op in read_tflite(tflite).ops]


@pytest.fixture(scope="module")
def small_lstm() -> bytes:
    return _lstm_tflite(steps=4, features=3, units=(5, 2), seed=3, spread=4.0)


def _int8_sequences(tflite: bytes, seed: int) -> np.ndarray:
    from edgeq.tflite.reader import read_tflite

    shape = read_tflite(tflite).input_tensors[0].shape
    return np.random.default_rng(seed).integers(-128, 128, size=(CALLS, *shape), dtype=np.int8)


@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(steps=st.integers(1, 6), features=st.integers(1, 9), units=st.tuples(st.integers(1, 8), st.integers(1, 8)),
       seed=st.integers(0, 10_000), spread=st.sampled_from([1.0, 6.0, 25.0]))
def test_lstm_is_bit_exact_with_tflm_call_after_call(tmp_path_factory, steps: int, features: int,
                                                     units: tuple[int, int], seed: int, spread: float) -> None:
    tflite = _lstm_tflite(steps, features, units, seed, spread)
    _assert_same(tmp_path_factory.mktemp("lstm"), tflite, _int8_sequences(tflite, seed))


def _lstm_alone(tflite: bytes, batch: int, time_major: bool) -> bytes:
    """The model's LSTM op alone (its output is the model's), run on `batch` sequences at once,
    [batch, time, features] or time-major [time, batch, features]: the converter makes neither."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = obj.subgraphs[0]
    op = graph.operators[0]
    graph.operators, graph.inputs, graph.outputs = [op], [op.inputs[0]], [op.outputs[0]]
    obj.signatureDefs = []
    steps, features = graph.tensors[op.inputs[0]].shape[1:]
    units = graph.tensors[op.outputs[0]].shape[2]
    lead = [steps, batch] if time_major else [batch, steps]
    for index, shape in ((op.inputs[0], [*lead, features]), (op.outputs[0], [*lead, units]),
                         (op.inputs[18], [batch, units]), (op.inputs[19], [batch, units])):
        graph.tensors[index].shape = np.asarray(shape, dtype=np.int32)
        graph.tensors[index].shapeSignature = None
    op.builtinOptions.timeMajor = time_major
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


@pytest.mark.parametrize("time_major", [False, True])
def test_lstm_runs_several_sequences_batch_or_time_major(tmp_path: Path, small_lstm: bytes, time_major: bool) -> None:
    tflite = _lstm_alone(small_lstm, batch=2, time_major=time_major)
    _assert_same(tmp_path, tflite, _int8_sequences(tflite, seed=5))


def _refusal(tflite: bytes) -> str:
    from edgeq.aot.lower import lower
    from edgeq.tflite.reader import read_tflite

    with pytest.raises(TargetCheckError) as refused:
        lower(tflite, read_tflite(tflite))
    return str(refused.value)


def _edited(tflite: bytes, change: Any) -> bytes:
    """The model with `change(first operator, graph)` made to its object form."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    change(obj.subgraphs[0].operators[0], obj.subgraphs[0])
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def test_lstm_the_c_runtime_lacks_is_refused_by_name(small_lstm: bytes) -> None:
    def peephole(op: Any, graph: Any) -> None:
        op.inputs[10] = op.inputs[13]  # the forget gate's bias stands in for peephole weights

    def not_variable(op: Any, graph: Any) -> None:
        graph.tensors[op.inputs[19]].isVariable = False

    def relu_cell(op: Any, graph: Any) -> None:
        op.builtinOptions.fusedActivationFunction = 1

    def float_activations(op: Any, graph: Any) -> None:  # a float LSTM, as far as the lowering looks
        for index in (op.inputs[0], op.inputs[18], op.inputs[19], op.outputs[0]):
            graph.tensors[index].type, graph.tensors[index].quantization = 0, None  # FLOAT32

    assert "UNIDIRECTIONAL_SEQUENCE_LSTM #0 has peephole weights" in _refusal(_edited(small_lstm, peephole))
    assert re.search(r"UNIDIRECTIONAL_SEQUENCE_LSTM #0 keeps its cell state in tensor #\d+, which is not variable",
                     _refusal(_edited(small_lstm, not_variable)))
    assert "cell activation 1; TFLM's LSTM runs tanh (4) or sigmoid (6)" in _refusal(_edited(small_lstm, relu_cell))
    assert re.search(r"UNIDIRECTIONAL_SEQUENCE_LSTM's input '.+' is float32",
                     _refusal(_edited(small_lstm, float_activations)))


# --- SVDF -----------------------------------------------------------------------------------------


def _svdf_tflite(p: dict[str, Any]) -> bytes:
    """input int8 [batch, features] -> SVDF with int16 memory -> SVDF with int8 memory (zero point
    not 0) -> both SVDFs' outputs, int8. Random weights; scales chosen from the data so that the
    memory and the outputs use their range (times a random factor: some saturate)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    rng = np.random.default_rng(p["seed"])
    model = schema.ModelT()
    model.version, model.description = 3, "edgeq's SVDF test model"
    model.buffers = [schema.BufferT()]
    graph = schema.SubGraphT()
    graph.tensors, graph.operators = [], []

    def tensor(shape: list[int], dtype: str, scale: float, zero_point: int = 0, data: np.ndarray | None = None,
               variable: bool = False) -> int:
        t = schema.TensorT()
        t.shape, t.isVariable = np.asarray(shape, dtype=np.int32), variable
        t.type = getattr(schema.TensorType, dtype.upper())
        t.name = f"t{len(graph.tensors)}"
        t.quantization = schema.QuantizationParametersT()
        t.quantization.scale, t.quantization.zeroPoint = [float(np.float32(scale))], [zero_point]
        t.buffer = 0
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data, dtype=dtype).tobytes(), dtype=np.uint8)
            model.buffers.append(buffer)
            t.buffer = len(model.buffers) - 1
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    def svdf(source: int, source_scale: float, source_zero: int, memory_dtype: str, rank: int, units: int,
             memory: int) -> tuple[int, float, int]:
        filters, features = units * rank, graph.tensors[source].shape[1]
        limit = 32767 if memory_dtype == "int16" else 127
        feature = rng.integers(-127, 128, size=(filters, features))
        time = rng.integers(-limit, limit + 1, size=(filters, memory))
        x = rng.integers(-128, 128, size=(64, features)) - source_zero
        typical = max(np.percentile(np.abs(x @ feature.T), 90), 1.0)
        wf_scale, wt_scale = 0.01, 0.5 / limit
        memory_scale = float(np.float32(source_scale * wf_scale * typical / (0.5 * limit) * p["factor"]))
        memory_zero = 0 if memory_dtype == "int16" else int(rng.integers(-60, 60))
        product = float(np.float32(memory_scale) * np.float32(wt_scale))
        out_scale = product * np.sqrt(rank * memory) * limit * 0.3 * np.sqrt(np.mean(time ** 2.0)) / 64 * p["factor2"]
        out_zero = int(rng.integers(-128, 20))
        bias = rng.integers(-1, 2, size=units) * int(out_scale / product * 20)
        ids = [source, tensor([filters, features], "int8", wf_scale, data=feature),
               tensor([filters, memory], memory_dtype, wt_scale, data=time),
               tensor([units], "int32", product, data=bias),
               tensor([graph.tensors[source].shape[0], filters * memory], memory_dtype, memory_scale, memory_zero,
                      variable=True)]
        out = tensor([graph.tensors[source].shape[0], units], "int8", out_scale, out_zero)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, ids, [out]
        op.builtinOptionsType = schema.BuiltinOptions.SVDFOptions
        op.builtinOptions = schema.SVDFOptionsT()
        op.builtinOptions.rank, op.builtinOptions.fusedActivationFunction = rank, p["relu"]  # TFLM's int8 ignores it
        graph.operators.append(op)
        return out, out_scale, out_zero

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.SVDF
    code.version = 1
    model.operatorCodes = [code]
    source = tensor([p["batch"], p["features"]], "int8", 0.05, p["input_zero"])
    first = svdf(source, 0.05, p["input_zero"], "int16", p["rank"], p["units"], p["memory"])
    second = svdf(first[0], first[1], first[2], "int8", 1 + p["rank"] % 2, p["units2"], p["memory2"])
    graph.inputs, graph.outputs = [source], [first[0], second[0]]
    model.subgraphs = [graph]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(p=st.fixed_dictionaries({
    "batch": st.integers(1, 2), "features": st.integers(1, 10), "rank": st.integers(1, 3), "units": st.integers(1, 6),
    "memory": st.integers(1, 6), "units2": st.integers(1, 4), "memory2": st.integers(1, 5),
    "input_zero": st.integers(-128, 50), "seed": st.integers(0, 10_000), "relu": st.sampled_from([0, 1]),
    "factor": st.sampled_from([0.3, 1.0, 3.0]), "factor2": st.sampled_from([0.3, 1.0, 3.0])}))
def test_svdf_is_bit_exact_with_tflm_call_after_call(tmp_path_factory, p: dict[str, Any]) -> None:
    tflite = _svdf_tflite(p)
    assert _ops(tflite) == ["SVDF", "SVDF"]
    inputs = np.random.default_rng(p["seed"]).integers(-128, 128, size=(CALLS, p["batch"], p["features"]),
                                                       dtype=np.int8)
    _assert_same(tmp_path_factory.mktemp("svdf"), tflite, inputs)


def test_svdf_the_c_runtime_lacks_is_refused_by_name() -> None:
    tflite = _svdf_tflite({"batch": 1, "features": 3, "rank": 1, "units": 2, "memory": 3, "units2": 1, "memory2": 2,
                           "input_zero": 0, "seed": 0, "relu": 0, "factor": 1.0, "factor2": 1.0})

    def not_variable(op: Any, graph: Any) -> None:
        graph.tensors[op.inputs[4]].isVariable = False

    def no_bias(op: Any, graph: Any) -> None:  # TFLM's Prepare reads the bias's scale: it needs one
        op.inputs[3] = -1

    def bias_scale(op: Any, graph: Any) -> None:
        graph.tensors[op.inputs[3]].quantization.scale = [graph.tensors[op.inputs[3]].quantization.scale[0] * 2 + 1e-3]

    assert "SVDF #0 keeps its activation state in tensor #" in _refusal(_edited(tflite, not_variable))
    assert "SVDF #0 has no bias" in _refusal(_edited(tflite, no_bias))
    assert "SVDF #0 has a bias scale" in _refusal(_edited(tflite, bias_scale))


def test_the_header_says_the_model_keeps_state_and_how_to_reset_it(small_lstm: bytes) -> None:
    from edgeq.aot.emit import aot_readme, emit_c
    from edgeq.tflite.reader import read_tflite

    sources = emit_c("kws", small_lstm, read_tflite(small_lstm))
    header = sources.files["kws_model.h"].decode()
    assert "void kws_reset(void);" in header and "from one call to the next" in header
    assert "kws_reset()" in aot_readme(sources).decode()
