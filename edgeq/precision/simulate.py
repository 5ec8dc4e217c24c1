"""`edgeq precision`: what each number format would do to *this* model, before choosing a target.

Each weight format is simulated by rounding the model's weights to it and back (fake quantization)
and running the float model on the data: the difference from FP32 is the format's own error, with
nothing else changed. Two variants also run the activations in BF16 / FP16 (a Keras dtype policy),
where the model's layers allow it. For each format: the bytes its weights take, the mean and max
difference of the model's logits from FP32, top-1 agreement with FP32, and accuracy on the labels.

Sizes are edgeq's exact accounting of the weights (not a TFLite file size, which adds metadata,
stores zero points as int64 and folds BatchNormalization away): the float formats store every
parameter at their width; an integer or FP8 format stores the kernels at its width (INT4 packs two
per byte, rounded up per tensor) plus 4 bytes per scale and, for asymmetric schemes, 4 bytes per
zero point, and keeps everything else (biases, normalization) FP32, as TFLite keeps biases 32-bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgeq.emulator.accuracy import top1_accuracy
from edgeq.precision.formats import quantize_dequantize
from edgeq.records import Record
from edgeq.vocab import Granularity, Scheme

@dataclass(frozen=True)
class FormatSpec:
    """How one format stores the weights: `kind` float (cast), fp8 (scaled, cast), int (linear
    quantization with `scheme` and `granularity`) or policy (a Keras dtype policy: the layers
    also compute in `dtype`)."""

    kind: Literal["float", "fp8", "int", "policy"]
    bits: int
    label: str
    dtype: str | None = None
    scheme: Scheme | None = None
    granularity: Granularity | None = None

    @property
    def per_channel(self) -> bool:
        return self.granularity == Granularity.PER_CHANNEL


def _int(bits: int, scheme: Scheme, granularity: Granularity) -> FormatSpec:
    label = f"INT{bits} {scheme}, {granularity.replace('-', ' ')}"
    return FormatSpec("int", bits, label, scheme=scheme, granularity=granularity)


_SYM, _ASYM = Scheme.SYMMETRIC, Scheme.ASYMMETRIC
_TENSOR, _CHANNEL = Granularity.PER_TENSOR, Granularity.PER_CHANNEL

# name -> how the weights are stored. "activations" variants also compute in that float type.
FORMATS: dict[str, FormatSpec] = {
    "fp32": FormatSpec("float", 32, "FP32 (reference)"),
    "fp16": FormatSpec("float", 16, "FP16 weights", dtype="float16"),
    "bf16": FormatSpec("float", 16, "BF16 weights", dtype="bfloat16"),
    "fp8_e4m3": FormatSpec("fp8", 8, "FP8 E4M3 weights (per-tensor scale)", dtype="float8_e4m3fn"),
    "fp8_e5m2": FormatSpec("fp8", 8, "FP8 E5M2 weights (per-tensor scale)", dtype="float8_e5m2"),
    "int8_sym_tensor": _int(8, _SYM, _TENSOR),
    "int8_sym_channel": _int(8, _SYM, _CHANNEL),
    "int8_asym_tensor": _int(8, _ASYM, _TENSOR),
    "int8_asym_channel": _int(8, _ASYM, _CHANNEL),
    "int4_sym_channel": _int(4, _SYM, _CHANNEL),
    "fp16_act": FormatSpec("policy", 16, "FP16 weights and activations", dtype="float16"),
    "bf16_act": FormatSpec("policy", 16, "BF16 weights and activations", dtype="bfloat16"),
}

# What TFLite's runtimes (as edgeq's modes use them) can store and run, per format.
_RUNS: dict[str, tuple[tuple[str, ...], str]] = {
    "fp32": (("float32",), "float32 mode"),
    "fp16": (("float16",), "float16 mode: FP16 weights, computed in FP32 (LiteRT)"),
    "bf16": ((), "no TFLite runtime stores BF16 weights"),
    "fp8_e4m3": ((), "no TFLite runtime stores FP8 weights"),
    "fp8_e5m2": ((), "no TFLite runtime stores FP8 weights"),
    "int8_sym_tensor": (("int8", "int16x8", "dynamic"), "int8 weights (per tensor when the target asks for it)"),
    "int8_sym_channel": (("int8", "int16x8", "dynamic"), "TFLite's int8 weights: symmetric, per channel"),
    "int8_asym_tensor": ((), "TFLite's int8 weights are symmetric (zero point 0); activations are asymmetric"),
    "int8_asym_channel": ((), "TFLite's int8 weights are symmetric (zero point 0)"),
    "int4_sym_channel": ((), "edgeq's converter modes do not produce INT4 weights"),
    "fp16_act": ((), "FP16 compute needs a GPU/NPU delegate (or XNNPACK's FP16 path on ARMv8.2 CPUs); edgeq's "
                     "modes compute in FP32 or integers"),
    "bf16_act": ((), "no TFLite runtime computes in BF16"),
}

_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "embeddings")


@dataclass
class FormatResult:
    name: str
    label: str
    bits: int
    weight_bytes: int
    mean_logit_diff: float | None
    max_logit_diff: float | None
    top1_agreement: float | None      # fraction of samples whose argmax equals FP32's
    accuracy: float | None            # fraction correct on the labels
    target_runs: bool | None = None   # None when no target was given
    target_note: str = ""
    note: str = ""

    def part(self) -> FormatPart:
        def n(x: float | None) -> float | str | None:
            return _json_number(x, 8)

        return FormatPart(self.name, self.label, self.bits, self.weight_bytes, n(self.mean_logit_diff),
                          n(self.max_logit_diff), n(self.top1_agreement), n(self.accuracy), self.target_runs,
                          self.target_note, self.note)

    def to_dict(self) -> dict[str, Any]:
        return self.part().to_dict()


@dataclass(frozen=True)
class FormatPart(Record):
    """One format's cost: weight bytes, mean and max difference from FP32 ("inf" on overflow),
    top-1 agreement with FP32 and accuracy (fractions); whether the target runs it, and why."""

    name: str
    label: str
    bits: int
    weight_bytes: int
    mean_logit_diff: float | str | None
    max_logit_diff: float | str | None
    top1_agreement: float | str | None
    accuracy: float | str | None
    target_runs: bool | None
    target_note: str
    note: str


def _json_number(x: float | None, digits: int | None = None) -> float | str | None:
    """JSON has no Inf or NaN: they become "inf", "-inf", "nan" (as `edgeq formats --json` writes them)."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return round(x, digits) if digits is not None else x


