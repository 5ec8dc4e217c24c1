"""Quantization-aware training (QAT): fine-tune a model with fake-quantization in the loop.

tensorflow-model-optimization (tfmot) wraps every layer of a tf_keras (Keras 2) model with
8-bit fake-quant ops; a few epochs of fine-tuning then teach the weights to live with int8
rounding. The result is still a float tf_keras model: the normal converter path
(`edgeq.loading.from_keras_object` + `edgeq.quantize.ptq.quantize`) turns it into a fully
integer .tflite, with the ranges learned during training.

Keras 3 models are first rebuilt as tf_keras models (`edgeq.quantize.bridge`), since tfmot
works only on tf_keras. Loss and metrics come from the model's compile settings when it has
them, otherwise from the data (see `choose_loss`).
"""

from __future__ import annotations

import inspect
import math
import os
import re
from typing import Any, Callable, Sequence

import numpy as np

from edgeq._tf import captured_output, tf
from edgeq.calibration import Dataset
from edgeq.errors import CalibrationError, ConversionError
from edgeq.quantize.training import QATResult, QatPart, TrainSettings  # noqa: F401 (the trainer's types)

LABELS_HINT = "save the targets with the inputs: np.savez(path, x=inputs, y=labels)"
PTQ_HINT = "use PTQ (drop --qat), or replace the layer"

# Activations tfmot's default 8-bit scheme can quantize (quantize_aware_activation.py and
# Default8BitActivationQuantizeConfig); anything else is refused.
_LAYER_ACTIVATIONS = frozenset({"linear", "relu", "softmax", "sigmoid", "tanh", "gelu", "swish", "NoOpActivation"})
_ACTIVATION_LAYER_ACTIVATIONS = frozenset({"linear", "relu", "relu6", "softmax", "sigmoid", "tanh", "gelu", "swish"})
# Layers that do not change values: look through them for the activation that made the output.
_PASSTHROUGH = frozenset({
    "Reshape", "Flatten", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Permute", "InputLayer",
})
_PROBABILITY_ACTIVATIONS = frozenset({"softmax", "sigmoid"})
_COMPILED = "model compile settings"


# --------------------------------------------------------------------------- loss and metrics

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
    if not metrics and "crossentropy" in _name(translated):
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


def _name(obj: Any) -> str:
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


# --------------------------------------------------------------------------- training

