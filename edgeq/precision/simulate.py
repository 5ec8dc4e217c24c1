"""`edgeq precision`: what each number format would do to *this* model, before choosing a target.

Each weight format is simulated by rounding the model's weights to it and back (fake quantization)
and running the float model on the data: the difference from FP32 is the format's own error, with
nothing else changed. Two variants also run the activations in BF16 / FP16 (a Keras dtype policy),
where the model's layers allow it. For each format: the bytes its weights take, the mean and max
difference of the model's logits from FP32, top-1 agreement with FP32, and accuracy on the labels.

The formats, how they store weights and their sizes are in weight_formats.py; what is measured,
and precision.json's records, in results.py; the model's runs in keras_runner.py and
torch_runner.py, each a Runner (runner.py). This module measures every format on a Runner, and
the names the rest of edgeq uses are importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edgeq.emulator.accuracy import top1_accuracy
from edgeq.precision.array_quantization import quantize_dequantize
from edgeq.precision.keras_runner import keras_runner, switch_to_logits
from edgeq.precision.results import (
    ChannelGainPart, DotProduct, DotProductPart, FormatPart, FormatResult, LayerChannelGain, PrecisionReport,
    PrecisionResult,
)
from edgeq.precision.runner import Runner, WeightInfo
from edgeq.precision.weight_formats import (
    FORMATS, RUNTIME_SUPPORT, FormatSpec, channels_last, fake_quantize, weight_bytes,
)

__all__ = ["FORMATS", "ChannelGainPart", "DotProduct", "DotProductPart", "FormatPart", "FormatResult", "FormatSpec",
           "LayerChannelGain", "PrecisionReport", "PrecisionResult", "Runner", "keras_runner", "simulate",
           "simulate_runner", "weight_bytes"]


def simulate(model: Any, inputs: Sequence[np.ndarray], labels: np.ndarray | None, *, model_name: str,
             data_name: str, target: Any = None, formats: Sequence[str] = tuple(FORMATS),
             on_step: Callable[[str], None] = lambda message: None) -> PrecisionResult:
    """Run `model` (a Keras model) on `inputs` with its weights in each of `formats`."""
    undo, output_kind = switch_to_logits(model)
    notes = []
    if undo:
        notes.append("the final softmax/sigmoid is switched off while measuring: differences are in logits")
    elif output_kind == "probabilities":
        notes.append("the model ends in a Softmax layer: differences are in probabilities, not logits")
    try:
        return simulate_runner(keras_runner(model), inputs, labels, model_name=model_name, data_name=data_name,
                               target=target, formats=formats, on_step=on_step, notes=notes, output_kind=output_kind)
    finally:
        if undo:
            undo()


def simulate_runner(runner: Runner, inputs: Sequence[np.ndarray], labels: np.ndarray | None, *, model_name: str,
                    data_name: str, target: Any = None, formats: Sequence[str] = tuple(FORMATS),
                    on_step: Callable[[str], None] = lambda message: None, notes: Sequence[str] = (),
                    output_kind: str = "outputs") -> PrecisionResult:
    """Every format of `formats` on a model given as a Runner (Keras: `keras_runner`; PyTorch:
    edgeq/precision/torch_runner.py)."""
    meta, original = runner.meta, runner.weights
    kernel_params = sum(w.size for w, m in zip(original, meta) if m.kernel)
    notes = list(notes)
    if not kernel_params:
        notes.insert(0, "the model has no kernels (Dense/Conv weights): integer formats change nothing")
    if runner.output_count > 1:
        notes.insert(0, f"the model has {runner.output_count} outputs; differences, top-1 and accuracy are measured "
                        f"on the first ({runner.output_name})")
    results: list[FormatResult] = []
    reference = runner.predict(inputs)
    for name in formats:
        on_step(FORMATS[name].label)
        results.append(_measure(runner, inputs, labels, reference, name))
    gains = _channel_gains(original, meta)
    dots = runner.dot_products(inputs, on_step)
    if target is not None:
        results = _marked_for(results, target)
    if not dots and any(m.kernel for m in meta):
        notes.append("no dot products: no Dense/Conv2D layer's input could be reached from the model's inputs")
    return PrecisionResult(model_name, data_name, len(inputs[0]), sum(w.size for w in original), kernel_params,
                           results, gains, dots, None if target is None else target.name, notes, output_kind)


def _measure(runner: Runner, inputs: Sequence[np.ndarray], labels: np.ndarray | None, reference: np.ndarray,
             name: str) -> FormatResult:
    """The model with its weights in format `name`, against the FP32 `reference` outputs; the
    original weights are back in place afterwards."""
    spec = FORMATS[name]
    original, meta = runner.weights, runner.meta
    size = weight_bytes(original, meta, spec)
    try:
        if spec.kind == "policy":
            out = runner.predict_in(spec.dtype, inputs)  # each layer computes in that dtype
        else:
            runner.set_weights([fake_quantize(w, spec, m) if (m.kernel or spec.kind == "float")
                                else w for w, m in zip(original, meta)])
            out = runner.predict(inputs)
    except Exception as exc:  # noqa: BLE001 (a layer without a kernel for that dtype: report, go on)
        return FormatResult(name, spec.label, spec.bits, size, None, None, None, None,
                            note=f"cannot run: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    finally:
        runner.set_weights(original)
    diff = np.abs(out.astype(np.float64) - reference.astype(np.float64))
    bad = int(np.count_nonzero(~np.isfinite(diff)))
    note = f"overflow: {bad} of {diff.size} outputs are Inf or NaN in this format" if bad else ""
    return FormatResult(name, spec.label, spec.bits, size, math.inf if bad else float(diff.mean()),
                        math.inf if bad else float(diff.max()), _top1(out, reference), top1_accuracy(out, labels),
                        note=note)


def _marked_for(results: list[FormatResult], target: Any) -> list[FormatResult]:
    """Each result with whether `target`'s runtime can store and run its format, and why (or why not)."""
    marked = []
    for r in results:
        modes, why = RUNTIME_SUPPORT[r.name]
        runs = any(m in target.quantization.modes for m in modes)
        if modes and not runs:
            why += f"; not among {target.name}'s modes ({', '.join(target.quantization.modes)})"
        if r.name == "int8_sym_tensor" and runs and target.quantization.per_channel:
            why += f"; {target.name} uses per-channel"
        marked.append(replace(r, target_runs=runs, target_note=why))
    return marked


def _channel_gains(weights: Sequence[np.ndarray], meta: Sequence[WeightInfo]) -> list[LayerChannelGain]:
    """INT8 symmetric weight error per tensor vs per channel, for every kernel, largest gain first."""
    gains = []
    for w, m in zip(weights, meta):
        if not m.kernel:
            continue
        flat = channels_last(w, m).astype(np.float64)
        errors = []
        for axis in (None, -1):
            dq = quantize_dequantize(flat, bits=8, scheme="symmetric", axis=axis).dequantized
            errors.append(float(np.mean((np.asarray(dq, dtype=np.float64) - flat) ** 2)))
        gains.append(LayerChannelGain(m.layer, m.name, tuple(w.shape), errors[0], errors[1]))
    return sorted(gains, key=lambda g: -g.gain if not math.isinf(g.gain) else -1e300)


def _top1(a: np.ndarray, b: np.ndarray) -> float | None:
    """The fraction of samples whose argmax in `a` is the one in `b`."""
    if a.ndim < 2 or a.shape[-1] < 2:
        return None  # one column: argmax says nothing
    return float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))
