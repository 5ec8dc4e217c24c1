"""edgeq precision and edgeq formats on the bundled example: real Keras model, real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgeq.precision.simulate import FORMATS, simulate
from tests.conftest import run_edgeq

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.keras"


@pytest.fixture(scope="module")
def loaded():
    from edgeq.loading import load_model

    return load_model(EXAMPLE)


@pytest.fixture(scope="module")
def before(loaded):
    return [np.array(w, copy=True) for w in loaded.keras_model.get_weights()]


@pytest.fixture(scope="module")
def result(loaded, digits, before):
    from edgeq.targets import load_target

    data = digits["eval"]
    return simulate(loaded.keras_model, data.inputs, data.labels, model_name=EXAMPLE.name, data_name=data.name,
                    target=load_target("mcu"))


def by_name(result):
    return {f.name: f for f in result.formats}


def test_every_format_ran(result):
    formats = by_name(result)
    assert set(formats) == set(FORMATS)
    assert all(f.mean_logit_diff is not None and not f.note.startswith("cannot run") for f in formats.values()), \
        [f.note for f in formats.values()]
    assert formats["fp32"].mean_logit_diff == 0 and formats["fp32"].top1_agreement == 1.0


def test_half_precision_formats_agree_with_fp32(result):
    formats = by_name(result)
    for name in ("fp16", "bf16", "fp16_act", "bf16_act"):
        assert formats[name].top1_agreement >= 0.99, name
    # FP16 keeps 10 mantissa bits, BF16 7: FP16 is the closer one
    assert formats["fp16"].mean_logit_diff < formats["bf16"].mean_logit_diff


def test_int4_is_the_worst_and_per_channel_helps(result):
    formats = by_name(result)
    int4 = formats["int4_sym_channel"].mean_logit_diff
    assert all(int4 >= f.mean_logit_diff for f in formats.values()), {f.name: f.mean_logit_diff for f in formats.values()}
    assert formats["int8_sym_channel"].mean_logit_diff <= formats["int8_sym_tensor"].mean_logit_diff
    assert all(g.per_channel_mse <= g.per_tensor_mse for g in result.channel_gains)
    gains = [g.gain for g in result.channel_gains]
    assert gains == sorted(gains, reverse=True) and gains[0] > 1


def test_sizes_are_exact(result, loaded):
    weights = loaded.keras_model.get_weights()
    kernels = [w for w in weights if w.ndim >= 2]
    others = sum(w.size for w in weights if w.ndim < 2)
    params = sum(w.size for w in weights)
    channels = sum(w.shape[-1] for w in kernels)  # no depthwise layers in this model
    k = sum(w.size for w in kernels)
    expected = {
        "fp32": 4 * params, "fp16": 2 * params, "bf16": 2 * params, "fp16_act": 2 * params, "bf16_act": 2 * params,
        "fp8_e4m3": k + 4 * len(kernels) + 4 * others, "fp8_e5m2": k + 4 * len(kernels) + 4 * others,
        "int8_sym_tensor": k + 4 * len(kernels) + 4 * others,
        "int8_sym_channel": k + 4 * channels + 4 * others,
        "int8_asym_tensor": k + 8 * len(kernels) + 4 * others,
        "int8_asym_channel": k + 8 * channels + 4 * others,
        "int4_sym_channel": sum(math.ceil(w.size / 2) for w in kernels) + 4 * channels + 4 * others,
    }
    assert {f.name: f.weight_bytes for f in result.formats} == expected
    assert result.parameters == params and result.kernel_parameters == k


def test_dot_products_show_each_format_s_error(result):
    assert [d.layer for d in result.dot_products]  # every Dense/Conv2D of the model
    for d in result.dot_products:
        assert d.errors["fp32"] < d.errors["bf16"], d
        assert d.errors["fp32"] < d.errors["int8"], d


def test_target_marks(result):
    formats = by_name(result)
    assert formats["int8_sym_channel"].target_runs is True
    assert formats["bf16"].target_runs is False and formats["int4_sym_channel"].target_runs is False
    assert "symmetric" in formats["int8_asym_channel"].target_note


def test_cli_precision_writes_table_json_and_png(tmp_path):
    out = tmp_path / "p"
    cli = run_edgeq("precision", str(EXAMPLE), "--data", "digits", "--target", "mcu", "-n", "100", "-o", str(out))
    assert cli.returncode == 0, cli.stderr
    assert "INT4 symmetric, per channel" in cli.stdout and "runs on mcu" in cli.stdout
    report = json.loads((out / "precision.json").read_text())
    assert report["samples"] == 100 and len(report["formats"]) == len(FORMATS)
    assert (out / "precision.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Per channel vs per tensor" in (out / "precision.md").read_text()
    again = run_edgeq("precision", str(EXAMPLE), "--data", "digits", "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_cli_formats():
    cli = run_edgeq("formats", "85.125", "-2.5", "65520", "1e-8")
    assert cli.returncode == 0, cli.stderr
    assert "0 10000101 01010100100000000000000" in cli.stdout   # 85.125 in FP32
    assert "1 10000000 01000000000000000000000" in cli.stdout   # -2.5: a negative number is a value, not an option
    assert "overflow: 65520 rounds to +Inf in FP16" in cli.stdout
    assert "underflow: 1e-08" in cli.stdout
    raw = run_edgeq("formats", "0.5", "nan", "65520", "--bits", "4", "--json").stdout
    # strict JSON: non-finite values are strings, never the bare NaN / Infinity tokens
    assert json.loads(raw, parse_constant=lambda token: pytest.fail(f"bare {token} in --json output"))
    bad = run_edgeq("formats", "abc")
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    lonely = run_edgeq("formats", "1", "--zero-point", "3")
    assert lonely.returncode == 2 and "--zero-point needs --scale" in lonely.stderr


def test_fake_quantization_keeps_the_model_unchanged(loaded, digits, result, before):
    """simulate() restores the weights and the softmax: the model predicts as before."""
    model = loaded.keras_model
    after = model.get_weights()
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))
    probs = np.asarray(model(digits["eval"].inputs[0][:8], training=False))
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert result.output_kind == "logits"


# -- layouts and outputs the bundled model does not have --------------------------------------------


def _run(model, x, labels=None):
    return simulate(model, [x], labels, model_name="m", data_name="d")


def test_depthwise_and_transposed_kernels_are_quantized_per_output_channel():
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(inp)
    y = keras.layers.Conv2DTranspose(5, 3, name="up")(y)
    out = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(y))
    model = keras.Model(inp, out)
    dw = model.get_layer("dw")
    kernel = np.asarray(dw.kernel)
    kernel[..., 0, :] *= 100.0  # one input channel much larger: per channel must help a lot
    dw.kernel.assign(kernel)
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
    result = _run(model, x)
    gains = {g.layer: g for g in result.channel_gains}
    assert gains["dw"].gain > 2  # ~3: channel 0 keeps its error, the other two lose theirs; 1.0 if per tensor
    weights = model.get_weights()
    kernels = {"dw": 3, "up": 5, "head": 4}  # output channels: depthwise 3 x multiplier 1, transposed 5
    k = sum(w.size for w in weights if w.ndim >= 2)
    others = sum(w.size for w in weights if w.ndim < 2)
    sizes = {f.name: f.weight_bytes for f in result.formats}
    assert sizes["int8_sym_channel"] == k + 4 * sum(kernels.values()) + 4 * others


def test_overflow_is_reported_and_json_stays_valid():
    import keras

    from edgeq.precision.report import render_png, to_json

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="big")])
    kernel = np.ones((4, 3), np.float32)
    kernel[0] = 1e5  # FP16's largest is 65504
    model.get_layer("big").kernel.assign(kernel)
    result = _run(model, np.ones((8, 4), np.float32))
    fp16 = next(f for f in result.formats if f.name == "fp16")
    assert math.isinf(fp16.mean_logit_diff) and fp16.note.startswith("overflow:")
    text = json.dumps(to_json(result), allow_nan=False)  # no bare Infinity / NaN
    assert '"inf"' in text
    assert render_png(result)[:4] == b"\x89PNG"


def test_sigmoid_and_several_outputs():
    import keras

    inp = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, {"score": keras.layers.Dense(1, activation="sigmoid", name="score")(hidden),
                              "aux": keras.layers.Dense(2, name="aux")(hidden)})
    result = _run(model, np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32))
    assert any("2 outputs" in n for n in result.notes) and result.output_kind == "outputs"
    single = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    result = _run(single, np.ones((8, 4), np.float32))
    assert result.output_kind == "logits"
    assert all(f.top1_agreement is None for f in result.formats)  # argmax of one column says nothing


def test_a_tf_keras_model_runs_every_format():
    import tensorflow  # noqa: F401  (tf_keras needs TF imported first)
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Conv2D(4, 3, activation="relu"),
                                 tf_keras.layers.Flatten(), tf_keras.layers.Dense(10, activation="softmax")])
    result = _run(model, np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32))
    assert all(f.mean_logit_diff is not None and not f.note for f in result.formats), [f.note for f in result.formats]
    assert [d.layer for d in result.dot_products] == [layer.name for layer in model.layers if layer.weights]
    assert result.output_kind == "logits"
