"""Quantization-aware training (QAT): fine-tune a model with fake-quantization in the loop.

tensorflow-model-optimization (tfmot) wraps every layer of a tf_keras (Keras 2) model with
8-bit fake-quant ops; a few epochs of fine-tuning then teach the weights to live with int8
rounding. The result is still a float tf_keras model: the normal converter path
(`edgeq.loading.from_keras_object` + `edgeq.quantize.ptq.quantize`) turns it into a fully
integer .tflite, with the ranges learned during training.

Keras 3 models are first rebuilt as tf_keras models (`edgeq.quantize.bridge`), since tfmot
works only on tf_keras. Loss and metrics come from the model's compile settings when it has
them, otherwise from the data (`edgeq.quantize.qat_loss.choose_loss`).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Sequence

import numpy as np

from edgeq._tf import captured_output, tf
from edgeq.calibration import Dataset
from edgeq.errors import CalibrationError, ConversionError
from edgeq.quantize.qat_loss import choose_loss, display_name
from edgeq.quantize.training import QATResult, TrainSettings

PTQ_HINT = "use PTQ (drop --qat), or replace the layer"

# Activations tfmot's default 8-bit scheme can quantize (quantize_aware_activation.py and
# Default8BitActivationQuantizeConfig); anything else is refused.
_LAYER_ACTIVATIONS = frozenset({"linear", "relu", "softmax", "sigmoid", "tanh", "gelu", "swish", "NoOpActivation"})
_ACTIVATION_LAYER_ACTIVATIONS = frozenset({"linear", "relu", "relu6", "softmax", "sigmoid", "tanh", "gelu", "swish"})


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
        model=quantized, loss=display_name(loss), metrics=tuple(display_name(m) for m in metrics), loss_source=source,
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
