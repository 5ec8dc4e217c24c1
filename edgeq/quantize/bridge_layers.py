"""One Keras 3 layer as its tf_keras twin: the layer half of the Keras 3 -> tf_keras bridge.

edgeq.quantize.bridge walks a Keras 3 graph and reconnects the layers; this module makes each
layer: its config with the few keys that differ translated (activations tf_keras names differently
or has only as layers, dtype policies, regularizers and constraints), then its weights copied by
variable name. Only the built-in classes in SUPPORTED_LAYERS are rebuilt, and only from configs.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from edgeq._tf import captured_output
from edgeq.errors import ModelLoadError

SUPPORTED_LAYERS: tuple[str, ...] = (
    "InputLayer",
    # weights
    "Conv1D", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "Dense",
    "BatchNormalization", "PReLU",
    # pooling
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    # activations
    "Activation", "ReLU", "LeakyReLU", "Softmax",
    # merging
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    # shapes
    "Flatten", "Reshape", "Permute", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
    "UpSampling1D", "UpSampling2D",
    # no-ops at inference, preprocessing
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "Rescaling",
    # recurrent (tf_keras' LSTM is the one the TFLite converter fuses into a single op)
    "LSTM", "GRU", "SimpleRNN",
)

UNSUPPORTED_HINT = "use PTQ instead (drop --qat), or replace the layer with a supported one; supported: " + ", ".join(
    SUPPORTED_LAYERS)

# Keras 3 activation names that mean the same function in tf_keras (verified on samples anyway).
_SAME_ACTIVATIONS = frozenset({"linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "softplus",
                               "softsign", "exponential", "swish", "gelu", "mish"})
_RENAMED_ACTIVATIONS = {"silu": "swish"}
# Keras 3 activations tf_keras lacks as functions but has as layers: (class, config).
_LAYER_ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu6": ("ReLU", {"max_value": 6.0}),
    "leaky_relu": ("LeakyReLU", {"alpha": 0.2}),  # keras.activations.leaky_relu: negative_slope=0.2
}
_FLOAT_POLICIES = frozenset({"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"})
# Layer kwargs tf_keras' base Layer takes besides its named parameters.
_BASE_KWARGS = frozenset({"input_dim", "input_shape", "batch_input_shape", "batch_size", "weights",
                          "activity_regularizer", "autocast", "implementation"})
# Keras 3 variable names that tf_keras spells differently, per layer class.
_WEIGHT_RENAMES: dict[str, dict[str, str]] = {"DepthwiseConv2D": {"kernel": "depthwise_kernel"}}


def twin_layer(layer: Any, tf_keras: Any, unique_name: Callable[[str], str]) -> tuple[Any, Any | None]:
    """The tf_keras twin of a Keras 3 layer, plus a separate activation layer when one is needed.

    `unique_name(base)` gives the split activation layer a name no other layer of the model has.
    """
    class_name = type(layer).__name__
    cfg = dict(layer.get_config())
    split = None
    activation = cfg.get("activation")
    if activation is not None:
        if not isinstance(activation, str):
            raise ModelLoadError(f"layer '{layer.name}' ({class_name}) has a custom activation {activation!r}",
                                 hint=UNSUPPORTED_HINT)
        if activation in _RENAMED_ACTIVATIONS:
            cfg["activation"] = _RENAMED_ACTIVATIONS[activation]
        elif activation in _LAYER_ACTIVATIONS:
            act_class, act_cfg = _LAYER_ACTIVATIONS[activation]
            if class_name == "Activation":  # the whole layer becomes e.g. ReLU(max_value=6), same name
                class_name, cfg = act_class, {"name": cfg["name"], "trainable": cfg.get("trainable", True),
                                              "dtype": cfg.get("dtype"), **act_cfg}
            else:  # Conv2D(activation="relu6") -> Conv2D + ReLU(max_value=6), as TFLite fuses it again
                cfg["activation"] = "linear"
                split = getattr(tf_keras.layers, act_class)(name=unique_name(f"{layer.name}_{activation}"),
                                                            dtype=dtype_name(cfg.get("dtype"), layer), **act_cfg)
        elif activation not in _SAME_ACTIVATIONS:
            raise ModelLoadError(f"layer '{layer.name}' ({class_name}) uses activation '{activation}', which "
                                 "tf_keras does not have", hint=UNSUPPORTED_HINT)
    cfg = _translate(cfg, layer, class_name)
    cls = getattr(tf_keras.layers, class_name)
    unknown = {k: v for k, v in cfg.items() if k not in _init_params(cls)}
    for key, value in unknown.items():
        if value is None or value is False or key == "synchronized":
            del cfg[key]
        else:
            raise ModelLoadError(f"layer '{layer.name}' ({type(layer).__name__}) sets {key}={value!r}, which "
                                 "has no tf_keras equivalent", hint=UNSUPPORTED_HINT)
    try:
        with captured_output():
            return cls.from_config(cfg), split
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"layer '{layer.name}' ({type(layer).__name__}): tf_keras refuses its config: "
                             f"{str(exc).strip().splitlines()[0][:300]}", hint=UNSUPPORTED_HINT) from exc


def _translate(cfg: dict[str, Any], layer: Any, class_name: str) -> dict[str, Any]:
    """A Keras 3 layer config in the form tf_keras' from_config accepts."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if key == "dtype":
            out[key] = dtype_name(value, layer)
        elif key.endswith("_initializer"):
            continue  # the weights are copied; tf_keras' defaults only shape the fresh variables
        elif key.endswith("_regularizer") or key.endswith("_constraint"):
            out[key] = _serializable(value, layer, key)
        else:
            out[key] = value
    if class_name == "LeakyReLU" and "negative_slope" in out:
        out["alpha"] = out.pop("negative_slope")
    if class_name == "ZeroPadding1D":
        if out.pop("data_format", "channels_last") != "channels_last":
            raise ModelLoadError(f"layer '{layer.name}' (ZeroPadding1D) pads channels_first data, which tf_keras "
                                 "cannot", hint=UNSUPPORTED_HINT)
    if class_name == "LayerNormalization" and out.get("rms_scaling") is False:
        out.pop("rms_scaling")
    if class_name in ("LSTM", "GRU", "SimpleRNN"):
        out.pop("use_cudnn", None)  # a Keras 3 kernel choice; tf_keras chooses by itself
        out.pop("seed", None)       # dropout's seed: no dropout at inference
    return out


