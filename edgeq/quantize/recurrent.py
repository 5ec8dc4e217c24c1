"""Recurrent layers, made into graphs the TFLite converter quantizes and TFLite Micro runs.

Measured with TF 2.21 (the converter calibrates in its own interpreter):
- tf_keras' LSTM converts to one fused UNIDIRECTIONAL_SEQUENCE_LSTM op, which TFLM runs in int8.
  Keras 3's LSTM becomes a WHILE loop whose int8 calibration crashes the converter (SIGSEGV), so
  a Keras 3 model with an LSTM is rebuilt in tf_keras (edgeq/quantize/bridge.py, verified).
  The converter has no int16x8 LSTM. The fused op does not always compute what Keras does: on a
  trained model its float outputs were off by 0.99 (on random weights by 0.004), so the caller
  checks the float conversion and asks for `unroll_lstm` where it disagrees by more than one int8
  step of the output (frontends/keras.py).
- GRU and SimpleRNN become WHILE loops in both Keras versions, and int8 calibration crashes the
  converter; TFLM has no GRU kernel. With a fixed number of steps the layer can be unrolled
  (`unroll=True`: the cell once per step, plain FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD ops),
  at the price of one copy of the cell's ops per step; an unrolled LSTM computes its gates with
  four matmuls, not one and a SPLIT that the converter may leave in float. Beyond
  MAX_UNROLL_STEPS, or with an open sequence length, edgeq refuses (exit 3) and says why.
Float modes keep the loop: LiteRT runs WHILE, and float calibration is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgeq.errors import TargetCheckError
from edgeq.records import Record, key

MAX_UNROLL_STEPS = 64
"""Longest sequence unrolled: each step repeats the cell's ops (and flash and arena grow with them)."""

UNROLLABLE = ("GRU", "SimpleRNN")
_INTEGER_MODES = ("int8", "int16x8")
_VERIFY_ATOL = 1e-4


def recurrent_layers(keras_model: Any) -> list[Any]:
    """The LSTM, GRU and SimpleRNN layers of a Keras model, nested models included, in order."""
    found = []
    stack = list(getattr(keras_model, "layers", []))
    while stack:
        layer = stack.pop(0)
        if type(layer).__name__ in ("LSTM", *UNROLLABLE):
            found.append(layer)
        stack[:0] = list(getattr(layer, "layers", []))
    return found


@dataclass(frozen=True)
class RecurrentNote(Record):
    """What edgeq did to one recurrent layer (`class`: LSTM, GRU or SimpleRNN) so that it converts."""

    layer: str
    kind: str = key("class")
    action: str = ""

    def with_action(self, more: str) -> RecurrentNote:
        return replace(self, action=self.action + more)


def prepare_recurrent(keras_model: Any, mode: str, samples: Sequence[np.ndarray],
                      sample_shapes: Sequence[tuple[int, ...]], *,
                      unroll_lstm: bool = False) -> tuple[Any, list[RecurrentNote]]:
    """The model rewritten so that its recurrent layers convert for `mode`, and what was done.

    `samples`: float inputs (one array per model input) to verify the rewrite against the
    original; `sample_shapes`: the input shapes the model is converted for (no batch).
    `unroll_lstm`: unroll LSTMs too, instead of leaving them to the converter's fused op.
    Returns the model unchanged (and no notes) when nothing needs doing.
    """
    layers = recurrent_layers(keras_model)
    if not layers or mode not in _INTEGER_MODES:
        return keras_model, []
    notes: list[RecurrentNote] = []
    to_unroll = []
    for layer in layers:
        kind = type(layer).__name__
        if kind == "LSTM" and not unroll_lstm:
            if mode == "int16x8":
                raise TargetCheckError(f"layer '{layer.name}' (LSTM): the TFLite converter has no int16x8 kernel for "
                                       "UNIDIRECTIONAL_SEQUENCE_LSTM",
                                       hint="convert with --mode int8 (TFLM runs the fused int8 LSTM)")
            notes.append(RecurrentNote(layer.name, kind, "fused into UNIDIRECTIONAL_SEQUENCE_LSTM"))
            continue
        if getattr(layer, "unroll", False):
            notes.append(RecurrentNote(layer.name, kind, "already unrolled"))
            continue
        steps = _steps(layer, keras_model, sample_shapes)
        if steps is None or steps > MAX_UNROLL_STEPS:
            length = "an open sequence length" if steps is None else f"{steps} steps"
            raise TargetCheckError(
                f"layer '{layer.name}' ({kind}) runs over {length}: TFLite Micro has no {kind} kernel, {mode} "
                f"calibration of its loop crashes the TFLite converter, and edgeq unrolls at most "
                f"{MAX_UNROLL_STEPS} steps (each step repeats the cell)",
                hint="shorten the sequence (--input-shape), use an LSTM (fused into one op), or a float mode "
                     "on a LiteRT target")
        to_unroll.append(layer.name)
        notes.append(RecurrentNote(layer.name, kind, f"unrolled over {steps} steps"))
    rewritten = keras_model
    if to_unroll:
        rewritten = _unrolled(rewritten, set(to_unroll), sample_shapes)
    # tf_keras' LSTM is the one the converter fuses, and the one whose unrolled int8 ops are all
    # integer (Keras 3's unrolled LSTM keeps QUANTIZE/DEQUANTIZE pairs).
    if any(note.kind == "LSTM" for note in notes) and not _is_tf_keras(rewritten):
        from edgeq.quantize.bridge import to_tf_keras

        rewritten = to_tf_keras(rewritten, list(samples))
        notes = [n.with_action(" (the model rebuilt in tf_keras)") if n.kind == "LSTM" else n for n in notes]
    unrolled_lstms = {n.layer for n in notes if n.kind == "LSTM" and n.layer in to_unroll}
    if unrolled_lstms:
        rewritten = _gates_apart(rewritten, unrolled_lstms)
    if rewritten is not keras_model:
        _verify(keras_model, rewritten, samples, [n.layer for n in notes])
    return rewritten, notes


