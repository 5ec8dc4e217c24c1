"""Graphs the fuzzer found, that real converters also produce: the emulator must not crash on them."""

from __future__ import annotations

import json
import math

from edgeq.emulator.latency import MAX_WORK, estimate_latency
from edgeq.emulator.activations import peak_activation_memory
from edgeq.targets import load_target
from edgeq.tflite.reader import ModelInfo, OpInfo, TensorInfo


def _info(tensors: tuple[TensorInfo, ...], ops: tuple[OpInfo, ...], inputs: tuple[int, ...],
          outputs: tuple[int, ...]) -> ModelInfo:
    return ModelInfo("g.tflite", 1000, 3, "", 1, tensors, ops, inputs, outputs, tuple(sorted({o.name for o in ops})))


def test_an_input_no_op_reads_still_takes_memory():
    """keras.Model([a, b], Dense(2)(a)) converts with input b unused (fuzz input 3915 found it first)."""
    tensors = (TensorInfo(0, "a", "float32", (1, 4)), TensorInfo(1, "b", "float32", (1, 4)),
               TensorInfo(2, "w", "float32", (2, 4), buffer_bytes=32), TensorInfo(3, "y", "float32", (1, 2)))
    info = _info(tensors, (OpInfo(0, "FULLY_CONNECTED", (0, 2, -1), (3,)),), (0, 1), (3,))
    memory = peak_activation_memory(info, alignment=1)
    assert memory.peak_bytes == 16 + 16 + 8


def test_absurd_shapes_saturate_the_latency_estimate():
    """A crafted file can declare a 2^31 x 2^31 x ... weight; the estimate stays finite JSON."""
    huge = (2**31,) * 12
    tensors = (TensorInfo(0, "x", "int8", huge), TensorInfo(1, "w", "int8", huge, buffer_bytes=16),
               TensorInfo(2, "y", "int8", huge))
    info = _info(tensors, (OpInfo(0, "FULLY_CONNECTED", (0, 1, -1), (2,)),), (0,), (2,))
    estimate = estimate_latency(info, load_target("mcu"))
    assert estimate.ops[0].macs == MAX_WORK and math.isfinite(estimate.total_ms)
    json.dumps(estimate.part().to_dict(), allow_nan=False)
