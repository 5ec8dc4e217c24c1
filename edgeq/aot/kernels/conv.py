"""The weighted kernels: FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D and TRANSPOSE_CONV, each with symmetric int8
weights, an optional bias and per-channel requantization: int8 activations with an int32 bias, or
int16 activations (TFLite's int16x8 mode, "wide" here) with an int64 bias, or an int32 one where
TFLM takes it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import (
    HINT,
    Constants,
    Step,
    act,
    common,
    lowers,
    padding,
    single_batch,
    symmetric16,
    weights,
)
from edgeq.aot.qmath import (
    activation_range,
    effective_scale,
    quantize_multiplier,
    reduced_multiplier,
)
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo, TensorInfo

INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
WIDE_SHIFT_MAX = 7
"""The largest left shift TFLM's 64-bit requantization takes (it asserts shift < 8): an effective
scale input * weight / output of 2^7 or more, which no converted model has."""
TENSOR_TYPE_INT32 = 2
"""The schema's TensorType INT32, as an op's quantized_bias_type names it."""


def _requant(info: ModelInfo, name: str, inp: TensorInfo, kernel: TensorInfo, out: TensorInfo, channels: int,
             constants: Constants) -> None:
    scales = kernel.scales if len(kernel.scales) > 1 else kernel.scales * channels
    pairs = [quantize_multiplier(effective_scale(inp.scales[0], s, out.scales[0])) for s in scales]
    constants[f"{name}_mult"] = ("int32_t", np.asarray([q for q, _ in pairs], dtype=np.int64))
    constants[f"{name}_shift"] = ("int8_t", np.asarray([s for _, s in pairs], dtype=np.int64))  # in [-31, 30]


def _symmetric_int8_weights(op: Any, info: ModelInfo) -> TensorInfo:
    kernel = info.tensors[op.inputs[1]]
    if kernel.dtype != "int8" or any(z != 0 for z in kernel.zero_points):
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has {kernel.dtype} weights with a zero point; "
                               "the c runtime has symmetric int8", hint=HINT)
    return kernel


def _weights_and_bias(op: Any, info: ModelInfo, obj: Any, graph: Any, name: str, inp: TensorInfo, out: TensorInfo,
                      channels: int, constants: Constants) -> bool:
    """The op's symmetric int8 weights, its int32 bias (whether it has one) and its per-channel
    requantization, as constant arrays `<name>_w`, `<name>_b`, `<name>_mult`, `<name>_shift`."""
    kernel = _symmetric_int8_weights(op, info)
    constants[f"{name}_w"] = ("int8_t", weights(obj, graph, op.inputs[1], "int8").reshape(-1))
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    if has_bias:
        constants[f"{name}_b"] = ("int32_t", weights(obj, graph, op.inputs[2], "<i4").reshape(-1))
    _requant(info, name, inp, kernel, out, channels, constants)
    return has_bias


def _is_wide(op: Any, info: ModelInfo) -> bool:
    """Whether the op runs on int16 activations (TFLite's int16x8 mode)."""
    return info.tensors[op.inputs[0]].dtype == "int16"


def _wide_common(op: Any, info: ModelInfo, activation: int) -> tuple[TensorInfo, TensorInfo, dict[str, Any]]:
    """The op's int16 input and output, which must be symmetric (TFLM's int16 convolutions drop
    the zero points from their arithmetic), and the fused activation's clamp in int16 codes."""
    inp, out = symmetric16(op, info)
    lo, hi = activation_range(activation, out.scales[0], 0, INT16_MIN, INT16_MAX)
    return inp, out, {"wide": True, "act_min": lo, "act_max": hi}


def _wide_weights_and_bias(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, name: str,
                           inp: TensorInfo, out: TensorInfo, channels: int, constants: Constants) -> dict[str, Any]:
    """An int16x8 op's int8 weights, its bias and its requantization, as TFLM's Eval picks them:
    an int64 bias (or none) accumulates in 64 bits and requantizes with a 16-bit multiplier and
    one rounding (`<name>_mult` int16, `<name>_shift` the right shift 15 - shift); an int32 bias
    (CONV_2D and FULLY_CONNECTED only; with no bias, when the op's quantized_bias_type says int32)
    accumulates in 32 bits, wrapping, and requantizes as the int8 kernels do."""
    kernel = _symmetric_int8_weights(op, info)
    constants[f"{name}_w"] = ("int8_t", weights(obj, graph, op.inputs[1], "int8").reshape(-1))
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    bias = info.tensors[op.inputs[2]] if has_bias else None
    takes_int32 = op.name != "DEPTHWISE_CONV_2D"  # TFLM's int16 DEPTHWISE_CONV_2D reads any bias as int64
    bias_dtype = bias.dtype if bias else None
    if bias and bias_dtype not in (("int64", "int32") if takes_int32 else ("int64",)):
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has an int16 input and its bias '{bias.name}' is "
                               f"{bias_dtype}; TFLM's int16 {op.name} takes an int64 bias"
                               f"{' or an int32 one' if takes_int32 else ''}", hint=HINT)
    if bias:
        ctype, layout = ("int64_t", "<i8") if bias_dtype == "int64" else ("int32_t", "<i4")
        constants[f"{name}_b"] = (ctype, weights(obj, graph, op.inputs[2], layout).reshape(-1))
    acc32 = bias_dtype == "int32" or (
        not has_bias and takes_int32 and getattr(options, "quantizedBiasType", 0) == TENSOR_TYPE_INT32)
    scales = kernel.scales if len(kernel.scales) > 1 else kernel.scales * channels
    reals = [effective_scale(inp.scales[0], s, out.scales[0]) for s in scales]
    pairs = [quantize_multiplier(r) for r in reals]
    if acc32:
        constants[f"{name}_mult"] = ("int32_t", np.asarray([q for q, _ in pairs], dtype=np.int64))
        constants[f"{name}_shift"] = ("int8_t", np.asarray([s for _, s in pairs], dtype=np.int64))
    else:
        if max(s for _, s in pairs) > WIDE_SHIFT_MAX:
            raise TargetCheckError(f"{info.source}: {op.name} #{op.index} scales its int16 sums by {max(reals):.6g} "
                                   "(input scale x weight scale / output scale); TFLM's 64-bit requantization takes "
                                   f"less than 2^{WIDE_SHIFT_MAX}", hint=HINT)
        constants[f"{name}_mult"] = ("int16_t", np.asarray([reduced_multiplier(q) for q, _ in pairs], dtype=np.int64))
        constants[f"{name}_shift"] = ("int8_t", np.asarray([15 - s for _, s in pairs], dtype=np.int64))  # [8, 46]
    return {"name": name, "bias": has_bias, "acc32": acc32}


