"""Tests for edgeq.emulator.latency on models from the real TFLite converter (no mocks).

MAC counts are checked against hand computation from the Keras layer shapes, so a wrong tensor
layout assumption (filter [out_c, kh, kw, in_c] vs [1, kh, kw, out_c]) shows up as a wrong number.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import plain_tflite
from edgeq.emulator.latency import (KINDS, HostLatency, LatencyEstimate, count_macs, estimate_latency,
                                    measure_host_latency)
from edgeq.errors import TFLiteFormatError
from edgeq.targets import load_target
from edgeq.tflite.reader import ModelInfo, read_tflite

pytestmark = pytest.mark.slow

# The CNN below, by hand. Conv2D 8x3x3 valid on 8x8x1 -> 6x6x8; depthwise 3x3 same -> 6x6x8;
# Add -> 288 elements; MaxPool 2 -> 3x3x8 = 72 outputs x 4 window reads; Dense 72 -> 32 -> 10.
CONV_MACS = 6 * 6 * 8 * 3 * 3 * 1
DEPTHWISE_MACS = 6 * 6 * 8 * 3 * 3
ADD_ELEMENTS = 6 * 6 * 8
POOL_READS = 3 * 3 * 8 * 2 * 2
DENSE_MACS = (72 * 32, 32 * 10)
SOFTMAX_ELEMENTS = 10
CNN_MACS = CONV_MACS + DEPTHWISE_MACS + ADD_ELEMENTS + POOL_READS + sum(DENSE_MACS) + SOFTMAX_ELEMENTS


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """The CNN as float32 and full int8 (random calibration), and a pooling model, all untrained."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(8, 3)(x)
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same")(conv)
    pooled = keras.layers.MaxPooling2D(2)(keras.layers.Add()([conv, depthwise]))
    hidden = keras.layers.Dense(32)(keras.layers.Flatten()(pooled))
    cnn = keras.Model(x, keras.layers.Dense(10, activation="softmax")(hidden))

    pools = keras.Sequential([
        keras.Input((10, 10, 3)),
        keras.layers.AveragePooling2D(3, strides=1),   # -> 8x8x3, 9 reads per output
        keras.layers.GlobalAveragePooling2D(),         # MEAN over 8x8x3
    ])

    return {"float32": plain_tflite(cnn, io="float32"), "int8": plain_tflite(cnn),
            "pools": plain_tflite(pools, io="float32")}


def _info(models: dict[str, bytes], name: str) -> ModelInfo:
    return read_tflite(models[name], source=f"{name}.tflite")


def _macs_by_op(estimate: LatencyEstimate, op: str) -> list[int]:
    return [c.macs for c in estimate.ops if c.op == op]


# -- MAC counts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_macs_match_hand_computation(models: dict[str, bytes], kind: str) -> None:
    estimate = estimate_latency(_info(models, kind), load_target("mcu"))
    assert _macs_by_op(estimate, "CONV_2D") == [CONV_MACS] == [2592]
    assert _macs_by_op(estimate, "DEPTHWISE_CONV_2D") == [DEPTHWISE_MACS]
    assert _macs_by_op(estimate, "ADD") == [ADD_ELEMENTS]
    assert _macs_by_op(estimate, "MAX_POOL_2D") == [POOL_READS]
    assert _macs_by_op(estimate, "FULLY_CONNECTED") == list(DENSE_MACS)
    assert _macs_by_op(estimate, "SOFTMAX") == [SOFTMAX_ELEMENTS]
    assert estimate.total_macs == CNN_MACS
    kinds = {c.op: c.kind for c in estimate.ops}
    assert kinds["CONV_2D"] == "conv_2d" and kinds["DEPTHWISE_CONV_2D"] == "depthwise_conv_2d"
    assert kinds["FULLY_CONNECTED"] == "fully_connected" and kinds["MAX_POOL_2D"] == "pooling"
    assert kinds["ADD"] == kinds["SOFTMAX"] == "elementwise"
    assert all(c.macs == 0 for c in estimate.ops if c.kind == "other")
    assert "RESHAPE" in kinds and kinds["RESHAPE"] == "other"


def test_pooling_counts_window_reads_and_mean_counts_inputs(models: dict[str, bytes]) -> None:
    estimate = estimate_latency(_info(models, "pools"), load_target("mcu"))
    assert _macs_by_op(estimate, "AVERAGE_POOL_2D") == [8 * 8 * 3 * 3 * 3]
    assert _macs_by_op(estimate, "MEAN") == [8 * 8 * 3]
    assert {c.kind for c in estimate.ops} == {"pooling"}


def test_count_macs_lists_every_op_in_graph_order(models: dict[str, bytes]) -> None:
    info = _info(models, "float32")
    rows = count_macs(info)
    assert [op for op, _, _ in rows] == list(info.ops)
    assert all(kind in KINDS and work >= 0 for _, kind, work in rows)


