"""edgeq.modes and edgeq.quantize.recipe: the mode table and the recipe a target implies."""

from __future__ import annotations

import pytest

from edgeq.errors import RecipeError
from edgeq.modes import MODES, activation_dtype
from edgeq.quantize.recipe import DEFAULT_CALIBRATION_SAMPLES, recipe_for
from edgeq.targets import load_target


def test_every_mode_is_consistent() -> None:
    for name, mode in MODES.items():
        assert mode.name == name and mode.summary
        # Integer-only modes are calibrated and restrict the converter to integer ops (a calibrated
        # mode may still fall back to float kernels, with float I/O).
        assert not mode.integer_only or (mode.needs_calibration and mode.ops_set)
        assert mode.optimize or not (mode.needs_calibration or mode.ops_set or mode.supported_types)
        assert activation_dtype(name) == (mode.activations if mode.integer_only else "float32")
    assert activation_dtype("int16x8") == "int16" and activation_dtype("dynamic") == "float32"


def test_mcu_defaults_to_int8_with_integer_io_following_the_mode() -> None:
    mcu = load_target("mcu")
    recipe = recipe_for(mcu, have_calibration=True)
    assert (recipe.mode, recipe.input_dtype, recipe.output_dtype) == ("int8", "int8", "int8")
    assert recipe.per_channel and recipe.calibration_samples == DEFAULT_CALIBRATION_SAMPLES
    wide = recipe_for(mcu, "int16x8", have_calibration=True, calibration_samples=50)
    assert (wide.activations, wide.input_dtype, wide.calibration_samples) == ("int16", "int16", 50)
    assert recipe.to_dict() == {"mode": "int8", "weights": "int8", "activations": "int8", "per_channel": True,
                                "input_dtype": "int8", "output_dtype": "int8", "calibration_samples": 200}


def test_linux_targets_keep_float_io_and_float_modes_need_no_calibration() -> None:
    iot = recipe_for(load_target("iot"), have_calibration=True)
    assert (iot.mode, iot.input_dtype, iot.output_dtype) == ("int8", "float32", "float32")
    half = recipe_for(load_target("phone"), "float16", have_calibration=False)
    assert (half.weights, half.activations, half.calibration_samples) == ("float16", "float32", 0)


@pytest.mark.parametrize(("target", "mode", "calibration", "samples", "words"), [
    ("mcu", "float16", True, 200, ["does not allow mode 'float16'", "allowed: int8"]),
    ("mcu", "int4", True, 200, ["unknown mode 'int4'", "int16x8"]),
    ("mcu", None, False, 200, ["needs calibration data"]),
    ("mcu", None, True, 0, ["--calibration-samples must be at least 1"]),
])
def test_bad_recipes_are_refused_with_the_reason(target, mode, calibration, samples, words) -> None:
    with pytest.raises(RecipeError) as caught:
        recipe_for(load_target(target), mode, have_calibration=calibration, calibration_samples=samples)
    assert caught.value.exit_code == 2
    for word in words:
        assert word in caught.value.message, caught.value.message
