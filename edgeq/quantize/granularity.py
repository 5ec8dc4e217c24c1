"""Weight granularity per layer: per-channel scales for some layers, one scale for the others.

The TFLite converter chooses per-channel or per-tensor weight scales for the whole model only.
Calibration does not depend on that choice, so two conversions of the same model on the same
samples (per channel, and per tensor) have the same graph and the same activation scales; only
the weight and bias tensors of the layers with weights differ. A model with per-tensor weights in
a chosen set of layers is the per-channel one with those layers' weight and bias tensors (data
and quantization) taken from the per-tensor one: exactly what a converter with a per-layer switch
would write. `mixed` does that, and refuses when the two models disagree on anything else.

Why it matters on a microcontroller: TFLite Micro keeps a multiplier and a shift (8 bytes) per
output channel of every per-channel layer in its persistent arena.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.errors import ConversionError

WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


@dataclass(frozen=True)
class WeightedLayer:
    """A layer whose weights can be per channel or per tensor: its op, the name it goes by (its
    weight tensor's), its output channels, and how much one scale for all channels disturbs its
    weights (RMS of the per-tensor weights minus the per-channel ones, over the RMS of the
    per-channel ones; 0 where both are the same)."""

    op_index: int
    op: str
    name: str
    channels: int
    weight_error: float


def _builtin_names() -> dict[int, str]:
    from edgeq.tflite.reader import OP_NAMES

    return OP_NAMES


def _scales(tensor: Any) -> list[float]:
    q = tensor.quantization
    return [] if q is None or q.scale is None else [float(s) for s in q.scale]


def _zero_points(tensor: Any) -> list[int]:
    q = tensor.quantization
    return [] if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint]


def _ops(obj: Any) -> list[tuple[int, str, Any]]:
    names = _builtin_names()
    out = []
    for k, op in enumerate(obj.subgraphs[0].operators):
        code = obj.operatorCodes[op.opcodeIndex]
        out.append((k, names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?"), op))
    return out


def _weights(obj: Any, tensor: Any) -> np.ndarray:
    return np.frombuffer(bytes(obj.buffers[tensor.buffer].data), dtype=np.int8).reshape(tensor.shape)


def _dequantized(obj: Any, tensor: Any, axis: int) -> np.ndarray:
    w = _weights(obj, tensor).astype(np.float64)
    scales = np.asarray(_scales(tensor), dtype=np.float64)
    shape = [1] * w.ndim
    shape[axis] = -1
    return w * (scales.reshape(shape) if scales.size > 1 else scales[0])


def _read(model: bytes) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def _check_same_graph(a: Any, b: Any, source: str) -> None:
    ga, gb = a.subgraphs[0], b.subgraphs[0]
    same = (len(a.subgraphs) == len(b.subgraphs) == 1 and len(ga.tensors) == len(gb.tensors)
            and [name for _, name, _ in _ops(a)] == [name for _, name, _ in _ops(b)]
            and all(list(x.inputs) == list(y.inputs) and list(x.outputs) == list(y.outputs)
                    for x, y in zip(ga.operators, gb.operators)))
    if not same:
        raise ConversionError(f"{source}: the per-channel and per-tensor conversions have different graphs, so "
                              "their layers cannot be mixed", hint="convert with one granularity for all layers")


def _switchable(a: Any, b: Any, source: str) -> list[tuple[int, str, str, Any, Any]]:
    """(op index, op, layer name, its weights in a, in b) for each layer with per-channel int8 weights
    in `a` and one scale in `b`, after checking the two are conversions of one graph."""
    _check_same_graph(a, b, source)
    ga, gb = a.subgraphs[0], b.subgraphs[0]
    found = []
    for k, name, op in _ops(a):
        if name not in WEIGHTED_OPS or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        ta, tb = ga.tensors[op.inputs[1]], gb.tensors[op.inputs[1]]
        if ta.type != 9 or len(_scales(ta)) <= 1 or len(_scales(tb)) != 1:  # 9: INT8
            continue
        found.append((k, name, ta.name.decode() if isinstance(ta.name, bytes) else str(ta.name), ta, tb))
    return found


def weighted_layers(per_channel: bytes, per_tensor: bytes, source: str = "<model>") -> list[WeightedLayer]:
    """The layers of `per_channel` whose weight scales differ in `per_tensor` (same model, same
    calibration), in graph order."""
    a, b = _read(per_channel), _read(per_tensor)
    layers = []
    for k, name, layer, ta, tb in _switchable(a, b, source):
        axis = 3 if name == "DEPTHWISE_CONV_2D" else 0
        wa, wb = _dequantized(a, ta, axis), _dequantized(b, tb, axis)
        rms = math.sqrt(float(np.mean(wa * wa))) or 1.0
        error = math.sqrt(float(np.mean((wb - wa) ** 2))) / rms
        layers.append(WeightedLayer(k, name, layer, len(_scales(ta)), round(error, 6)))
    return layers


def mixed(per_channel: bytes, per_tensor: bytes, layers: set[str] | frozenset[str], source: str = "<model>") -> bytes:
    """`per_channel` with the weights and bias of the layers named in `layers` (WeightedLayer.name)
    taken from `per_tensor`. ConversionError if the two are not conversions of one model, or a name
    is not a layer with per-channel weights."""
    from ai_edge_litert.tools import flatbuffer_utils

    a, b = _read(per_channel), _read(per_tensor)
    known = {layer: k for k, _, layer, _, _ in _switchable(a, b, source)}
    unknown = sorted(set(layers) - set(known))
    if unknown:
        raise ConversionError(f"{source}: no layer with per-channel weights is named {', '.join(unknown[:3])}",
                              hint=f"layers: {', '.join(list(known)[:6])}" if known else
                              "this model has no layer with per-channel weights")
    if not layers:
        return per_channel
    ga, gb = a.subgraphs[0], b.subgraphs[0]
    _check_activations(a, b, source)
    users: dict[int, int] = {}
    for t in ga.tensors:
        users[t.buffer] = users.get(t.buffer, 0) + 1
    for name in sorted(layers):
        op = ga.operators[known[name]]
        for position in (1, 2):  # weights, bias
            if position >= len(op.inputs) or op.inputs[position] < 0:
                continue
            index = op.inputs[position]
            ta, tb = ga.tensors[index], gb.tensors[index]
            ta.quantization = tb.quantization
            if users[ta.buffer] > 1:  # the converter shares equal constants: give this one its own
                a.buffers.append(copy.copy(a.buffers[ta.buffer]))
                ta.buffer = len(a.buffers) - 1
            a.buffers[ta.buffer].data = b.buffers[tb.buffer].data
    return bytes(flatbuffer_utils.convert_object_to_bytearray(a))


def _check_activations(a: Any, b: Any, source: str) -> None:
    """Every tensor without constant data (the activations) is quantized alike in both conversions."""
    for ta, tb in zip(a.subgraphs[0].tensors, b.subgraphs[0].tensors):
        data = a.buffers[ta.buffer].data if ta.buffer is not None and ta.buffer < len(a.buffers) else None
        if data is None or len(data) == 0:
            if (_scales(ta), _zero_points(ta)) != (_scales(tb), _zero_points(tb)):
                raise ConversionError(f"{source}: the two conversions quantize activation "
                                      f"'{ta.name.decode() if isinstance(ta.name, bytes) else ta.name}' differently",
                                      hint="convert with one granularity for all layers")
