"""Tests for edgeq.emulator.memory: the exact TFLM arena and LiteRT peak activations.

No mocks: small Keras 3 models are converted by the real TFLite converter, the arena search runs
the real TFLite Micro interpreter, and its answer is checked by an independent child process that
builds the interpreter directly. Hand-computed activation sizes check `peak_activation_memory`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import plain_tflite
from edgeq.emulator import memory
from edgeq.emulator.activations import ActivationMemory, peak_activation_memory
from edgeq.emulator.memory import ArenaMeasurement, measure_tflm_arena
from edgeq.errors import TargetCheckError
from edgeq.tflite.reader import ModelInfo, OpInfo, TensorInfo, read_tflite

# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """Tiny untrained models (the arena depends on the graph, not the weights)."""
    from edgeq._tf import tf as load_tf

    tf = load_tf()
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    cnn = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(),
                            layers.Flatten(), layers.Dense(10, activation="softmax")])
    autoencoder = keras.Sequential([keras.Input((784,)), layers.Dense(64, activation="relu"),
                                    layers.Dense(784, activation="sigmoid")])
    chain = keras.Sequential([keras.Input((4,)), layers.Dense(32, activation="relu"),
                              layers.Dense(64, activation="relu"), layers.Dense(2)])
    a, b = keras.Input((4,)), keras.Input((4,))  # equal shapes: the converter may reorder inputs
    two_inputs = keras.Model([a, b], layers.Dense(2)(layers.Concatenate()([a, b])))

    with_sign = tf.function(lambda x: tf.math.sign(x), input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    concrete = with_sign.get_concrete_function()
    return {
        "cnn": plain_tflite(cnn),
        "autoencoder": plain_tflite(autoencoder),
        "chain": plain_tflite(chain),
        "two_inputs_int16": plain_tflite(two_inputs, io="int16"),
        "two_inputs_float": plain_tflite(two_inputs, io="float32"),
        "sign": tf.lite.TFLiteConverter.from_concrete_functions([concrete], with_sign).convert(),
    }


@pytest.fixture(scope="module")
def measured(models: dict[str, bytes]) -> dict[str, tuple[ArenaMeasurement, float]]:
    results = {}
    for name in ("cnn", "autoencoder"):
        start = time.perf_counter()
        results[name] = (measure_tflm_arena(models[name], source=f"{name}.tflite"), time.perf_counter() - start)
        print(f"\n{name}: {results[name][0]} in {results[name][1]:.3f} s")
    return results


# -- helpers --------------------------------------------------------------------------------------

_RUN_TFLM = textwrap.dedent("""
    import sys, numpy as np
    from tflite_micro.python.tflite_micro import runtime
    model = open(sys.argv[1], "rb").read()
    try:
        it = runtime.Interpreter.from_bytes(model, arena_size=int(sys.argv[2]))
        for i in range(int(sys.argv[3])):
            d = it.get_input_details(i)
            it.set_input(np.zeros(d["shape"], d["dtype"]), i)
        it.invoke()
    except RuntimeError:
        sys.exit(1)
""")


def tflm_outcome(path: Path, arena: int, inputs: int) -> str:
    """Run the model in TFLM in a fresh interpreter process, independently of the module under test."""
    proc = subprocess.run([sys.executable, "-c", _RUN_TFLM, str(path), str(arena), str(inputs)],
                          capture_output=True, timeout=60)
    return {0: "ok", 1: "fails"}.get(proc.returncode, f"crashed ({proc.returncode})")


def children_of(pid: int) -> set[int]:
    return {p for p, stat in _proc_stats() if int(stat[1]) == pid}


def process_group_members(pgid: int) -> set[int]:
    return {p for p, stat in _proc_stats() if int(stat[2]) == pgid}


def _proc_stats() -> list[tuple[int, list[str]]]:
    """(pid, [state, ppid, pgrp, ...]) of every visible process, from /proc/<pid>/stat."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            found.append((int(entry), text[text.rindex(")") + 2:].split()))
    return found


# -- the TFLM arena -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "autoencoder"])
def test_smallest_arena_runs_and_less_does_not(name: str, models: dict[str, bytes],
                                               measured: dict[str, tuple[ArenaMeasurement, float]],
                                               tmp_path: Path) -> None:
    result, _ = measured[name]
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(models[name])
    assert tflm_outcome(path, result.smallest, 1) == "ok"
    # Just below the minimum TFLM may fail cleanly or crash; either way the model does not run.
    assert tflm_outcome(path, result.smallest - 1, 1) != "ok"
    assert tflm_outcome(path, result.smallest - 16, 1) != "ok"


