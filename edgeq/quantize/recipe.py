"""A recipe is the target's decision, as data: which mode, per-channel or not, which I/O dtypes.

Recorded verbatim in report.json so a result can be reproduced. No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeq.errors import RecipeError
from edgeq.modes import MODES
from edgeq.records import Record
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
