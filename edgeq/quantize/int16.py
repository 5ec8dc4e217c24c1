"""int16 activations for chosen layers: the rest of an int8 model stays int8.

The TFLite converter quantizes a whole model in int8 or in int16x8 (int16 activations, int8
weights, int64 bias). Both conversions of one model on one calibration set have the same ops in
the same order, with the same calibrated ranges (int16x8 only has a finer, symmetric scale), but
not the same tensor numbering. `mixed` takes the int8 model and, for each chosen layer, the
int16x8 conversion's version of that op: its weights and bias, its int16 input and output; a RESHAPE or a pool that only int16 layers feed stays int16 too. Where
an int16 tensor meets an int8 op (or the model's int8 I/O) it puts a QUANTIZE op between them,
which TFLite Micro and LiteRT run (int8 to int16 and back, a requantization). Consecutive int16
layers pass int16 to each other directly. Tensors and buffers left without a user are dropped.

Why: on a layer whose int8 output loses too much (a bottleneck, a wide-range regression output),
int16 activations buy accuracy for about twice that layer's activation RAM, without the whole
model's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

from edgeq.errors import ConversionError
from edgeq.quantize.granularity import _ops, _read

# Ops TFLite Micro runs with int16 activations and int8 weights (int16x8), from both conversions.
INT16_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
# Ops that only move or pick values: fed by int16 layers alone, they stay int16 (TFLite Micro runs
# them in int16), so a RESHAPE or a pool between two int16 layers does not round to int8.
FOLLOW_OPS = ("RESHAPE", "MAX_POOL_2D", "AVERAGE_POOL_2D")
_INT8, _INT16 = 9, 7  # schema TensorType
_QUANTIZE = 114       # schema BuiltinOperator
_QUANTIZE_VERSION = 3  # int16 in or out; TFLite Micro ignores versions


@dataclass(frozen=True)
class Int16Layer:
    """A layer that can run with int16 activations: its op, the name it goes by (its weight
    tensor's, as for weight granularity), its output tensor's name, the activation bytes its int16
    output takes over the int8 one, and the layers its output feeds (directly, or through ops that
    only move values): its output stays int16 only if they take int16 too."""

    op_index: int
    op: str
    name: str
    output: str
    extra_bytes: int
    feeds: tuple[str, ...] = ()


def _name(tensor: Any) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def _is_constant(model: Any, tensor: Any) -> bool:
    return tensor.buffer is not None and 0 < tensor.buffer < len(model.buffers) \
        and model.buffers[tensor.buffer].data is not None and len(model.buffers[tensor.buffer].data) > 0


def _pairs(a: Any, b: Any, source: str) -> dict[int, int]:
    """Each tensor of `a` (by index) and its counterpart in `b`, matched through the ops' operands;
    ConversionError when the two are not conversions of one graph."""
    ops_a, ops_b = _ops(a), _ops(b)
    if len(a.subgraphs) != 1 or len(b.subgraphs) != 1 or [n for _, n, _ in ops_a] != [n for _, n, _ in ops_b]:
        raise ConversionError(f"{source}: the int8 and int16x8 conversions have different ops, so their layers "
                              "cannot be mixed", hint="convert the whole model in one mode (--mode int16x8)")
    pairs: dict[int, int] = {}
    ga, gb = a.subgraphs[0], b.subgraphs[0]
    couples = [(list(x.inputs), list(y.inputs)) for (_, _, x), (_, _, y) in zip(ops_a, ops_b)]
    couples += [(list(x.outputs), list(y.outputs)) for (_, _, x), (_, _, y) in zip(ops_a, ops_b)]
    couples += [(list(ga.inputs), list(gb.inputs)), (list(ga.outputs), list(gb.outputs))]
    for xs, ys in couples:
        if len(xs) != len(ys):
            raise ConversionError(f"{source}: the int8 and int16x8 conversions differ in an op's operands",
                                  hint="convert the whole model in one mode (--mode int16x8)")
        for x, y in zip(xs, ys):
            if (x < 0) != (y < 0) or pairs.setdefault(x, y) != y:
                raise ConversionError(f"{source}: the int8 and int16x8 conversions wire their tensors differently",
                                      hint="convert the whole model in one mode (--mode int16x8)")
    return pairs


def int16_layers(int8: bytes, int16: bytes, source: str = "<model>") -> list[Int16Layer]:
    """The layers of `int8` that `int16` (the same model and calibration, in int16x8) has with
    int16 activations, in graph order."""
    a, b = _read(int8), _read(int16)
    return _layers(a, b, _pairs(a, b, source))


def _layers(a: Any, b: Any, pairs: dict[int, int]) -> list[Int16Layer]:
    ga, gb = a.subgraphs[0], b.subgraphs[0]
    found = []
    ops = _ops(a)
    readers: dict[int, list[int]] = {}
    for k, _, op in ops:
        for t in op.inputs:
            if t >= 0:
                readers.setdefault(int(t), []).append(k)
    for (k, name, op), (_, _, op_b) in zip(_ops(a), _ops(b)):
        if name not in INT16_OPS or len(op.inputs) < 2 or op.inputs[1] < 0 or not op.outputs:
            continue
        out_a, out_b = ga.tensors[op.outputs[0]], gb.tensors[op_b.outputs[0]]
        if out_a.type != _INT8 or out_b.type != _INT16 or ga.tensors[op.inputs[0]].type != _INT8:
            continue
        elements = 1
        for d in out_a.shape if out_a.shape is not None else ():
            elements *= max(int(d), 1)
        found.append(Int16Layer(k, name, _name(ga.tensors[op.inputs[1]]), _name(out_a).split(";")[0], elements))
    names = {layer.op_index: layer.name for layer in found}
    return [replace(layer, feeds=tuple(names[k] for k in _fed(ops, readers, int(ops[layer.op_index][2].outputs[0]))
                                       if k in names)) for layer in found]


def _fed(ops: list[tuple[int, str, Any]], readers: dict[int, list[int]], tensor: int) -> tuple[int, ...]:
    """The weighted ops that read `tensor`, directly or through ops that only move values."""
    found, todo, seen = [], [tensor], set()
    while todo:
        t = todo.pop()
        for k in readers.get(t, []):
            if k in seen:
                continue
            seen.add(k)
            if ops[k][1] in INT16_OPS:
                found.append(k)
            elif ops[k][1] in FOLLOW_OPS:
                todo.extend(int(x) for x in ops[k][2].outputs)
    return tuple(sorted(found))


def mixed(int8: bytes, int16: bytes, layers: set[str] | frozenset[str], source: str = "<model>") -> bytes:
    """`int8` with the layers named in `layers` (Int16Layer.name) taken from `int16` with their int16
    input and output, and QUANTIZE ops where int16 meets int8. ConversionError if the two are not
    conversions of one model, or a name is not such a layer."""
    from ai_edge_litert.tools import flatbuffer_utils

    a, b = _read(int8), _read(int16)
    pairs = _pairs(a, b, source)
    known = {layer.name: layer.op_index for layer in _layers(a, b, pairs)}
    unknown = sorted(set(layers) - set(known))
    if unknown:
        raise ConversionError(f"{source}: no layer that can take int16 activations is named {', '.join(unknown[:3])}",
                              hint=f"layers: {', '.join(list(known)[:6])}" if known else
                              f"only {', '.join(INT16_OPS)} layers take int16 activations here")
    if not layers:
        return int8
    _Splice(a, b, pairs, {known[name] for name in layers}).run()
    _compact(a)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(a))


class _Splice:
    """The surgery on `a` (the int8 model object), in place."""

    def __init__(self, a: Any, b: Any, pairs: dict[int, int], chosen: set[int]) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.schema, self.a, self.b, self.pairs, self.chosen = schema, a, b, pairs, chosen
        self.ga, self.gb = a.subgraphs[0], b.subgraphs[0]
        self.int8_quant = {k: t.quantization for k, t in enumerate(self.ga.tensors)}
        self.wide: set[int] = set()  # a's tensors that now hold int16 (outputs of chosen layers)
        self.copies: dict[tuple[int, bool], int] = {}  # (tensor, int16?) -> the tensor holding it so
        self.operators: list[Any] = []

    def run(self) -> None:
        ops_b = self.gb.operators
        names = [name for _, name, _ in _ops(self.a)]
        for k, op in enumerate(self.ga.operators):
            values = [t for t in op.inputs if self._flows(t) and self.ga.tensors[t].type in (_INT8, _INT16)]
            if k in self.chosen or (names[k] in FOLLOW_OPS and values and all(t in self.wide for t in values)):
                op = self._from_b(op, ops_b[k])
            elif names[k] == "SHAPE":  # reads the dimensions only: either version will do
                pass
            else:
                op.inputs = [self._as(t, wide=False) if self._flows(t) else t for t in op.inputs]
            self.operators.append(op)
        self.ga.outputs = [self._as(t, wide=False) for t in self.ga.outputs]
        self.ga.operators = self.operators
        for signature in self.a.signatureDefs or []:
            for item in signature.outputs or []:
                item.tensorIndex = self._as(item.tensorIndex, wide=False)

    def _flows(self, t: int) -> bool:
        return t >= 0 and not _is_constant(self.a, self.ga.tensors[t])

    def _from_b(self, op: Any, op_b: Any) -> Any:
        """The chosen layer as the int16x8 conversion has it, wired to a's tensors."""
        new = copy.copy(op_b)
        new.opcodeIndex = self._opcode(self.b.operatorCodes[op_b.opcodeIndex])
        inputs = []
        for t, t_b in zip(op.inputs, op_b.inputs):
            if t < 0:
                inputs.append(t)
            elif self._flows(t) and self.ga.tensors[t].type not in (_INT8, _INT16):
                inputs.append(t)  # a computed shape or index (int32): the same in both
            elif self._flows(t):
                inputs.append(self._as(t, wide=True))
            else:
                inputs.append(self._constant_from_b(t_b))
        new.inputs = inputs
        for t in op.outputs:
            tensor = self.ga.tensors[t]
            if tensor.type != _INT8:
                continue
            tensor.type, tensor.quantization = _INT16, copy.deepcopy(self.gb.tensors[self.pairs[t]].quantization)
            self.wide.add(t)
        new.outputs = list(op.outputs)
        return new

    def _as(self, t: int, *, wide: bool) -> int:
        """Tensor `t` in int16 (`wide`) or int8: itself, or a copy made by a QUANTIZE op put here."""
        if t < 0 or (t in self.wide) == wide:
            return t
        if (t, wide) not in self.copies:
            tensor = copy.deepcopy(self.ga.tensors[t])
            if wide:
                tensor.type, tensor.quantization = _INT16, copy.deepcopy(self.gb.tensors[self.pairs[t]].quantization)
            else:
                tensor.type, tensor.quantization = _INT8, copy.deepcopy(self.int8_quant[t])
            tensor.name = (_name(tensor).split(";")[0] + ("/int16" if wide else "/int8")).encode()
            tensor.buffer = 0
            self.ga.tensors.append(tensor)
            index = len(self.ga.tensors) - 1
            quantize = self.schema.OperatorT()
            quantize.opcodeIndex = self._opcode(None)
            quantize.inputs, quantize.outputs = [t], [index]
            quantize.builtinOptionsType = self.schema.BuiltinOptions.QuantizeOptions
            quantize.builtinOptions = self.schema.QuantizeOptionsT()
            self.operators.append(quantize)
            self.copies[(t, wide)] = index
        return self.copies[(t, wide)]

    def _constant_from_b(self, t_b: int) -> int:
        tensor = copy.deepcopy(self.gb.tensors[t_b])
        buffer = self.schema.BufferT()
        buffer.data = copy.copy(self.b.buffers[tensor.buffer].data)
        self.a.buffers.append(buffer)
        tensor.buffer = len(self.a.buffers) - 1
        self.ga.tensors.append(tensor)
        return len(self.ga.tensors) - 1

    def _opcode(self, code: Any) -> int:
        """The index of `code` (None: QUANTIZE for int16) in a's op codes, added if missing."""
        builtin = _QUANTIZE if code is None else max(code.builtinCode, code.deprecatedBuiltinCode)
        version = _QUANTIZE_VERSION if code is None else code.version
        for k, have in enumerate(self.a.operatorCodes):
            if max(have.builtinCode, have.deprecatedBuiltinCode) == builtin and have.version == version:
                return k
        new = self.schema.OperatorCodeT()
        new.builtinCode, new.deprecatedBuiltinCode, new.version = builtin, min(builtin, 127), version
        self.a.operatorCodes.append(new)
        return len(self.a.operatorCodes) - 1


def _compact(model: Any) -> None:
    """Drop the tensors no op, graph input or output uses, and the buffers no tensor (or metadata)
    uses; renumber what stays."""
    graph = model.subgraphs[0]
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators:
        used |= {t for t in list(op.inputs) + list(op.outputs) + list(op.intermediates or []) if t >= 0}
    keep = sorted(used)
    index = {old: new for new, old in enumerate(keep)}
    graph.tensors = [graph.tensors[k] for k in keep]
    for op in graph.operators:
        op.inputs = [index[t] if t >= 0 else t for t in op.inputs]
        op.outputs = [index[t] for t in op.outputs]
        if op.intermediates is not None and len(op.intermediates):
            op.intermediates = [index[t] for t in op.intermediates]
    graph.inputs = [index[t] for t in graph.inputs]
    graph.outputs = [index[t] for t in graph.outputs]
    for signature in model.signatureDefs or []:
        for item in list(signature.inputs or []) + list(signature.outputs or []):
            item.tensorIndex = index[item.tensorIndex]
    buffers = {0} | {t.buffer for t in graph.tensors} | {m.buffer for m in model.metadata or []}
    order = sorted(buffers)
    renumber = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[k] for k in order]
    for t in graph.tensors:
        t.buffer = renumber[t.buffer]
    for m in model.metadata or []:
        m.buffer = renumber[m.buffer]
