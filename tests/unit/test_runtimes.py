"""edgeq.emulator: the real LiteRT and TFLite Micro interpreters on the bundled example (no mocks).

The example digits CNN is converted the way `edgeq convert` does (batch 1 baked in); references
are computed independently here (a plain per-sample LiteRT loop, numpy formulas).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import CalibrationError

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def example():
    from edgeq.calibration import load_dataset
    from edgeq.loading import load_model

    return load_model(REPO / "examples" / "digits_cnn.keras"), load_dataset("digits")


def _recipe(mode: str):  # type: ignore[no-untyped-def]
    from edgeq.quantize.recipe import recipe_for
    from edgeq.targets import load_target

    return recipe_for(load_target("mcu"), mode, have_calibration=True, calibration_samples=100)


@pytest.fixture(scope="module")
def models(example) -> dict[str, bytes]:
    from edgeq.quantize.ptq import convert_float32, quantize

    model, calibration = example
    source = model.converter_source()
    return {"int8": quantize(source, _recipe("int8"), calibration),
            "int16x8": quantize(source, _recipe("int16x8"), calibration),
            "float32": convert_float32(source)}


@pytest.fixture(scope="module")
def eval_set():
    from edgeq.calibration import load_dataset

    return load_dataset("digits:eval")


def _plain_loop(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Independent reference: one sample at a time in LiteRT, raw (still quantized) outputs."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeq.emulator.runtimes import quantize_inputs

    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    q = quantize_inputs(x, inp["dtype"], *inp["quantization"])
    rows = []
    for i in range(len(q)):
        interp.set_tensor(inp["index"], q[i:i + 1])
        interp.invoke()
        rows.append(interp.get_tensor(out["index"]))
    scale, zero = out["quantization"]
    raw = np.concatenate(rows)
    return (raw.astype(np.float32) - zero) * np.float32(scale) if scale else raw


# -- LiteRT -------------------------------------------------------------------------------------


def test_batched_litert_is_bit_exact_with_per_sample(models, eval_set) -> None:
    from edgeq.emulator.runtimes import run_litert

    x = eval_set.inputs[0]
    done: list[int] = []
    result = run_litert(models["int8"], [x], batch_size=64, on_progress=done.append)
    assert result.batched and result.note == ""
    assert result.samples == len(x) and result.outputs[0].shape == (len(x), 10)
    assert result.outputs[0].dtype == np.float32
    assert np.array_equal(result.outputs[0], _plain_loop(models["int8"], x))
    assert done == sorted(done) and done[-1] == len(x)


def test_per_sample_fallback_says_why(models, eval_set) -> None:
    from edgeq.emulator.runtimes import run_litert

    x = eval_set.inputs[0][:50]
    single = run_litert(models["int8"], [x[:1]])
    assert not single.batched and "single sample" in single.note
    loop = run_litert(models["int8"], [x], batch_size=1)
    assert not loop.batched and loop.note
    assert np.array_equal(loop.outputs[0], run_litert(models["int8"], [x], batch_size=16).outputs[0])


def test_float32_model_runs_in_both_runtimes(example, models, eval_set) -> None:
    from edgeq.emulator.runtimes import run_litert, run_tflm

    x = eval_set.inputs[0][:100]
    reference = example[0].predict([x])[0]
    lite = run_litert(models["float32"], [x])
    micro = run_tflm(models["float32"], [x])
    assert lite.batched
    np.testing.assert_allclose(lite.outputs[0], reference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(micro.outputs[0], reference, rtol=1e-4, atol=1e-5)


def test_unsafe_ops_and_multiple_inputs_outputs() -> None:
    """A graph that reverses along the batch axis is never batched; multi-I/O matches by position."""
    from edgeq._tf import captured_output, tf
    from edgeq.emulator.runtimes import run_litert, run_tflm

    tfm = tf()

    @tfm.function(input_signature=[tfm.TensorSpec([1, 4], tfm.float32), tfm.TensorSpec([1, 3], tfm.float32)])
    def two(a, b):  # type: ignore[no-untyped-def]
        return {"joined": tfm.concat([a, b], 1) * 2.0, "total": tfm.reduce_sum(a, axis=1, keepdims=True)}

    @tfm.function(input_signature=[tfm.TensorSpec([1, 5], tfm.float32)])
    def reverse(a):  # type: ignore[no-untyped-def]
        return tfm.reverse(a, axis=[0]) + 1.0

    with captured_output():
        blobs = [tfm.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert()
                 for f in (two, reverse)]
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(20, 3)).astype(np.float32)
    for result in (run_litert(blobs[0], [a, b]), run_tflm(blobs[0], [a, b])):
        by_shape = {o.shape: o for o in result.outputs}
        np.testing.assert_allclose(by_shape[(20, 7)], np.concatenate([a, b], 1) * 2, rtol=1e-6)
        np.testing.assert_allclose(by_shape[(20, 1)], a.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    flipped = run_litert(blobs[1], [a[:, :1].repeat(5, 1)])
    assert not flipped.batched and "REVERSE_V2" in flipped.note
    np.testing.assert_allclose(flipped.outputs[0], a[:, :1].repeat(5, 1) + 1, rtol=1e-6)


def test_wrong_input_shape_is_a_calibration_error(models) -> None:
    from edgeq.calibration import load_dataset
    from edgeq.emulator.runtimes import run_litert, run_tflm

    mnist = load_dataset("mnist:eval").inputs[0][:4]
    for run in (run_litert, run_tflm):
        with pytest.raises(CalibrationError, match=r"expects samples of shape \(8, 8, 1\)"):
            run(models["int8"], [mnist])
    with pytest.raises(CalibrationError, match="1 input"):
        run_litert(models["int8"], [mnist, mnist])


# -- TFLite Micro and the confirmation ----------------------------------------------------------


def test_tflm_and_litert_builtin_kernels_stay_close(models, eval_set) -> None:
    """LiteRT picks its kernels by CPU features, so whether its builtin kernels are bit-exact with
    TFLM belongs to the machine; a few LSB apart on a few samples at most, everywhere. Its default
    (XNNPACK) path may be further off, which can move a top-1."""
    from conftest import LITERT_TFLM_MAX_DIFFERING, LITERT_TFLM_MAX_LSB
    from edgeq.emulator.accuracy import raw_disagreement
    from edgeq.emulator.runtimes import run_litert, run_tflm

    x = eval_set.inputs[0][:150]
    micro = run_tflm(models["int8"], [x])
    builtin = run_litert(models["int8"], [x], kernels="builtin")
    default = run_litert(models["int8"], [x])
    differing, lsb = raw_disagreement(builtin.raw_outputs, micro.raw_outputs)
    assert lsb is not None and lsb <= LITERT_TFLM_MAX_LSB, f"{differing} samples differ, by up to {lsb} LSB"
    assert differing <= LITERT_TFLM_MAX_DIFFERING * len(x), f"{differing} samples differ, by up to {lsb} LSB"
    assert np.mean(micro.outputs[0].argmax(1) == default.outputs[0].argmax(1)) >= 0.98


def test_raw_disagreement_counts_samples_and_lsb() -> None:
    from edgeq.emulator.accuracy import raw_disagreement

    a = np.zeros((5, 3), np.int8)
    b = a.copy()
    assert raw_disagreement([a], [b]) == (0, 0)
    b[1, 2], b[4, 0], b[4, 1] = 1, -3, 2
    assert raw_disagreement([a], [b]) == (2, 3)
    assert raw_disagreement([a, np.zeros((5, 1), np.int16)], [a, np.full((5, 1), 7, np.int16)]) == (5, 7)
    floats = np.array([[np.nan, 1.0]] * 5, np.float32)
    assert raw_disagreement([floats], [floats.copy()]) == (0, None)
    with pytest.raises(ValueError, match="shapes"):
        raw_disagreement([a], [a[:, :2]])


@pytest.fixture(scope="module")
def max_pool_int8(example, tmp_path_factory) -> bytes:
    """An int8 model of MAX_POOL_2D and RESHAPE only: picking a maximum leaves no rounding to any
    kernel, so LiteRT and TFLM agree bit for bit on every CPU."""
    import keras

    from edgeq.loading import load_model
    from edgeq.quantize.ptq import quantize

    path = tmp_path_factory.mktemp("max-pool") / "max_pool.keras"
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.MaxPooling2D(2), keras.layers.Flatten()]).save(path)
    return quantize(load_model(path).converter_source(), _recipe("int8"), example[1])


def test_evaluate_uses_litert_for_the_full_set_where_it_matches_tflm(max_pool_int8, eval_set) -> None:
    from edgeq.emulator.accuracy import evaluate
    from edgeq.emulator.runtimes import run_litert, run_tflm
    from edgeq.tflite.reader import read_tflite

    assert read_tflite(max_pool_int8).all_op_names == ("MAX_POOL_2D", "RESHAPE")
    x = eval_set.inputs[0]
    done: list[int] = []
    ev = evaluate(max_pool_int8, [x], runtime="tflm", confirm_samples=40, on_progress=done.append)
    assert ev.runtime_used == "litert" and ev.result.samples == len(x) and ev.result.kernels == "builtin"
    assert ev.confirmation.to_dict() == {"runtime": "tflm", "samples": 40, "identical": True,
                                         "max_abs_difference": 0.0, "differing_samples": 0, "max_lsb_difference": 0}
    assert np.array_equal(ev.result.outputs[0], run_litert(max_pool_int8, [x], kernels="builtin").outputs[0])
    assert np.array_equal(ev.result.outputs[0], run_tflm(max_pool_int8, [x]).outputs[0])
    assert done == sorted(done) and done[-1] == len(x)
    assert evaluate(max_pool_int8, [x], runtime="litert").confirmation is None


def test_evaluate_runs_every_sample_in_tflm_where_litert_differs(models, eval_set, monkeypatch) -> None:
    """The other branch, forced on any machine: LiteRT moved by 1 LSB on sample 3 of the subset."""
    from conftest import stand_in_a_cpu_whose_litert_differs
    from edgeq.emulator.accuracy import evaluate
    from edgeq.emulator.runtimes import run_tflm

    stand_in_a_cpu_whose_litert_differs(monkeypatch, sample=3)
    x = eval_set.inputs[0]
    done: list[int] = []
    ev = evaluate(models["int8"], [x], runtime="tflm", confirm_samples=40, on_progress=done.append)
    direct = run_tflm(models["int8"], [x])
    assert ev.runtime_used == "tflm" and ev.result.runtime == "tflm"
    conf = ev.confirmation
    assert conf.identical is False and conf.differing_samples >= 1 and conf.max_lsb_difference >= 1
    assert np.array_equal(ev.result.outputs[0], direct.outputs[0])
    assert np.array_equal(ev.result.raw_outputs[0], direct.raw_outputs[0])
    assert conf.summary() in ev.result.note and "every sample ran in TFLM" in ev.result.note
    assert done == sorted(done) and done[-1] == len(x)


def test_int16x8_outputs_come_from_the_runtime_evaluate_names(models, eval_set) -> None:
    """int16x8 kernels differ between LiteRT and TFLM on some CPUs: whichever branch this one takes,
    the outputs are that runtime's."""
    from edgeq.emulator.accuracy import evaluate
    from edgeq.emulator.runtimes import run_litert, run_tflm

    x = eval_set.inputs[0]
    ev = evaluate(models["int16x8"], [x], runtime="tflm", confirm_samples=len(x) // 2)
    if ev.confirmation.identical:
        expected = run_litert(models["int16x8"], [x], kernels="builtin")
    else:
        expected = run_tflm(models["int16x8"], [x])
        assert ev.confirmation.max_lsb_difference > 0
    assert ev.runtime_used == expected.runtime
    assert np.array_equal(ev.result.outputs[0], expected.outputs[0])


def test_confirmation_summary_says_how_far_and_how_often() -> None:
    from edgeq.emulator.accuracy import Confirmation

    def summary(**fields) -> str:
        return Confirmation("tflm", 100, max_abs_difference=0.0039, **fields).summary()

    assert summary(identical=True, differing_samples=0, max_lsb_difference=0) == (
        "LiteRT was bit-exact with TFLM on the first 100 samples")
    assert summary(identical=False, differing_samples=2, max_lsb_difference=1) == (
        "LiteRT's kernels on this CPU differed from TFLM by up to 1 LSB on 2 of the first 100 samples")
    assert "by up to 0.0039" in summary(identical=False, differing_samples=5, max_lsb_difference=None)
    assert summary(identical=False, error="LiteRT could not run the model: boom") == (
        "LiteRT could not run the model: boom")


# -- quantization and metrics -------------------------------------------------------------------


@pytest.mark.parametrize("dtype,scale,zero", [(np.int8, 0.0039215, -128), (np.int8, 0.05, 3),
                                              (np.uint8, 0.02, 128), (np.int16, 0.001, 0)])
def test_quantize_dequantize_round_trip(dtype, scale: float, zero: int) -> None:
    from edgeq.emulator.runtimes import dequantize, quantize_inputs

    info = np.iinfo(dtype)
    lo, hi = (info.min - zero) * scale, (info.max - zero) * scale
    x = np.random.default_rng(1).uniform(lo, hi, size=5000).astype(np.float32)
    q = quantize_inputs(x, dtype, scale, zero)
    assert q.dtype == dtype
    float32_slack = 4 * float(np.spacing(np.float32(max(abs(lo), abs(hi)))))
    error = np.abs(dequantize(q, scale, zero).astype(np.float64) - x.astype(np.float64))
    assert np.max(error) <= scale / 2 + float32_slack
    assert quantize_inputs(np.array([hi * 10, lo * 10]), dtype, scale, zero).tolist() == [info.max, info.min]
    assert quantize_inputs(x, np.float32, 0.0, 0).dtype == np.float32
    assert dequantize(q, 0.0, 0).dtype == np.float32


def test_output_error_and_compare_match_numpy(example, models, eval_set) -> None:
    from edgeq.emulator.accuracy import SNR_CAP_DB, compare, output_error
    from edgeq.emulator.runtimes import run_litert

    x, y = eval_set.inputs[0], eval_set.labels
    ref = example[0].predict([x])[0].astype(np.float64)
    quant = run_litert(models["int8"], [x]).outputs[0].astype(np.float64)

    err = output_error(ref, quant)
    assert math.isclose(err.mean_abs, np.mean(np.abs(ref - quant)), rel_tol=1e-9)
    assert math.isclose(err.max_abs, np.max(np.abs(ref - quant)), rel_tol=1e-9)
    assert math.isclose(err.snr_db, 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - quant) ** 2)), rel_tol=1e-9)
    cosine = np.dot(ref.ravel(), quant.ravel()) / np.linalg.norm(ref) / np.linalg.norm(quant)
    assert math.isclose(err.cosine, cosine, rel_tol=1e-9)
    same = output_error(ref, ref)
    assert same.snr_db == SNR_CAP_DB and same.cosine == 1.0 and same.max_abs == 0.0
    assert output_error(np.zeros(4), np.zeros(4)).cosine == 1.0

    metrics = compare([ref], [quant], y)
    float_acc, quant_acc = np.mean(ref.argmax(1) == y), np.mean(quant.argmax(1) == y)
    assert metrics.samples == len(x)
    assert math.isclose(metrics.float_top1, float_acc) and math.isclose(metrics.quantized_top1, quant_acc)
    assert math.isclose(metrics.drop_points, (float_acc - quant_acc) * 100)
    assert math.isclose(metrics.top1_agreement, np.mean(ref.argmax(1) == quant.argmax(1)))
    assert metrics.quantized_top1 > 0.9
    assert metrics.part(None).to_dict()["errors"][0]["snr_db"] == round(err.snr_db, 6)

    no_ref = compare(None, [quant], None)
    assert (no_ref.float_top1, no_ref.quantized_top1, no_ref.top1_agreement, no_ref.errors) == (None,) * 4
    scalar = compare([ref[:, :1]], [quant[:, :1]], y)
    assert scalar.top1_agreement is None and scalar.quantized_top1 is None and scalar.errors


# -- per-layer error ----------------------------------------------------------------------------


def test_per_layer_errors_for_int8(example, eval_set) -> None:
    from edgeq.quantize.debugger import per_layer_errors
    from edgeq.quantize.ptq import configured_converter

    model, calibration = example
    rows = per_layer_errors(configured_converter(model.converter_source(), _recipe("int8"), calibration),
                            list(eval_set.inputs),
                            samples=32)
    assert rows and {"CONV_2D", "FULLY_CONNECTED"} <= {r.op for r in rows}
    scores = [r.rmse_over_scale for r in rows]
    assert all(math.isfinite(v) for r in rows for v in (r.rmse_over_scale, r.mean_abs_error, r.max_abs_error))
    assert scores == sorted(scores, reverse=True)
    assert all(len(r.layer) <= 60 for r in rows)


def test_labels_as_a_column_of_class_ids_count_like_a_vector() -> None:
    from edgeq.emulator.accuracy import compare

    rng = np.random.default_rng(3)
    scores = rng.random((50, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    expected = float(np.mean(scores.argmax(1) == labels))
    for y in (labels, labels[:, None], np.eye(4)[labels]):
        assert compare([scores], [scores], y).quantized_top1 == pytest.approx(expected)
