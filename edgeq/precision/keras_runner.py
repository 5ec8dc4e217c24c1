"""`edgeq precision` on a Keras model (Keras 3 or tf_keras): its weights, which of them are
kernels and where their output channels are, its runs in float32 and under a float dtype policy,
and one dot product per Dense / Conv2D layer from the layer's real input."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeq.precision.results import DotProduct
from edgeq.precision.runner import Runner, WeightInfo, dot_errors

__all__ = ["keras_runner", "switch_to_logits"]

_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "embeddings")


def _layout(layer: Any, name: str) -> tuple[bool, int]:
    """(depthwise, channel axis) of a kernel, from the layer's class (Keras 3 names every one 'kernel')."""
    kind = type(layer).__name__
    if kind.startswith("DepthwiseConv") or name == "depthwise_kernel":
        return True, -1
    if kind.endswith("Transpose") and name == "kernel":  # (..., out, in)
        return False, -2
    return False, -1


def _weight_infos(model: Any) -> list[WeightInfo]:
    """Every weight of the model, in get_weights() order, marked kernel or not."""
    out: list[WeightInfo] = []
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
            out.append(WeightInfo(i, layer.name, name, kernel, depthwise, axis))
    if len(out) != len(flat):  # nested models, shared layers: fall back to shape alone
        out = [WeightInfo(i, f"weight {i}", str(getattr(v, "name", i)), len(tuple(v.shape)) >= 2, False)
               for i, v in enumerate(flat)]
    return sorted(out, key=lambda w: w.index)


def _keras_of(model: Any) -> Any:
    """The Keras package a model belongs to: keras (3) or tf_keras (2)."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def switch_to_logits(model: Any) -> tuple[Callable[[], None] | None, str]:
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


def keras_runner(model: Any) -> Runner:
    """A Runner over `model`: its get_weights() in and out, calls in float32 and on a clone under a dtype policy."""
    return Runner([np.asarray(w) for w in model.get_weights()], _weight_infos(model), model.set_weights,
                  lambda xs: _predict(model, xs), lambda dtype, xs: _predict(_policy_clone(model, dtype), xs),
                  lambda xs, on_step: _dot_products(model, xs, on_step), len(model.outputs),
                  str(getattr(model.outputs[0], "name", "0")))


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
                              dot_errors(vector, w)))
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