@dataclass
class LayerChannelGain:
    layer: str
    weight: str
    shape: tuple[int, ...]
    per_tensor_mse: float
    per_channel_mse: float

    @property
    def gain(self) -> float:
        """per-tensor MSE / per-channel MSE: above 1 when per channel is better."""
        if self.per_channel_mse > 0:
            return self.per_tensor_mse / self.per_channel_mse
        return 1.0 if self.per_tensor_mse == 0 else math.inf

    def part(self) -> ChannelGainPart:
        gain = self.gain
        return ChannelGainPart(self.layer, self.weight, list(self.shape), self.per_tensor_mse, self.per_channel_mse,
                               None if math.isinf(gain) else round(gain, 4))


@dataclass(frozen=True)
class ChannelGainPart(Record):
    """How much per-channel INT8 beats per-tensor on one weight: both MSEs and their ratio (null: infinite)."""

    layer: str
    weight: str
    shape: list[int]
    per_tensor_mse: float
    per_channel_mse: float
    gain: float | None


@dataclass
class DotProduct:
    """One output element of a layer computed from its real input in several precisions."""

    layer: str
    terms: int                 # length of the dot product
    reference: float           # float64
    errors: dict[str, float]   # format -> |value - reference|

    def part(self) -> DotProductPart:
        return DotProductPart(self.layer, self.terms, _json_number(self.reference),
                              {k: _json_number(v) for k, v in self.errors.items()})


@dataclass(frozen=True)
class DotProductPart(Record):
    """One output element of a layer in float64, and each format's absolute error on it."""

    layer: str
    terms: int
    reference: float | str | None
    errors: dict[str, float | str | None]


@dataclass
class PrecisionResult:
    model: str
    data: str
    samples: int
    parameters: int
    kernel_parameters: int
    formats: list[FormatResult]
    channel_gains: list[LayerChannelGain]
    dot_products: list[DotProduct]
    target: str | None = None
    notes: list[str] = field(default_factory=list)
    output_kind: str = "logits"  # what the differences are measured on: logits, probabilities, outputs

    def part(self) -> PrecisionReport:
        return PrecisionReport(1, "precision", self.model, self.data, self.samples, self.parameters,
                               self.output_kind, self.kernel_parameters, self.target,
                               [f.part() for f in self.formats], [g.part() for g in self.channel_gains],
                               [d.part() for d in self.dot_products], list(self.notes))

    def to_dict(self) -> dict[str, Any]:
        """precision.json without its schema_version and command (to_json adds them)."""
        data = self.part().to_dict()
        del data["schema_version"], data["command"]
        return data


