"""What `convert` can be asked (`ConvertOptions`, with the CLI's defaults) and the files it writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeq.bundled_sets import list_bundled
from edgeq.defaults import DEFAULT_MAX_ACCURACY_DROP
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD
from edgeq.quantize.recipe import DEFAULT_CALIBRATION_SAMPLES
from edgeq.quantize.search_driver import SearchOptions
from edgeq.targets import TargetProfile
from edgeq.vocab import Runtime

if TYPE_CHECKING:
    from edgeq.quantize.training import TrainSettings

REPORT_FILES = ("report.json", "report.md", "report.png")


@dataclass(frozen=True)
class QatOptions:
    """Quantization-aware training (tfmot), fine-tuned from the float model."""

    train: str | None = "auto"  # labelled training data; "auto": the bundled calibration set's train split
    settings: TrainSettings | None = None  # epochs, batch size, learning rate (None: TrainSettings())
    compare: bool = False  # also run PTQ on the same model and data and report both; the outputs are QAT's


@dataclass(frozen=True)
class HarnessOptions:
    """The device-check test-harness firmware (edgeq.device.firmware), written next to the C files."""

    max_payload: int = DEFAULT_MAX_PAYLOAD  # the largest protocol frame payload (EDGEQ_MAX_PAYLOAD)


@dataclass(frozen=True)
class ConvertOptions:
    """Everything `convert` can be asked, with the CLI's defaults."""

    mode: str | None = None  # None: the target's default mode
    calibration: str | None = None  # a bundled set ("digits", "NAME:SPLIT") or a .npz/.npy
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    evaluation: str | None = "auto"  # held-out data; "auto": the bundled set's eval split; None: no accuracy
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    qat: QatOptions | None = None  # None: post-training quantization
    harness: HarnessOptions | None = None  # None: no test-harness firmware
    force: bool = False  # write the outputs even if a check fails
    outdir: str | Path | None = None  # None: edgeq-out/<name>-<target>
    name: str | None = None  # base name of the outputs and C identifiers; None: the model file's
    overwrite: bool = False
    trust_model: bool = False  # allow Lambda layers and unregistered classes (runs the model's code)
    per_layer: bool = True  # TFLite's QuantizationDebugger on the worst layers (PTQ)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # for open dimensions, by input name
    runtime: str | None = None  # "c": a TFLM target's model as plain C (edgeq/aot); None: the target's runtime
    search: SearchOptions | None = None  # --search: the cheapest recipe that passes, per layer granularity
    recipe_file: str | Path | None = None  # --recipe: replay a recorded recipe (report.json or recipe.json)
    weights: str | Path | None = None  # a PyTorch nn.Module factory's state_dict (edgeq/frontends/torch.py)


def output_names(name: str, target: TargetProfile, harness: bool = False) -> list[str]:
    """Every file `convert` may write for `target`: what the existing-files check and --overwrite know."""
    names = [f"{name}.tflite", *REPORT_FILES]
    if target.runtime == Runtime.C:
        names += [f"{name}_names.json", f"{name}_model.c", f"{name}_model.h", "README.md"]
    if target.runtime == Runtime.TFLM:
        names += [f"{name}_names.json", f"{name}_model_data.cc", f"{name}_model_data.h", f"{name}_op_resolver.h"]
        if harness:
            from edgeq.device.firmware import harness_file_names

            names += [n for n in harness_file_names(name) if n not in names]
    return names


def default_split_of(calibration: str | None, split: str) -> str | None:
    """For a bundled calibration set ("digits"), another of its splits ("digits:eval")."""
    if not calibration or Path(calibration).exists():
        return None
    name, _, given = calibration.partition(":")
    bundled = {b.name: b for b in list_bundled()}
    if name in bundled and split in bundled[name].splits and given != split:
        return f"{name}:{split}"
    return None


def default_eval_set(calibration: str | None) -> str | None:
    """For a bundled calibration set ("digits"), its held-out split ("digits:eval")."""
    return default_split_of(calibration, "eval")