def _is_tf_keras(model: Any) -> bool:
    from edgeq.quantize.bridge import is_tf_keras

    return is_tf_keras(model)


def _steps(layer: Any, model: Any, sample_shapes: Sequence[tuple[int, ...]]) -> int | None:
    """The layer's sequence length: its input's time dimension, or the converted input's."""
    shape = tuple(getattr(layer, "input", None).shape) if getattr(layer, "input", None) is not None else ()
    if len(shape) == 3 and shape[1] is not None:
        return int(shape[1])
    inputs = list(getattr(model, "inputs", []))
    if len(inputs) == 1 and len(sample_shapes) == 1 and len(sample_shapes[0]) == 2:
        return int(sample_shapes[0][0])  # a sequence model whose input's time dimension was left open
    return None


def _unrolled(model: Any, names: set[str], sample_shapes: Sequence[tuple[int, ...]]) -> Any:
    """A copy of `model` with the named recurrent layers unrolled, its inputs fixed to the
    converted shapes (unrolling needs the number of steps), and the same weights."""
    keras_module = _keras_of(model)

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in names:
            config["unroll"] = True
        return type(layer).from_config(config)

    inputs = [keras_module.Input(shape=tuple(shape), name=t.name.split(":")[0] if hasattr(t, "name") else None,
                                 dtype=t.dtype) for t, shape in zip(model.inputs, sample_shapes)]
    copy = keras_module.models.clone_model(model, input_tensors=inputs if len(inputs) > 1 else inputs[0],
                                           clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _gates_apart(model: Any, names: set[str]) -> Any:
    """A copy of `model` (tf_keras) whose named unrolled LSTMs compute each gate with its own matmul
    (tf_keras' implementation 1) instead of one matmul for all four and a SPLIT. The converter left
    that SPLIT in float (with a DEQUANTIZE) in 2 of 7 runs of the same model, which an integer-only
    target refuses; with the gates apart, 12 of 12 runs gave the same integer-only bytes. It costs
    flash and TFLM arena: on MLPerf-style LSTM(16) over 20 steps, 56 KB against 41 KB, 123 KB of
    arena against 87 KB."""
    keras_module = _keras_of(model)

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in names and "implementation" in config:
            config["implementation"] = 1
        return type(layer).from_config(config)

    copy = keras_module.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _keras_of(model: Any) -> Any:
    if _is_tf_keras(model):
        import tf_keras

        return tf_keras
    import keras

    return keras


def _verify(original: Any, rewritten: Any, samples: Sequence[np.ndarray], layers: list[str]) -> None:
    """The rewrite must compute what the original computes (float, on the samples)."""
    xs = [np.asarray(x[:16], dtype=np.float32) for x in samples]
    a, b = (_outputs(m, xs) for m in (original, rewritten))
    worst = max(float(np.max(np.abs(p - q))) if p.size else 0.0 for p, q in zip(a, b))
    if len(a) != len(b) or worst > _VERIFY_ATOL * max(1.0, max(float(np.max(np.abs(p))) for p in a)):
        raise TargetCheckError(f"rewriting the recurrent layers {', '.join(layers)} changed the model's outputs "
                               f"(max difference {worst:.3g})",
                               hint="convert with a float mode on a LiteRT target, or report the model")


def _outputs(model: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
