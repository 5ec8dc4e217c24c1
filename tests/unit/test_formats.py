"""Tests for edgeq.precision.formats: float encodings, linear quantization, the format table,
parsing and the text/JSON views. Expected bit patterns and constants are worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.precision.explain import explain, parse_value, render_text, to_json
from edgeq.precision.formats import (
    FLOAT_FORMATS,
    FormatsInputError,
    encode_float,
    format_table,
    linear_params,
    quantize_dequantize,
    quantize_linear,
)


def enc(value, fmt):
    return encode_float(value, fmt)


# ---------------------------------------------------------------- float encodings

def test_85_125_fp32_bits():
    e = enc(85.125, "fp32")
    # 85.125 = 1010101.001b = 1.010101001b x 2^6; exponent 6 + 127 = 133 = 10000101b
    assert e.bit_string == "0 10000101 01010100100000000000000"
    assert e.hex == "0x42aa4000"
    assert (e.biased_exponent, e.unbiased_exponent) == (133, 6)
    assert e.stored == 85.125 and e.error == 0 and e.relative_error == 0
    assert e.number_class == "normal" and e.notes == ()


def test_85_125_fp16_bits():
    e = enc(85.125, "FP16")
    # exponent 6 + 15 = 21 = 10101b; the 10-bit fraction 0101010010 holds all of it
    assert e.bit_string == "0 10101 0101010010"
    assert (e.biased_exponent, e.unbiased_exponent) == (21, 6)
    assert e.stored == 85.125 and e.error == 0


def test_85_125_bf16_rounds_to_nearest_even():
    e = enc(85.125, "bfloat16")
    # fraction 0101010|01 -> the dropped bits 01 are below half a step (0.5): round down to 85
    assert e.bit_string == "0 10000101 0101010"
    assert e.stored == 85.0
    assert e.error == -0.125
    assert e.relative_error == pytest.approx(-0.125 / 85.125, rel=1e-15)


def test_bf16_ties_go_to_even():
    # 1 + 2^-8 is exactly half way between 1 and 1 + 2^-7: even (fraction ...0) is 1.0
    assert enc(1 + 2**-8, "bf16").stored == 1.0
    # 1 + 3*2^-8 is half way between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up
    assert enc(1 + 3 * 2**-8, "bf16").stored == 1 + 2**-6


def test_fp16_largest_finite_and_overflow():
    e = enc(65504, "fp16")
    assert e.bit_string == "0 11110 1111111111"
    assert e.error == 0 and e.number_class == "normal" and e.notes == ()

    e = enc(65520, "fp16")  # half way between 65504 (odd fraction) and 65536 (-> Inf): even wins
    assert e.number_class == "inf" and e.stored == math.inf
    assert e.bit_string == "0 11111 0000000000"
    assert e.notes == ("overflow: 65520 rounds to +Inf in FP16 (largest finite 65504)",)

    e = enc(-65520, "fp16")
    assert e.stored == -math.inf and e.sign == "1"
    assert "-Inf" in e.notes[0]

    e = enc(65519, "fp16")
    assert e.stored == 65504 and e.number_class == "normal" and e.error == -15
    assert e.notes and "rounds down" in e.notes[0]


def test_underflow_1e8():
    e = enc(1e-8, "fp16")
    assert e.number_class == "zero" and e.stored == 0.0
    assert e.bit_string == "0 00000 0000000000"
    assert e.notes == ("underflow: 1e-08 is below FP16's smallest subnormal 5.96e-08 / 2 "
                       "and becomes 0",)
    b = enc(1e-8, "bf16")
    assert b.number_class == "normal" and b.notes == ()
    assert abs(b.relative_error) < 2**-8
    assert b.unbiased_exponent == -27  # 2^-27 = 7.45e-9 <= 1e-8 < 2^-26


def test_subnormal_1e7():
    e = enc(1e-7, "fp16")
    # 1e-7 / 2^-24 = 1.68 -> rounds to 2 * 2^-24: fraction 0000000010
    assert e.number_class == "subnormal"
    assert e.biased_exponent == 0 and e.unbiased_exponent == -14
    assert e.bit_string == "0 00000 0000000010"
    assert e.stored == 2 * 2.0**-24
    assert e.notes and e.notes[0].startswith("underflow: 1e-07 is below FP16's smallest normal")
    assert "2 significant bits" in e.notes[0]


def test_half_smallest_subnormal_ties_to_zero():
    e = enc(2.0**-25, "fp16")
    assert e.stored == 0 and "exactly half" in e.notes[0]
    assert enc(2.0**-25 * (1 + 2**-20), "fp16").stored == 2.0**-24


def test_negative_sign_bit():
    assert enc(-2.5, "fp32").bit_string == "1 10000000 01000000000000000000000"
    assert enc(-2.5, "fp16").bit_string == "1 10000 0100000000"
    assert enc(-2.5, "bf16").bit_string == "1 10000000 0100000"
    z = enc(-0.0, "fp32")
    assert z.sign == "1" and z.number_class == "zero"


@pytest.mark.parametrize("fmt, ones", [("fp32", 8), ("fp16", 5), ("bf16", 8), ("fp8_e5m2", 5)])
def test_nan_and_inf_have_all_ones_exponent(fmt, ones):
    n = enc(math.nan, fmt)
    assert n.number_class == "nan" and n.exponent == "1" * ones and "1" in n.mantissa
    assert math.isnan(n.stored) and math.isnan(n.error)
    i = enc(-math.inf, fmt)
    assert i.number_class == "inf" and i.exponent == "1" * ones and set(i.mantissa) == {"0"}
    assert i.sign == "1" and i.stored == -math.inf and i.error == 0 and i.notes == ()


def test_e4m3_has_no_inf():
    e = enc(math.inf, "fp8_e4m3")
    assert e.number_class == "nan" and e.bit_string == "0 1111 111"
    assert e.notes == ("no Inf in FP8 E4M3: +inf becomes NaN",)
    # 448 = 1.75 x 2^8 is the largest finite: exponent 1111 is an ordinary exponent in E4M3
    m = enc(448, "e4m3")
    assert m.number_class == "normal" and m.bit_string == "0 1111 110" and m.error == 0
    # 464 is the tie between 448 (even) and 480 (would be S.1111.111 = NaN): rounds to 448
    assert enc(464, "e4m3").stored == 448
    # above that ml_dtypes gives NaN (no saturation)
    o = enc(500, "e4m3")
    assert o.number_class == "nan"
    assert o.notes[0].startswith("overflow: no Inf in FP8 E4M3, 500 becomes NaN")


def test_e5m2_overflow_to_inf():
    assert enc(57344, "e5m2").bit_string == "0 11110 11"
    e = enc(61440, "e5m2")  # tie between 57344 (odd) and 65536 (Inf): goes to Inf
    assert e.number_class == "inf" and "overflow" in e.notes[0]


def test_fp32_overflow_and_exact_error():
    e = enc(1e39, "fp32")
    assert e.number_class == "inf" and e.error == math.inf
    # 0.1 in FP32 is 13421773 * 2^-27; the error is exact, not a float64 subtraction artefact
    e = enc(0.1, "fp32")
    assert e.stored == 13421773 * 2.0**-27
    assert e.stored_exact == "0.100000001490116119384765625"


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown float format"):
        enc(1.0, "fp12")


# ---------------------------------------------------------------- format table

def test_format_table():
    rows = {r["format"]: r for r in format_table()}
    assert rows["FP16"]["largest_finite"] == 65504
    assert rows["FP16"]["epsilon"] == 2.0**-10
    assert rows["FP16"]["smallest_subnormal"] == 2.0**-24
    assert rows["FP16"]["smallest_normal"] == 2.0**-14
    assert rows["BF16"]["epsilon"] == 2.0**-7
    assert rows["BF16"]["largest_finite"] == pytest.approx(3.3895e38, rel=1e-4)
    assert rows["BF16"]["largest_finite"] == (2 - 2**-7) * 2.0**127
    assert rows["FP32"]["epsilon"] == 2.0**-23 and rows["FP32"]["bias"] == 127
    assert rows["FP8 E4M3"]["largest_finite"] == 448 and rows["FP8 E4M3"]["has_inf"] is False
    assert rows["FP8 E4M3"]["bias"] == 7
    assert rows["FP8 E5M2"]["largest_finite"] == 57344 and rows["FP8 E5M2"]["has_inf"] is True
    assert rows["FP16"]["decimal_digits"] == pytest.approx(3.01, abs=0.01)
    assert rows["INT8 asymmetric"]["levels"] == 256
    assert (rows["INT8 asymmetric"]["code_min"], rows["INT8 asymmetric"]["code_max"]) == (-128, 127)
    assert rows["INT8 asymmetric"]["relative_precision"] == 1 / 255
    assert rows["INT8 symmetric"]["levels"] == 255
    assert rows["INT4 asymmetric"]["levels"] == 16
    assert rows["INT4 symmetric"]["code_min"] == -7


def test_float_format_specs():
    f = FLOAT_FORMATS["bf16"]
    assert (f.bits, f.exponent_bits, f.mantissa_bits, f.bias) == (16, 8, 7, 127)
    f = FLOAT_FORMATS["fp8_e5m2"]
    assert (f.bits, f.exponent_bits, f.mantissa_bits, f.bias) == (8, 5, 2, 15)


# ---------------------------------------------------------------- linear quantization

def test_asymmetric_int8_hand_checked():
    # range [-1, 2]: s = 3/255, z = round(85) - 128 = -43
    c = quantize_linear(1.0, min=-1.0, max=2.0)
    assert c.params.scale == 3 / 255 and c.params.zero_point == -43
    # 1.0 / s = 85 exactly -> q = 85 + (-43) = 42
    assert c.code == 42
    assert c.unsigned_code == 170  # (1 - (-1)) / s = 170
    assert c.dequantized == pytest.approx(1.0, abs=1e-12)
    assert not c.clipped and not c.out_of_range
    lo = quantize_linear(-1.0, min=-1.0, max=2.0)
    hi = quantize_linear(2.0, min=-1.0, max=2.0)
    assert (lo.code, lo.unsigned_code, hi.code, hi.unsigned_code) == (-128, 0, 127, 255)


def test_round_half_away_from_zero():
    # scale 1, zero point 0: the code is round(x)
    codes = [quantize_linear(x, scale=1.0, zero_point=0).code for x in (0.5, 1.5, 2.5, -0.5, -2.5)]
    assert codes == [1, 2, 3, -1, -3]  # half-even would give 0, 2, 2, 0, -2
    # the largest double below 0.5 must round to 0 (floor(x + 0.5) would give 1)
    assert quantize_linear(0.49999999999999994, scale=1.0).code == 0


def test_symmetric_int8_hand_checked():
    c = quantize_linear(-1.0, scheme="symmetric", min=-2.54, max=1.0)
    assert c.params.scale == pytest.approx(0.02) and c.params.zero_point == 0
    assert c.code == -50 and c.dequantized == pytest.approx(-1.0)
    assert (c.params.code_min, c.params.code_max) == (-127, 127)
    assert c.unsigned_code is None


def test_int4_codes():
    c = quantize_linear(3.0, bits=4, min=0.0, max=7.5)  # s = 0.5, z = -8
    assert (c.params.scale, c.params.zero_point) == (0.5, -8)
    assert (c.code, c.unsigned_code, c.dequantized) == (-2, 6, 3.0)
    s = quantize_linear(3.0, bits=4, scheme="symmetric", min=-7.0, max=7.0)  # s = 1
    assert (s.code, s.params.code_max) == (3, 7)


def test_clipping_flagged():
    c = quantize_linear(10.0, min=-1.0, max=2.0)
    assert c.clipped and c.out_of_range and c.code == 127
    assert c.unsigned_code == 255
    assert c.error == pytest.approx(2.0 - 10.0, abs=0.02)
    assert c.notes and c.notes[0].startswith("clipped: 10 is outside")
    c = quantize_linear(-3.0, scheme="symmetric", bits=4, min=-1.0, max=1.0)
    assert c.clipped and c.code == -7
    assert not quantize_linear(1.5, min=-1.0, max=2.0).clipped


def test_range_from_value_includes_zero():
    c = quantize_linear(5.0)  # range [0, 5]
    assert c.params.range_min == 0.0 and c.params.range_max == 5.0
    assert c.code == 127 and c.params.zero_point == -128 and c.error == 0
    r = explain([2.0, 6.0])
    assert r.params[0].range_min == 0.0 and r.params[0].range_max == 6.0


def test_bad_linear_parameters():
    with pytest.raises(ValueError):
        linear_params(min=3.0, max=1.0)
    with pytest.raises(ValueError):
        linear_params(scale=0.0)
    with pytest.raises(ValueError):
        linear_params(scale=0.1, zero_point=200)
    with pytest.raises(ValueError):
        linear_params(scale=0.1, zero_point=3, scheme="symmetric")
    with pytest.raises(ValueError):
        linear_params(bits=1, min=0, max=1)
    with pytest.raises(FormatsInputError):
        linear_params(min=0, max=1, scale=1.0)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(lo=finite, hi=finite, t=st.floats(0, 1), bits=st.sampled_from([8, 4]),
       scheme=st.sampled_from(["asymmetric", "symmetric"]))
def test_round_trip_error_at_most_half_step(lo, hi, t, bits, scheme):
    lo, hi = min(lo, hi, 0.0), max(lo, hi, 0.0)
    x = lo + t * (hi - lo)
    if scheme == "symmetric":
        m = max(-lo, hi)
        lo, hi = -m, m
    c = quantize_linear(x, bits=bits, scheme=scheme, min=lo, max=hi)
    s = c.params.scale
    assert abs(c.error) <= s / 2 + 1e-9 * max(1.0, abs(x))
    if c.unsigned_code is not None:
        assert abs(c.unsigned_dequantized - x) <= s / 2 + 1e-9 * max(1.0, abs(x))


@settings(max_examples=100, deadline=None)
@given(data=st.lists(finite, min_size=1, max_size=50), bits=st.sampled_from([8, 4]),
       scheme=st.sampled_from(["asymmetric", "symmetric"]))
def test_array_round_trip_and_scalar_agree(data, bits, scheme):
    x = np.array(data)
    r = quantize_dequantize(x, bits, scheme)
    s = float(r.scales)
    assert np.all(np.abs(r.dequantized - x) <= s / 2 + 1e-9 * np.maximum(1.0, np.abs(x)))
    assert not r.clipped.any()
    # the array path and the scalar path use the same parameters and rounding
    lo, hi = float(x.min()), float(x.max())
    for v, q in zip(data[:5], r.q[:5]):
        assert quantize_linear(v, bits=bits, scheme=scheme, min=lo, max=hi).code == q


def _channels(rng, shape=(3, 3, 16, 32)):
    mags = 10.0 ** rng.uniform(-3, 1, size=shape[-1])  # channels 1e-3 .. 10
    return rng.normal(size=shape) * mags


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
def test_per_channel_not_worse_than_per_tensor(seed, scheme):
    w = _channels(np.random.default_rng(seed))
    pt = quantize_dequantize(w, 8, scheme)
    pc = quantize_dequantize(w, 8, scheme, axis=-1)
    assert pc.scales.shape == (32,) and pc.zero_points.shape == (32,) and pc.axis == 3
    assert pt.scales.shape == () and pc.q.shape == w.shape and pc.q.dtype == np.int8
    mse_t = np.mean((pt.dequantized - w) ** 2)
    mse_c = np.mean((pc.dequantized - w) ** 2)
    assert mse_c <= mse_t
    assert mse_c < mse_t / 3  # the per-tensor step is set by the largest channel
    # relative to each channel's own size, the small channels gain by orders of magnitude
    ms = np.mean(w**2, axis=(0, 1, 2))
    rel_t = np.mean(np.mean((pt.dequantized - w) ** 2, axis=(0, 1, 2)) / ms)
    rel_c = np.mean(np.mean((pc.dequantized - w) ** 2, axis=(0, 1, 2)) / ms)
    assert rel_c < rel_t / 100
    # each channel's error stays within half of its own step
    err = np.abs(pc.dequantized - w).max(axis=(0, 1, 2))
    assert np.all(err <= pc.scales / 2 * (1 + 1e-9))
    if scheme == "symmetric":
        np.testing.assert_allclose(pc.scales, np.abs(w).max(axis=(0, 1, 2)) / 127)


def test_per_channel_matches_one_tensor_per_channel():
    w = _channels(np.random.default_rng(7))
    pc = quantize_dequantize(w, 4, "asymmetric", axis=-1)
    for c in (0, 5, 31):
        one = quantize_dequantize(w[..., c], 4, "asymmetric")
        np.testing.assert_array_equal(pc.q[..., c], one.q)
        assert pc.scales[c] == one.scales and pc.zero_points[c] == one.zero_points


def test_asymmetric_beats_symmetric_on_relu_outputs():
    x = np.random.default_rng(0).uniform(0, 6, size=10_000)
    a = quantize_dequantize(x, 8, "asymmetric")
    s = quantize_dequantize(x, 8, "symmetric")
    mse_a = np.mean((a.dequantized - x) ** 2)
    mse_s = np.mean((s.dequantized - x) ** 2)
    assert mse_a < mse_s / 2  # step 6/255 vs 6/127: about 4x lower MSE
    assert int(a.zero_points) == -128


def test_array_given_scale_and_clipping():
    x = np.array([-1.0, 0.0, 0.3, 5.0])
    r = quantize_dequantize(x, 8, "asymmetric", scale=0.01, zero_point=-28)
    assert r.q.tolist() == [-128, -28, 2, 127]
    assert r.clipped.tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        quantize_dequantize(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        quantize_dequantize(np.ones((2, 2)), axis=2)


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, value", [
    ("85.125", 85.125), ("-3e-5", -3e-5), (" 1_000 ", 1000.0), ("inf", math.inf),
    ("-inf", -math.inf), ("+Infinity", math.inf), ("0x1p-14", 2.0**-14),
    ("-0x1.8p1", -3.0), ("0", 0.0), ("-0.0", -0.0),
])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_parse_nan():
    assert math.isnan(parse_value("nan")) and math.isnan(parse_value("NaN"))


@pytest.mark.parametrize("text, msg", [
    ("", "empty"), ("abc", "not a number"), ("1.2.3", "not a number"),
    ("1e400", "too large"), ("1e-400", "too small"), ("0x1p-2000", "too small"),
    ("0x1p5000", "too large"), ("0xzz", "not"),
])
def test_parse_value_rejects(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_value(text)


# ---------------------------------------------------------------- views

def test_render_text_and_json():
    vals = [parse_value(t) for t in "85.125 65504 65520 1e-8 -2.5 nan".split()]
    report = explain(vals, bits=(8, 4))
    text = render_text(report)
    assert "0 10000101 01010100100000000000000  exp 133 (2^6)" in text
    line = next(ln for ln in text.splitlines() if "0 10000101 0101010 " in ln)
    assert "stored 85 " in line and "error -0.125" in line
    assert "overflow: 65520 rounds to +Inf in FP16 (largest finite 65504)" in text
    assert "underflow: 1e-08 is below FP16's smallest subnormal 5.96e-08 / 2" in text
    assert "INT4 asym" in text and "Formats:" in text and "(no Inf)" in text

    data = to_json(report)
    json.dumps(data, allow_nan=False)  # strict JSON: nan/inf are strings
    v0 = data["values"][0]
    assert v0["floats"][0]["bits"] == "0 10000101 01010100100000000000000"
    assert v0["floats"][2]["stored"] == 85.0 and v0["floats"][2]["error"] == -0.125
    assert data["values"][5]["floats"][0]["class"] == "nan"
    assert data["values"][2]["floats"][1]["stored"] == "+inf"
    assert len(data["quantization"]) == 4 and len(v0["ints"]) == 4
    assert {r["format"] for r in data["table"]} >= {"FP32", "INT8 asymmetric", "INT4 symmetric"}


def test_narrow_formats_are_cast_from_the_fp32_value():
    # Documented behaviour (what a float32 model does, and what ml_dtypes does from float64):
    # 1 + 2^-11 + 2^-40 is 1 + 2^-11 in FP32, an exact FP16 tie -> even -> 1.0
    # (a direct float64 -> float16 cast would give 1 + 2^-10).
    v = 1 + 2**-11 + 2**-40
    assert enc(v, "fp32").stored == 1 + 2**-11
    assert enc(v, "fp16").stored == 1.0
    assert enc(v, "fp16").error == -(2**-11 + 2**-40)  # still measured against the float64 value
    assert enc(1 + 2**-8 + 2**-30, "bf16").stored == 1.0
