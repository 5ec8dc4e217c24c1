"""The loss and metrics QAT fine-tunes with: the model's compile settings, or what the data implies.

`choose_loss` takes a compiled model's loss and metrics (Keras 3 ones translated to tf_keras, since
tfmot trains a tf_keras model); an uncompiled model gets a loss inferred from its labels (class
indices, one-hot or 0/1 labels: cross-entropy; float targets: mean squared error) or, without
labels, mean squared error against its inputs when it is an autoencoder.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Sequence

import numpy as np

from edgeq._tf import tf
from edgeq.errors import CalibrationError

LABELS_HINT = "save the targets with the inputs: np.savez(path, x=inputs, y=labels)"

# Layers that do not change values: look through them for the activation that made the output.
_PASSTHROUGH = frozenset({
    "Reshape", "Flatten", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Permute", "InputLayer",
})
_PROBABILITY_ACTIVATIONS = frozenset({"softmax", "sigmoid"})
_COMPILED = "model compile settings"


def choose_loss(model: Any, labels: np.ndarray | None, inputs: Sequence[np.ndarray]) -> tuple[Any, list[Any], str]:
    """(loss, metrics, description) for fine-tuning `model` (Keras 3 or tf_keras) on this data.

    The loss and metrics are tf_keras objects (or names tf_keras resolves). From the model's
    compile settings when it has them (description "model compile settings"); otherwise from
    the data (description "inferred from the data: ..."):
      - integer class labels: sparse categorical cross-entropy (one-hot labels: categorical,
        0/1 labels for a one-unit output: binary), from_logits=False after a softmax/sigmoid,
        True otherwise; metric accuracy;
      - float targets: mean squared error;
      - no labels: mean squared error against the inputs (an autoencoder), if the output has
        the input's shape; otherwise CalibrationError (labels are needed).
    Raises CalibrationError when the labels cannot train this model's output.
    """
    import tf_keras

    tf()
    _check_single_output(model)
    out_shape = tuple(model.outputs[0].shape)[1:]
    if labels is None:
        _check_autoencoder(model, inputs, out_shape)
    compiled = _compiled_settings(model, tf_keras)
    if compiled is not None:
        return compiled
    if labels is None:
        return tf_keras.losses.MeanSquaredError(), [], (
            "inferred from the data: no labels and the output has the input's shape, so an autoencoder: "
            "mean squared error against the inputs")
    return _infer_from_labels(model, np.asarray(labels), out_shape, tf_keras)


def _check_single_output(model: Any) -> None:
    if len(model.outputs) != 1:
        raise CalibrationError(
            f"QAT supports models with one output; this model has {len(model.outputs)}, but a data file holds "
            "one label array y",
            hint="use PTQ (drop --qat) for this model")


def _check_autoencoder(model: Any, inputs: Sequence[np.ndarray], out_shape: tuple) -> None:
    in_shape = tuple(inputs[0].shape[1:]) if inputs else ()
    fits = len(inputs) == 1 and len(in_shape) == len(out_shape) and all(
        o is None or int(o) == i for o, i in zip(out_shape, in_shape))
    if not fits:
        shown = ", ".join("?" if d is None else str(d) for d in out_shape)
        raise CalibrationError(
            f"QAT needs labels for this model: save y in the .npz (the data has no labels, and the model's output "
            f"({shown}) is not shaped like its input {in_shape}, so it is not an autoencoder that could learn "
            "to reproduce its inputs)",
            hint=LABELS_HINT)


def _compiled_settings(model: Any, tf_keras: Any) -> tuple[Any, list[Any], str] | None:
    """The compile settings of a compiled Keras 3 or tf_keras model, translated for tf_keras; else None."""
    loss = getattr(model, "loss", None)        # None on an uncompiled Keras 3 model, absent on tf_keras
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    elif isinstance(loss, dict) and len(loss) == 1:
        loss = next(iter(loss.values()))
    if loss is None or getattr(model, "optimizer", None) is None:
        return None
    is_tf_keras = type(model).__module__.startswith("tf_keras")
    translated = loss if is_tf_keras else _to_tf_keras(loss, tf_keras.losses)
    if translated is None:
        return None
    if is_tf_keras:
        container = getattr(model, "compiled_metrics", None)
        raw = getattr(container, "_user_metrics", None) if container is not None else None
    else:
        config = getattr(getattr(model, "_compile_config", None), "config", None) or {}
        raw = config.get("metrics")
    metrics = []
    for m in _flatten_metrics(raw):
        t = m if is_tf_keras and not isinstance(m, str) else _to_tf_keras(m, tf_keras.metrics)
        if t is not None:
            metrics.append(t)
    if not metrics and "crossentropy" in display_name(translated):
        metrics = ["accuracy"]
    return translated, metrics, _COMPILED


def _flatten_metrics(raw: Any) -> list[Any]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = list(raw.values())
    if not isinstance(raw, (list, tuple)):
        return [raw]
    out: list[Any] = []
    for item in raw:
        out.extend(_flatten_metrics(item) if isinstance(item, (list, tuple, dict)) else [item])
    return out


def _to_tf_keras(obj: Any, module: Any) -> Any:
    """A Keras 3 loss/metric (name, function or object) as the tf_keras equivalent; None if there is none."""
    if isinstance(obj, str):
        try:
            module.get(obj)
        except (ValueError, TypeError):
            return None
        return obj
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        try:
            return module.get(obj.__name__)
        except (ValueError, TypeError):
            return None
    cls = getattr(module, type(obj).__name__, None)
    if not isinstance(cls, type):
        return None
    try:
        config = obj.get_config()
        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in config.items() if k in params and k != "self"}
        if "reduction" in kwargs and kwargs["reduction"] not in ("auto", "none", "sum", "sum_over_batch_size"):
            del kwargs["reduction"]
        return cls(**kwargs)
    except Exception:  # an exotic config tf_keras does not take: not a standard object after all
        return None


def display_name(obj: Any) -> str:
    """Display name of a loss or metric: 'mse', 'sparse_categorical_crossentropy(from_logits=True)'."""
    if isinstance(obj, str):
        return obj
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return obj.__name__
    config: dict = {}
    try:
        config = obj.get_config()
    except Exception:
        pass
    name = str(config.get("name") or getattr(obj, "name", None) or _snake(type(obj).__name__))
    if "from_logits" in config:
        name += f"(from_logits={bool(config['from_logits'])})"
    return name


def _snake(text: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", text).lower()


def _infer_from_labels(model: Any, labels: np.ndarray, out_shape: tuple, tf_keras: Any
                       ) -> tuple[Any, list[Any], str]:
    activation = _last_activation(model)
    from_logits = activation not in _PROBABILITY_ACTIVATIONS
    logits_note = (f"last activation {activation}, so from_logits={from_logits}")
    units = out_shape[-1] if out_shape else None
    per_sample = tuple(labels.shape[1:])
    kind = labels.dtype.kind
    if kind in "biu" or (kind == "f" and _whole_numbers(labels) and _class_index_shape(per_sample, out_shape)
                         and units not in (None, 1)):
        values = labels.astype(np.int64)
        stored = "integer labels" if kind in "biu" else "whole-number labels (stored as float)"
        if units not in (None, 1) and _class_index_shape(per_sample, out_shape):
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= units:
                raise CalibrationError(
                    f"QAT: labels y range from {lo} to {hi}, but the model's output has {units} classes "
                    f"(0..{units - 1})", hint="y must hold class indices 0..N-1, one per sample")
            return (tf_keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits), ["accuracy"],
                    f"inferred from the data: {stored} -> sparse categorical cross-entropy ({logits_note})")
        if _is_one_hot(values, per_sample, out_shape):
            return (tf_keras.losses.CategoricalCrossentropy(from_logits=from_logits), ["accuracy"],
                    f"inferred from the data: one-hot labels -> categorical cross-entropy ({logits_note})")
        if units == 1 and _class_index_shape(per_sample, out_shape) and set(np.unique(values)) <= {0, 1}:
            return (tf_keras.losses.BinaryCrossentropy(from_logits=from_logits), ["accuracy"],
                    f"inferred from the data: 0/1 labels for a one-unit output -> binary cross-entropy "
                    f"({logits_note})")
    elif kind == "f" and _is_one_hot(labels, per_sample, out_shape):
        return (tf_keras.losses.CategoricalCrossentropy(from_logits=from_logits), ["accuracy"],
                f"inferred from the data: one-hot labels -> categorical cross-entropy ({logits_note})")
    if kind not in "biuf":
        raise CalibrationError(f"QAT: labels y have dtype {labels.dtype}, which no loss can train on",
                               hint="save y as integer class indices or float targets")
    if not _same_shape(per_sample, out_shape):
        shown = ", ".join("?" if d is None else str(d) for d in out_shape)
        raise CalibrationError(
            f"QAT: labels y have per-sample shape {per_sample}, which fits neither the model's output ({shown}) "
            "as regression targets nor its classes as class indices",
            hint="save y as class indices (N,) for a classifier, or targets shaped like the output")
    return (tf_keras.losses.MeanSquaredError(), [],
            "inferred from the data: float targets -> mean squared error" if kind == "f"
            else "inferred from the data: numeric targets shaped like the output -> mean squared error")


def _whole_numbers(a: np.ndarray) -> bool:
    return bool(a.size) and bool(np.all(np.isfinite(a))) and bool(np.all(a == np.round(a)))


def _class_index_shape(per_sample: tuple, out_shape: tuple) -> bool:
    """Labels hold one class index per output position: (N,) for (N, C), (N, H, W) for (N, H, W, C)."""
    target = tuple(out_shape[:-1])
    return _same_shape(per_sample, target) or _same_shape(per_sample, target + (1,))


def _same_shape(per_sample: tuple, out_shape: tuple) -> bool:
    """Per-sample label shape fits the output's per-sample shape ((N,) also fits a (N, 1) output)."""
    if len(out_shape) == len(per_sample) + 1 and out_shape[-1] == 1:
        out_shape = tuple(out_shape[:-1])
    return len(per_sample) == len(out_shape) and all(o is None or int(o) == s for o, s in zip(out_shape, per_sample))


def _is_one_hot(labels: np.ndarray, per_sample: tuple, out_shape: tuple) -> bool:
    if not out_shape or out_shape[-1] in (None, 1) or not _same_shape(per_sample, out_shape):
        return False
    flat = labels.reshape(-1, labels.shape[-1])
    return bool(np.isin(flat, (0, 1)).all() and np.all(flat.sum(axis=1) == 1))


def _last_activation(model: Any) -> str:
    """Name of the activation that produces the model's output ('softmax', 'linear', ...)."""
    for layer in reversed(model.layers):
        kind = type(layer).__name__
        if kind in _PASSTHROUGH:
            continue
        if kind == "Softmax":
            return "softmax"
        if kind == "ReLU":
            return "relu"
        activation = getattr(layer, "activation", None)
        if activation is None:
            return "linear"
        return str(getattr(activation, "__name__", None) or activation)
    return "linear"