@dataclass(frozen=True)
class PrecisionReport(Record):
    """precision.json of `edgeq precision`: every number format's cost for a Keras model on data."""

    schema_version: Literal[1]
    command: Literal["precision"]
    model: str
    data: str
    samples: int
    parameters: int
    output_kind: str
    kernel_parameters: int
    target: str | None
    formats: list[FormatPart]
    per_channel_vs_per_tensor: list[ChannelGainPart]
    dot_products: list[DotProductPart]
    notes: list[str]


# -- weights ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Weight:
    index: int                # position in model.get_weights()
    layer: str
    name: str
    kernel: bool
    depthwise: bool           # channels are in x multiplier: the last two axes together
    channel_axis: int = -1    # the output-channel axis TFLite quantizes per channel


def _layout(layer: Any, name: str) -> tuple[bool, int]:
    """(depthwise, channel axis) of a kernel, from the layer's class (Keras 3 names every one 'kernel')."""
    kind = type(layer).__name__
    if kind.startswith("DepthwiseConv") or name == "depthwise_kernel":
        return True, -1
    if kind.endswith("Transpose") and name == "kernel":  # (..., out, in)
        return False, -2
    return False, -1


def _weights(model: Any) -> list[_Weight]:
    """Every weight of the model, in get_weights() order, marked kernel or not."""
    out: list[_Weight] = []
    seen: dict[int, int] = {}
    flat = model.weights
    for i, variable in enumerate(flat):
        seen[id(variable)] = i
    for layer in model.layers:
        for variable in layer.weights:
            i = seen.get(id(variable))
            if i is None:
                continue
            name = str(getattr(variable, "path", None) or variable.name).split("/")[-1].split(":")[0]
            shape = tuple(variable.shape)
            kernel = name in _KERNEL_NAMES and len(shape) >= 2
            depthwise, axis = _layout(layer, name)
            out.append(_Weight(i, layer.name, name, kernel, depthwise, axis))
    if len(out) != len(flat):  # nested models, shared layers: fall back to shape alone
        out = [_Weight(i, f"weight {i}", str(getattr(v, "name", i)), len(tuple(v.shape)) >= 2, False)
               for i, v in enumerate(flat)]
    return sorted(out, key=lambda w: w.index)


def _channels_last(w: np.ndarray, meta: _Weight) -> np.ndarray:
    """The kernel as (..., channels): TFLite's per-channel axis is the output channel, last in most
    Keras kernels, next to last in transposed convolutions; a depthwise kernel's channels are
    in x multiplier (its last two axes)."""
    if meta.depthwise:
        return w.reshape(*w.shape[:-2], w.shape[-2] * w.shape[-1])
    return np.moveaxis(w, meta.channel_axis, -1) if meta.channel_axis != -1 else w


def _from_channels_last(flat: np.ndarray, meta: _Weight, shape: tuple[int, ...]) -> np.ndarray:
    if meta.depthwise:
        return flat.reshape(shape)
    return np.moveaxis(flat, -1, meta.channel_axis) if meta.channel_axis != -1 else flat


def _transform(w: np.ndarray, spec: FormatSpec, meta: _Weight) -> np.ndarray:
    import ml_dtypes

    kind = spec.kind
    if kind in ("float", "policy") and spec.dtype:
        dtype = getattr(ml_dtypes, spec.dtype) if spec.dtype == "bfloat16" else np.dtype(spec.dtype)
        with np.errstate(over="ignore"):  # overflow to Inf is the point: it is reported, not warned about
            return w.astype(dtype).astype(np.float32)
    if kind == "fp8":
        dtype = getattr(ml_dtypes, spec.dtype)
        top = float(ml_dtypes.finfo(dtype).max)
        peak = float(np.max(np.abs(w))) if w.size else 0.0
        if peak == 0:
            return w  # an all-zero kernel is stored exactly
        scale = peak / top
        return ((w / scale).astype(dtype).astype(np.float32) * scale).astype(np.float32)
    if kind == "int":
        flat = _channels_last(w, meta)
        quantized = quantize_dequantize(flat, bits=spec.bits, scheme=spec.scheme,
                                        axis=-1 if spec.per_channel else None)
        return _from_channels_last(np.asarray(quantized.dequantized, dtype=np.float32), meta, w.shape)
    return w


