"""A checked .tflite as a list of C kernel steps with every constant worked out.

What TFLite Micro's Prepare() computes on the device (per-channel multipliers and shifts, input and
output offsets, activation clamps, padding) is computed here once, so the C has only integer
loops over constants. The first kernels: FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D,
MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, RESHAPE, SOFTMAX, ADD and MUL (broadcasting), RELU, RELU6,
PAD(V2), TRANSPOSE, CONCATENATION, PACK, SPLIT(_V), UNPACK, LOGISTIC, TANH, HARD_SWISH, QUANTIZE (from float32 or
int8) and DEQUANTIZE (to float32); int8 inside, int8 or float32 at the edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq.aot.qmath import activation_range, effective_scale, quantize_multiplier
from edgeq.aot.schedule import scheduled
from edgeq.errors import TargetCheckError
from edgeq.tflite.arena_plan import ArenaPlan, plan_arena
from edgeq.tflite.reader import ModelInfo, TensorInfo

KERNELS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX",
           "ADD", "MUL", "RELU", "RELU6", "PAD", "PADV2", "CONCATENATION", "MEAN", "QUANTIZE", "DEQUANTIZE",
           "LOGISTIC", "TANH", "HARD_SWISH", "SPLIT", "SPLIT_V", "UNPACK", "PACK", "TRANSPOSE")
_NO_PLAN = ArenaPlan(offsets=(), peak=1 << 62, lower_bound=0, order="")
_HINT = "convert for a TFLite Micro target (runtime tflm) and use the model data and op resolver instead"


@dataclass(frozen=True)
class Step:
    """One op as the C will run it: `kernel` names the template macro, `values` its numbers."""

    index: int
    op: str
    kernel: str
    input: int       # tensor index of the (first) activation read
    output: int      # tensor index written
    values: dict[str, Any] = field(default_factory=dict)
    more_inputs: tuple[int, ...] = ()  # further activations read (ADD, MUL, CONCATENATION, PACK)
    more_outputs: tuple[int, ...] = ()  # further tensors written (SPLIT, UNPACK)

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input, *self.more_inputs)

    @property
    def outputs(self) -> tuple[int, ...]:
        return (self.output, *self.more_outputs)


@dataclass(frozen=True)
class Program:
    """The whole model: its steps, the constant arrays, the arena and where each activation sits."""

    steps: tuple[Step, ...]
    constants: dict[str, tuple[str, np.ndarray]]  # C name -> (C type, values)
    offsets: dict[int, int]                         # tensor index -> byte offset in the arena
    arena_bytes: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    sizes: dict[int, int]                           # tensor index -> bytes


def lower(model: bytes, info: ModelInfo) -> Program:
    """`model` (already accepted by the checked reader as `info`) as C steps; TargetCheckError
    naming the first op, dtype or option the C backend lacks."""
    from ai_edge_litert.tools import flatbuffer_utils

    if info.subgraph_count != 1:
        raise TargetCheckError(f"{info.source} has {info.subgraph_count} subgraphs; the c runtime runs one",
                               hint=_HINT)
    for t in (*info.input_tensors, *info.output_tensors):
        if t.dtype not in ("int8", "float32"):
            raise TargetCheckError(f"{info.source}: tensor '{t.name}' is {t.dtype}; the c runtime takes int8 I/O "
                                   "(or float32 that the model quantizes and dequantizes)", hint=_HINT)
    for op in info.ops:
        if op.name not in KERNELS:
            raise TargetCheckError(f"{info.source}: the c runtime has no kernel for {op.name} (op #{op.index}); it "
                                   f"has {', '.join(KERNELS)}", hint=_HINT)
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    graph = obj.subgraphs[0]
    constants: dict[str, tuple[str, np.ndarray]] = {}
    # The ops in the order that keeps the fewest bytes alive (branchy graphs), if its plan is smaller.
    order = min((info, scheduled(info)), key=lambda i: (plan_arena(i) or _NO_PLAN).peak)
    steps = []
    for op in order.ops:
        options = graph.operators[op.index].builtinOptions
        steps.append(_LOWER[op.name](op, info, obj, graph, options, constants))
    plan = plan_arena(order)
    if plan is None:
        raise TargetCheckError(f"{info.source}: no activation plan for this model", hint=_HINT)
    planned = {i: o for i, o in enumerate(plan.offsets) if o >= 0}
    sizes = {i: _bytes(info.tensors[i]) for i in planned}
    return Program(tuple(steps), constants, planned, max(plan.peak, 1), tuple(info.inputs), tuple(info.outputs),
                   sizes)


def _bytes(t: TensorInfo) -> int:
    return math.prod(t.shape) * (4 if t.dtype in ("int32", "float32") else 1)


def _weights(obj: Any, graph: Any, index: int, dtype: str) -> np.ndarray:
    tensor = graph.tensors[index]
    data = obj.buffers[tensor.buffer].data
    return np.frombuffer(bytes(data), dtype=dtype).reshape(tensor.shape)


def _act(info: ModelInfo, index: int, what: str, op_name: str) -> TensorInfo:
    t = info.tensors[index]
    if t.dtype != "int8" or len(t.scales) != 1:
        raise TargetCheckError(f"{info.source}: {op_name}'s {what} '{t.name}' is {t.dtype}"
                               f"{' per-channel' if len(t.scales) > 1 else ''}; the c runtime has per-tensor int8",
                               hint=_HINT)
    return t


def _requant(info: ModelInfo, name: str, inp: TensorInfo, weights: TensorInfo, out: TensorInfo, channels: int,
             constants: dict[str, tuple[str, np.ndarray]]) -> None:
    scales = weights.scales if len(weights.scales) > 1 else weights.scales * channels
    pairs = [quantize_multiplier(effective_scale(inp.scales[0], s, out.scales[0])) for s in scales]
    constants[f"{name}_mult"] = ("int32_t", np.asarray([q for q, _ in pairs], dtype=np.int64))
    constants[f"{name}_shift"] = ("int8_t", np.asarray([s for _, s in pairs], dtype=np.int64))  # in [-31, 30]


def _common(op: Any, info: ModelInfo, activation: int) -> tuple[TensorInfo, TensorInfo, dict[str, Any]]:
    inp = _act(info, op.inputs[0], "input", op.name)
    out = _act(info, op.outputs[0], "output", op.name)
    lo, hi = activation_range(activation, out.scales[0], out.zero_points[0])
    return inp, out, {"input_offset": -inp.zero_points[0], "output_offset": out.zero_points[0],
                      "act_min": lo, "act_max": hi}


def _fully_connected(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
                     constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    inp, out, values = _common(op, info, options.fusedActivationFunction)
    name = f"op{op.index}"
    units, depth = info.tensors[op.inputs[1]].shape
    has_bias = _weights_and_bias(op, info, obj, graph, name, inp, out, units, constants)
    batches = math.prod(inp.shape) // depth
    return Step(op.index, op.name, "fully_connected", op.inputs[0], op.outputs[0],
                {**values, "name": name, "batches": batches, "units": units, "depth": depth, "bias": has_bias})


def _weights_and_bias(op: Any, info: ModelInfo, obj: Any, graph: Any, name: str, inp: TensorInfo, out: TensorInfo,
                      channels: int, constants: dict[str, tuple[str, np.ndarray]]) -> bool:
    """The op's symmetric int8 weights, its int32 bias (whether it has one) and its per-channel
    requantization, as constant arrays `<name>_w`, `<name>_b`, `<name>_mult`, `<name>_shift`."""
    weights = info.tensors[op.inputs[1]]
    if weights.dtype != "int8" or any(z != 0 for z in weights.zero_points):
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has {weights.dtype} weights with a zero point; "
                               "the c runtime has symmetric int8", hint=_HINT)
    constants[f"{name}_w"] = ("int8_t", _weights(obj, graph, op.inputs[1], "int8").reshape(-1))
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    if has_bias:
        constants[f"{name}_b"] = ("int32_t", _weights(obj, graph, op.inputs[2], "<i4").reshape(-1))
    _requant(info, name, inp, weights, out, channels, constants)
    return has_bias


def _single_batch(op: Any, info: ModelInfo, inp: TensorInfo) -> None:
    if len(inp.shape) != 4 or inp.shape[0] != 1:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} takes {list(inp.shape)}; the c runtime's "
                               "2-D kernels take one NHWC sample (batch 1)", hint=_HINT)


def _padding(padding: int, stride: int, dilation: int, size: int, filter_size: int, out_size: int) -> int:
    effective = (filter_size - 1) * dilation + 1
    total = (out_size - 1) * stride + effective - size
    return max(total, 0) // 2 if padding == 0 else 0  # 0: SAME, 1: VALID


def _conv(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
          constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    depthwise = op.name == "DEPTHWISE_CONV_2D"
    inp, out, values = _common(op, info, options.fusedActivationFunction)
    _single_batch(op, info, inp)
    _, in_h, in_w, in_c = inp.shape
    _, out_h, out_w, out_c = out.shape
    _, k_h, k_w, k_c = info.tensors[op.inputs[1]].shape
    if not depthwise and k_c != in_c:
        raise TargetCheckError(f"{info.source}: CONV_2D #{op.index} is a grouped convolution ({in_c} input "
                               f"channels, filters of {k_c}); the c runtime has ungrouped ones", hint=_HINT)
    name = f"op{op.index}"
    has_bias = _weights_and_bias(op, info, obj, graph, name, inp, out, out_c, constants)
    dil_h, dil_w = options.dilationHFactor, options.dilationWFactor
    values.update(name=name, bias=has_bias, in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c,
                  k_h=k_h, k_w=k_w, stride_h=options.strideH, stride_w=options.strideW, dil_h=dil_h, dil_w=dil_w,
                  pad_h=_padding(options.padding, options.strideH, dil_h, in_h, k_h, out_h),
                  pad_w=_padding(options.padding, options.strideW, dil_w, in_w, k_w, out_w),
                  multiplier=out_c // in_c if depthwise else 1)
    return Step(op.index, op.name, "depthwise_conv_2d" if depthwise else "conv_2d", op.inputs[0], op.outputs[0],
                values)


def _pool(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
          constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    inp, out, values = _common(op, info, options.fusedActivationFunction)
    if inp.scales[0] != out.scales[0] or inp.zero_points[0] != out.zero_points[0]:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} rescales its input; TFLM's pooling does not",
                               hint=_HINT)
    _single_batch(op, info, inp)
    _, in_h, in_w, channels = inp.shape
    _, out_h, out_w, _ = out.shape
    values.update(in_h=in_h, in_w=in_w, channels=channels, out_h=out_h, out_w=out_w, k_h=options.filterHeight,
                  k_w=options.filterWidth, stride_h=options.strideH, stride_w=options.strideW,
                  pad_h=_padding(options.padding, options.strideH, 1, in_h, options.filterHeight, out_h),
                  pad_w=_padding(options.padding, options.strideW, 1, in_w, options.filterWidth, out_w))
    kernel = "max_pool_2d" if op.name == "MAX_POOL_2D" else "average_pool_2d"
    return Step(op.index, op.name, kernel, op.inputs[0], op.outputs[0], values)


def _reshape(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
             constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    inp, out = info.tensors[op.inputs[0]], info.tensors[op.outputs[0]]
    if _bytes(inp) != _bytes(out):
        raise TargetCheckError(f"{info.source}: RESHAPE #{op.index} changes the size", hint=_HINT)
    return Step(op.index, op.name, "reshape", op.inputs[0], op.outputs[0], {"bytes": _bytes(out)})


def _softmax(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
             constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """TFLM's int8 softmax: input differences scaled into Q5.26 by beta * input scale, exp and
    the reciprocal of their sum in fixed point, output scale 1/256 with zero point -128."""
    inp = _act(info, op.inputs[0], "input", op.name)
    out = _act(info, op.outputs[0], "output", op.name)
    if (out.scales[0], out.zero_points[0]) != (1 / 256, -128):
        raise TargetCheckError(f"{info.source}: SOFTMAX #{op.index} outputs scale {out.scales[0]}, zero point "
                               f"{out.zero_points[0]}; TFLM's int8 softmax needs 1/256 and -128", hint=_HINT)
    integer_bits = 5
    real = min(float(np.float32(options.beta)) * float(np.float32(inp.scales[0])) * (1 << (31 - integer_bits)),
               (1 << 31) - 1.0)
    multiplier, left_shift = quantize_multiplier(real)
    if real <= 1.0 or left_shift < 0:
        raise TargetCheckError(f"{info.source}: SOFTMAX #{op.index} has an input scale too small for TFLM's "
                               "fixed-point softmax", hint=_HINT)
    radius = math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift))
    depth = inp.shape[-1]
    return Step(op.index, op.name, "softmax", op.inputs[0], op.outputs[0],
                {"rows": math.prod(inp.shape) // depth, "depth": depth, "multiplier": multiplier,
                 "left_shift": left_shift, "diff_min": -radius})


def _operand(op: Any, k: int, info: ModelInfo, obj: Any, graph: Any, name: str, out_shape: tuple[int, ...],
             constants: dict[str, tuple[str, np.ndarray]], activations: list[int]) -> dict[str, Any]:
    """Operand k of an element-wise op: its C pointer (the arena, or a const array), its offset, and
    its element index in the output's loops: `i` for the output's shape, `0` for a single value, or
    a sum over the loop counters d0..d3 with stride 0 where it broadcasts (NumPy's rules)."""
    t = _act(info, op.inputs[k], f"input {k}", op.name) if not info.tensors[op.inputs[k]].is_constant \
        else info.tensors[op.inputs[k]]
    if t.dtype != "int8" or len(t.scales) != 1:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} input {k} is {t.dtype}; the c runtime has "
                               "per-tensor int8", hint=_HINT)
    if t.is_constant:
        constants[f"{name}_c{k}"] = ("int8_t", _weights(obj, graph, op.inputs[k], "int8").reshape(-1))
        pointer = f"{name}_c{k}"
    else:
        pointer = "in" if not activations else f"in{len(activations)}"
        activations.append(op.inputs[k])
    count, size = math.prod(t.shape), math.prod(out_shape)
    if count == size:
        index = "i"
    elif count == 1:
        index = "0"
    else:
        index = _broadcast_index(op, info, tuple(t.shape), out_shape)
    return {"pointer": pointer, "index": index, "offset": -t.zero_points[0], "scale": t.scales[0]}