def quantization_aware_train(model: Any, train: Dataset, settings: TrainSettings = TrainSettings(), *,
                             on_epoch: Callable[[int, int, dict], None] | None = None,
                             on_batch: Callable[[int, int], None] | None = None) -> QATResult:
    """Fine-tune `model` (Keras 3 or tf_keras; not modified) with 8-bit fake quantization.

    `on_epoch(epoch_index, epochs, logs)` is called after each epoch (epoch_index counts from 0;
    logs holds loss, val_loss and any metrics as floats); `on_batch(batch_index, batches_per_epoch)`
    after each training batch (batch_index counts from 0 within the epoch).
    """
    tfm = tf()
    import tf_keras

    inputs = tuple(a.astype(np.float32) if a.dtype == np.float64 else a for a in train.inputs)
    loss, metrics, source = choose_loss(model, train.labels, inputs)
    base, bridged = _as_tf_keras(model, inputs)
    quantized = _quantize(base)

    n = int(inputs[0].shape[0])
    targets = inputs[0] if train.labels is None else np.asarray(train.labels)
    if targets.dtype == np.float64:
        targets = targets.astype(np.float32)
    order = np.random.default_rng(settings.seed).permutation(n)  # validation: a random subset, not the tail
    n_train = int(math.floor(n * (1.0 - settings.validation_split)))
    if n_train < 1:
        raise CalibrationError(f"{train.name}: {n} sample{'s are' if n != 1 else ' is'} too few to train on with validation split "
                               f"{settings.validation_split}", hint="use more samples or a smaller validation split")
    have_val = n_train < n
    train_idx, val_idx = order[:n_train], order[n_train:]

    def pick(idx: np.ndarray) -> tuple[Any, np.ndarray]:
        xs = [a[idx] for a in inputs]
        return (xs if len(xs) > 1 else xs[0]), targets[idx]

    x_train, y_train = pick(train_idx)
    validation = pick(val_idx) if have_val else None
    batches = max(1, math.ceil(n_train / settings.batch_size))
    monitor = "val_loss" if have_val else "loss"

    tf_keras.utils.set_random_seed(settings.seed)
    with captured_output():
        quantized.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=settings.learning_rate),
                          loss=loss, metrics=list(metrics))
    stopper = tf_keras.callbacks.EarlyStopping(monitor=monitor, patience=settings.patience,
                                               restore_best_weights=True)
    callbacks = [stopper, _relay(settings.epochs, batches, on_epoch, on_batch, tf_keras)]
    try:
        history = quantized.fit(x_train, y_train, validation_data=validation, epochs=settings.epochs,
                                batch_size=settings.batch_size, shuffle=True, callbacks=callbacks, verbose=0)
    except (tfm.errors.InvalidArgumentError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CalibrationError(f"{train.name}: QAT training failed: {first}",
                               hint="check that y matches the model's output and its loss") from exc
    logs = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    return QATResult(
        model=quantized, loss=_name(loss), metrics=tuple(_name(m) for m in metrics), loss_source=source,
        epochs_run=len(logs.get("loss", [])), stopped_early=stopper.stopped_epoch > 0,
        history=logs, bridged=bridged,
    )


def _relay(epochs: int, batches: int, on_epoch: Callable[[int, int, dict], None] | None,
           on_batch: Callable[[int, int], None] | None, tf_keras: Any) -> Any:
    """A tf_keras Callback relaying epoch and batch progress to plain Python callables."""

    class Relay(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if on_batch is not None:
                on_batch(int(batch), batches)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if on_epoch is not None:
                on_epoch(int(epoch), epochs, {k: float(v) for k, v in (logs or {}).items()})

    return Relay()


def _as_tf_keras(model: Any, inputs: Sequence[np.ndarray]) -> tuple[Any, bool]:
    """A tf_keras copy of `model` (the caller's model stays untouched) and whether it was bridged."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        try:
            with captured_output():
                clone = tf_keras.models.clone_model(model)
                clone.set_weights(model.get_weights())
        except Exception as exc:
            raise ConversionError(
                f"QAT cannot copy the model ({type(model).__name__}): {_first_line(exc)}",
                hint="QAT needs a Sequential or Functional model of built-in layers; " + PTQ_HINT) from exc
        return clone, False
    from edgeq.quantize.bridge import to_tf_keras

    return to_tf_keras(model, [x[:32] for x in inputs]), True


def _quantize(model: Any) -> Any:
    """`tfmot.quantization.keras.quantize_model`, with its refusals explained."""
    legacy = os.environ.get("TF_USE_LEGACY_KERAS")
    with captured_output():
        import tensorflow_model_optimization as tfmot
    # Importing tfmot sets TF_USE_LEGACY_KERAS=1 for the whole process; do not leak that to callers.
    if legacy is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = legacy

    try:
        with captured_output():
            return tfmot.quantization.keras.quantize_model(model)
    except Exception as exc:
        raise _explain_refusal(model, exc) from exc


def _explain_refusal(model: Any, exc: Exception) -> ConversionError:
    text = str(exc)
    if "inside another" in text:
        nested = [f"{layer.name} ({type(layer).__name__})" for layer in model.layers if hasattr(layer, "layers")]
        return ConversionError(
            "QAT (tfmot) cannot quantize a model nested inside another model"
            + (f": {', '.join(nested)}" if nested else ""),
            hint="flatten the nested model into one Functional model, or use PTQ (drop --qat)")
    if "Sequential or Functional" in text:
        return ConversionError(
            f"QAT (tfmot) needs a Sequential or Functional model; {type(model).__name__} is a subclassed model",
            hint="rebuild it as a Functional model, or use PTQ (drop --qat)")
    refused = [f"{name} ({cls.rsplit('.', 1)[-1]})" for name, cls in re.findall(r"Layer (\S+?):<class '([\w.]+)'>", text)]
    for layer in model.layers:
        activation = getattr(layer, "activation", None)
        if activation is None:
            continue
        act = str(getattr(activation, "__name__", activation))
        allowed = _ACTIVATION_LAYER_ACTIVATIONS if type(layer).__name__ == "Activation" else _LAYER_ACTIVATIONS
        if act not in allowed:
            refused.append(f"{layer.name} ({type(layer).__name__} with activation {act})")
    what = ", ".join(dict.fromkeys(refused)) if refused else _first_line(exc)
    return ConversionError(
        f"QAT (tfmot's 8-bit scheme) does not support layer(s): {what}" if refused
        else f"QAT (tfmot) refused the model: {what}",
        hint=PTQ_HINT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
