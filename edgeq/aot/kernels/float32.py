"""The float32 kernels, for models (or parts of models) that are not quantized, on cores with an FPU
(or with a soft-float library: IEEE single precision either way).

Each kernel does the float operations of TFLM's float reference kernel in the same order (the
sums of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED over the filter's rows, columns and input
channels starting from 0.0f, the bias added last; AVERAGE_POOL_2D and MEAN dividing the sum by the
count; SOFTMAX subtracting the row's maximum and dividing each exponential by their sum), and clamps
as TFLM's ActivationFunctionWithMinMax does, so that the results are the same bits as TFLM's: with
no fused activation TFLM still clamps to +-FLT_MAX, which turns an infinity into FLT_MAX. LOGISTIC,
TANH and SOFTMAX call expf and tanhf from the platform's libm, as TFLM does; the bits then depend on
that libm (glibc on a host, newlib on most Arm toolchains). The C keeps float contraction off
(edgeq/templates/aot_runtime_float.j2), so no multiply-add is fused into one rounding.

The data-movement ops RESHAPE, PACK, SPLIT, SPLIT_V and UNPACK copy bytes of any element type and
run through their quantized lowerings (kernels/shape.py); PAD, PADV2, TRANSPOSE and CONCATENATION,
whose quantized lowerings take int8 only, have float ones here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import HINT, Constants, Step, broadcast_index, lowers, padding, weights
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo, TensorInfo

FLT_MAX = float(np.finfo(np.float32).max)

_CLAMPS = {0: (-FLT_MAX, FLT_MAX), 1: (0.0, FLT_MAX), 2: (-1.0, 1.0), 3: (0.0, 6.0)}
"""A fused activation's clamp as TFLM's CalculateActivationRange<float> sets it: NONE, RELU,
RELU_N1_TO_1, RELU6. NONE is numeric_limits<float>::lowest() to max(), not an infinity."""

_NAMES = {4: "TANH", 5: "SIGN_BIT"}


def _clamp(op: Any, info: ModelInfo, activation: int) -> dict[str, float]:
    """The fused activation as the bounds of the kernel's final clamp."""
    if activation not in _CLAMPS:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has the fused activation "
                               f"{_NAMES.get(activation, activation)}, which TFLM's float kernels ignore; the c "
                               "runtime's float32 kernels take NONE, RELU, RELU_N1_TO_1 or RELU6", hint=HINT)
    lo, hi = _CLAMPS[activation]
    return {"lo": lo, "hi": hi}


def _float_tensor(op: Any, info: ModelInfo, index: int, what: str, *, constant: bool | None = None) -> TensorInfo:
    """The op's tensor `index`, which must be float32 (and constant, or not, when `constant` says)."""
    t = info.tensors[index]
    if t.dtype != "float32" or (constant is not None and t.is_constant != constant):
        kind = "" if constant is None else ("constant " if constant else "computed ")
        hybrid = (" (integer weights with float activations, a dynamic-range 'hybrid' op, which TFLM does not run "
                  "either: quantize the whole model, or none of it)") if t.is_constant and t.dtype.startswith("int") \
            and what in ("weights", "filter") else ""
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index}'s {what} '{t.name}' is "
                               f"{'constant ' if t.is_constant else 'computed '}{t.dtype}; the c runtime's float32 "
                               f"{op.name} needs a {kind}float32 tensor there{hybrid}", hint=HINT)
    return t


def _float_constant(op: Any, info: ModelInfo, obj: Any, graph: Any, index: int, what: str) -> np.ndarray:
    """A constant float32 input of the op (weights, bias, an operand), flat."""
    _float_tensor(op, info, index, what, constant=True)
    return weights(obj, graph, index, "<f4").reshape(-1)


def _io(op: Any, info: ModelInfo) -> tuple[TensorInfo, TensorInfo]:
    return (_float_tensor(op, info, op.inputs[0], "input", constant=False),
            _float_tensor(op, info, op.outputs[0], "output", constant=False))


