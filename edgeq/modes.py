"""Quantization modes: what each stores in weights and computes activations in.

Kept apart from the converter code so that target profiles (and `edgeq targets ...`) can
validate and show modes without importing TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One quantization mode, and how the TFLite converter makes it (quantize/ptq.py reads this)."""

    name: str
    weights: str
    activations: str
    needs_calibration: bool
    integer_only: bool
    summary: str
    optimize: bool = True  # tf.lite.Optimize.DEFAULT: every mode but float32 quantizes something
    ops_set: str | None = None  # tf.lite.OpsSet member the model is restricted to (full-integer modes)
    supported_types: tuple[str, ...] = ()  # target_spec.supported_types, as tf dtype names


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("int8", "int8", "int8", True, True,
             "full integer: int8 weights and activations, calibrated", ops_set="TFLITE_BUILTINS_INT8"),
        Mode("int16x8", "int8", "int16", True, True,
             "int8 weights, int16 activations: more accurate, ~2x activation RAM",
             ops_set="EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8"),
        Mode("float16", "float16", "float32", False, False,
             "float16 weights, float32 compute: half the size, no calibration", supported_types=("float16",)),
        Mode("dynamic", "int8", "float32", False, False,
             "dynamic-range: int8 weights, float activations (hybrid kernels)"),
        Mode("float32", "float32", "float32", False, False, "no quantization", optimize=False),
    )
}


def activation_dtype(mode: str) -> str:
    """The dtype a model's integer I/O takes in `mode` (float32 for float modes)."""
    m = MODES[mode]
    return m.activations if m.integer_only else "float32"
