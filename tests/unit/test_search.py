"""edgeq/quantize/search.py and granularity.py: which recipes the search measures, and layer-by-layer
granularity that is exactly the converter's own per-tensor weights where it is chosen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import RecipeError
from edgeq.quantize.granularity import WeightedLayer
from edgeq.quantize.search import Outcome, ordered, saving, search


def _layers(n: int = 10) -> list[WeightedLayer]:
    return [WeightedLayer(i, "FULLY_CONNECTED", f"l{i}", 10 * (i + 1), 0.01 * (i % 3 + 1)) for i in range(n)]


def _evaluator(layers: list[WeightedLayer], fit_from: int, floor_to: int, seen: list[int]):  # type: ignore[no-untyped-def]
    order = [l.name for l in ordered(layers)]

    def evaluate(names: frozenset[str]) -> Outcome:
        k = len(names)
        assert set(names) == set(order[:k])  # always a prefix of the order
        seen.append(k)
        fits, accurate = k >= fit_from, k <= floor_to
        return Outcome(fits and accurate, fits, accurate, 10_000 - 100 * k, 5_000, 90.0 - k)

    return evaluate


@pytest.mark.parametrize("fit_from, floor_to, chosen", [(0, 10, 10), (3, 7, 7), (4, 4, 4), (0, 0, 0), (8, 5, None),
                                                        (11, 10, None)])
def test_the_search_finds_the_cheapest_passing_prefix_in_few_candidates(fit_from: int, floor_to: int,
                                                                         chosen: int | None) -> None:
    layers, seen = _layers(), []
    result = search(layers, _evaluator(layers, fit_from, floor_to, seen), quality_metric="top-1")
    assert (None if result.chosen is None else len(result.chosen)) == chosen
    assert len(seen) == len(set(seen)) == result.part.tried <= 2 + 4  # the two ends, then log2(10) at most
    marked = [c for c in result.part.candidates if c.chosen]
    assert len(marked) == (0 if chosen is None else 1) and result.part.stopped_because


def test_only_layers_that_save_bytes_are_searched() -> None:
    fc = WeightedLayer(0, "FULLY_CONNECTED", "fc", 64, 0.01)
    conv = WeightedLayer(1, "CONV_2D", "conv", 64, 0.001)
    assert saving(fc, "ram") == 512 and saving(conv, "ram") == 0  # TFLM sizes conv's arrays by channels anyway
    assert ordered([conv, fc], "ram") == [fc] and ordered([conv, fc], "flash") == [conv, fc]


@pytest.fixture(scope="module")
def two_conversions():  # type: ignore[no-untyped-def]
    from edgeq._tf import tf

    tfm = tf()
    import keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    model = keras.Sequential([L.Input((6, 6, 2)), L.Conv2D(5, 3, activation="relu"), L.Flatten(),
                              L.Dense(24, activation="relu"), L.Dense(7)])
    rng = np.random.default_rng(3)
    for layer in model.layers:  # nonzero biases: the converter drops all-zero ones
        w = layer.get_weights()
        if len(w) == 2:
            layer.set_weights([w[0], rng.normal(0, 0.2, w[1].shape).astype(np.float32)])
    data = rng.normal(size=(48, 6, 6, 2)).astype(np.float32)

    def convert(per_channel: bool) -> bytes:
        c = tfm.lite.TFLiteConverter.from_keras_model(model)
        c.optimizations = [tfm.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([data[i:i + 1]] for i in range(len(data)))
        c.target_spec.supported_ops = [tfm.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type, c.inference_output_type = tfm.int8, tfm.int8
        c.exclude_conversion_metadata = True
        c._experimental_disable_per_channel = not per_channel
        return bytes(c.convert())

    return convert(True), convert(False)


def _tflm(model: bytes, x: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(model)
    out = []
    for sample in x:
        interp.set_input(sample[None], 0)
        interp.invoke()
        out.append(interp.get_output(0).copy())
    return np.concatenate(out)


def test_mixed_granularity_is_the_converters_own_per_tensor_layers(two_conversions) -> None:  # type: ignore[no-untyped-def]
    from edgeq.emulator.memory import measure_tflm_arena
    from edgeq.errors import ConversionError
    from edgeq.quantize.granularity import mixed, weighted_layers

    per_channel, per_tensor = two_conversions
    layers = weighted_layers(per_channel, per_tensor)
    assert [l.op for l in layers] == ["CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert all(l.weight_error > 0 for l in layers)
    x = np.random.default_rng(4).integers(-128, 128, (16, 6, 6, 2), dtype=np.int8)
    assert mixed(per_channel, per_tensor, set()) == per_channel
    everywhere = mixed(per_channel, per_tensor, {l.name for l in layers})
    assert _tflm(everywhere, x).tobytes() == _tflm(per_tensor, x).tobytes()  # every layer: the converter's
    dense = layers[1]
    one = mixed(per_channel, per_tensor, {dense.name})
    assert _tflm(one, x).tobytes() != _tflm(per_channel, x).tobytes()
    saved = measure_tflm_arena(per_channel).smallest - measure_tflm_arena(one).smallest
    assert 8 * dense.channels - 16 <= saved <= 8 * dense.channels + 16  # a multiplier and a shift per channel
    with pytest.raises(ConversionError, match="no layer with per-channel weights is named"):
        mixed(per_channel, per_tensor, {"nope"})


def test_a_recipe_file_is_checked_field_by_field(tmp_path: Path) -> None:
    from edgeq.quantize.recipe import load_recipe, recipe_for
    from edgeq.targets import load_target

    mcu = load_target("mcu")
    default = recipe_for(mcu, have_calibration=True)
    good = tmp_path / "report.json"
    good.write_text(json.dumps({"recipe": {**default.to_dict(), "per_tensor_layers": ["a", "b"]}}))
    assert load_recipe(good, mcu, default).per_tensor_layers == ("a", "b")
    cases = {"x.json": "not JSON", "y.json": json.dumps({"recipe": {"mode": "int8", "per_channel": True, "oops": 1}}),
             "z.json": json.dumps({"mode": "float16", "per_channel": True}),
             "w.json": json.dumps({"mode": "int8", "per_channel": "yes"})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(RecipeError, match=f"--recipe {tmp_path / name}"):
            load_recipe(tmp_path / name, mcu, default)
