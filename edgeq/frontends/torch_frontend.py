"""PyTorch models (a .pt2 program, or package.module:factory with --weights) behind the frontend
interface: the parent-side checks and what the PyTorch path can do, then the loaded model (torch.py)
in the device's layout, quantized by PT2E and trained by PT2E QAT."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeq.errors import RecipeError
from edgeq.frontends.base import (DataSets, Frontend, Identity, IONames, Layers, Prepared, Quantized, Shapes,
                                  channels_moved_last, trained)
from edgeq.frontends.torch import FACTORY, check_torch_model, load_torch_model
from edgeq.progress import Progress, Step
from edgeq.specs import InputSpec
from edgeq.vocab import Layout, SourceFormat

if TYPE_CHECKING:
    from edgeq.calibration import Dataset
    from edgeq.isolation import Worker
    from edgeq.quantize.recipe import Recipe
    from edgeq.quantize.training import QATResult, TrainSettings

ACCURACY_HINT = ("more or more typical calibration data (--calibration-samples), PT2E quantization-aware training "
                 "(--qat --train), int16 activations (--mode int16x8) through an ONNX export of the model, or raise "
                 "--max-accuracy-drop if this is acceptable")


@dataclass(frozen=True)
class TorchFile:
    """A .pt2 file or a module:factory, before torch starts."""

    spec: str

    @property
    def default_name(self) -> str:
        factory = FACTORY.match(self.spec)
        if factory and not Path(self.spec).exists():
            return factory.group(2)
        path = Path(self.spec)
        return path.name.removesuffix(path.suffix) or path.name

    def refuse(self, recipe: Recipe, *, qat: bool, search: bool, weights: str | Path | None) -> None:
        """What the PyTorch path does: PT2E int8, post-training or quantization-aware (an nn.Module)."""
        label = Path(self.spec)
        if search:
            raise RecipeError(f"{label}: --search works on Keras and ONNX models only so far",
                              hint="drop it: PyTorch models get PT2E int8 (PTQ, or --qat)")
        if qat and label.suffix.lower() == ".pt2":
            raise RecipeError(f"{label}: QAT trains the nn.Module, and a torch.export program is fixed at the batch "
                              "it was exported with", hint="pass package.module:factory with --weights for --qat")
        if recipe.mode != "int8":
            raise RecipeError(f"{label}: mode '{recipe.mode}' is not available for PyTorch models: litert-torch's "
                              "PT2E quantizer makes int8 (int16 activations are not among its configurations)",
                              hint="drop --mode (int8), or export the model to ONNX/Keras for the other modes")

    def checked(self, *, weights: str | Path | None, trust_model: bool) -> TorchFile:
        check_torch_model(Path(self.spec), weights=weights, trust_model=trust_model)
        return self

    def load(self, *, weights: Path | None, trust_model: bool, data: Dataset | None, on_step: Step) -> Frontend:
        """The model; its input shape comes from the data where the model does not say (a factory)."""
        on_step(f"loading {Path(self.spec)} (PyTorch and litert-torch start-up takes a few seconds)")
        return TorchFrontend(load_torch_model(str(Path(self.spec)), weights=weights, trust_model=trust_model,
                                              example=[tuple(x.shape[1:]) for x in data.inputs]
                                              if data is not None else None))


@dataclass(frozen=True)
class TorchFrontend:
    """A loaded PyTorch model (torch.TorchModel, or the int8 model PT2E QAT made of it)."""

    model: Any
    saved_ops: int = 0  # ops fewer than NCHW, where for_device moved the channels last

    @property
    def identity(self) -> Identity:
        m = self.model
        return Identity(m.path, m.format, m.saved_by, m.parameter_count)

    @property
    def input_specs(self) -> list[InputSpec]:
        return self.model.input_specs

    @property
    def source_specs(self) -> list[InputSpec]:
        return self.model.input_specs

    @property
    def can_train(self) -> bool:
        return self.model.format == SourceFormat.TORCH_MODULE

    @property
    def accuracy_hint(self) -> str | None:
        return ACCURACY_HINT

    def predict(self, inputs: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        return self.model.predict(inputs, batch_size)

    def reference_batch(self, inputs: Sequence[np.ndarray]) -> int:
        return self.model.reference_batch(inputs)

    def as_model_takes(self, sets: DataSets, on_step: Step) -> DataSets:
        return sets

    def for_device(self, sets: DataSets, shapes: Shapes, on_step: Step) -> tuple[Frontend, Shapes, DataSets]:
        """Channels last on the device where that removes ops: a PyTorch model's multi-channel NCHW
        input makes the converter put a TRANSPOSE in front of the first convolution (TFLite computes
        NHWC). Both layouts are converted in float32 (cheap, and the chosen one is kept for the size
        reference); the one with fewer ops wins, and the data (NCHW, as the user has them) are
        transposed for it here, once, so every later stage sees one layout."""
        from edgeq.tflite.reader import read_tflite

        moved = self.model.channels_last(shapes)
        if moved is None:
            return self, shapes, sets
        last, last_shapes = moved
        on_step("comparing NCHW and NHWC device inputs (two float32 conversions)")
        first_ops = read_tflite(self.model.float_tflite(shapes)).ops
        last_ops = read_tflite(last.float_tflite(last_shapes)).ops
        if len(last_ops) >= len(first_ops):
            return self, shapes, sets
        saved = len(first_ops) - len(last_ops)
        on_step(f"channels last on the device: NHWC input saves {saved} op(s) "
                f"({', '.join(sorted({o.name for o in first_ops} - {o.name for o in last_ops}) or ['TRANSPOSE'])}); "
                "edgeq transposes the NCHW data for it")
        inputs = [k for k, (s, ls) in enumerate(zip(shapes, last_shapes)) if len(s) == 3 and s != ls]
        return TorchFrontend(last, saved), last_shapes, tuple(channels_moved_last(d, inputs) for d in sets)

    def layout(self) -> str | None:
        if self.model.device_layout == Layout.NHWC:
            return (f"NHWC: edgeq moved the PyTorch model's channels last ({self.saved_ops} "
                    f"op{'s' if self.saved_ops != 1 else ''} fewer than NCHW); feed H x W x C bytes (NCHW data "
                    "transposed)")
        return "NCHW, as the PyTorch model takes it"

    def source_layout(self) -> str | None:
        return Layout.NCHW if self.model.device_layout == Layout.NHWC else None

    def prepared(self, mode: str, sample: Dataset | None, shapes: Shapes, on_step: Step,
                 runtimes: Worker) -> Prepared:
        on_step("converting to float32 with litert-torch (reference size)")
        return Prepared(self, self.model.float_tflite(shapes))

    def quantize(self, recipe: Recipe, data: Dataset | None, shapes: Shapes,
                 progress: Callable[[int], None] | None) -> Quantized:
        assert data is not None
        model = self.model.quantized(shapes, data, recipe.calibration_samples, recipe.per_channel, progress)
        return Quantized(model, signature_names(model, self.model.label))

    def qat(self, train: Dataset, settings: TrainSettings, shapes: Shapes, per_channel: bool, on_step: Step,
            progress: Progress | None) -> tuple[Frontend, QATResult]:
        model, result = trained(train, settings, on_step, progress, "PT2E ", lambda bar: self.model.qat_trained(
            shapes, train, settings, per_channel, on_batch=bar.on_batch if progress else None))
        return TorchFrontend(model, self.saved_ops), result

    def layers(self) -> Layers | None:
        return Layers("torch", self.model.module)

    def converter_source(self, shapes: Shapes) -> None:
        return None


def signature_names(model: bytes, label: str) -> IONames:
    """A litert-torch .tflite's signature names (args_0..., output_0... where it gives none)."""
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(model, source=label)
    return IONames(tuple(n or f"args_{k}" for k, n in enumerate(info.input_names)),
                   tuple(n or f"output_{k}" for k, n in enumerate(info.output_names)))
