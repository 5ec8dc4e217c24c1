"""The weighted kernels: FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D, each with symmetric int8
weights, an optional int32 bias and per-channel requantization."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import HINT, Constants, Step, common, lowers, padding, single_batch, weights
from edgeq.aot.qmath import effective_scale, quantize_multiplier
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo, TensorInfo


def _requant(info: ModelInfo, name: str, inp: TensorInfo, kernel: TensorInfo, out: TensorInfo, channels: int,
             constants: Constants) -> None:
    scales = kernel.scales if len(kernel.scales) > 1 else kernel.scales * channels
    pairs = [quantize_multiplier(effective_scale(inp.scales[0], s, out.scales[0])) for s in scales]
    constants[f"{name}_mult"] = ("int32_t", np.asarray([q for q, _ in pairs], dtype=np.int64))
    constants[f"{name}_shift"] = ("int8_t", np.asarray([s for _, s in pairs], dtype=np.int64))  # in [-31, 30]


def _weights_and_bias(op: Any, info: ModelInfo, obj: Any, graph: Any, name: str, inp: TensorInfo, out: TensorInfo,
                      channels: int, constants: Constants) -> bool:
    """The op's symmetric int8 weights, its int32 bias (whether it has one) and its per-channel
    requantization, as constant arrays `<name>_w`, `<name>_b`, `<name>_mult`, `<name>_shift`."""
    kernel = info.tensors[op.inputs[1]]
    if kernel.dtype != "int8" or any(z != 0 for z in kernel.zero_points):
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} has {kernel.dtype} weights with a zero point; "
                               "the c runtime has symmetric int8", hint=HINT)
    constants[f"{name}_w"] = ("int8_t", weights(obj, graph, op.inputs[1], "int8").reshape(-1))
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    if has_bias:
        constants[f"{name}_b"] = ("int32_t", weights(obj, graph, op.inputs[2], "<i4").reshape(-1))
    _requant(info, name, inp, kernel, out, channels, constants)
    return has_bias


@lowers("FULLY_CONNECTED")
def _fully_connected(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    inp, out, values = common(op, info, options.fusedActivationFunction)
    name = f"op{op.index}"
    units, depth = info.tensors[op.inputs[1]].shape
    has_bias = _weights_and_bias(op, info, obj, graph, name, inp, out, units, constants)
    batches = math.prod(inp.shape) // depth
    return Step(op.index, op.name, "fully_connected", op.inputs[0], op.outputs[0],
                {**values, "name": name, "batches": batches, "units": units, "depth": depth, "bias": has_bias})


@lowers("CONV_2D", "DEPTHWISE_CONV_2D")
def _conv(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    depthwise = op.name == "DEPTHWISE_CONV_2D"
    inp, out, values = common(op, info, options.fusedActivationFunction)
    single_batch(op, info, inp)
    _, in_h, in_w, in_c = inp.shape
    _, out_h, out_w, out_c = out.shape
    _, k_h, k_w, k_c = info.tensors[op.inputs[1]].shape
    if not depthwise and k_c != in_c:
        raise TargetCheckError(f"{info.source}: CONV_2D #{op.index} is a grouped convolution ({in_c} input "
                               f"channels, filters of {k_c}); the c runtime has ungrouped ones", hint=HINT)
    name = f"op{op.index}"
    has_bias = _weights_and_bias(op, info, obj, graph, name, inp, out, out_c, constants)
    dil_h, dil_w = options.dilationHFactor, options.dilationWFactor
    values.update(name=name, bias=has_bias, in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c,
                  k_h=k_h, k_w=k_w, stride_h=options.strideH, stride_w=options.strideW, dil_h=dil_h, dil_w=dil_w,
                  pad_h=padding(options.padding, options.strideH, dil_h, in_h, k_h, out_h),
                  pad_w=padding(options.padding, options.strideW, dil_w, in_w, k_w, out_w),
                  multiplier=out_c // in_c if depthwise else 1)
    return Step(op.index, op.name, "depthwise_conv_2d" if depthwise else "conv_2d", op.inputs[0], op.outputs[0],
                values)