def weight_bytes(weights: Sequence[np.ndarray], meta: Sequence[_Weight], spec: FormatSpec) -> int:
    """Exact storage of the weights in `spec`: kernels in the format (+ scales), the rest FP32."""
    total = 0
    for w, m in zip(weights, meta):
        if spec.kind in ("float", "policy"):
            total += w.size * spec.bits // 8
        elif not m.kernel:
            total += w.size * 4
        elif spec.kind == "fp8":
            total += w.size + 4  # one byte each, one float32 scale per tensor
        else:
            bits = spec.bits
            channels = _channels_last(w, m).shape[-1] if spec.per_channel else 1
            params = math.ceil(w.size * bits / 8)
            per_scale = 4 + (4 if spec.scheme == Scheme.ASYMMETRIC else 0)
            total += params + channels * per_scale
    return total


# -- running --------------------------------------------------------------------------------------


def _keras_of(model: Any) -> Any:
    """The Keras package a model belongs to: keras (3) or tf_keras (2)."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def _logits(model: Any) -> tuple[Callable[[], None] | None, str]:
    """Switch a single output's final softmax or sigmoid off, so differences are in logits.

    Returns (undo or None, what the measured output is: "logits", "probabilities" or "outputs").
    """
    if len(model.outputs) != 1:
        return None, "outputs"
    last = model.layers[-1]
    if type(last).__name__ == "Softmax":
        return None, "probabilities"  # a Softmax layer has no activation to switch off
    activation = getattr(last, "activation", None)
    if getattr(activation, "__name__", "") not in ("softmax", "sigmoid"):
        return None, "outputs"
    last.activation = _keras_of(model).activations.linear

    def undo() -> None:
        last.activation = activation

    return undo, "logits"


def _first_output(result: Any) -> Any:
    if isinstance(result, dict):
        return next(iter(result.values()))
    if isinstance(result, (list, tuple)):
        return result[0]
    return result


def _predict(model: Any, inputs: Sequence[np.ndarray], batch: int = 256) -> np.ndarray:
    """The model's first output on every sample, as float32."""
    outs = []
    n = len(inputs[0])
    for start in range(0, n, batch):
        chunk = [np.asarray(x[start:start + batch]) for x in inputs]
        result = model(chunk if len(chunk) > 1 else chunk[0], training=False)
        outs.append(np.asarray(_first_output(result), dtype=np.float32))
    return np.concatenate(outs)


def _policy_clone(model: Any, dtype: str) -> Any:
    """The model rebuilt with every layer computing in `dtype` (a Keras dtype policy)."""
    keras = _keras_of(model)

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = dtype
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _top1(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.ndim < 2 or a.shape[-1] < 2:
        return None  # one column: argmax says nothing
    return float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))


@dataclass
class Runner:
    """What the formats need of a model, whatever framework it is in: its weights (with which of
    them are kernels and where their output channels are), a way to put other weights in, a run
    of the float model on the inputs (first output, float32), and a run with every layer computing
    in a float dtype ("float16", "bfloat16")."""

    weights: list[np.ndarray]
    meta: list[_Weight]
    set_weights: Callable[[list[np.ndarray]], None]
    predict: Callable[[Sequence[np.ndarray]], np.ndarray]
    predict_in: Callable[[str, Sequence[np.ndarray]], np.ndarray]
    dot_products: Callable[[Sequence[np.ndarray], Callable[[str], None]], list[DotProduct]]
    output_count: int = 1
    output_name: str = "0"


def keras_runner(model: Any) -> Runner:
    return Runner([np.asarray(w) for w in model.get_weights()], _weights(model), model.set_weights,
                  lambda xs: _predict(model, xs), lambda dtype, xs: _predict(_policy_clone(model, dtype), xs),
                  lambda xs, on_step: _dot_products(model, xs, on_step), len(model.outputs),
                  str(getattr(model.outputs[0], "name", "0")))