def dtype_name(value: Any, layer: Any) -> str | None:
    """A Keras 3 dtype or DTypePolicy (as a string or a serialized dict) as a tf_keras policy name."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("class_name") != "DTypePolicy":
            raise ModelLoadError(f"layer '{layer.name}' ({type(layer).__name__}) uses the dtype policy "
                                 f"{value.get('class_name')} (e.g. a quantized Keras 3 layer), which tf_keras "
                                 "does not have", hint=UNSUPPORTED_HINT)
        value = value.get("config", {}).get("name")
    name = str(value)
    if name not in _FLOAT_POLICIES and not name.startswith(("int", "uint", "bool")):
        raise ModelLoadError(f"layer '{layer.name}' ({type(layer).__name__}) uses the dtype policy '{name}', "
                             "which the tf_keras rebuild does not support", hint=UNSUPPORTED_HINT)
    return name


def _serializable(value: Any, layer: Any, key: str) -> Any:
    """A Keras 3 regularizer/constraint dict (module, class_name, config) in tf_keras' form."""
    if value is None:
        return None
    if not isinstance(value, dict) or "class_name" not in value:
        raise ModelLoadError(f"layer '{layer.name}' ({type(layer).__name__}): cannot translate {key}={value!r}",
                             hint=UNSUPPORTED_HINT)
    module = str(value.get("module") or "")
    if value.get("registered_name") or not module.startswith("keras."):
        raise ModelLoadError(f"layer '{layer.name}' ({type(layer).__name__}) uses the custom {key} "
                             f"{value.get('registered_name') or value['class_name']}", hint=UNSUPPORTED_HINT)
    return {"class_name": value["class_name"], "config": dict(value.get("config") or {})}


def _init_params(cls: type) -> frozenset[str]:
    """The keyword arguments a tf_keras layer class accepts, up to and including the base Layer."""
    names: set[str] = set(_BASE_KWARGS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {p.name for p in inspect.signature(init).parameters.values()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if klass.__name__ == "Layer" and klass.__module__.startswith("tf_keras"):
            break
    names.discard("self")
    return frozenset(names)


def copy_weights(source: Any, target: Any) -> None:
    """Keras 3 layer -> tf_keras layer, matched by variable name (kernel, gamma, moving_mean, ...)."""
    renames = _WEIGHT_RENAMES.get(type(source).__name__, {})
    src = {renames.get(name, name): value for name, value in
           ((_short(getattr(w, "path", w.name)), v) for w, v in zip(source.weights, source.get_weights()))}
    dst = [(_short(w.name), w) for w in target.weights]
    label = f"layer '{source.name}' ({type(source).__name__})"
    if len(src) != len(source.weights) or sorted(src) != sorted(name for name, _ in dst):
        raise ModelLoadError(f"{label}: its weights {sorted(src)} do not match the tf_keras layer's "
                             f"{sorted(name for name, _ in dst)}", hint=UNSUPPORTED_HINT)
    values = []
    for name, variable in dst:
        value = np.asarray(src[name])
        if tuple(value.shape) != tuple(variable.shape):
            raise ModelLoadError(f"{label}: weight '{name}' has shape {value.shape} in Keras 3 but "
                                 f"{tuple(variable.shape)} in tf_keras", hint=UNSUPPORTED_HINT)
        values.append(value)
    target.set_weights(values)


def _short(name: str) -> str:
    """'block/conv2d/kernel:0' -> 'kernel'."""
    return name.split("/")[-1].split(":")[0]
