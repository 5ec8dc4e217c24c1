"""Fold BatchNormalization layers into the Dense layer before them, before PTQ conversion.

In inference mode a BatchNormalization is an affine map per feature,

    y = gamma * (x - mean) / sqrt(var + eps) + beta,

so when it normalizes the last axis of a linear Dense layer's output it folds exactly into that
Dense: W' = W * s and b' = (b - mean) * s + beta, with s = gamma / sqrt(var + eps). A
BatchNormalization the converter does not fuse stays in the int8 model as a MUL and an ADD, each
with its own int8 activation tensor (an extra rounding step, more ops, a larger arena). Folding
in Keras first makes the result independent of whether the converter's own pattern matching
fires. (TensorFlow 2.21's converter does fuse a Dense->BatchNormalization pair in every variant
measured: rank 2 to 4, with or without bias, per-tensor or per-channel, int8 or int16x8, batch 1
or dynamic. There the fold changes no op, arena or output; the .tflite shrinks by the long fused
tensor names, a few hundred bytes. See scripts/bench_fold.py.)

The model is rebuilt from its config (Keras 3 and tf_keras, Sequential and Functional, nested
models included) without the folded BatchNormalization layers; every other weight is copied.
The folded model is then run against the original on sample inputs, and a difference beyond
`atol` raises ConversionError rather than hand the user a silently different model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from edgeq._tf import tf
from edgeq.errors import CalibrationError, ConversionError

_NESTED_MODEL_CLASSES = ("Functional", "Sequential", "Model")


@dataclass(frozen=True)
class FoldResult:
    model: Any  # the folded model (same framework as the input), or the input itself if nothing was folded
    folded: tuple[str, ...]  # "dense_name+bn_name" per folded pair
    max_abs_difference: float  # folded vs original outputs on the sample inputs
    # Dense->BatchNormalization pairs left alone, "dense_name+bn_name: why". Not an error: the
    # model converts as it is, with a MUL/ADD pair where the BatchNormalization was.
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Pair:
    path: tuple[str, ...]  # names of the nested models holding the pair, outermost first ("" = top level)
    dense: str
    bn: str
    kernel: np.ndarray
    bias: np.ndarray

    @property
    def label(self) -> str:
        return "/".join((*self.path, f"{self.dense}+{self.bn}"))


def fold_dense_batchnorm(model: Any, sample_inputs: Sequence[np.ndarray], *, atol: float = 1e-5) -> FoldResult:
    """Fold every foldable Dense->BatchNormalization pair of a Keras 3 or tf_keras model.

    A pair folds when the BatchNormalization's only input is the Dense output, that output
    feeds nothing else, both layers are called once in their model, the Dense has no
    activation (a Dense with an activation is followed by the nonlinearity, not by the
    BatchNormalization) and the BatchNormalization normalizes the last axis in inference mode.

    `sample_inputs`: one array per model input, samples on axis 0; the folded model must
    reproduce the original's outputs on them within `atol` (scaled by the outputs' magnitude
    when it exceeds 1, since float32 rounding is relative), else ConversionError.
    """
    tf()
    keras_module = _framework(model)
    xs = [np.asarray(x, dtype=np.float32) if np.asarray(x).dtype == np.float64 else np.asarray(x)
          for x in sample_inputs]
    if not getattr(model, "built", True) and xs:
        _predict(model, [x[:1] for x in xs])  # a model never called has no weights to fold yet
    pairs: list[_Pair] = []
    skipped: list[str] = []
    config = _folded_config(model, keras_module, (), pairs, skipped)
    if config is None or not pairs:
        return FoldResult(model=model, folded=(), max_abs_difference=0.0, skipped=tuple(skipped))

    if not xs or len(xs[0]) == 0:
        raise CalibrationError("folding BatchNormalization into Dense needs at least one sample input to "
                               "verify the folded model against the original")
    reference = _predict(model, xs)
    try:
        folded_model = _rebuild(model, config, keras_module)
        _copy_weights(model, folded_model, {(p.path, p.dense): p for p in pairs}, (), keras_module)
    except Exception as exc:  # a layer that cannot be re-created from its config: convert unfolded
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        reason = f"the model cannot be rebuilt from its config ({type(exc).__name__}: {first})"
        return FoldResult(model=model, folded=(), max_abs_difference=0.0,
                          skipped=tuple(skipped) + tuple(f"{p.label}: {reason}" for p in pairs))

    outputs = _predict(folded_model, xs)
    labels = tuple(p.label for p in pairs)
    if len(outputs) != len(reference) or any(a.shape != b.shape for a, b in zip(outputs, reference)):
        raise ConversionError(
            f"folding BatchNormalization into Dense ({', '.join(labels)}) changed the model's outputs: "
            f"shapes {[a.shape for a in reference]} became {[a.shape for a in outputs]}",
            hint="this is an edgeq bug; please report it with the model",
        )
    difference = max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
                      for a, b in zip(outputs, reference)), default=0.0)
    magnitude = max((float(np.max(np.abs(b), initial=0.0)) for b in reference), default=0.0)
    limit = atol * max(1.0, magnitude)
    if not difference <= limit:  # also catches NaN
        raise ConversionError(
            f"folding BatchNormalization into Dense ({', '.join(labels)}) changed the model's outputs by up to "
            f"{difference:.3g} on {len(xs[0])} sample(s) (allowed {limit:.3g})",
            hint="this is an edgeq bug; please report it with the model",
        )
    return FoldResult(model=folded_model, folded=labels, max_abs_difference=difference, skipped=tuple(skipped))


# -- finding the pairs, in the model's config --------------------------------------------------------


def _framework(model: Any) -> Any:
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def _folded_config(model: Any, K: Any, path: tuple[str, ...], pairs: list[_Pair],
                   skipped: list[str]) -> dict[str, Any] | None:
    """`model`'s config with its (and its nested models') foldable pairs folded, or None if opaque.

    Appends what it folds to `pairs` and the pairs it leaves alone to `skipped`.
    """
    if isinstance(model, K.Sequential):
        kind = "sequential"
    elif getattr(model, "_is_graph_network", False) or _is_keras3_functional(model):
        kind = "functional"
    else:
        return None  # a subclassed model: its call() is Python, there is no graph to edit
    try:
        config = copy.deepcopy(model.get_config())
    except Exception:  # noqa: BLE001 - a model that cannot describe itself has nothing we can fold
        return None
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        return None
    if kind == "functional" and not all(k in config for k in ("input_layers", "output_layers")):
        return None

    entries: list[dict[str, Any]] = config["layers"]
    names = {_entry_name(e) for e in entries}
    # Nested models first: their pairs fold inside them, whatever the outer graph looks like.
    for entry in entries:
        if entry.get("class_name") in _NESTED_MODEL_CLASSES and isinstance(entry.get("config"), dict):
            inner = _live_layer(model, _entry_name(entry))
            if inner is not None and isinstance(inner, K.Model):
                inner_config = _folded_config(inner, K, (*path, inner.name), pairs, skipped)
                if inner_config is not None:
                    entry["config"] = inner_config

    candidates = _sequential_candidates(entries) if kind == "sequential" else _functional_candidates(config, names)
    removed: dict[str, str] = {}  # bn name -> dense name
    for dense_entry, bn_entry, problem in candidates:
        dense_name, bn_name = _entry_name(dense_entry), _entry_name(bn_entry)
        dense, bn = _live_layer(model, dense_name), _live_layer(model, bn_name)
        label = "/".join((*path, f"{dense_name}+{bn_name}"))
        problem = problem or _layer_problem(dense, bn, dense_entry, bn_entry, K)
        if problem:
            skipped.append(f"{label}: {problem}")
            continue
        kernel, bias = _fold_weights(dense, bn)
        pairs.append(_Pair(path, dense_name, bn_name, kernel, bias))
        dense_entry["config"]["use_bias"] = True
        removed[bn_name] = dense_name
    if not removed:
        return config

    config["layers"] = [e for e in entries if _entry_name(e) not in removed]
    if kind == "functional":
        def redirect(ref: list[Any]) -> list[Any]:
            if ref[0] in removed:
                return [removed[ref[0]], 0, *ref[2:]]  # both layers are called once: node 0
            return ref

        for entry in config["layers"]:
            entry["inbound_nodes"] = _map_refs(entry.get("inbound_nodes", []), names, redirect)
        config["output_layers"] = _map_refs(config["output_layers"], names, redirect)
    return config


def _is_keras3_functional(model: Any) -> bool:
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, Functional)


def _entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("config", {}).get("name", ""))


def _live_layer(model: Any, name: str) -> Any:
    try:
        return model.get_layer(name)
    except ValueError:
        return None


Candidate = tuple[dict[str, Any], dict[str, Any], str]  # dense entry, bn entry, why not ("" = fine so far)


def _sequential_candidates(entries: list[dict[str, Any]]) -> Iterator[Candidate]:
    for first, second in zip(entries, entries[1:]):
        if first.get("class_name") == "Dense" and second.get("class_name") == "BatchNormalization":
            yield first, second, ""


def _functional_candidates(config: dict[str, Any], names: set[str]) -> Iterator[Candidate]:
    entries: list[dict[str, Any]] = config["layers"]
    by_name = {_entry_name(e): e for e in entries}
    uses: dict[tuple[str, int, int], int] = {}  # tensor -> number of references to it

    def count(ref: list[Any]) -> list[Any]:
        key = (ref[0], int(ref[1]), int(ref[2]))
        uses[key] = uses.get(key, 0) + 1
        return ref

    for entry in entries:
        _map_refs(entry.get("inbound_nodes", []), names, count)
    _map_refs(config["output_layers"], names, count)

    for bn_entry in entries:
        if bn_entry.get("class_name") != "BatchNormalization":
            continue
        nodes = bn_entry.get("inbound_nodes", [])
        refs: list[list[Any]] = []
        for node in nodes:
            _map_refs(node, names, lambda ref: refs.append(ref) or ref)
        if len(refs) != 1 or refs[0][0] not in by_name or by_name[refs[0][0]].get("class_name") != "Dense":
            continue
        dense_entry = by_name[refs[0][0]]
        problem = ""
        if len(nodes) != 1 or len(dense_entry.get("inbound_nodes", [])) != 1:
            problem = "a layer of the pair is called more than once in the model"
        elif _training_flag(nodes[0]):
            problem = "the BatchNormalization is called with training=True (batch statistics at inference)"
        elif tuple(refs[0][:3]) != (refs[0][0], 0, 0) or uses.get((refs[0][0], 0, 0), 0) != 1:
            problem = "the Dense output also feeds other layers or is a model output"
        yield dense_entry, bn_entry, problem


def _map_refs(data: Any, names: set[str], fn: Callable[[list[Any]], list[Any]]) -> Any:
    """`data` (a piece of a functional config) with every tensor reference [layer, node, index] mapped by `fn`.

    Keras 3 writes a tensor as {"class_name": "__keras_tensor__", "config": {"keras_history": [...]}};
    tf_keras as [layer, node, index, kwargs] in inbound nodes and [layer, node, index] elsewhere
    (input_layers, output_layers, tensors in kwargs).
    """
    if isinstance(data, dict):
        if data.get("class_name") == "__keras_tensor__" and isinstance(data.get("config"), dict):
            history = data["config"].get("keras_history")
            if _is_ref(history, names):
                out = dict(data)
                out["config"] = dict(data["config"], keras_history=list(fn(list(history))))
                return out
        return {k: _map_refs(v, names, fn) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        if _is_ref(data, names):
            head = list(fn(list(data[:3])))
            tail = [_map_refs(v, names, fn) for v in data[3:]]
            return head + tail
        return [_map_refs(v, names, fn) for v in data]
    return data


def _is_ref(data: Any, names: set[str]) -> bool:
    return (isinstance(data, (list, tuple)) and len(data) in (3, 4) and isinstance(data[0], str)
            and data[0] in names and isinstance(data[1], int) and isinstance(data[2], int)
            and not isinstance(data[1], bool) and (len(data) == 3 or isinstance(data[3], dict)))


def _training_flag(node: Any) -> bool:
    """Whether a BatchNormalization's call pins training=True (then it uses batch statistics)."""
    if isinstance(node, dict):
        if node.get("training") not in (None, False):
            return True
        return any(_training_flag(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_training_flag(v) for v in node)
    return False


def _layer_problem(dense: Any, bn: Any, dense_entry: dict[str, Any], bn_entry: dict[str, Any], K: Any) -> str:
    """Why this Dense->BatchNormalization pair cannot fold ("" if it can)."""
    if type(dense) is not K.layers.Dense or type(bn) is not K.layers.BatchNormalization:
        return "not a plain Dense and BatchNormalization"
    activation = dense_entry.get("config", {}).get("activation", "linear")
    if activation not in ("linear", None):
        name = activation if isinstance(activation, str) else activation.get("class_name", "custom") \
            if isinstance(activation, dict) else "custom"
        return f"the Dense has activation '{name}', so the BatchNormalization follows a nonlinearity"
    if getattr(dense, "lora_enabled", False) or getattr(dense, "quantization_mode", None):
        return "the Dense is LoRA-enabled or already quantized"
    if not dense.built or not bn.built or getattr(dense, "kernel", None) is None:
        return "the layers are not built"
    if getattr(bn, "renorm", False) or getattr(bn, "virtual_batch_size", None):
        return "the BatchNormalization uses batch renormalization or virtual batches"
    rank = _bn_rank(bn, bn_entry)
    try:
        axes = [int(a) for a in np.atleast_1d(np.asarray(list(bn.axis) if isinstance(bn.axis, Iterable)
                                                            else bn.axis))]
    except (TypeError, ValueError):
        return "the BatchNormalization's axis is not understood"
    if rank is None or len(axes) != 1 or axes[0] % rank != rank - 1:
        return f"the BatchNormalization normalizes axis {bn.axis}, not the Dense's last (feature) axis"
    units = int(np.asarray(dense.kernel).shape[-1])
    if int(np.asarray(bn.moving_mean).shape[0]) != units:
        return "the BatchNormalization's size does not match the Dense's units"
    return ""


def _bn_rank(bn: Any, entry: dict[str, Any]) -> int | None:
    spec = getattr(bn, "input_spec", None)
    ndim = getattr(spec, "ndim", None) if spec is not None and not isinstance(spec, list) else None
    if isinstance(ndim, int):
        return ndim
    shape = (entry.get("build_config") or {}).get("input_shape")
    return len(shape) if isinstance(shape, (list, tuple)) else None


def _fold_weights(dense: Any, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    kernel = np.asarray(dense.kernel, dtype=np.float64)
    bias = np.asarray(dense.bias, dtype=np.float64) if getattr(dense, "bias", None) is not None \
        else np.zeros(kernel.shape[-1])
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    var = np.asarray(bn.moving_variance, dtype=np.float64)
    gamma = np.asarray(bn.gamma, dtype=np.float64) if getattr(bn, "gamma", None) is not None else np.ones_like(mean)
    beta = np.asarray(bn.beta, dtype=np.float64) if getattr(bn, "beta", None) is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + float(bn.epsilon))
    dtype = np.asarray(dense.kernel).dtype
    return (kernel * scale).astype(dtype), ((bias - mean) * scale + beta).astype(dtype)


# -- rebuilding ---------------------------------------------------------------------------------------


def _rebuild(model: Any, config: dict[str, Any], K: Any) -> Any:
    custom = {}
    for layer in _all_layers(model):
        cls = type(layer)
        custom.setdefault(cls.__name__, cls)
        try:
            custom.setdefault(K.saving.get_registered_name(cls), cls)
        except Exception:  # noqa: BLE001 - tf_keras spells it differently; the class name usually suffices
            pass
    if isinstance(model, K.Sequential):
        return K.Sequential.from_config(config, custom_objects=custom)
    return K.Model.from_config(config, custom_objects=custom)


def _all_layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def _copy_weights(src: Any, dst: Any, folded: dict[tuple[tuple[str, ...], str], _Pair],
                  path: tuple[str, ...], K: Any) -> None:
    inner_paths = {p[:len(path) + 1] for p, _ in folded if len(p) > len(path) and p[:len(path)] == path}
    for layer in dst.layers:
        original = src.get_layer(layer.name)
        pair = folded.get((path, layer.name))
        if pair is not None:
            layer.set_weights([pair.kernel, pair.bias])
        elif (*path, layer.name) in inner_paths:
            _copy_weights(original, layer, folded, (*path, layer.name), K)
        else:
            layer.set_weights(original.get_weights())


def _predict(model: Any, xs: list[np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
    tfm = tf()
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(xs[0]), batch_size):
        batch = [x[start:start + batch_size] for x in xs]
        out = model(batch if len(batch) > 1 else batch[0], training=False)
        chunks.append([np.asarray(o) for o in tfm.nest.flatten(out)])
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))] if chunks else []