def _broadcast_index(op: Any, info: ModelInfo, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str:
    if len(shape) > len(out_shape) or len(out_shape) > 4:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} broadcasts {list(shape)} to "
                               f"{list(out_shape)}; the c runtime broadcasts up to rank 4", hint=_HINT)
    dims = (1,) * (4 - len(shape)) + shape
    full = (1,) * (4 - len(out_shape)) + out_shape
    terms, stride = [], 1
    for axis in range(3, -1, -1):
        if dims[axis] not in (1, full[axis]):
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index} cannot broadcast {list(shape)} to "
                                   f"{list(out_shape)}", hint=_HINT)
        if dims[axis] == full[axis] and full[axis] > 1:
            terms.append(f"d{axis}" if stride == 1 else f"d{axis} * {stride}")
        stride *= dims[axis]
    return " + ".join(reversed(terms)) or "0"


def _elementwise(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
                 constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """ADD and MUL of two int8 tensors, each of the output's shape, a single value, or broadcast to
    it, as TFLM's reference kernels compute them: ADD rescales both to a common scale with 20 bits of
    headroom."""
    out = _act(info, op.outputs[0], "output", op.name)
    size, name = math.prod(out.shape), f"op{op.index}"
    activations: list[int] = []
    a, b = (_operand(op, k, info, obj, graph, name, tuple(out.shape), constants, activations) for k in (0, 1))
    if not activations:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has only constant inputs", hint=_HINT)
    lo, hi = activation_range(options.fusedActivationFunction if options else 0, out.scales[0], out.zero_points[0])
    broadcast = any(x["index"] not in ("i", "0") for x in (a, b))
    values: dict[str, Any] = {"size": size, "a": a["pointer"], "a_index": a["index"], "a_offset": a["offset"],
                              "b": b["pointer"], "b_index": b["index"], "b_offset": b["offset"],
                              "output_offset": out.zero_points[0], "act_min": lo, "act_max": hi,
                              "loops": list((1,) * (4 - len(out.shape)) + tuple(out.shape)) if broadcast else None}
    if op.name == "ADD":
        twice = 2 * max(float(np.float32(a["scale"])), float(np.float32(b["scale"])))
        (values["a_mult"], values["a_shift"]), (values["b_mult"], values["b_shift"]) = (
            quantize_multiplier(float(np.float32(x["scale"])) / twice) for x in (a, b))
        values["mult"], values["shift"] = quantize_multiplier(twice / ((1 << 20) * float(np.float32(out.scales[0]))))
    else:
        values["mult"], values["shift"] = quantize_multiplier(effective_scale(a["scale"], b["scale"], out.scales[0]))
    return Step(op.index, op.name, op.name.lower(), activations[0], op.outputs[0], values, tuple(activations[1:]))


def _requantize_step(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
                     constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """RELU: a rescale from the input's scale to the output's, then the activation's clamp. RELU6:
    TFLM clamps in the input's codes and does not rescale."""
    inp = _act(info, op.inputs[0], "input", op.name)
    out = _act(info, op.outputs[0], "output", op.name)
    mult, shift = quantize_multiplier(float(np.float32(inp.scales[0])) / float(np.float32(out.scales[0])))
    lo, hi = activation_range({"RELU": 1, "RELU6": 3}.get(op.name, 0), out.scales[0], out.zero_points[0])
    if op.name == "RELU6":  # TFLM clamps RELU6 in the input's codes, without rescaling
        lo, hi = activation_range(3, inp.scales[0], inp.zero_points[0])
        mult, shift = 1 << 30, 1  # exactly 1.0
        out_zero = inp.zero_points[0]
        return Step(op.index, op.name, "requantize", op.inputs[0], op.outputs[0],
                    {"size": math.prod(out.shape), "input_zero_point": inp.zero_points[0], "mult": mult,
                     "shift": shift, "output_offset": out_zero, "act_min": lo, "act_max": hi})
    return Step(op.index, op.name, "requantize", op.inputs[0], op.outputs[0],
                {"size": math.prod(out.shape), "input_zero_point": inp.zero_points[0], "mult": mult, "shift": shift,
                 "output_offset": out.zero_points[0], "act_min": lo, "act_max": hi})


def _shape_constant(op: Any, info: ModelInfo, obj: Any, graph: Any, inp: TensorInfo, what: str) -> np.ndarray:
    """The op's second input, a constant int32/int64 array (PAD's paddings, TRANSPOSE's
    permutation), for an input of rank 4 or less: what the C kernels unroll into loops."""
    tensor = info.tensors[op.inputs[1]]
    if not tensor.is_constant or len(inp.shape) > 4:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has a computed {what} or rank above 4",
                               hint=_HINT)
    return _weights(obj, graph, op.inputs[1], "<i4" if tensor.dtype == "int32" else "<i8")


def _pad(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
         constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    inp = _act(info, op.inputs[0], "input", op.name)
    out = _act(info, op.outputs[0], "output", op.name)
    pads = _shape_constant(op, info, obj, graph, inp, "paddings").reshape(-1, 2)
    value = out.zero_points[0]
    if op.name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
        value = int(_weights(obj, graph, op.inputs[2], "int8").reshape(-1)[0])
    lead = 4 - len(inp.shape)
    return Step(op.index, op.name, "pad", op.inputs[0], op.outputs[0],
                {"inp": [1] * lead + list(inp.shape), "out": [1] * lead + list(out.shape),
                 "before": [0] * lead + [int(p) for p in pads[:, 0]], "value": value})


def _transpose(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
               constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """TRANSPOSE (what PyTorch and ONNX models keep before a flatten): the output walked in order,
    each element read from the input at its permuted position; bytes move, values do not."""
    inp = _act(info, op.inputs[0], "input", op.name)
    out = _act(info, op.outputs[0], "output", op.name)
    if (inp.scales, inp.zero_points) != (out.scales, out.zero_points):
        raise TargetCheckError(f"{info.source}: TRANSPOSE #{op.index} rescales its input", hint=_HINT)
    perm = [int(p) for p in _shape_constant(op, info, obj, graph, inp, "permutation").reshape(-1)]
    lead = 4 - len(inp.shape)
    shape = [1] * lead + list(inp.shape)
    perm = list(range(lead)) + [p % len(inp.shape) + lead for p in perm]
    strides = [math.prod(shape[k + 1:]) for k in range(4)]
    return Step(op.index, op.name, "transpose", op.inputs[0], op.outputs[0],
                {"out": [shape[p] for p in perm], "strides": [strides[p] for p in perm]})


def _concatenation(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
                   constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    out = _act(info, op.outputs[0], "output", op.name)
    axis = options.axis % len(out.shape)
    parts, at, activations = [], 0, []
    for k, index in enumerate(op.inputs):
        t = info.tensors[index]
        if t.is_constant or t.dtype != "int8" or (t.scales, t.zero_points) != (out.scales, out.zero_points):
            raise TargetCheckError(f"{info.source}: CONCATENATION #{op.index} input {k} is constant or quantized "
                                   "unlike its output; the c runtime joins int8 tensors of one scale", hint=_HINT)
        row = math.prod(t.shape[axis:])
        parts.append({"pointer": "in" if k == 0 else f"in{k}", "at": at, "bytes": row})
        activations.append(index)
        at += row
    if options.fusedActivationFunction:
        raise TargetCheckError(f"{info.source}: CONCATENATION #{op.index} has a fused activation", hint=_HINT)
    return Step(op.index, op.name, "concatenation", activations[0], op.outputs[0],
                {"outer": math.prod(out.shape[:axis]), "row": at, "parts": parts}, tuple(activations[1:]))


def _mean(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
          constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """MEAN over a run of adjacent axes (global average pooling: [1, 2] of NHWC, or [2, 3] of the
    NCHW tensors PyTorch and ONNX models keep): TFLM sums in int32 and rescales the sum, the element
    count folded into the multiplier (bit-exact with TFLM either way: test_aot_properties)."""
    inp = _act(info, op.inputs[0], "input", op.name)
    out = _act(info, op.outputs[0], "output", op.name)
    axes_tensor = info.tensors[op.inputs[1]]
    if not axes_tensor.is_constant:
        raise TargetCheckError(f"{info.source}: MEAN #{op.index} has computed axes", hint=_HINT)
    rank = len(inp.shape)
    axes = sorted({int(a) % rank for a in _weights(obj, graph, op.inputs[1], "<i4").reshape(-1)})
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise TargetCheckError(f"{info.source}: MEAN #{op.index} reduces axes {axes} of a rank-{rank} tensor; the "
                               "c runtime reduces a run of adjacent axes", hint=_HINT)
    outer = math.prod(inp.shape[:axes[0]])
    reduce = math.prod(inp.shape[axes[0]:axes[-1] + 1])
    inner = math.prod(inp.shape[axes[-1] + 1:])
    values: dict[str, Any] = {"outer": outer, "reduce": reduce, "inner": inner,
                              "input_zero_point": inp.zero_points[0], "output_offset": out.zero_points[0]}
    mult, shift = quantize_multiplier(float(np.float32(inp.scales[0])) / float(np.float32(out.scales[0])))
    fold = min(reduce.bit_length() - 1, 32, 31 + shift)
    values["mult"] = int((mult << fold) // reduce) if fold >= 0 else int((mult >> -fold) // reduce)
    values["shift"] = shift - fold
    return Step(op.index, op.name, "mean", op.inputs[0], op.outputs[0], values)


def _f32(x: float) -> float:
    return float(np.float32(x))


def _c_float(x: float) -> str:
    """A float32 as an exact C99 literal (hexadecimal, so no decimal rounding can creep in)."""
    return float.hex(_f32(x)) + "f"


def _quantize(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
              constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """QUANTIZE from float32 (round(x / scale) + zero point, in float as TFLM does), or from int8 to
    another int8 scale (a requantization)."""
    out = _act(info, op.outputs[0], "output", op.name)
    inp, size = info.tensors[op.inputs[0]], math.prod(out.shape)
    if inp.dtype == "float32":
        return Step(op.index, op.name, "quantize_float", op.inputs[0], op.outputs[0],
                    {"size": size, "scale": _c_float(out.scales[0]), "zero_point": out.zero_points[0]})
    inp = _act(info, op.inputs[0], "input", op.name)
    mult, shift = quantize_multiplier(_f32(inp.scales[0]) / _f32(out.scales[0]))
    return Step(op.index, op.name, "requantize", op.inputs[0], op.outputs[0],
                {"size": size, "input_zero_point": inp.zero_points[0], "mult": mult, "shift": shift,
                 "output_offset": out.zero_points[0], "act_min": -128, "act_max": 127})


def _dequantize(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
                constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """DEQUANTIZE int8 to float32: (q - zero point) * scale, one float rounding (TFLM multiplies in
    double, but the exact product of a float and a 9-bit integer rounds to the same float)."""
    inp = _act(info, op.inputs[0], "input", op.name)
    if info.tensors[op.outputs[0]].dtype != "float32":
        raise TargetCheckError(f"{info.source}: DEQUANTIZE #{op.index} writes {info.tensors[op.outputs[0]].dtype}; "
                               "the c runtime dequantizes int8 to float32", hint=_HINT)
    return Step(op.index, op.name, "dequantize", op.inputs[0], op.outputs[0],
                {"size": math.prod(inp.shape), "scale": _c_float(inp.scales[0]), "zero_point": inp.zero_points[0]})


def _sigmoid_like(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
                  constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """LOGISTIC and TANH as TFLM's int8 kernels: the input rescaled into Q4.27 (inputs beyond a
    radius saturate), gemmlowp's fixed-point logistic or tanh, the result to 1/256 (zero point
    -128) or 1/128 (zero point 0)."""
    inp = _act(info, op.inputs[0], "input", op.name)
    out = _act(info, op.outputs[0], "output", op.name)
    expected = (1 / 256, -128) if op.name == "LOGISTIC" else (1 / 128, 0)
    if (_f32(out.scales[0]), out.zero_points[0]) != expected:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} outputs scale {out.scales[0]}, zero point "
                               f"{out.zero_points[0]}; TFLM's int8 {op.name} writes {expected[0]} and {expected[1]}",
                               hint=_HINT)
    mantissa, left_shift = math.frexp(_f32(inp.scales[0]) * (1 << 27))
    mult = int(math.floor(mantissa * (1 << 31) + 0.5))
    if left_shift < 0 or mult >= 1 << 31:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has an input scale ({inp.scales[0]}) outside "
                               "what TFLM's fixed-point kernel handles", hint=_HINT)
    radius = math.floor(15 * (1 << 27) / (1 << left_shift))
    return Step(op.index, op.name, op.name.lower(), op.inputs[0], op.outputs[0],
                {"size": math.prod(inp.shape), "input_zero_point": inp.zero_points[0], "mult": mult,
                 "shift": left_shift, "radius": radius})


def _int16_multiplier(real: float) -> tuple[int, int]:
    """TFLM's QuantizeMultiplier then DownScaleInt32ToInt16Multiplier: (q16, shift)."""
    q, shift = quantize_multiplier(real)
    return (32767 if q >= (1 << 31) - 1 - (1 << 15) else (q + (1 << 15)) >> 16), shift


def _hard_swish(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
                constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """HARD_SWISH as TFLM's int8 kernel: int16 fixed point, its multipliers formed in float32."""
    inp = _act(info, op.inputs[0], "input", op.name)
    out = _act(info, op.outputs[0], "output", op.name)
    hires = np.float32(1 / 128) * np.float32(inp.scales[0])
    out_mult, out_shift = _int16_multiplier(float(hires / np.float32(out.scales[0])))
    relu_mult, relu_shift = _int16_multiplier(float(hires / (np.float32(3) / np.float32(32768))))
    if out_shift > 0:
        raise TargetCheckError(f"{info.source}: HARD_SWISH #{op.index} scales its output up; TFLM refuses that too",
                               hint=_HINT)
    return Step(op.index, op.name, "hard_swish", op.inputs[0], op.outputs[0],
                {"size": math.prod(inp.shape), "input_zero_point": inp.zero_points[0],
                 "output_zero_point": out.zero_points[0], "out_mult": out_mult, "out_shift": out_shift,
                 "relu_mult": relu_mult, "relu_shift": relu_shift})


def _split(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
           constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """SPLIT, SPLIT_V and UNPACK: each output a slice along one axis, copied row by row."""
    data = op.inputs[1] if op.name == "SPLIT" else op.inputs[0]
    inp = info.tensors[data]
    if op.name == "UNPACK":
        axis = options.axis
    else:
        axis_tensor = op.inputs[0] if op.name == "SPLIT" else op.inputs[2]
        if not info.tensors[axis_tensor].is_constant:
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has a computed axis", hint=_HINT)
        axis = int(_weights(obj, graph, axis_tensor, "<i4").reshape(-1)[0])
    axis %= len(inp.shape)
    width = (4 if inp.dtype in ("int32", "float32") else 1) * math.prod(inp.shape[axis + 1:])
    parts, at = [], 0
    for k, index in enumerate(op.outputs):
        t = info.tensors[index]
        if (t.dtype, t.scales, t.zero_points) != (inp.dtype, inp.scales, inp.zero_points):
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index} output {k} is quantized unlike its input",
                                   hint=_HINT)
        rows = t.shape[axis] if op.name != "UNPACK" else 1
        parts.append({"pointer": "out" if k == 0 else f"out{k}", "at": at, "bytes": rows * width})
        at += rows * width
    if at != inp.shape[axis] * width:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index}'s outputs do not tile its input", hint=_HINT)
    return Step(op.index, op.name, "split", data, op.outputs[0],
                {"outer": math.prod(inp.shape[:axis]), "row": at, "parts": parts}, (), tuple(op.outputs[1:]))


def _pack(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any,
          constants: dict[str, tuple[str, np.ndarray]]) -> Step:
    """PACK: the inputs stacked along a new axis, a concatenation of rows."""
    out = info.tensors[op.outputs[0]]
    axis = options.axis % len(out.shape)
    parts, at, activations = [], 0, []
    for k, index in enumerate(op.inputs):
        t = info.tensors[index]
        if t.is_constant or (t.dtype, t.scales, t.zero_points) != (out.dtype, out.scales, out.zero_points):
            raise TargetCheckError(f"{info.source}: PACK #{op.index} input {k} is constant or quantized unlike its "
                                   "output", hint=_HINT)
        row = _bytes(t) // max(math.prod(t.shape[:axis]), 1)
        parts.append({"pointer": "in" if k == 0 else f"in{k}", "at": at, "bytes": row})
        activations.append(index)
        at += row
    return Step(op.index, op.name, "concatenation", activations[0], op.outputs[0],
                {"outer": math.prod(out.shape[:axis]), "row": at, "parts": parts}, tuple(activations[1:]))


_LOWER = {"QUANTIZE": _quantize, "DEQUANTIZE": _dequantize, "LOGISTIC": _sigmoid_like, "TANH": _sigmoid_like,
          "HARD_SWISH": _hard_swish, "SPLIT": _split, "SPLIT_V": _split, "UNPACK": _split, "PACK": _pack,
          "MEAN": _mean, "ADD": _elementwise, "MUL": _elementwise, "RELU": _requantize_step, "RELU6": _requantize_step,
          "PAD": _pad, "PADV2": _pad, "TRANSPOSE": _transpose, "CONCATENATION": _concatenation,
          "SOFTMAX": _softmax, "FULLY_CONNECTED": _fully_connected, "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv,
          "MAX_POOL_2D": _pool, "AVERAGE_POOL_2D": _pool, "RESHAPE": _reshape}
