"""edgeq.tflite.arena_plan: plans that never overlap live tensors, reach the lower bound where a
first-fit can, and are followed by the real TFLite Micro."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgeq.tflite.arena_plan import (
    ALIGNMENT, ONLINE, Buffer, activation_buffers, lower_bound, overlaps, place, plan_arena, read_plan, with_plan,
)
from edgeq.tflite.reader import read_tflite


def _chain(sizes: list[int]) -> list[Buffer]:
    """A straight graph: op k reads tensor k and writes tensor k + 1."""
    return [Buffer(k, s, k, k + 1) for k, s in enumerate(sizes)]


def test_overlaps_finds_live_tensors_that_share_bytes() -> None:
    a, b, c = Buffer(0, 32, 0, 2), Buffer(1, 32, 2, 3), Buffer(2, 32, 3, 4)
    assert overlaps([a, b, c], [0, 16, 48]) == [(0, 1)]  # a and b are both alive at step 2
    assert overlaps([a, b, c], [0, 32, 0]) == []  # a and c never live together: they may share
    assert overlaps([a, b, c], [0, 32, 16]) == [(1, 2)]


@pytest.mark.parametrize("seed", range(20))
def test_every_order_gives_a_valid_plan_no_lower_than_the_bound(seed) -> None:
    rng = np.random.default_rng(seed)
    buffers = []
    for t in range(int(rng.integers(2, 30))):
        first = int(rng.integers(0, 12))
        buffers.append(Buffer(t, ALIGNMENT * int(rng.integers(1, 200)), first, first + int(rng.integers(0, 5))))
    bound = lower_bound(buffers)
    for order in (lambda b: (-b.size, b.tensor), lambda b: (b.first, b.tensor)):
        offsets = place(buffers, order)
        by_tensor = [offsets[b.tensor] for b in buffers]
        assert overlaps(buffers, by_tensor) == []
        assert all(o % ALIGNMENT == 0 for o in by_tensor)
        assert max(offsets[b.tensor] + b.size for b in buffers) >= bound


def test_a_chain_is_planned_at_its_lower_bound() -> None:
    buffers = _chain([384, 384, 1984, 992, 1920, 1920, 32, 16, 16])
    assert lower_bound(buffers) == 1920 + 1920
    offsets = place(buffers, lambda b: (-b.size, b.tensor))
    assert max(offsets[b.tensor] + b.size for b in buffers) == lower_bound(buffers)


@pytest.fixture(scope="module")
def conv1d_tflite() -> bytes:
    """A small Conv1D classifier converted at batch 1, as edgeq converts: Keras 3 turns each Conv1D
    into RESHAPE + CONV_2D, a graph on which TFLM's own greedy planner leaves a hole."""
    import keras

    from edgeq._tf import captured_output, tf

    tfm = tf()
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([keras.Input((128, 3), batch_size=1), layers.Conv1D(16, 5, activation="relu"),
                              layers.MaxPooling1D(2), layers.Conv1D(32, 3, activation="relu"),
                              layers.GlobalAveragePooling1D(), layers.Dense(6, activation="softmax")])
    rng = np.random.default_rng(0)
    converter = tfm.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tfm.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.normal(size=(1, 128, 3)).astype(np.float32)] for _ in range(20))
    converter.target_spec.supported_ops = [tfm.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tfm.int8
    with captured_output():
        return bytes(converter.convert())


def test_tflm_follows_the_plan_and_gives_the_same_outputs(conv1d_tflite) -> None:
    from edgeq.emulator.memory import measure_tflm_arena, recorded_arena
    from edgeq.emulator.runtimes import tflm_outputs_identical

    info = read_tflite(conv1d_tflite)
    planned, plan = with_plan(conv1d_tflite, info)
    buffers = activation_buffers(info)
    assert buffers and overlaps(buffers, plan.offsets) == []
    assert plan.peak == plan.lower_bound  # a chain: first-fit by size reaches the bound
    assert list(read_plan(planned)) == list(plan.offsets)
    constants = [t.index for t in info.tensors if t.is_constant]
    assert constants and all(plan.offsets[i] == ONLINE for i in constants)
    # TFLM places the activations where the plan says: its head is the plan's peak, below its own.
    _, greedy_head, _ = recorded_arena(conv1d_tflite)
    _, planned_head, _ = recorded_arena(planned)
    assert planned_head == plan.peak < greedy_head, (planned_head, plan.peak, greedy_head)
    assert measure_tflm_arena(planned).smallest < measure_tflm_arena(conv1d_tflite).smallest
    x = np.random.default_rng(1).normal(size=(16, 128, 3)).astype(np.float32)
    assert tflm_outputs_identical(conv1d_tflite, planned, [x])


def test_models_edgeq_does_not_plan(conv1d_tflite) -> None:
    import dataclasses

    info = read_tflite(conv1d_tflite)
    planned, _ = with_plan(conv1d_tflite, info)
    assert with_plan(planned, read_tflite(planned)) is None  # a plan of its own is kept as it is
    assert plan_arena(dataclasses.replace(info, ops=())) is None  # nothing runs
    first = info.input_tensors[0]
    open_batch = tuple(dataclasses.replace(t, shape=(-1, *t.shape[1:])) if t.index == first.index else t
                       for t in info.tensors)
    assert plan_arena(dataclasses.replace(info, tensors=open_batch)) is None  # sizes unknown until run time


def test_place_puts_short_lived_tensors_in_holes() -> None:
    # A big tensor alive at steps 0-1 and another at 3-4 leave room at step 2 for both small ones.
    buffers = [Buffer(0, 1024, 0, 1), Buffer(1, 1024, 3, 4), Buffer(2, 512, 2, 2), Buffer(3, 512, 2, 2)]
    offsets = place(buffers, lambda b: (-b.size, b.tensor))
    assert max(offsets[b.tensor] + b.size for b in buffers) == 1024
    assert list(itertools.chain(overlaps(buffers, [offsets[b.tensor] for b in buffers]))) == []


def test_the_c_header_says_when_the_model_carries_a_plan(conv1d_tflite) -> None:
    from edgeq.export.c_arrays import ArenaSize, model_data_sources

    planned, _ = with_plan(conv1d_tflite, read_tflite(conv1d_tflite))
    arena = ArenaSize(measured=6576, margin=1024)
    with_header = model_data_sources("m", planned, arena=arena)["m_model_data.h"].decode()
    without = model_data_sources("m", conv1d_tflite, arena=arena)["m_model_data.h"].decode()
    assert "OfflineMemoryAllocation" in with_header and "OfflineMemoryAllocation" not in without


def test_report_says_why_a_plan_was_or_was_not_kept() -> None:
    from edgeq.report import _arena_plan_md
    from edgeq.report_types import ArenaPlanPart

    base = {"tflm_head_bytes": 4832, "lower_bound_bytes": 3840, "extra_flash_bytes": 160, "order": "largest first"}
    kept = _arena_plan_md(ArenaPlanPart(**base, planned_head_bytes=3840, kept=True, arena_bytes=7568,
                                        planned_arena_bytes=6576))
    assert "carries edgeq's plan" in kept and "7,568 B to 6,576 B" in kept
    measured = _arena_plan_md(ArenaPlanPart(**base, planned_head_bytes=3840, kept=False, arena_bytes=7568,
                                            planned_arena_bytes=7560))
    assert "would not shrink" in measured and "160 B of flash" in measured
    small = _arena_plan_md(ArenaPlanPart(**base, kept=False, planned_head_bytes=4800))
    assert "saving is smaller" in small
    same = _arena_plan_md(ArenaPlanPart(**base, kept=False, planned_head_bytes=4832))
    assert "no better" in same