@pytest.mark.parametrize("name", ["cnn", "autoencoder"])
def test_recorded_numbers_are_consistent(name: str, measured: dict[str, tuple[ArenaMeasurement, float]]) -> None:
    result, seconds = measured[name]
    assert result.recorded_head + result.recorded_tail == result.recorded_total
    assert result.recorded_head > 0 and result.recorded_tail > 0
    # The recorder reports what the arena holds after allocation; allocating needs about as much.
    assert 0.5 * result.recorded_total < result.smallest < 2 * result.recorded_total
    assert 2 <= result.trials <= 40
    assert 0 <= result.crashed_trials < result.trials
    assert seconds < 10  # ~0.4 s on a 2-core machine; generous for a loaded CI runner
    assert result.to_dict() == {"recorded_total": result.recorded_total, "recorded_head": result.recorded_head,
                                "recorded_tail": result.recorded_tail, "smallest": result.smallest,
                                "trials": result.trials, "crashed_trials": result.crashed_trials}


def test_autoencoder_needs_more_than_the_recorded_total(measured: dict[str, tuple[ArenaMeasurement, float]]) -> None:
    """Why the search exists: the planner's scratch space is not in the recorded total."""
    result, _ = measured["autoencoder"]
    assert result.smallest > result.recorded_total + 1024


def test_measurement_is_deterministic(models: dict[str, bytes],
                                      measured: dict[str, tuple[ArenaMeasurement, float]]) -> None:
    assert measure_tflm_arena(models["cnn"], source="cnn.tflite") == measured["cnn"][0]


@pytest.mark.parametrize("name", ["two_inputs_int16", "two_inputs_float"])
def test_models_with_several_inputs(name: str, models: dict[str, bytes], tmp_path: Path) -> None:
    info = read_tflite(models[name])
    assert len(info.inputs) == 2
    expected = "int16" if name.endswith("int16") else "float32"
    assert {t.dtype for t in info.input_tensors} == {expected}
    result = measure_tflm_arena(models[name], source=f"{name}.tflite")
    path = tmp_path / "m.tflite"
    path.write_bytes(models[name])
    assert tflm_outcome(path, result.smallest, 2) == "ok"
    assert tflm_outcome(path, result.smallest - 1, 2) != "ok"


def test_op_without_tflm_kernel_is_a_target_check_error(models: dict[str, bytes]) -> None:
    assert "SIGN" in read_tflite(models["sign"]).all_op_names
    with pytest.raises(TargetCheckError) as caught:
        measure_tflm_arena(models["sign"], source="signs.tflite")
    text = str(caught.value)
    assert caught.value.message.startswith("signs.tflite: ")
    assert "Didn't find op for builtin opcode 'SIGN'" in text
    assert "no kernel" in (caught.value.hint or "")


