"""ONNX models behind the frontend interface: the file parsed and vetted in the parent (its
weights not read), onnx2tf's SavedModel loaded in the child (onnx.py), and the user's NCHW data
put in the order and layout onnx2tf's model takes. The rest is the SavedModel path's."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgeq.errors import RecipeError
from edgeq.frontends.base import DataSets, Frontend, channels_moved_last
from edgeq.frontends.keras import KerasFrontend
from edgeq.frontends.onnx import OnnxSummary, check_onnx_model, load_onnx_model
from edgeq.progress import Step
from edgeq.specs import InputSpec
from edgeq.vocab import Layout

if TYPE_CHECKING:
    from edgeq.calibration import Dataset
    from edgeq.quantize.recipe import Recipe


@dataclass(frozen=True)
class OnnxFile:
    """An .onnx file; after `checked`, what check_onnx_model read of it (so the child parses it once)."""

    spec: str
    summary: OnnxSummary | None = None

    @property
    def default_name(self) -> str:
        path = Path(self.spec)
        return path.name.removesuffix(path.suffix) or path.name

    def refuse(self, recipe: Recipe, *, qat: bool, search: bool, weights: str | Path | None) -> None:
        """An ONNX model takes the SavedModel path, which has every mode and the search; not QAT."""
        if qat:
            raise RecipeError(f"{Path(self.spec)}: quantization-aware training needs a Keras model; onnx2tf "
                              "translates ONNX into TensorFlow ops, which tfmot cannot train with fake quantization",
                              hint="drop --qat for post-training quantization (or train in PyTorch and pass the "
                                   "module)")
        if weights is not None:
            raise RecipeError(f"--weights {weights}: an .onnx file carries its own weights", hint="drop --weights")

    def checked(self, *, weights: str | Path | None, trust_model: bool) -> OnnxFile:
        # parsed (not its weights) here, before TensorFlow starts
        return replace(self, summary=check_onnx_model(Path(self.spec)))

    def load(self, *, weights: Path | None, trust_model: bool, data: Dataset | None, on_step: Step) -> Frontend:
        return OnnxFrontend(load_onnx_model(Path(self.spec), calibration=data, on_step=on_step, summary=self.summary))


@dataclass(frozen=True)
class OnnxFrontend(KerasFrontend):
    """onnx2tf's SavedModel of an ONNX model: converted as a SavedModel, fed as the ONNX model is."""

    @property
    def source_specs(self) -> list[InputSpec]:
        return self.loaded.source_specs  # type: ignore[attr-defined]

    @property
    def can_train(self) -> bool:
        return False

    def as_model_takes(self, sets: DataSets, on_step: Step) -> DataSets:
        """The user's arrays (checked in the ONNX model's input order and layout) as onnx2tf's model
        takes them: in its SavedModel's input order, and channels last where it moved them."""
        model = self.loaded
        order, moved = model.input_order, model.moved_inputs  # type: ignore[attr-defined]
        if order != list(range(len(order))):
            names = tuple(spec.name for spec in model.input_specs)
            sets = tuple(None if d is None else replace(d, inputs=tuple(d.inputs[j] for j in order),
                                                        input_names=names) for d in sets)
        if moved:
            on_step("channels last on the device (onnx2tf: the inputs only convolutions read); edgeq transposes the "
                    "NCHW data for it")
        return tuple(channels_moved_last(d, moved) for d in sets)

    def layout(self) -> str | None:
        if self.loaded.device_layout == Layout.NHWC:  # type: ignore[attr-defined]
            return ("NHWC: onnx2tf moved the ONNX model's channels last (only convolutions read the input, so no "
                    "TRANSPOSE); feed H x W x C bytes (NCHW data transposed)")
        return "NCHW, as the ONNX model takes it"  # ONNX's Conv is channels-first

    def source_layout(self) -> str | None:
        return Layout.NCHW if self.loaded.device_layout == Layout.NHWC else None  # type: ignore[attr-defined]
