"""The parent process's half of a conversion: every input checked before TensorFlow or torch starts
(target, mode, recipe, data files, the model file, the output folder), into one frozen `Plan` that
the child process works from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeq.calibration import Dataset, load_dataset
from edgeq.errors import CalibrationError, RecipeError
from edgeq.export.atomic import check_output_dir
from edgeq.export.c_arrays import c_identifier
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD
from edgeq.frontends import frontend_for
from edgeq.frontends.base import ModelFile
from edgeq.pipeline.options import ConvertOptions, default_eval_set, default_split_of, output_names
from edgeq.quantize.recipe import Recipe, recipe_for
from edgeq.quantize.search_driver import SearchOptions
from edgeq.quantize.training import TrainSettings
from edgeq.targets import TargetProfile, for_runtime, load_target
from edgeq.vocab import Runtime


@dataclass(frozen=True)
class Plan:
    """A conversion's checked inputs: what the child process needs to do the work."""

    model: ModelFile  # checked, not loaded
    profile: TargetProfile
    recipe: Recipe
    name: str
    outdir: Path
    data: Dataset | None
    eval_data: Dataset | None
    train_data: Dataset | None
    max_accuracy_drop: float
    force: bool
    trust_model: bool
    per_layer: bool
    input_shapes: dict[str, tuple[int, ...]]
    overwrite: bool = False
    qat: bool = False
    compare: bool = False  # --qat --compare: PTQ measured too
    train_settings: TrainSettings | None = None
    harness: bool = False
    max_payload: int = DEFAULT_MAX_PAYLOAD
    search: SearchOptions | None = None
    weights: Path | None = None  # a torch factory's state_dict

    @property
    def model_path(self) -> Path:
        """What the user passed: a model file, a SavedModel folder, or package.module:factory."""
        return Path(self.model.spec)


def plan_conversion(model_path: str | Path, target: str | TargetProfile, o: ConvertOptions) -> Plan:
    """Everything that can fail fast, checked in the order a user fixes it."""
    harness = o.harness is not None
    model = frontend_for(model_path)
    profile = _profile(target, o.runtime, harness)
    name = c_identifier(o.name or model.default_name)
    out = Path(o.outdir) if o.outdir is not None else Path("edgeq-out") / f"{name}-{profile.name}"
    check_output_dir(out, output_names(name, profile, harness), overwrite=o.overwrite)
    recipe = _recipe(o, profile)
    eval_spec = default_eval_set(o.calibration) if o.evaluation == "auto" else o.evaluation
    eval_data = load_dataset(eval_spec, default_split="eval") if eval_spec else None
    train_data = _train_data(o.qat.train, o.calibration) if o.qat else _search_train(o.search, o.calibration)
    data = load_dataset(o.calibration) if o.calibration and recipe.calibration_samples else None
    model = model.checked(weights=o.weights, trust_model=o.trust_model)
    model.refuse(recipe, qat=o.qat is not None, search=o.search is not None, weights=o.weights)
    return Plan(model=model, profile=profile, recipe=recipe, name=name, outdir=out,
                data=data, eval_data=eval_data, train_data=train_data, max_accuracy_drop=o.max_accuracy_drop,
                force=o.force, trust_model=o.trust_model, per_layer=o.per_layer, input_shapes=dict(o.input_shapes),
                overwrite=o.overwrite, qat=o.qat is not None, compare=o.qat is not None and o.qat.compare,
                train_settings=o.qat.settings if o.qat else None, harness=harness,
                max_payload=o.harness.max_payload if o.harness else DEFAULT_MAX_PAYLOAD, search=o.search,
                weights=Path(o.weights) if o.weights is not None else None)


def _profile(target: str | TargetProfile, runtime: str | None, harness: bool) -> TargetProfile:
    """The target convert works for: `runtime` swapped in, and --harness only where it applies."""
    profile = for_runtime(target if isinstance(target, TargetProfile) else load_target(target), runtime)
    if harness and profile.runtime == Runtime.C:
        raise RecipeError("--harness builds the TFLite Micro test firmware; the c runtime's firmware is built by "
                          "`edgeq device-sim --board mps2-an386 MODEL.tflite` (an emulated Cortex-M4)",
                          hint="drop --harness, or convert without --runtime c for a board's TFLM harness")
    if harness and profile.runtime != Runtime.TFLM:
        raise RecipeError(f"--harness builds TFLite Micro firmware, but target '{profile.name}' runs {profile.runtime}",
                          hint="drop --harness, or pick a microcontroller target such as --target mcu")
    return profile


def _recipe(o: ConvertOptions, profile: TargetProfile) -> Recipe:
    """The recipe convert follows: the target's (in --mode), or a replayed one (--recipe); checked
    against what --qat and --search can do with it."""
    qat = o.qat is not None
    recipe = recipe_for(profile, o.mode, have_calibration=o.calibration is not None or qat,
                        calibration_samples=o.calibration_samples)
    if o.recipe_file is not None:
        from edgeq.quantize.recipe import load_recipe

        recipe = load_recipe(Path(o.recipe_file), profile, recipe)
    if o.search is not None:
        _check_searchable(recipe, profile, qat, o.recipe_file)
    if qat and not recipe.per_channel:
        raise RecipeError(f"target '{profile.name}' wants per-tensor weights, but QAT trains with tfmot's default "
                          "scheme, which quantizes conv weights per channel",
                          hint="drop --qat (PTQ honours per_channel = false), or use a per-channel target")
    if qat and recipe.mode != "int8":
        raise RecipeError(f"quantization-aware training makes int8 models; mode '{recipe.mode}' is not possible",
                          hint="drop --mode (or pass --mode int8), or drop --qat for PTQ in this mode")
    return recipe


def _check_searchable(recipe: Recipe, profile: TargetProfile, qat: bool, recipe_file: object) -> None:
    if qat or recipe_file is not None:
        raise RecipeError("--search chooses the recipe itself; it does not combine with --qat or --recipe",
                          hint="drop one of them (replay a searched recipe with --recipe alone)")
    if recipe.mode != "int8" or not recipe.per_channel:
        raise RecipeError(f"--search varies per-channel weights layer by layer, in int8; this conversion is "
                          f"{recipe.mode} with {'per-channel' if recipe.per_channel else 'per-tensor'} weights "
                          f"for target '{profile.name}'", hint="drop --mode, or use a per-channel int8 target")


def _search_train(search: SearchOptions | None, calibration: str | None) -> Dataset | None:
    """--search's training data for QAT, its last resort: --train, else a bundled set's train split, else none."""
    if search is None or search.train is None:
        return None
    spec = default_split_of(calibration, "train") if search.train == "auto" else search.train
    return load_dataset(spec, default_split="train") if spec else None


def _train_data(train: str | None, calibration: str | None) -> Dataset:
    spec = default_split_of(calibration, "train") if train == "auto" else train
    if not spec:
        raise CalibrationError("quantization-aware training needs training data with labels",
                               hint="pass --train SET (a bundled set such as 'digits', or your .npz with x and y)")
    return load_dataset(spec, default_split="train")