def test_corrupt_model_is_a_target_check_error(models: dict[str, bytes]) -> None:
    truncated = models["cnn"][: len(models["cnn"]) // 2]
    with pytest.raises(TargetCheckError, match=r"^half\.tflite: TFLite Micro"):
        measure_tflm_arena(truncated, source="half.tflite")


def test_nothing_reaches_the_terminal(models: dict[str, bytes], tmp_path: Path) -> None:
    """TFLM's chatter (allocation report, failures of too-small arenas) stays in the children."""
    path = tmp_path / "m.tflite"
    path.write_bytes(models["cnn"])
    code = ("import sys; from edgeq.emulator.memory import measure_tflm_arena; "
            "r = measure_tflm_arena(open(sys.argv[1], 'rb').read()); assert r.smallest > 0")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_no_process_is_left_behind(models: dict[str, bytes]) -> None:
    before = children_of(os.getpid())
    with memory._ArenaWorker(models["cnn"], source="cnn.tflite", timeout=30) as worker:
        pid = worker.pid
        assert pid is not None and pid in children_of(os.getpid())
        assert worker.run(256).status in ("fails", "crashed")  # 256 B has been seen to segfault TFLM
        assert worker.run(64 * 1024).runs  # the worker survives its children's crashes
    assert children_of(os.getpid()) <= before  # reaped: no zombie either
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not process_group_members(pid)  # no trial child orphaned
    measure_tflm_arena(models["cnn"])
    assert children_of(os.getpid()) <= before


def test_worker_reports_every_way_a_trial_ends() -> None:
    """Clean failure, other exception, crash by signal and hang, each in a real forked child."""
    code = textwrap.dedent("""
        import json, os, signal, time
        from edgeq.emulator.arena_trial import fork_trial
        def fail(): raise RuntimeError("TFLM failed to allocate tensors")
        def error(): raise ValueError("bad input")
        def crash(): os.kill(os.getpid(), signal.SIGSEGV)
        def hang(): time.sleep(30)
        def chatty(): os.write(2, b"hello from fd 2\\n")
        bodies = [fail, error, crash, hang, chatty]
        print(json.dumps([fork_trial(body, 0.5, True) for body in bodies]))
    """)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    fail, error, crash, hang, chatty = json.loads(proc.stdout)
    assert time.monotonic() - start < 20
    assert fail["status"] == "fails"
    assert error["status"] == "error" and "ValueError: bad input" in error["log"]
    assert crash == {"status": "crashed", "signal": signal.SIGSEGV, "log": ""}
    assert hang["status"] == "hung"
    assert chatty == {"status": "ok", "log": "hello from fd 2\n"}


# -- LiteRT peak activations ------------------------------------------------------------------------


def test_peak_activations_of_a_dense_chain(models: dict[str, bytes]) -> None:
    """4 -> 32 -> 64 -> 2, all int8: live sets are {in, h1}, {h1, h2}, {h2, out}."""
    info = read_tflite(models["chain"], source="chain.tflite")
    assert [op.name for op in info.ops] == ["FULLY_CONNECTED"] * 3
    exact = peak_activation_memory(info, alignment=1)
    assert exact == ActivationMemory(peak_bytes=32 + 64, peak_op_index=1, peak_op_name="FULLY_CONNECTED",
                                     total_activation_bytes=4 + 32 + 64 + 2)
    aligned = peak_activation_memory(info, alignment=16)
    assert (aligned.peak_bytes, aligned.peak_op_index, aligned.total_activation_bytes) == (96, 1, 16 + 32 + 64 + 16)
    # At 64-byte alignment every step holds two 64-byte blocks: the first op is the first peak.
    assert peak_activation_memory(info).to_dict() == {"peak_bytes": 128, "peak_op_index": 0,
                                                      "peak_op_name": "FULLY_CONNECTED",
                                                      "total_activation_bytes": 256}


def test_peak_activations_of_the_autoencoder(models: dict[str, bytes]) -> None:
    """784 -> 64 -> 784 -> sigmoid: the peak is the sigmoid, holding its 784-byte input and output."""
    info = read_tflite(models["autoencoder"])
    assert [op.name for op in info.ops] == ["FULLY_CONNECTED", "FULLY_CONNECTED", "LOGISTIC"]
    result = peak_activation_memory(info, alignment=1)
    assert (result.peak_bytes, result.peak_op_index, result.peak_op_name) == (784 + 784, 2, "LOGISTIC")
    assert result.total_activation_bytes == 784 + 64 + 784 + 784
    assert peak_activation_memory(info, alignment=64).peak_bytes == 832 + 832


def _tensor(index: int, dtype: str, shape: tuple[int, ...], constant: bool = False) -> TensorInfo:
    return TensorInfo(index=index, name=f"t{index}", dtype=dtype, shape=shape, buffer_bytes=16 if constant else 0)


def _graph(tensors: list[TensorInfo], ops: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
           inputs: tuple[int, ...], outputs: tuple[int, ...]) -> ModelInfo:
    op_infos = tuple(OpInfo(i, name, ins, outs) for i, (name, ins, outs) in enumerate(ops))
    return ModelInfo(source="hand", file_bytes=0, version=3, description="", subgraph_count=1,
                     tensors=tuple(tensors), ops=op_infos, inputs=inputs, outputs=outputs,
                     all_op_names=tuple(sorted({name for name, _, _ in ops})))


def test_peak_activations_with_a_skip_connection() -> None:
    """x (float32 [-1, 10], batch counts as 1) is read again by the last op, so it stays live."""
    tensors = [_tensor(0, "float32", (-1, 10)), _tensor(1, "float32", (10, 10), constant=True),
               _tensor(2, "int16", (1, 30)), _tensor(3, "float16", (1, 10)), _tensor(4, "float32", (1, 10)),
               _tensor(5, "string", (2,))]
    ops = [("FULLY_CONNECTED", (0, 1, -1), (2,)), ("SOMETHING", (2,), (3,)), ("ADD", (0, 3), (4,))]
    info = _graph(tensors, ops, inputs=(0,), outputs=(4,))
    result = peak_activation_memory(info, alignment=1)
    # step 0: x 40 + t2 60; step 1: x 40 + t2 60 + t3 20; step 2: x 40 + t3 20 + out 40
    assert (result.peak_bytes, result.peak_op_index, result.peak_op_name) == (120, 1, "SOMETHING")
    assert result.total_activation_bytes == 40 + 60 + 20 + 40 + 2 * 4  # unknown dtype: 4 bytes each


def test_peak_activations_without_ops() -> None:
    tensors = [_tensor(0, "int8", (1, 100)), _tensor(1, "uint8", (3,))]
    result = peak_activation_memory(_graph(tensors, [], inputs=(0,), outputs=(0, 1)), alignment=64)
    assert result == ActivationMemory(peak_bytes=128 + 64, peak_op_index=-1, peak_op_name="",
                                      total_activation_bytes=192)
