"""The windowed and reducing kernels: MAX_POOL_2D, AVERAGE_POOL_2D and MEAN, of int8 tensors or of
int16 ones (TFLM's int16x8)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import HINT, Constants, Step, act, common, lowers, padding, single_batch, weights
from edgeq.aot.qmath import activation_range, quantize_multiplier
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo, TensorInfo

LIMITS = {"int8": (-128, 127), "int16": (-32768, 32767)}
"""The codes an int8 or int16 output can hold."""


def _same_dtype(op: Any, info: ModelInfo, inp: TensorInfo, out: TensorInfo) -> None:
    if inp.dtype != out.dtype:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} reads {inp.dtype} and writes {out.dtype}; the "
                               "c runtime's takes one type (int8 or int16) in and out", hint=HINT)


@lowers("MAX_POOL_2D", "AVERAGE_POOL_2D")
def _pool(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """MAX_POOL_2D and AVERAGE_POOL_2D of one NHWC sample: the window's largest value, or its sum
    divided by the count of its taps inside the input (rounded half away from zero), clamped by the
    fused activation; int8, or int16 with the same arithmetic and int16 limits."""
    if info.tensors[op.inputs[0]].dtype == "int16":
        inp = act(info, op.inputs[0], "input", op.name, tuple(LIMITS))
        out = act(info, op.outputs[0], "output", op.name, tuple(LIMITS))
        _same_dtype(op, info, inp, out)
        lo, hi = activation_range(options.fusedActivationFunction, out.scales[0], out.zero_points[0], *LIMITS["int16"])
        values = {"input_offset": -inp.zero_points[0], "output_offset": out.zero_points[0], "act_min": lo,
                  "act_max": hi, "int16": True}
    else:
        inp, out, values = common(op, info, options.fusedActivationFunction)
    if inp.scales[0] != out.scales[0] or inp.zero_points[0] != out.zero_points[0]:
        raise TargetCheckError(f"{info.source}: {op.name} #{op.index} rescales its input; TFLM's pooling does not",
                               hint=HINT)
    single_batch(op, info, inp)
    _, in_h, in_w, channels = inp.shape
    _, out_h, out_w, _ = out.shape
    values.update(in_h=in_h, in_w=in_w, channels=channels, out_h=out_h, out_w=out_w, k_h=options.filterHeight,
                  k_w=options.filterWidth, stride_h=options.strideH, stride_w=options.strideW,
                  pad_h=padding(options.padding, options.strideH, 1, in_h, options.filterHeight, out_h),
                  pad_w=padding(options.padding, options.strideW, 1, in_w, options.filterWidth, out_w))
    kernel = "max_pool_2d" if op.name == "MAX_POOL_2D" else "average_pool_2d"
    return Step(op.index, op.name, kernel, op.inputs[0], op.outputs[0], values)


@lowers("MEAN")
def _mean(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """MEAN over a run of adjacent axes (global average pooling: [1, 2] of NHWC, or [2, 3] of the
    NCHW tensors PyTorch and ONNX models keep): TFLM sums in int32 and rescales the sum, the element
    count folded into the multiplier (bit-exact with TFLM either way: test_aot_properties); int16
    the same way, clamped to int16."""
    inp = act(info, op.inputs[0], "input", op.name, tuple(LIMITS))
    out = act(info, op.outputs[0], "output", op.name, tuple(LIMITS))
    _same_dtype(op, info, inp, out)
    axes_tensor = info.tensors[op.inputs[1]]
    if not axes_tensor.is_constant:
        raise TargetCheckError(f"{info.source}: MEAN #{op.index} has computed axes", hint=HINT)
    rank = len(inp.shape)
    axes = sorted({int(a) % rank for a in weights(obj, graph, op.inputs[1], "<i4").reshape(-1)})
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise TargetCheckError(f"{info.source}: MEAN #{op.index} reduces axes {axes} of a rank-{rank} tensor; the "
                               "c runtime reduces a run of adjacent axes", hint=HINT)
    outer = math.prod(inp.shape[:axes[0]])
    reduce = math.prod(inp.shape[axes[0]:axes[-1] + 1])
    inner = math.prod(inp.shape[axes[-1] + 1:])
    values: dict[str, Any] = {"outer": outer, "reduce": reduce, "inner": inner,
                              "input_zero_point": inp.zero_points[0], "output_offset": out.zero_points[0]}
    mult, shift = quantize_multiplier(float(np.float32(inp.scales[0])) / float(np.float32(out.scales[0])))
    fold = min(reduce.bit_length() - 1, 32, 31 + shift)
    values["mult"] = int((mult << fold) // reduce) if fold >= 0 else int((mult >> -fold) // reduce)
    values["shift"] = shift - fold
    if inp.dtype == "int16":
        values["int16"] = True  # the template reads and writes int16_t; aot_runtime_int16.j2 has its helpers
    return Step(op.index, op.name, "mean", op.inputs[0], op.outputs[0], values)
