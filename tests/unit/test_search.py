"""edgeq/quantize/search.py and granularity.py: which recipes the search measures, and layer-by-layer
granularity that is exactly the converter's own per-tensor weights where it is chosen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import RecipeError
from edgeq.quantize.granularity import WeightedLayer
from edgeq.quantize.search import Choice, Levers, Outcome, ordered, saving, search
from tests.conftest import tflm_outputs


def _layers(n: int = 10) -> list[WeightedLayer]:
    return [WeightedLayer(i, "FULLY_CONNECTED", f"l{i}", 10 * (i + 1), 0.01 * (i % 3 + 1)) for i in range(n)]


def _additive(layers: list[WeightedLayer], budget: int, floor: float, seen: list[frozenset[str]]):  # type: ignore[no-untyped-def]
    """A stand-in for convert's measurement where bytes and damage add up per layer: RAM falls by
    8 bytes per channel of each per-tensor layer, quality by 100 x its weight error."""
    by_name = {l.name: l for l in layers}

    def evaluate(choice: Choice) -> Outcome:
        names = choice.per_tensor
        seen.append(names)
        ram = 10_000 - sum(8 * by_name[n].channels for n in names)
        quality = 90.0 - sum(100 * by_name[n].weight_error for n in names)
        fits, accurate = ram <= budget, quality >= floor
        return Outcome(fits and accurate, fits, accurate, ram, 5_000, quality)

    return lambda sets: [evaluate(names) for names in sets]


def _brute_force(layers: list[WeightedLayer], budget: int, floor: float) -> int | None:
    """The least RAM of any subset that passes (2^n subsets), to compare the search with."""
    import itertools

    best = None
    for k in range(len(layers) + 1):
        for subset in itertools.combinations(layers, k):
            ram = 10_000 - sum(8 * l.channels for l in subset)
            if ram <= budget and 90.0 - sum(100 * l.weight_error for l in subset) >= floor:
                best = ram if best is None else min(best, ram)
    return best


@pytest.mark.parametrize("budget, floor", [(10_000, 0.0), (9_000, 80.0), (6_000, 84.0), (9_990, 89.5), (9_500, 89.0),
                                           (8_000, 89.0), (1_000, 0.0)])
def test_the_search_finds_a_cheap_passing_recipe_in_few_candidates(budget: int, floor: float) -> None:
    layers, seen = _layers(), []
    result = search(layers, _additive(layers, budget, floor, seen), quality_metric="top-1")
    assert len(seen) == len(set(seen)) == result.part.tried <= 2 + 4 + len(layers)
    best = _brute_force(layers, budget, floor)
    marked = [c for c in result.part.candidates if c.chosen]
    if result.chosen is None:
        assert not marked and result.part.stopped_because
        return
    chosen = marked[0]
    assert chosen.passed and chosen.ram_bytes <= budget and best is not None
    # Prefixes and one swap are not every subset: the choice may cost more than the best subset, by little.
    assert chosen.ram_bytes - best <= 8 * max(l.channels for l in layers)


def _levered(gain: dict[str, float], calibration_gain: float, qat_quality: float, floor: float, budget: int,
             seen: list[Choice]):  # type: ignore[no-untyped-def]
    """A stand-in where the default misses the floor: int16 in a layer adds its `gain` of quality and
    100 bytes of RAM, more calibration adds `calibration_gain`, QAT gives `qat_quality`."""

    def evaluate(c: Choice) -> Outcome:
        seen.append(c)
        quality = qat_quality if c.qat else 80.0 + sum(gain[n] for n in c.int16) + (
            calibration_gain if c.calibration_samples else 0.0) + (sum(gain.values()) + 1 if c.int16x8 else 0.0)
        ram = 5_000 + 100 * len(c.int16) + (1_000 if c.int16x8 else 0)
        fits, accurate = ram <= budget, quality >= floor
        return Outcome(fits and accurate, fits, accurate, ram, 9_000, quality)

    return lambda choices: [evaluate(c) for c in choices]


@pytest.mark.parametrize("floor, budget, calibration_gain, expect", [
    (81.0, 9_000, 2.0, "calibration"),       # more calibration is enough: nothing else is tried
    (85.0, 9_000, 0.0, "int16:2"),           # the two worst layers in int16 keep the floor
    (85.0, 5_150, 0.0, "qat"),               # they do not fit: QAT, the last resort, passes
    (99.0, 9_000, 0.0, None),                # nothing reaches the floor
])
def test_the_accuracy_levers_go_in_order_and_take_the_fewest_int16_layers(floor: float, budget: int,
                                                                          calibration_gain: float,
                                                                          expect: str | None) -> None:
    gain = {"worst": 3.0, "next": 2.5, "mild": 0.5, "least": 0.1}
    seen: list[Choice] = []
    levers = Levers(calibration_samples=800, int16=[(name,) for name in gain], int16x8=True, qat=True)
    result = search([], _levered(gain, calibration_gain, 90.0, floor, budget, seen), levers=lambda: levers)
    assert len(seen) == len(set(seen)) == result.part.tried
    chosen = result.chosen
    if expect is None:
        assert chosen is None and "did not pass either" in result.part.stopped_because
    elif expect == "calibration":
        assert chosen == Choice(calibration_samples=800) and not any(c.int16 or c.qat for c in seen)
    elif expect == "qat":
        assert chosen == Choice(qat=True)
    else:
        assert chosen is not None and chosen.int16 == {"worst", "next"} and not any(c.qat for c in seen)
        assert len([c for c in seen if c.int16]) <= 1 + 2  # all four, then a bisection of 4


def test_no_lever_is_tried_when_nothing_fits() -> None:
    seen: list[Choice] = []
    levers = Levers(calibration_samples=800, int16=[("a",)], int16x8=True, qat=True)
    result = search([], _levered({"a": 9.0}, 9.0, 99.0, 85.0, 100, seen), levers=lambda: levers)
    assert result.chosen is None and seen == [Choice()]


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
    assert tflm_outputs(everywhere, x).tobytes() == tflm_outputs(per_tensor, x).tobytes()  # every layer: the converter's
    dense = layers[1]
    one = mixed(per_channel, per_tensor, {dense.name})
    assert tflm_outputs(one, x).tobytes() != tflm_outputs(per_channel, x).tobytes()
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


def test_per_file_auc_of_an_anomaly_detector() -> None:
    from edgeq.emulator.accuracy import compare, reconstruction_auc

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    groups = np.repeat(np.arange(8), 5)  # 8 files of 5 samples; files 5-7 anomalous
    y = (groups >= 5).astype(int)
    out = x + rng.normal(scale=0.1, size=x.shape) + 0.5 * y[:, None] * rng.normal(size=x.shape)
    assert reconstruction_auc(x, out, y, groups) == (1.0, 8)
    assert reconstruction_auc(x, x, y, groups) == (0.5, 8)  # equal scores: ties count half
    mixed = y.copy()
    mixed[0] = 1
    assert reconstruction_auc(x, out, mixed, groups) is None  # a file must have one label
    assert reconstruction_auc(x, out[:, :4], y, groups) is None  # not an autoencoder
    metrics = compare([x + 0.01], [out], y, inputs=x, groups=groups)
    assert metrics.quantized_top1 is None and metrics.quantized_auc == 1.0 and metrics.float_auc is not None


def test_groups_must_be_one_file_id_per_sample(tmp_path: Path) -> None:
    from edgeq.calibration import load_dataset
    from edgeq.errors import CalibrationError

    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 3), np.float32), y=np.array([0, 0, 1, 1]),
             groups=np.array(["a", "a", "b", "b"]))
    assert list(load_dataset(str(tmp_path / "ok.npz")).groups) == ["a", "a", "b", "b"]
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3), np.float32), groups=np.array([1.5, 2.5, 3.5, 4.5]))
    with pytest.raises(CalibrationError, match="'groups' must hold one file id"):
        load_dataset(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("budget, floor", [(9_000, 80.0), (6_000, 84.0), (9_500, 89.0)])
def test_a_wider_bisection_takes_fewer_rounds_to_the_same_choice(budget: int, floor: float) -> None:
    """With workers, each bisection round measures several points as one batch: the choice is the
    one-at-a-time bisection's, in fewer rounds (batches) of the executor."""
    layers = _layers(40)
    rounds = {}
    chosen = {}
    for width in (1, 3):
        seen: list[frozenset[str]] = []
        evaluate = _additive(layers, budget, floor, seen)
        batches: list[int] = []
        result = search(layers, lambda choices: (batches.append(len(choices)), evaluate(choices))[1],
                        width=width)
        rounds[width], chosen[width] = len(batches), result.chosen
        assert max(batches) <= max(width, 2) or result.part.stopped_because.count(";")  # swaps go as one batch
    assert chosen[3] == chosen[1] and rounds[3] < rounds[1]


def test_the_latency_objective_takes_the_fastest_passing_recipe() -> None:
    """Granularity does not change latency, so with --objective latency only the levers' candidates
    differ: of two that pass, the one with the lower estimate is written, not the one with less RAM."""
    def evaluate(choices: list[Choice]) -> list[Outcome]:
        out = []
        for c in choices:
            ram, ms, quality = ((6_000, 0.9, 30.0) if c.int16x8 else (5_600, 1.4, 30.0) if c.int16
                                else (5_000, 0.8, 10.0))
            out.append(Outcome(quality >= 20, True, quality >= 20, ram, 9_000, quality, latency_ms=ms))
        return out

    levers = Levers(int16=[("a",)], int16x8=True)
    assert search([], evaluate, objective="latency", levers=lambda: levers).chosen == Choice(int16x8=True)
    assert search([], evaluate, objective="ram", levers=lambda: levers).chosen == Choice(int16=frozenset({"a"}))