def simulate(model: Any, inputs: Sequence[np.ndarray], labels: np.ndarray | None, *, model_name: str,
             data_name: str, target: Any = None, formats: Sequence[str] = tuple(FORMATS),
             on_step: Callable[[str], None] = lambda message: None) -> PrecisionResult:
    """Run `model` (a Keras model) on `inputs` with its weights in each of `formats`."""
    undo, output_kind = _logits(model)
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
        _mark_target(results, target)
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
            runner.set_weights([_transform(w, spec, m) if (m.kernel or spec.kind == "float")
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


def _mark_target(results: list[FormatResult], target: Any) -> None:
    """Whether `target`'s runtime can store and run each format, and why (or why not)."""
    for r in results:
        modes, why = _RUNS[r.name]
        runs = any(m in target.quantization.modes for m in modes)
        if modes and not runs:
            why += f"; not among {target.name}'s modes ({', '.join(target.quantization.modes)})"
        if r.name == "int8_sym_tensor" and runs and target.quantization.per_channel:
            why += f"; {target.name} uses per-channel"
        r.target_runs, r.target_note = runs, why


def _channel_gains(weights: Sequence[np.ndarray], meta: Sequence[_Weight]) -> list[LayerChannelGain]:
    """INT8 symmetric weight error per tensor vs per channel, for every kernel, largest gain first."""
    gains = []
    for w, m in zip(weights, meta):
        if not m.kernel:
            continue
        flat = _channels_last(w, m).astype(np.float64)
        errors = []
        for axis in (None, -1):
            dq = quantize_dequantize(flat, bits=8, scheme="symmetric", axis=axis).dequantized
            errors.append(float(np.mean((np.asarray(dq, dtype=np.float64) - flat) ** 2)))
        gains.append(LayerChannelGain(m.layer, m.name, tuple(w.shape), errors[0], errors[1]))
    return sorted(gains, key=lambda g: -g.gain if not math.isinf(g.gain) else -1e300)


# -- one dot product per layer ----------------------------------------------------------------------


def _dot_products(model: Any, inputs: Sequence[np.ndarray], on_step: Callable[[str], None]) -> list[DotProduct]:
    """For each Dense / Conv2D: one output element from the layer's real input on the first sample,
    computed in float64 (reference), FP32, BF16 and FP16 (inputs and weights rounded, products summed
    in FP32, as hardware with FP32 accumulators does) and INT8 (symmetric, int32 accumulation)."""
    keras = _keras_of(model)

    on_step("dot products per layer")
    out = []
    sample = [np.asarray(x[:1], dtype=np.float32) for x in inputs]
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Dense", "Conv2D") or getattr(layer, "kernel", None) is None:
            continue
        if kind == "Conv2D" and (tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1):
            continue
        try:
            probe = keras.Model(model.inputs, layer.input)
            x = np.asarray(probe(sample, training=False), dtype=np.float32)[0]
        except Exception:  # noqa: BLE001 (layers not reachable from the inputs: skip them)
            continue
        kernel = np.asarray(layer.kernel, dtype=np.float32)
        if kind == "Dense":
            vector = x.reshape(-1, x.shape[-1])[0]
            weights = kernel
        else:
            vector, weights = _center_patch(x, layer), kernel.reshape(-1, kernel.shape[-1])
        products = vector[:, None] * weights
        j = int(np.argmax(np.abs(products.sum(axis=0))))  # the output with the largest magnitude
        w = weights[:, j]
        out.append(DotProduct(layer.name, int(w.size), float(np.dot(vector.astype(np.float64), w.astype(np.float64))),
                              _dot_errors(vector, w)))
    return out


def _center_patch(x: np.ndarray, layer: Any) -> np.ndarray:
    """The input patch (flattened like the kernel) behind the centre output pixel of a Conv2D."""
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    h, w, _ = x.shape
    if layer.padding == "same":
        oh, ow = math.ceil(h / sh), math.ceil(w / sw)
        pad_h = max((oh - 1) * sh + kh - h, 0)
        pad_w = max((ow - 1) * sw + kw - w, 0)
        x = np.pad(x, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    r, c = (oh // 2) * sh, (ow // 2) * sw
    return x[r:r + kh, c:c + kw, :].reshape(-1)


def _dot_errors(x: np.ndarray, w: np.ndarray) -> dict[str, float]:
    import ml_dtypes

    reference = float(np.dot(x.astype(np.float64), w.astype(np.float64)))
    errors = {"fp32": abs(float(np.dot(x, w)) - reference)}
    for name, dtype in (("bf16", ml_dtypes.bfloat16), ("fp16", np.float16)):
        with np.errstate(over="ignore", invalid="ignore"):
            xr = x.astype(dtype).astype(np.float32)
            wr = w.astype(dtype).astype(np.float32)
        errors[name] = abs(float(np.sum(xr * wr, dtype=np.float32)) - reference)
    qx = quantize_dequantize(x, bits=8, scheme="symmetric", axis=None)
    qw = quantize_dequantize(w, bits=8, scheme="symmetric", axis=None)
    acc = int(np.sum(qx.q.astype(np.int64) * qw.q.astype(np.int64)))  # what an int32 accumulator holds
    errors["int8"] = abs(acc * float(qx.scales) * float(qw.scales) - reference)
    return errors