@lowers("FULLY_CONNECTED")
def _fully_connected(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    name = f"op{op.index}"
    units, depth = info.tensors[op.inputs[1]].shape
    if _is_wide(op, info):
        inp, out, values = _wide_common(op, info, options.fusedActivationFunction)
        values.update(_wide_weights_and_bias(op, info, obj, graph, options, name, inp, out, units, constants))
    else:
        inp, out, values = common(op, info, options.fusedActivationFunction)
        has_bias = _weights_and_bias(op, info, obj, graph, name, inp, out, units, constants)
        values.update(wide=False, name=name, bias=has_bias)
    batches = math.prod(inp.shape) // depth
    return Step(op.index, op.name, "fully_connected", op.inputs[0], op.outputs[0],
                {**values, "batches": batches, "units": units, "depth": depth})


@lowers("CONV_2D", "DEPTHWISE_CONV_2D")
def _conv(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    depthwise = op.name == "DEPTHWISE_CONV_2D"
    wide = _is_wide(op, info)
    inp, out, values = (_wide_common if wide else common)(op, info, options.fusedActivationFunction)
    single_batch(op, info, inp)
    _, in_h, in_w, in_c = inp.shape
    _, out_h, out_w, out_c = out.shape
    _, k_h, k_w, k_c = info.tensors[op.inputs[1]].shape
    if not depthwise and k_c != in_c:
        raise TargetCheckError(f"{info.source}: CONV_2D #{op.index} is a grouped convolution ({in_c} input "
                               f"channels, filters of {k_c}); the c runtime has ungrouped ones", hint=HINT)
    name = f"op{op.index}"
    if wide:
        values.update(_wide_weights_and_bias(op, info, obj, graph, options, name, inp, out, out_c, constants))
    else:
        values.update(wide=False, name=name,
                      bias=_weights_and_bias(op, info, obj, graph, name, inp, out, out_c, constants))
    dil_h, dil_w = options.dilationHFactor, options.dilationWFactor
    values.update(in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c,
                  k_h=k_h, k_w=k_w, stride_h=options.strideH, stride_w=options.strideW, dil_h=dil_h, dil_w=dil_w,
                  pad_h=padding(options.padding, options.strideH, dil_h, in_h, k_h, out_h),
                  pad_w=padding(options.padding, options.strideW, dil_w, in_w, k_w, out_w),
                  multiplier=out_c // in_c if depthwise else 1)
    return Step(op.index, op.name, "depthwise_conv_2d" if depthwise else "conv_2d", op.inputs[0], op.outputs[0],
                values)


@lowers("TRANSPOSE_CONV")
def _transpose_conv(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """TRANSPOSE_CONV (inputs: output shape, weights, input, optional bias) as TFLM's reference
    kernels: int8 activations with an int32 bias, or int16 ones with an int64 (or int16) bias or
    none, per-channel requantization, padding worked out from the output's size as TFLM's Prepare
    does. TFLM scatters each input pixel into an int32 (int64) scratch buffer the size of the
    output; the C gathers instead, each output element summing the input pixels that land on it,
    which is the same integer sum without the buffer."""
    wide = info.tensors[op.inputs[2]].dtype == "int16"
    dtypes = ("int16",) if wide else ("int8",)
    inp = act(info, op.inputs[2], "input", op.name, dtypes)
    out = act(info, op.outputs[0], "output", op.name, dtypes)
    single_batch(op, info, inp)
    kernel = _symmetric_int8_weights(op, info)
    _, in_h, in_w, in_c = inp.shape
    _, out_h, out_w, out_c = out.shape
    k_oc, k_h, k_w, k_c = kernel.shape
    if (k_oc, k_c) != (out_c, in_c):
        raise TargetCheckError(f"{info.source}: TRANSPOSE_CONV #{op.index} has weights {list(kernel.shape)} for "
                               f"{in_c} input and {out_c} output channels", hint=HINT)
    activation = getattr(options, "fusedActivationFunction", 0) if options else 0
    name = f"op{op.index}"
    constants[f"{name}_w"] = ("int8_t", weights(obj, graph, op.inputs[1], "int8").reshape(-1))
    has_bias = len(op.inputs) > 3 and op.inputs[3] >= 0
    if has_bias:
        bias = info.tensors[op.inputs[3]]
        allowed = ("int64", "int16") if wide else ("int32",)
        if bias.dtype not in allowed:
            raise TargetCheckError(f"{info.source}: TRANSPOSE_CONV #{op.index}'s bias '{bias.name}' is {bias.dtype}; "
                                   f"TFLM's {inp.dtype} TRANSPOSE_CONV takes {' or '.join(allowed)}", hint=HINT)
        layout = {"int64": "<i8", "int32": "<i4", "int16": "<i2"}[bias.dtype]
        constants[f"{name}_b"] = ("int64_t" if wide else "int32_t",
                                  weights(obj, graph, op.inputs[3], layout).reshape(-1).astype(np.int64))
    _requant(info, name, inp, kernel, out, out_c, constants)
    if wide:
        for what, t in (("input", inp), ("output", out)):
            if t.zero_points[0] != 0:
                raise TargetCheckError(f"{info.source}: TRANSPOSE_CONV #{op.index}'s {what} '{t.name}' is int16 with "
                                       f"zero point {t.zero_points[0]}; TFLM's int16 TRANSPOSE_CONV takes zero point 0",
                                       hint=HINT)
        mults, shifts = constants[f"{name}_mult"][1], constants[f"{name}_shift"][1]
        if int(shifts.max()) > WIDE_SHIFT_MAX:
            raise TargetCheckError(f"{info.source}: TRANSPOSE_CONV #{op.index} scales its int16 sums by 2^"
                                   f"{int(shifts.max())} or more (input scale x weight scale / output scale); TFLM's "
                                   f"64-bit requantization takes less than 2^{WIDE_SHIFT_MAX}", hint=HINT)
        constants[f"{name}_mult"] = ("int16_t", np.asarray([reduced_multiplier(int(q)) for q in mults], dtype=np.int64))
        constants[f"{name}_shift"] = ("int8_t", np.asarray([15 - int(s) for s in shifts], dtype=np.int64))
        lo, hi = activation_range(activation, out.scales[0], 0, INT16_MIN, INT16_MAX)
    else:
        lo, hi = activation_range(activation, out.scales[0], out.zero_points[0])

    def pad(mode: int, stride: int, size: int, taps: int) -> int:
        # TFLM pads as for a convolution from the transpose's output (size) back to its input.
        steps = (size + stride - 1) // stride if mode == 0 else (size + stride - taps) // stride
        return padding(mode, stride, 1, size, taps, steps)

    values = {"wide": wide, "name": name, "bias": has_bias, "act_min": lo, "act_max": hi,
              "input_offset": -inp.zero_points[0], "output_offset": out.zero_points[0],
              "in_h": in_h, "in_w": in_w, "in_c": in_c, "out_h": out_h, "out_w": out_w, "out_c": out_c,
              "k_h": k_h, "k_w": k_w, "stride_h": options.strideH, "stride_w": options.strideW,
              "pad_h": pad(options.padding, options.strideH, out_h, k_h),
              "pad_w": pad(options.padding, options.strideW, out_w, k_w)}
    return Step(op.index, op.name, "transpose_conv", op.inputs[2], op.outputs[0], values)