# -- cycles and milliseconds ----------------------------------------------------------------------


def test_cycles_and_ms_follow_the_target_figures(models: dict[str, bytes]) -> None:
    mcu = load_target("mcu")
    estimate = estimate_latency(_info(models, "int8"), mcu)
    assert estimate.target == "mcu" and estimate.clock_mhz == mcu.clock_mhz == 64
    per_unit = {"conv_2d": mcu.latency.conv_2d, "depthwise_conv_2d": mcu.latency.depthwise_conv_2d,
                "fully_connected": mcu.latency.fully_connected, "pooling": mcu.latency.pooling,
                "elementwise": mcu.latency.elementwise, "other": 0.0}
    for cost in estimate.ops:
        assert cost.cycles == pytest.approx(cost.macs * per_unit[cost.kind] + mcu.latency.op_overhead)
        assert cost.ms == pytest.approx(cost.cycles / (64 * 1e3))
    conv = next(c for c in estimate.ops if c.op == "CONV_2D")
    assert conv.cycles == pytest.approx(2592 * 1.0 + 1500) and conv.ms == pytest.approx(4092 / 64_000)
    assert estimate.total_cycles == pytest.approx(sum(c.cycles for c in estimate.ops))
    assert estimate.total_ms == pytest.approx(estimate.total_cycles / 64_000)


def test_faster_target_gives_a_smaller_estimate(models: dict[str, bytes]) -> None:
    info = _info(models, "int8")
    slow, fast = estimate_latency(info, load_target("mcu")), estimate_latency(info, load_target("stm32h743"))
    assert fast.total_macs == slow.total_macs
    assert fast.total_cycles < slow.total_cycles and fast.total_ms < slow.total_ms / 5
    assert all(f.ms < s.ms for f, s in zip(fast.ops, slow.ops))


def test_by_kind_sums_to_the_totals(models: dict[str, bytes]) -> None:
    estimate = estimate_latency(_info(models, "float32"), load_target("mcu"))
    groups = estimate.by_kind()
    assert list(groups) == [k for k in KINDS if k in groups]
    assert set(groups) == {"conv_2d", "depthwise_conv_2d", "fully_connected", "pooling", "elementwise", "other"}
    assert sum(g["ops"] for g in groups.values()) == len(estimate.ops)
    assert sum(g["macs"] for g in groups.values()) == estimate.total_macs
    assert sum(g["ms"] for g in groups.values()) == pytest.approx(estimate.total_ms)
    assert groups["fully_connected"] == {"ops": 2, "macs": sum(DENSE_MACS),
                                         "ms": pytest.approx(sum(c.ms for c in estimate.ops
                                                                 if c.kind == "fully_connected"))}


def test_slowest_and_json(models: dict[str, bytes]) -> None:
    estimate = estimate_latency(_info(models, "int8"), load_target("mcu"))
    top = estimate.slowest(3)
    assert len(top) == 3 and [c.cycles for c in top] == sorted((c.cycles for c in estimate.ops), reverse=True)[:3]
    assert top[0].op == "DEPTHWISE_CONV_2D"  # 2592 MACs x 1.6 cycles beats the 2592 x 1.0 of the conv
    assert estimate.slowest(0) == () and len(estimate.slowest(100)) == len(estimate.ops)
    document = json.loads(json.dumps(estimate.part().to_dict()))
    assert document["target"] == "mcu" and document["total_macs"] == CNN_MACS
    assert document["total_ms"] == float(f"{estimate.total_ms:.4g}")
    assert len(document["ops"]) == len(estimate.ops) and document["ops"][0] == estimate.ops[0].part().to_dict()
    assert set(document["by_kind"]) == set(estimate.by_kind())
    assert all(isinstance(op["cycles"], int) for op in document["ops"])


# -- host measurement -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_host_latency_is_positive_and_ordered(models: dict[str, bytes], kind: str) -> None:
    result = measure_host_latency(models[kind], runs=20, warmup=2, seed=1)
    assert isinstance(result, HostLatency) and result.runtime == "litert" and result.runs == 20
    assert 0 < result.min_us <= result.median_us <= result.p90_us
    assert result.median_us < 1e6  # a 9k-MAC model takes microseconds, not seconds
    document = json.loads(json.dumps(result.part().to_dict()))
    assert document["runs"] == 20 and document["min_us"] > 0


def test_host_latency_rejects_bad_arguments_and_models(models: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="runs >= 1"):
        measure_host_latency(models["int8"], runs=0)
    with pytest.raises(TFLiteFormatError, match="LiteRT cannot run the model"):
        measure_host_latency(b"not a model at all, just some bytes" * 4)
