"""The integer requantization TFLite Micro's int8 kernels use, computed once at generation time.

Written from the published arithmetic (gemmlowp's fixed-point multiply, TFLite's
QuantizeMultiplier): a real multiplier m becomes (q, shift) with m ~= q * 2^(shift - 31), q in
[2^30, 2^31). The C side (edgeq/templates/aot_runtime.h.j2) applies it; `requantize` here does the
same in Python so that the two can be tested against each other.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _round_half_away(x: float) -> int:
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(q, shift) with real ~= q * 2^(shift - 31); (0, 0) for 0 and for multipliers below 2^-32."""
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)
    q = _round_half_away(mantissa * (1 << 31))
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if q > INT32_MAX:
        raise ValueError(f"multiplier {real} does not fit 32 bits")
    return q, shift


def effective_scale(input_scale: float, weight_scale: float, output_scale: float) -> float:
    """input_scale * weight_scale / output_scale, each widened from float32 first (as TFLM does)."""
    return float(np.float32(input_scale)) * float(np.float32(weight_scale)) / float(np.float32(output_scale))


def _high_mul(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    total = ab + nudge
    return (abs(total) >> 31) * (1 if total >= 0 else -1)  # C's int64 division: toward zero


def _divide_by_pot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def requantize(acc: int, q: int, shift: int) -> int:
    """acc * q * 2^(shift - 31), rounded as TFLM's MultiplyByQuantizedMultiplier rounds."""
    left, right = max(shift, 0), max(-shift, 0)
    wide = ((acc * (1 << left) - INT32_MIN) % (1 << 32)) + INT32_MIN  # int32 arithmetic, as in C
    return _divide_by_pot(_high_mul(wide, q), right)


def activation_range(activation: int, scale: float, zero_point: int, qmin: int = -128,
                     qmax: int = 127) -> tuple[int, int]:
    """The clamp of a fused activation (0 NONE, 1 RELU, 2 RELU_N1_TO_1, 3 RELU6) in output codes."""
    def code(value: float) -> int:
        return zero_point + _round_half_away(float(np.float32(value) / np.float32(scale)))

    if activation == 0:
        return qmin, qmax
    if activation == 1:
        return max(qmin, code(0.0)), qmax
    if activation == 3:
        return max(qmin, code(0.0)), min(qmax, code(6.0))
    if activation == 2:
        return max(qmin, code(-1.0)), min(qmax, code(1.0))
    raise ValueError(f"fused activation {activation}")


def reduced_multiplier(q: int) -> int:
    """The 16-bit multiplier TFLM's requantization of a 64-bit accumulator uses in place of the
    31-bit `q`: q / 2^16 rounded half up, capped at 0x7FFF (it must stay below 2^15)."""
    return (q + (1 << 15)) >> 16 if q < 0x7FFF0000 else 0x7FFF


def requantize64(acc: int, q: int, shift: int) -> int:
    """acc * q * 2^(shift - 31) for a 64-bit accumulator (the int16 activation kernels), as TFLM
    rounds it: one rounding, half up (toward +infinity), after multiplying by the reduced
    multiplier; the result truncated to int32 as C's conversion does."""
    total = 15 - shift
    wide = (acc * reduced_multiplier(q) + (1 << (total - 1))) >> total
    return ((wide - INT32_MIN) % (1 << 32)) + INT32_MIN


SIGMOID_TABLE_RAISED = (4, 8, 12, 14, 15, 16, 17, 19, 20, 21, 22, 25, 27, 28, 29, 30, 31, 33, 34, 35, 37, 39, 40, 41,
                        43, 44, 45, 46, 49, 50, 54, 62, 63, 64, 66, 82, 86, 93, 100, 103, 112, 116, 135, 255)
"""Where TFLite's sigmoid table is one above round(65536 * sigmoid(k / 24)): it is tuned for the
linear interpolation between its entries, not rounded."""


def sigmoid_table() -> np.ndarray:
    """The 256 entries TFLite's int16 LOGISTIC and TANH (and so its integer LSTM's gates and cell)
    interpolate between: sigmoid(k / 24) for k = 0..255 in unsigned Q0.16, exactly as TFLite holds
    them (rounded half away from zero, capped at 65535, plus one at SIGMOID_TABLE_RAISED)."""
    table = np.array([min(math.floor(65536 / (1 + math.exp(-k / 24)) + 0.5), 65535) for k in range(256)],
                     dtype=np.int64)
    table[list(SIGMOID_TABLE_RAISED)] += 1
    return table