def _bias(op: Any, info: ModelInfo, obj: Any, graph: Any, name: str, channels: int, constants: Constants) -> bool:
    """The op's optional float32 bias, as `<name>_b`; whether it has one."""
    if len(op.inputs) <= 2 or op.inputs[2] < 0:
        return False
    bias = _float_constant(op, info, obj, graph, op.inputs[2], "bias")
    if bias.size != channels:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has {bias.size} biases for {channels} "
                               "output channels", hint=HINT)
    constants[f"{name}_b"] = ("float", bias)
    return True


def _nhwc(op: Any, info: ModelInfo, t: TensorInfo) -> tuple[int, int, int, int]:
    if len(t.shape) != 4:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} takes {list(t.shape)}; the c runtime's 2-D "
                               "kernels take NHWC tensors (rank 4)", hint=HINT)
    n, h, w, c = t.shape
    return n, h, w, c


@lowers("FULLY_CONNECTED", float32=True)
def _fully_connected(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """y[b, u] = clamp(sum over d of x[b, d] * w[u, d], from 0.0f, then + bias[u]), as TFLM's
    reference FullyConnected; float32 weights only (TFLM refuses int8 weights with float input)."""
    inp, out = _io(op, info)
    if options.weightsFormat != 0:
        raise TargetCheckError(f"{info.source}: FULLY_CONNECTED #{op.index} has shuffled weights", hint=HINT)
    name = f"op{op.index}"
    w = _float_constant(op, info, obj, graph, op.inputs[1], "weights")
    units, depth = info.tensors[op.inputs[1]].shape[-2], info.tensors[op.inputs[1]].shape[-1]
    batches = math.prod(out.shape) // max(units, 1)
    if w.size != units * depth or math.prod(inp.shape) != batches * depth or out.shape[-1] != units:
        raise TargetCheckError(f"{info.source}: FULLY_CONNECTED #{op.index} has weights of {units} x {depth} for "
                               f"input {list(inp.shape)} and output {list(out.shape)}", hint=HINT)
    constants[f"{name}_w"] = ("float", w)
    has_bias = _bias(op, info, obj, graph, name, units, constants)
    return Step(op.index, op.name, "f32_fully_connected", op.inputs[0], op.outputs[0],
                {**_clamp(op, info, options.fusedActivationFunction), "name": name, "batches": batches,
                 "units": units, "depth": depth, "bias": has_bias})


@lowers("CONV_2D", "DEPTHWISE_CONV_2D", float32=True)
def _conv(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """CONV_2D (grouped too) and DEPTHWISE_CONV_2D as TFLM's reference Conv and DepthwiseConv: for
    each output, a sum over filter rows, columns and input channels (taps outside the image
    skipped), then the bias, then the clamp."""
    depthwise = op.name == "DEPTHWISE_CONV_2D"
    inp, out = _io(op, info)
    batches, in_h, in_w, in_c = _nhwc(op, info, inp)
    _, out_h, out_w, out_c = _nhwc(op, info, out)
    _, k_h, k_w, k_c = info.tensors[op.inputs[1]].shape
    name = f"op{op.index}"
    constants[f"{name}_w"] = ("float", _float_constant(op, info, obj, graph, op.inputs[1], "filter"))
    values: dict[str, Any] = {}
    if depthwise:
        multiplier = options.depthMultiplier
        if k_c != out_c or in_c * multiplier != out_c:
            raise TargetCheckError(f"{info.source}: DEPTHWISE_CONV_2D #{op.index} has depth multiplier {multiplier} "
                                   f"for {in_c} input and {out_c} output channels", hint=HINT)
        values["multiplier"] = multiplier
    else:
        if k_c == 0 or in_c % k_c or out_c % (in_c // k_c):
            raise TargetCheckError(f"{info.source}: CONV_2D #{op.index} has filters of {k_c} channels for {in_c} "
                                   f"input and {out_c} output channels", hint=HINT)
        values.update(k_c=k_c, per_group=out_c // (in_c // k_c))
    dil_h, dil_w = options.dilationHFactor, options.dilationWFactor
    values.update(_clamp(op, info, options.fusedActivationFunction), name=name,
                  bias=_bias(op, info, obj, graph, name, out_c, constants), batches=batches, in_h=in_h, in_w=in_w,
                  in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c, k_h=k_h, k_w=k_w, stride_h=options.strideH,
                  stride_w=options.strideW, dil_h=dil_h, dil_w=dil_w,
                  pad_h=padding(options.padding, options.strideH, dil_h, in_h, k_h, out_h),
                  pad_w=padding(options.padding, options.strideW, dil_w, in_w, k_w, out_w))
    kernel = "f32_depthwise_conv_2d" if depthwise else "f32_conv_2d"
    return Step(op.index, op.name, kernel, op.inputs[0], op.outputs[0], values)


@lowers("MAX_POOL_2D", "AVERAGE_POOL_2D", float32=True)
def _pool(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """MAX_POOL_2D (the largest of the window's values inside the image, from -FLT_MAX) and
    AVERAGE_POOL_2D (their sum divided by their count), then the clamp."""
    inp, out = _io(op, info)
    batches, in_h, in_w, channels = _nhwc(op, info, inp)
    _, out_h, out_w, _ = _nhwc(op, info, out)
    values = {**_clamp(op, info, options.fusedActivationFunction), "batches": batches, "in_h": in_h, "in_w": in_w,
              "channels": channels, "out_h": out_h, "out_w": out_w, "k_h": options.filterHeight,
              "k_w": options.filterWidth, "stride_h": options.strideH, "stride_w": options.strideW,
              "pad_h": padding(options.padding, options.strideH, 1, in_h, options.filterHeight, out_h),
              "pad_w": padding(options.padding, options.strideW, 1, in_w, options.filterWidth, out_w),
              "lowest": -FLT_MAX, "average": op.name == "AVERAGE_POOL_2D"}
    return Step(op.index, op.name, "f32_pool_2d", op.inputs[0], op.outputs[0], values)


def _padded(shape: tuple[int, ...], rank: int = 4) -> list[int]:
    return [1] * (rank - len(shape)) + list(shape)


def _operand(op: Any, k: int, info: ModelInfo, obj: Any, graph: Any, name: str, out_shape: tuple[int, ...],
             constants: Constants, activations: list[int]) -> dict[str, Any]:
    """Operand k of ADD, SUB or MUL: the C expression of its float pointer (the arena or a const
    array) and its element's index in the output's loops: `i`, `0` for one value, or a sum over
    the loop counters d0..d3 with stride 0 where it broadcasts (NumPy's rules, up to rank 4)."""
    t = info.tensors[op.inputs[k]]
    if t.is_constant:
        constants[f"{name}_c{k}"] = ("float", _float_constant(op, info, obj, graph, op.inputs[k], f"input {k}"))
        pointer = f"{name}_c{k}"
    else:
        _float_tensor(op, info, op.inputs[k], f"input {k}")
        pointer = f"(const float *)(const void *){'in' if not activations else f'in{len(activations)}'}"
        activations.append(op.inputs[k])
    count, size = math.prod(t.shape), math.prod(out_shape)
    if count == size:  # the output's shape, give or take dimensions of 1: the same order
        return {"pointer": pointer, "index": "i"}
    if count == 1:
        return {"pointer": pointer, "index": "0"}
    return {"pointer": pointer, "index": broadcast_index(op, info, tuple(t.shape), out_shape)}


@lowers("ADD", "SUB", "MUL", float32=True)
def _elementwise(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """ADD, SUB and MUL of two float32 tensors (or a tensor and a constant), each of the output's
    shape, one value, or broadcast to it: one rounding per element, then the clamp."""
    out = _float_tensor(op, info, op.outputs[0], "output", constant=False)
    name = f"op{op.index}"
    activations: list[int] = []
    a, b = (_operand(op, k, info, obj, graph, name, tuple(out.shape), constants, activations) for k in (0, 1))
    if not activations:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has only constant inputs", hint=HINT)
    broadcast = any(x["index"] not in ("i", "0") for x in (a, b))
    values = {**_clamp(op, info, options.fusedActivationFunction if options else 0), "size": math.prod(out.shape),
              "a": a["pointer"], "a_index": a["index"], "b": b["pointer"], "b_index": b["index"],
              "symbol": {"ADD": "+", "SUB": "-", "MUL": "*"}[op.name],
              "loops": _padded(tuple(out.shape)) if broadcast else None}
    return Step(op.index, op.name, "f32_elementwise", activations[0], op.outputs[0], values, tuple(activations[1:]))


@lowers("RELU", "RELU6", "LEAKY_RELU", "HARD_SWISH", float32=True)
def _activation(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """The element-wise activations without libm, each as its TFLM float kernel writes it:
    RELU `x < 0 ? 0 : x`, RELU6 `x > 6 ? 6 : x < 0 ? 0 : x`, LEAKY_RELU `x > 0 ? x : x * alpha`,
    HARD_SWISH `x * min(6, max(0, x + 3)) / 6`."""
    inp, out = _io(op, info)
    values: dict[str, Any] = {"size": math.prod(out.shape), "kind": op.name}
    if op.name == "LEAKY_RELU":
        values["alpha"] = float(np.float32(options.alpha))
    return Step(op.index, op.name, "f32_activation", op.inputs[0], op.outputs[0], values)


@lowers("LOGISTIC", "TANH", float32=True)
def _transcendental(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """LOGISTIC (TFLM's cut-offs: 1 above 16.619047, expf(x) below -9, else 1 / (1 + expf(-x)))
    and TANH (tanhf), element by element."""
    inp, out = _io(op, info)
    return Step(op.index, op.name, "f32_logistic" if op.name == "LOGISTIC" else "f32_tanh", op.inputs[0],
                op.outputs[0], {"size": math.prod(out.shape)})


@lowers("SOFTMAX", float32=True)
def _softmax(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """SOFTMAX over the last axis: the row's maximum (from -FLT_MAX), expf((x - max) * beta) for
    each, their sum in order from 0.0f, and each exponential divided by the sum."""
    inp, out = _io(op, info)
    depth = inp.shape[-1] if inp.shape else 1
    return Step(op.index, op.name, "f32_softmax", op.inputs[0], op.outputs[0],
                {"rows": math.prod(inp.shape) // max(depth, 1), "depth": depth,
                 "beta": float(np.float32(options.beta)), "lowest": -FLT_MAX})


def _int_constant(op: Any, info: ModelInfo, obj: Any, graph: Any, k: int, what: str) -> np.ndarray:
    """The op's input k, a constant int32 or int64 array (axes, paddings, a permutation)."""
    t = info.tensors[op.inputs[k]]
    if not t.is_constant or t.dtype not in ("int32", "int64"):
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has computed {what}; the c runtime takes them "
                               "as constants", hint=HINT)
    return weights(obj, graph, op.inputs[k], "<i4" if t.dtype == "int32" else "<i8").reshape(-1)


def _rank4(op: Any, info: ModelInfo, t: TensorInfo) -> None:
    if len(t.shape) > 4:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} takes a rank-{len(t.shape)} tensor; the c "
                               "runtime's float32 kernel takes rank 4 or less", hint=HINT)


@lowers("MEAN", float32=True)
def _mean(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """MEAN over any constant axes: each output sums its input elements in the input's order from
    0.0f, then is divided by their count, as TFLM's reference Mean (both its paths)."""
    inp, out = _io(op, info)
    _rank4(op, info, inp)
    rank = max(len(inp.shape), 1)
    axes = {int(a) % rank for a in _int_constant(op, info, obj, graph, 1, "axes")}
    shape = _padded(tuple(inp.shape))
    lead = 4 - len(inp.shape)
    kept = [1 if k - lead in axes else n for k, n in enumerate(shape)]  # the output, axes kept as 1
    strides = [0 if k - lead in axes else math.prod(kept[k + 1:]) for k in range(4)]
    count = math.prod(inp.shape[a] for a in axes) if inp.shape else 1
    return Step(op.index, op.name, "f32_mean", op.inputs[0], op.outputs[0],
                {"shape": shape, "strides": strides, "outputs": math.prod(out.shape), "count": count})


@lowers("PAD", "PADV2", float32=True)
def _pad(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """PAD (with 0.0f) and PADV2 (with its constant value), up to rank 4."""
    inp, out = _io(op, info)
    _rank4(op, info, inp)
    pads = _int_constant(op, info, obj, graph, 1, "paddings").reshape(-1, 2)
    value = 0.0
    if op.name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
        value = float(_float_constant(op, info, obj, graph, op.inputs[2], "pad value")[0])
    lead = 4 - len(inp.shape)
    return Step(op.index, op.name, "f32_pad", op.inputs[0], op.outputs[0],
                {"inp": _padded(tuple(inp.shape)), "out": _padded(tuple(out.shape)),
                 "before": [0] * lead + [int(p) for p in pads[:, 0]], "value": value})


@lowers("TRANSPOSE", float32=True)
def _transpose(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """TRANSPOSE up to rank 4: the output walked in order, each element read from its permuted
    place in the input."""
    inp, out = _io(op, info)
    _rank4(op, info, inp)
    perm = [int(p) % max(len(inp.shape), 1) for p in _int_constant(op, info, obj, graph, 1, "permutation")]
    lead = 4 - len(inp.shape)
    shape = _padded(tuple(inp.shape))
    perm = list(range(lead)) + [p + lead for p in perm]
    strides = [math.prod(shape[k + 1:]) for k in range(4)]
    return Step(op.index, op.name, "f32_transpose", op.inputs[0], op.outputs[0],
                {"out": [shape[p] for p in perm], "strides": [strides[p] for p in perm]})


@lowers("CONCATENATION", float32=True)
def _concatenation(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """CONCATENATION of float32 tensors (constants too) along one axis: for each index before the
    axis, each input's row in turn."""
    out = _float_tensor(op, info, op.outputs[0], "output", constant=False)
    if options.fusedActivationFunction:
        raise TargetCheckError(f"{info.source}: CONCATENATION #{op.index} has a fused activation, which TFLM "
                               "refuses", hint=HINT)
    axis = options.axis % max(len(out.shape), 1)
    name, at = f"op{op.index}", 0
    parts: list[dict[str, Any]] = []
    activations: list[int] = []
    for k, index in enumerate(op.inputs):
        t = info.tensors[index]
        if t.is_constant:
            constants[f"{name}_c{k}"] = ("float", _float_constant(op, info, obj, graph, index, f"input {k}"))
            pointer = f"{name}_c{k}"
        else:
            _float_tensor(op, info, index, f"input {k}")
            pointer = f"(const float *)(const void *){'in' if not activations else f'in{len(activations)}'}"
            activations.append(index)
        row = math.prod(t.shape[axis:])
        parts.append({"pointer": pointer, "at": at, "count": row})
        at += row
    if not activations:
        raise TargetCheckError(f"{info.source}: CONCATENATION #{op.index} has only constant inputs", hint=HINT)
    return Step(op.index, op.name, "f32_concatenation", activations[0], op.outputs[0],
                {"outer": math.prod(out.shape[:axis]), "row": at, "parts": parts}, tuple(activations[1:]))
