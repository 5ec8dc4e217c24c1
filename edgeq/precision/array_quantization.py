"""Linear quantization of whole arrays, per tensor or per channel, to TFLite-style signed codes
and back: what the model simulator applies to a kernel. The numerics are those of one value
(edgeq/precision/linear_quantization.py), vectorised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.precision.linear_quantization import check_bits_scheme, choose_params, code_range, codes_and_dequantized
from edgeq.precision.values import FormatsInputError

__all__ = ["QuantizedArray", "quantize_dequantize"]


@dataclass(frozen=True)
class QuantizedArray:
    """Result of :func:`quantize_dequantize` (TFLite-style signed codes)."""

    q: np.ndarray  # integer codes, input shape; int8 for bits <= 8, else int16
    dequantized: np.ndarray  # float64, input shape: s*(q - z)
    scales: np.ndarray  # float64; shape () per-tensor, (C,) per-channel
    zero_points: np.ndarray  # int64, same shape as scales
    clipped: np.ndarray  # bool, input shape: code was clamped
    bits: int
    scheme: str
    axis: int | None  # normalised (non-negative) channel axis, or None


def quantize_dequantize(array: Any, bits: int = 8, scheme: str = "asymmetric",
                        axis: int | None = None, *, min: Any = None, max: Any = None,
                        scale: Any = None, zero_point: Any = None) -> QuantizedArray:
    """Quantize a float array to k-bit signed codes and back, per tensor or per channel.

    axis=None: one scale for the whole tensor. axis=k (e.g. -1 for conv kernels (h, w, in, out)):
    one scale per index along that axis, each from the min/max over all other axes.
    min/max (or scale/zero_point) override the ranges; they broadcast to the channel shape.
    Non-finite inputs are rejected (TFLite cannot quantize NaN/Inf meaningfully).
    """
    bits, scheme = check_bits_scheme(bits, scheme)
    x = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise FormatsInputError("cannot quantize an array with NaN or Inf values")
    qmin, qmax = code_range(bits, scheme)
    if axis is None:
        ch_shape: tuple[int, ...] = ()
        reduce_axes: tuple[int, ...] | None = None
        bshape: tuple[int, ...] = ()
        ax = None
    else:
        if x.ndim == 0:
            raise FormatsInputError("per-channel quantization needs an array with at least 1 axis")
        try:
            ax = _normalize_axis(axis, x.ndim)
        except IndexError as e:
            raise FormatsInputError(str(e)) from None
        ch_shape = (x.shape[ax],)
        reduce_axes = tuple(i for i in range(x.ndim) if i != ax)
        bshape = tuple(x.shape[ax] if i == ax else 1 for i in range(x.ndim))

    if scale is not None:
        if min is not None or max is not None:
            raise FormatsInputError("give either min/max or scale/zero_point, not both")
        scales, zps = _given_params(scale, zero_point, ch_shape, qmin, qmax, scheme)
    else:
        if zero_point is not None:
            raise FormatsInputError("a zero point needs a scale")
        if (min is None) != (max is None):
            raise FormatsInputError("give both min and max, or neither")
        lo, hi = _ranges(x, min, max, ch_shape, reduce_axes)
        scales, zps = choose_params(lo, hi, bits, scheme)

    q, deq, clipped = codes_and_dequantized(x, scales.reshape(bshape), zps.reshape(bshape), qmin, qmax)
    qdtype = np.int8 if bits <= 8 else np.int16
    return QuantizedArray(q=q.astype(qdtype), dequantized=deq, scales=np.asarray(scales),
                          zero_points=np.asarray(zps, dtype=np.int64), clipped=clipped,
                          bits=bits, scheme=scheme, axis=ax)


def _given_params(scale: Any, zero_point: Any, ch_shape: tuple[int, ...], qmin: int, qmax: int,
                  scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """The caller's scales and zero points, broadcast to the channel shape and checked."""
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), ch_shape).copy()
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise FormatsInputError("scales must be positive and finite")
    zp_in = np.zeros(ch_shape) if zero_point is None else np.asarray(zero_point)
    zps = np.broadcast_to(zp_in, ch_shape)
    if not np.all(zps == np.round(zps)) or np.any((zps < qmin) | (zps > qmax)):
        raise FormatsInputError(f"zero points must be integers in [{qmin}, {qmax}]")
    zps = zps.astype(np.int64)
    if scheme == "symmetric" and np.any(zps != 0):
        raise FormatsInputError("symmetric quantization has zero point 0")
    return scales, zps


def _ranges(x: np.ndarray, lo_given: Any, hi_given: Any, ch_shape: tuple[int, ...],
            reduce_axes: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """The min and max to quantize over: the caller's (checked), else the data's, per channel."""
    if lo_given is not None:
        lo = np.broadcast_to(np.asarray(lo_given, dtype=np.float64), ch_shape)
        hi = np.broadcast_to(np.asarray(hi_given, dtype=np.float64), ch_shape)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo > hi):
            raise FormatsInputError("min/max must be finite with min <= max")
        return lo, hi
    if x.size == 0:
        return np.zeros(ch_shape), np.zeros(ch_shape)
    if reduce_axes is None:
        return x.min(), x.max()
    return x.min(axis=reduce_axes), x.max(axis=reduce_axes)


def _normalize_axis(axis: int, ndim: int) -> int:
    a = int(axis)
    if not -ndim <= a < ndim:
        raise IndexError(f"axis {axis} is out of bounds for an array with {ndim} dimensions")
    return a % ndim
