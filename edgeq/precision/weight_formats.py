"""The formats `edgeq precision` compares, how each stores a model's weights, and what TFLite's
runtimes can run of them.

Sizes are edgeq's exact accounting of the weights (not a TFLite file size, which adds metadata,
stores zero points as int64 and folds BatchNormalization away): the float formats store every
parameter at their width; an integer or FP8 format stores the kernels at its width (INT4 packs two
per byte, rounded up per tensor) plus 4 bytes per scale and, for asymmetric schemes, 4 bytes per
zero point, and keeps everything else (biases, normalization) FP32, as TFLite keeps biases 32-bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgeq.precision.array_quantization import quantize_dequantize
from edgeq.precision.runner import WeightInfo
from edgeq.vocab import Granularity, Scheme

__all__ = ["FORMATS", "RUNTIME_SUPPORT", "FormatSpec", "channels_last", "fake_quantize", "weight_bytes"]


@dataclass(frozen=True)
class FormatSpec:
    """How one format stores the weights: `kind` float (cast), fp8 (scaled, cast), int (linear
    quantization with `scheme` and `granularity`) or policy (a Keras dtype policy: the layers
    also compute in `dtype`)."""

    kind: Literal["float", "fp8", "int", "policy"]
    bits: int
    label: str
    dtype: str | None = None
    scheme: Scheme | None = None
    granularity: Granularity | None = None

    @property
    def per_channel(self) -> bool:
        return self.granularity == Granularity.PER_CHANNEL


def _int(bits: int, scheme: Scheme, granularity: Granularity) -> FormatSpec:
    label = f"INT{bits} {scheme}, {granularity.replace('-', ' ')}"
    return FormatSpec("int", bits, label, scheme=scheme, granularity=granularity)


_SYM, _ASYM = Scheme.SYMMETRIC, Scheme.ASYMMETRIC
_TENSOR, _CHANNEL = Granularity.PER_TENSOR, Granularity.PER_CHANNEL

# name -> how the weights are stored. "activations" variants also compute in that float type.
FORMATS: dict[str, FormatSpec] = {
    "fp32": FormatSpec("float", 32, "FP32 (reference)"),
    "fp16": FormatSpec("float", 16, "FP16 weights", dtype="float16"),
    "bf16": FormatSpec("float", 16, "BF16 weights", dtype="bfloat16"),
    "fp8_e4m3": FormatSpec("fp8", 8, "FP8 E4M3 weights (per-tensor scale)", dtype="float8_e4m3fn"),
    "fp8_e5m2": FormatSpec("fp8", 8, "FP8 E5M2 weights (per-tensor scale)", dtype="float8_e5m2"),
    "int8_sym_tensor": _int(8, _SYM, _TENSOR),
    "int8_sym_channel": _int(8, _SYM, _CHANNEL),
    "int8_asym_tensor": _int(8, _ASYM, _TENSOR),
    "int8_asym_channel": _int(8, _ASYM, _CHANNEL),
    "int4_sym_channel": _int(4, _SYM, _CHANNEL),
    "fp16_act": FormatSpec("policy", 16, "FP16 weights and activations", dtype="float16"),
    "bf16_act": FormatSpec("policy", 16, "BF16 weights and activations", dtype="bfloat16"),
}

# What TFLite's runtimes (as edgeq's modes use them) can store and run, per format.
RUNTIME_SUPPORT: dict[str, tuple[tuple[str, ...], str]] = {
    "fp32": (("float32",), "float32 mode"),
    "fp16": (("float16",), "float16 mode: FP16 weights, computed in FP32 (LiteRT)"),
    "bf16": ((), "no TFLite runtime stores BF16 weights"),
    "fp8_e4m3": ((), "no TFLite runtime stores FP8 weights"),
    "fp8_e5m2": ((), "no TFLite runtime stores FP8 weights"),
    "int8_sym_tensor": (("int8", "int16x8", "dynamic"), "int8 weights (per tensor when the target asks for it)"),
    "int8_sym_channel": (("int8", "int16x8", "dynamic"), "TFLite's int8 weights: symmetric, per channel"),
    "int8_asym_tensor": ((), "TFLite's int8 weights are symmetric (zero point 0); activations are asymmetric"),
    "int8_asym_channel": ((), "TFLite's int8 weights are symmetric (zero point 0)"),
    "int4_sym_channel": ((), "edgeq's converter modes do not produce INT4 weights"),
    "fp16_act": ((), "FP16 compute needs a GPU/NPU delegate (or XNNPACK's FP16 path on ARMv8.2 CPUs); edgeq's "
                     "modes compute in FP32 or integers"),
    "bf16_act": ((), "no TFLite runtime computes in BF16"),
}


def channels_last(w: np.ndarray, meta: WeightInfo) -> np.ndarray:
    """The kernel as (..., channels): TFLite's per-channel axis is the output channel, last in most
    Keras kernels, next to last in transposed convolutions; a depthwise kernel's channels are
    in x multiplier (its last two axes)."""
    if meta.depthwise:
        return w.reshape(*w.shape[:-2], w.shape[-2] * w.shape[-1])
    return np.moveaxis(w, meta.channel_axis, -1) if meta.channel_axis != -1 else w


def _from_channels_last(flat: np.ndarray, meta: WeightInfo, shape: tuple[int, ...]) -> np.ndarray:
    if meta.depthwise:
        return flat.reshape(shape)
    return np.moveaxis(flat, -1, meta.channel_axis) if meta.channel_axis != -1 else flat


def fake_quantize(w: np.ndarray, spec: FormatSpec, meta: WeightInfo) -> np.ndarray:
    """`w` stored in `spec` and read back as float32: what the model computes with in that format."""
    import ml_dtypes

    kind = spec.kind
    if kind in ("float", "policy") and spec.dtype:
        dtype = getattr(ml_dtypes, spec.dtype) if spec.dtype == "bfloat16" else np.dtype(spec.dtype)
        with np.errstate(over="ignore"):  # overflow to Inf is the point: it is reported, not warned about
            return w.astype(dtype).astype(np.float32)
    if kind == "fp8":
        dtype = getattr(ml_dtypes, spec.dtype)
        top = float(ml_dtypes.finfo(dtype).max)
        peak = float(np.max(np.abs(w))) if w.size else 0.0
        if peak == 0:
            return w  # an all-zero kernel is stored exactly
        scale = peak / top
        return ((w / scale).astype(dtype).astype(np.float32) * scale).astype(np.float32)
    if kind == "int":
        flat = channels_last(w, meta)
        quantized = quantize_dequantize(flat, bits=spec.bits, scheme=spec.scheme,
                                        axis=-1 if spec.per_channel else None)
        return _from_channels_last(np.asarray(quantized.dequantized, dtype=np.float32), meta, w.shape)
    return w


def weight_bytes(weights: Sequence[np.ndarray], meta: Sequence[WeightInfo], spec: FormatSpec) -> int:
    """Exact storage of the weights in `spec`: kernels in the format (+ scales), the rest FP32."""
    total = 0
    for w, m in zip(weights, meta):
        if spec.kind in ("float", "policy"):
            total += w.size * spec.bits // 8
        elif not m.kernel:
            total += w.size * 4
        elif spec.kind == "fp8":
            total += w.size + 4  # one byte each, one float32 scale per tensor
        else:
            bits = spec.bits
            channels = channels_last(w, m).shape[-1] if spec.per_channel else 1
            params = math.ceil(w.size * bits / 8)
            per_scale = 4 + (4 if spec.scheme == Scheme.ASYMMETRIC else 0)
            total += params + channels * per_scale
    return total

