"""A recipe is the target's decision, as data: which mode, per-channel or not, which I/O dtypes.

Recorded verbatim in report.json so a result can be reproduced. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

from edgeq.errors import RecipeError
from edgeq.modes import MODES
from edgeq.records import Record, optional
from edgeq.vocab import Granularity
from edgeq.targets import TargetProfile

DEFAULT_CALIBRATION_SAMPLES = 200


@dataclass(frozen=True)
class Recipe(Record):
    """The quantization a target asked for: the mode, weight and activation types, per-channel
    weights or not, the model's I/O dtypes and the calibration samples used (0: none needed)."""

    mode: str
    weights: str
    activations: str
    per_channel: bool
    input_dtype: str
    output_dtype: str
    calibration_samples: int  # 0 for modes that need none
    # Per-channel recipes only: the layers (named by their weight tensors) whose weights take one
    # scale instead (edgeq/quantize/granularity.py). Left out of report.json while empty.
    per_tensor_layers: tuple[str, ...] | None = optional()
    # int8 recipes only: the layers (named by their weight tensors) that take int16 activations from
    # the model's int16x8 conversion (edgeq/quantize/int16.py). Left out of report.json while empty.
    int16_layers: tuple[str, ...] | None = optional()

    def with_per_tensor(self, layers: list[str] | tuple[str, ...] | frozenset[str] | set[str]) -> Recipe:
        """This recipe with exactly `layers` per tensor (sorted, so equal sets are equal recipes)."""
        return replace(self, per_tensor_layers=tuple(sorted(layers)) or None)

    def with_int16(self, layers: list[str] | tuple[str, ...] | frozenset[str] | set[str]) -> Recipe:
        """This recipe with exactly `layers` in int16 activations (sorted)."""
        return replace(self, int16_layers=tuple(sorted(layers)) or None)

    @property
    def granularity(self) -> Granularity:
        """Per-channel or per-tensor weight scales (report.json keeps the boolean `per_channel`)."""
        return Granularity.PER_CHANNEL if self.per_channel else Granularity.PER_TENSOR


def recipe_for(
    target: TargetProfile,
    mode: str | None = None,
    *,
    have_calibration: bool,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
) -> Recipe:
    """The recipe for `target`, in `mode` if given (else the target's default)."""
    chosen = mode or target.quantization.default_mode
    if chosen not in MODES:
        raise RecipeError(f"unknown mode '{chosen}'; modes: {', '.join(MODES)}")
    if chosen not in target.quantization.modes:
        raise RecipeError(
            f"target '{target.name}' does not allow mode '{chosen}' ({target.runtime} runtime); "
            f"allowed: {', '.join(target.quantization.modes)}",
            hint="pick an allowed --mode, or a target whose runtime supports it (e.g. --target phone)",
        )
    spec = MODES[chosen]
    if spec.needs_calibration and not have_calibration:
        raise RecipeError(
            f"mode '{chosen}' needs calibration data to choose activation ranges",
            hint="pass --calibration NAME (see `edgeq calibration list`) or --calibration your_data.npz",
        )
    if calibration_samples < 1:
        raise RecipeError(f"--calibration-samples must be at least 1, got {calibration_samples}")
    input_dtype, output_dtype = target.io_dtypes(chosen)
    return Recipe(
        mode=chosen,
        weights=spec.weights,
        activations=spec.activations,
        per_channel=target.quantization.per_channel,
        input_dtype=input_dtype,
        output_dtype=output_dtype,
        calibration_samples=calibration_samples if spec.needs_calibration else 0,
    )


def load_recipe(path: Path, target: TargetProfile, default: Recipe) -> Recipe:
    """A recipe recorded by an earlier convert: its report.json (the `recipe` key) or the recipe alone.
    RecipeError (exit 2) naming the file and the field when it cannot be replayed for `target`."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"--recipe {path}: not a readable JSON file ({exc})",
                          hint="pass the report.json of an earlier `edgeq convert`, or its `recipe` object") from None
    data = data.get("recipe", data) if isinstance(data, dict) else data
    fields = {f.name for f in dataclasses.fields(Recipe)}
    if not isinstance(data, dict) or not {"mode", "per_channel"} <= set(data):
        raise RecipeError(f"--recipe {path}: no recipe in it (expected an object with mode, per_channel, ...)",
                          hint="pass the report.json of an earlier `edgeq convert`, or its `recipe` object")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise RecipeError(f"--recipe {path}: unknown field(s) {', '.join(unknown)}; a recipe has {', '.join(sorted(fields))}")
    merged = {**dataclasses.asdict(default), **data}
    for key in ("per_tensor_layers", "int16_layers"):
        layers = merged.get(key)
        if layers is not None and (not isinstance(layers, list) or not all(isinstance(x, str) for x in layers)):
            raise RecipeError(f"--recipe {path}: {key} must be a list of layer names")
    checks = {"mode": str, "weights": str, "activations": str, "per_channel": bool, "input_dtype": str,
              "output_dtype": str, "calibration_samples": int}
    for name, kind in checks.items():
        if not isinstance(merged[name], kind) or (kind is int and isinstance(merged[name], bool)):
            raise RecipeError(f"--recipe {path}: {name} must be a {kind.__name__}, got {merged[name]!r}")
    if merged["mode"] not in target.quantization.modes:
        raise RecipeError(f"--recipe {path}: mode '{merged['mode']}' is not allowed on target '{target.name}' "
                          f"(allowed: {', '.join(target.quantization.modes)})",
                          hint="replay it for the target it was made for")
    spec = MODES[merged["mode"]]
    if (merged["weights"], merged["activations"]) != (spec.weights, spec.activations):
        raise RecipeError(f"--recipe {path}: mode '{merged['mode']}' has {spec.weights} weights and {spec.activations} "
                          f"activations, the file says {merged['weights']} and {merged['activations']}")
    if merged.get("int16_layers") and (merged["mode"] != "int8" or "int16x8" not in target.quantization.modes):
        raise RecipeError(f"--recipe {path}: int16_layers needs an int8 recipe on a target that allows int16x8 "
                          f"(target '{target.name}' allows {', '.join(target.quantization.modes)})",
                          hint="replay it for the target it was made for")
    if merged.get("int16_layers") and merged.get("per_tensor_layers"):
        raise RecipeError(f"--recipe {path}: a recipe has per_tensor_layers or int16_layers, not both")
    for key in ("per_tensor_layers", "int16_layers"):
        merged[key] = tuple(merged[key]) if merged.get(key) else None
    return Recipe(**merged)
