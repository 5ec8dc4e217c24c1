"""Keras 3 -> tf_keras: the bridge that lets quantization-aware training (tfmot) see a Keras 3 model.

tensorflow-model-optimization's `quantize_model` only accepts Keras 2 (tf_keras) Sequential and
Functional models, and a Keras 3 config does not load into tf_keras as it is. This module walks the
Keras 3 graph, has each layer rebuilt as tf_keras (edgeq.quantize.bridge_layers: from its config
with the few keys that differ translated, every weight copied), reconnects the layers, and then
proves the rebuild: both models must give the same outputs on real samples.

No code is evaluated: only the built-in layer classes in SUPPORTED_LAYERS are rebuilt, from their
configs (LSTM, GRU and SimpleRNN among them). Anything else (custom layers, raw `keras.ops` calls,
nested models) is refused with an error that names the layer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeq._tf import captured_output, tf
from edgeq.errors import CalibrationError, ModelLoadError
from edgeq.quantize.bridge_layers import SUPPORTED_LAYERS, UNSUPPORTED_HINT, copy_weights, dtype_name, twin_layer

_MAX_SAMPLES = 32


def is_tf_keras(model: Any) -> bool:
    """True for a tf_keras (Keras 2) model, without importing anything."""
    return any(cls.__module__.startswith("tf_keras") for cls in type(model).__mro__
               if cls.__name__ in ("Model", "Functional", "Sequential"))


def to_tf_keras(model: Any, sample_inputs: Sequence[np.ndarray], *, atol: float = 1e-5) -> Any:
    """A tf_keras copy of a Keras 3 Sequential/Functional model with the same weights, verified.

    The largest absolute difference between the outputs of both models on `sample_inputs` (one
    array per model input, samples on axis 0; the first 32 are used) must be below `atol`, else
    ModelLoadError. tf_keras models are returned as they are.
    """
    if is_tf_keras(model):
        _reserve_names(model)
        return model
    tf()
    import keras
    import tf_keras

    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"cannot rebuild a {type(model).__module__}.{type(model).__name__} as tf_keras: "
                             "not a Keras model", hint=UNSUPPORTED_HINT)
    graph = _graph_of(model, keras)
    _check_supported(graph, keras)
    samples = _check_samples(model, sample_inputs)
    rebuilt, pairs = _Rebuilder(keras, tf_keras).rebuild(model, graph)
    _verify(model, rebuilt, samples, atol, layer_count=len(pairs))
    _reserve_names(rebuilt)
    return rebuilt


def _reserve_names(tf_keras_model: Any) -> None:
    """Keep tf_keras from generating names the model already uses.

    Layers rebuilt with their Keras 3 names (or loaded from a file) do not advance tf_keras' name
    counters, so the next auto-named layer may be called "conv2d" again. tfmot's layout transforms
    create such layers (SeparableConv2D -> DepthwiseConv2D + Conv2D) and then match weights by
    name: a clash makes quantize_model fail with a shape mismatch, or silently swap weights.
    """
    try:
        from tf_keras.src.backend import unique_object_name  # what Layer uses to name itself
    except ImportError:  # pragma: no cover - a tf_keras without it names layers differently
        return
    for layer in tf_keras_model.layers:
        match = re.fullmatch(r"(.+?)(?:_(\d+))?", layer.name)
        prefix, used = match.group(1), int(match.group(2) or 0)  # type: ignore[union-attr]
        for _ in range(min(used, 100_000) + 1):  # draw names until the counter is past `used`
            got = unique_object_name(prefix, zero_based=True)
            if (0 if got == prefix else int(got.rsplit("_", 1)[1])) >= used:
                break


def unquantizable_layers(tf_keras_model: Any) -> list[str]:
    """Layers tfmot's default 8-bit scheme cannot quantize, as "name (ClassName)".

    Mirrors `quantize_apply`: the layout transforms run first (they fold Conv+BatchNorm, split
    SeparableConv2D, fuse ReLUs, ...), then every remaining layer must be known to the default
    8-bit registry, and fused activations must be ones tfmot's QuantizeAwareActivation handles.
    """
    tf()
    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        with captured_output():
            import tf_keras
            from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation
            from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer
            from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
                default_8bit_quantize_scheme,
            )
    finally:  # tfmot sets TF_USE_LEGACY_KERAS=1 on import; keep the process environment as it was
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = saved

    if not is_tf_keras(tf_keras_model):
        raise ModelLoadError("unquantizable_layers needs a tf_keras model; rebuild it with to_tf_keras first")
    _reserve_names(tf_keras_model)
    scheme = default_8bit_quantize_scheme.Default8BitQuantizeScheme()
    registry = scheme.get_quantize_registry()
    qmap: dict[str, dict[str, Any]] = {layer.name: {} for layer in tf_keras_model.layers}
    try:
        with captured_output():
            transformed, qmap = scheme.get_layout_transformer().apply(tf_keras_model, qmap)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelLoadError(f"tfmot's default 8-bit layout transforms fail on '{tf_keras_model.name}': {first}",
                             hint="use PTQ instead (drop --qat)") from exc
    qaa = quantize_aware_activation.QuantizeAwareActivation
    fused_ok = qaa._PRE_QUANT_ACTIVATIONS | qaa._POST_QUANT_ACTIVATIONS | qaa._NO_QUANTIZE_ACTIVATIONS
    layer_ok = {"relu", "swish", "gelu", "relu6", "linear", "softmax", "sigmoid", "tanh"}
    bad = []
    for layer in transformed.layers:
        if isinstance(layer, (tf_keras.layers.InputLayer, quantize_layer.QuantizeLayer)):
            continue
        label = f"{layer.name} ({type(layer).__name__})"
        if not (qmap.get(layer.name) or {}).get("quantize_config") and not registry.supports(layer):
            bad.append(label)
            continue
        activation = getattr(layer, "activation", None)
        if activation is None:
            continue
        name = getattr(activation, "__name__", type(activation).__name__)
        allowed = layer_ok if isinstance(layer, tf_keras.layers.Activation) else fused_ok
        if name not in allowed:
            bad.append(f"{label}: activation '{name}'")
    return bad


# --- graph -------------------------------------------------------------------------------------


def _graph_of(model: Any, keras: Any) -> Any:
    """The Keras 3 Functional graph behind `model` (a Sequential's is built on first use)."""
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ModelLoadError(f"Sequential model '{model.name}' is not built, so its input shape is unknown",
                                 hint="start it with keras.Input(shape) or call model.build(input_shape) first")
        return graph
    if not hasattr(model, "_nodes_by_depth"):
        raise ModelLoadError(
            f"model '{model.name}' ({type(model).__name__}) is a subclassed Keras model: its call() is Python "
            "code that cannot be rebuilt as tf_keras",
            hint="build it as a Sequential or Functional model, or " + UNSUPPORTED_HINT)
    return model


def _nodes(graph: Any) -> list[Any]:
    """The graph's nodes in evaluation order (deepest first), as Keras 3 itself runs them."""
    return [node for depth in sorted(graph._nodes_by_depth, reverse=True) for node in graph._nodes_by_depth[depth]
            if node.operation is not None and not node.is_input]


def _check_supported(graph: Any, keras: Any) -> None:
    problems = []
    seen: set[int] = set()
    for node in _nodes(graph):
        op = node.operation
        if id(op) in seen:
            continue
        seen.add(id(op))
        name = type(op).__name__
        if isinstance(op, keras.Model):
            problems.append(f"'{op.name}' ({name}) is a nested model, which the tf_keras rebuild does not support")
        elif not isinstance(op, keras.layers.Layer):
            problems.append(f"'{op.name}' ({type(op).__module__}.{name}) is a raw keras.ops call, not a layer")
        elif name not in SUPPORTED_LAYERS or type(op) is not getattr(keras.layers, name, None):
            problems.append(f"layer '{op.name}' ({name}) is not supported by the tf_keras rebuild")
    if problems:
        raise ModelLoadError("cannot rebuild the Keras 3 model as tf_keras for quantization-aware training: "
                             + "; ".join(problems), hint=UNSUPPORTED_HINT)


def _check_samples(model: Any, sample_inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    import keras

    if isinstance(sample_inputs, np.ndarray):
        sample_inputs = [sample_inputs]
    specs = list(_graph_of(model, keras).inputs)
    if len(sample_inputs) != len(specs):
        raise CalibrationError(f"{len(sample_inputs)} sample array(s) given to verify the tf_keras rebuild, "
                               f"but the model has {len(specs)} input(s)")
    out = []
    for spec, x in zip(specs, sample_inputs):
        x = np.asarray(x)
        expected = tuple(spec.shape)
        if x.ndim != len(expected) or any(e is not None and e != a for e, a in zip(expected[1:], x.shape[1:])):
            raise CalibrationError(f"samples for input '{spec.name}' have shape {x.shape}, the model expects "
                                   f"{expected}")
        if x.shape[0] == 0:
            raise CalibrationError(f"no samples for input '{spec.name}': cannot verify the tf_keras rebuild")
        out.append(x[:_MAX_SAMPLES].astype(str(spec.dtype), copy=False))
    if len({x.shape[0] for x in out}) > 1:
        raise CalibrationError("the sample arrays differ in their number of samples: "
                               + ", ".join(str(x.shape[0]) for x in out))
    return out


# --- rebuild -----------------------------------------------------------------------------------


class _Rebuilder:
    """Walks a Keras 3 graph and reconnects its layers' tf_keras twins as one tf_keras model."""

    def __init__(self, keras: Any, tf_keras: Any) -> None:
        self.keras = keras
        self.tk = tf_keras
        self.names: set[str] = set()

    def rebuild(self, model: Any, graph: Any) -> tuple[Any, list[tuple[Any, Any]]]:
        """(tf_keras model, [(Keras 3 layer, its tf_keras twin)]), weights copied."""
        self.names = {op.name for op in graph.operations}
        built: dict[int, tuple[Any, Any | None]] = {}  # id(Keras 3 layer) -> (tf_keras layer, split activation)
        pairs: list[tuple[Any, Any]] = []
        for node in _nodes(graph):
            if id(node.operation) not in built:
                built[id(node.operation)] = twin_layer(node.operation, self.tk, self._unique)
                pairs.append((node.operation, built[id(node.operation)][0]))
        if isinstance(model, self.keras.Sequential):
            first = graph.inputs[0]._keras_history.operation
            stack = [layer for op, _ in pairs for layer in built[id(op)] if layer is not None]
            rebuilt = self._call(model, lambda: self.tk.Sequential([self._input(first), *stack], name=model.name))
        else:
            rebuilt = self._functional(model, graph, built)
        for source, target in pairs:
            copy_weights(source, target)
        return rebuilt, pairs

    def _functional(self, model: Any, graph: Any, built: dict[int, tuple[Any, Any | None]]) -> Any:
        tensors: dict[int, Any] = {}  # id(Keras 3 KerasTensor) -> tf_keras tensor
        for t in graph.inputs:
            tensors[id(t)] = self._input(t._keras_history.operation)
        nest = tf().nest
        for node in _nodes(graph):
            op = node.operation
            layer, activation = built[id(op)]
            if any(id(x) not in tensors for x in node.input_tensors):
                raise ModelLoadError(f"layer '{op.name}' is reached before its inputs while rebuilding the graph")
            args, kwargs = node.arguments.fill_in(tensors)
            kwargs = {k: v for k, v in kwargs.items() if v is not None}  # e.g. mask=None, unknown to tf_keras

            def call(layer: Any = layer, activation: Any = activation, args: Any = args, kwargs: Any = kwargs) -> Any:
                y = layer(*args, **kwargs)
                return y if activation is None else activation(y)

            for x, y in zip(node.outputs, nest.flatten(self._call(op, call))):
                tensors[id(x)] = y

        def pick(t: Any) -> Any:
            if id(t) not in tensors:
                raise ModelLoadError(f"model output '{t.name}' is not connected to its inputs")
            return tensors[id(t)]

        inputs = self.keras.tree.map_structure(pick, graph._inputs_struct)
        outputs = self.keras.tree.map_structure(pick, graph._outputs_struct)
        return self.tk.Model(inputs=inputs, outputs=outputs, name=model.name)

    @staticmethod
    def _call(op: Any, fn: Any) -> Any:
        try:
            return fn()
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any tf_keras refusal becomes a user-facing error
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelLoadError(f"'{op.name}' ({type(op).__name__}): the tf_keras rebuild fails: {first}",
                                 hint=UNSUPPORTED_HINT) from exc

    def _input(self, layer: Any) -> Any:
        cfg = layer.get_config()
        for flag in ("sparse", "ragged", "optional"):
            if cfg.get(flag):
                raise ModelLoadError(f"input '{layer.name}' is {flag}, which the tf_keras rebuild does not support",
                                     hint=UNSUPPORTED_HINT)
        return self.tk.Input(batch_shape=tuple(cfg["batch_shape"]), dtype=dtype_name(cfg.get("dtype"), layer),
                             name=cfg.get("name", layer.name))

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name


# --- verification ------------------------------------------------------------------------------


def _verify(original: Any, rebuilt: Any, samples: list[np.ndarray], atol: float, *, layer_count: int) -> None:
    import keras

    def run(model: Any, structure: Any, convert: Any) -> list[np.ndarray]:
        packed = keras.tree.pack_sequence_as(structure, samples)
        return [np.asarray(convert(y), dtype=np.float64) for y in keras.tree.flatten(model(packed, training=False))]

    graph = _graph_of(original, keras)
    expected = run(original, graph._inputs_struct, keras.ops.convert_to_numpy)
    actual = run(rebuilt, graph._inputs_struct, np.asarray)
    if len(expected) != len(actual):
        raise ModelLoadError(f"the tf_keras rebuild has {len(actual)} output(s), the Keras 3 model {len(expected)}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(expected, actual)):
        if a.shape != b.shape:
            raise ModelLoadError(f"output {i} of the tf_keras rebuild has shape {b.shape}, the Keras 3 model's "
                                 f"{a.shape}", hint=UNSUPPORTED_HINT)
        if not np.all(np.isfinite(a)):
            raise ModelLoadError(f"output {i} of the Keras 3 model is not finite on the samples: cannot verify the "
                                 "tf_keras rebuild", hint="check the model and the calibration data")
        diff = np.abs(a - b)
        worst = max(worst, float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf"))
    if not worst < atol:
        raise ModelLoadError(
            f"the tf_keras rebuild of '{original.name}' ({layer_count} layers) does not reproduce the Keras 3 model: "
            f"max abs output difference {worst:.3g} on {samples[0].shape[0]} samples (tolerance {atol:g})",
            hint=UNSUPPORTED_HINT)
