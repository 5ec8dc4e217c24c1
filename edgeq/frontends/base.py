"""The one interface every model framework implements, and the one place that tells them apart.

A conversion meets a model twice. In the parent process, before any framework starts, a
`ModelFile` checks what can be checked cheaply (the file exists, is trusted, what it can be asked)
and names the outputs. In the conversion's child process, `ModelFile.load` gives a `Frontend`: the
loaded model, which the driver asks for its inputs, its float outputs, its float32 and quantized
.tflite and its QAT, never for its format. `frontend_for(path)` is the only format test.

Adding a framework: a module here with a `ModelFile` and a `Frontend`, and a line in
`frontend_for` (edgeq/frontends/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgeq.errors import ModelLoadError
from edgeq.progress import Progress, Step
from edgeq.specs import InputSpec

if TYPE_CHECKING:
    from edgeq.calibration import Dataset
    from edgeq.isolation import Worker
    from edgeq.loading import ConverterSource
    from edgeq.quantize.recipe import Recipe
    from edgeq.quantize.recurrent import RecurrentNote
    from edgeq.quantize.training import QATResult, TrainSettings

Shapes = list[tuple[int, ...]]
DataSets = tuple["Dataset | None", ...]


@dataclass(frozen=True)
class Identity:
    """What the report's `input` part says of a model: the file it hashes (a factory's state_dict),
    its format, what saved it, its parameter count, and the tool that translated it from another
    framework, if one did."""

    path: Path
    format: str
    saved_by: str
    parameter_count: int
    converted_by: str | None = None


@dataclass(frozen=True)
class IONames:
    """The quantized model's signature names, in its input and output order: how data are matched to it."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


@dataclass(frozen=True)
class Layers:
    """A model as its framework's layers, for `edgeq precision` (which changes weights layer by layer):
    `api` says which simulator walks it ("keras": a Keras model, "torch": an nn.Module)."""

    api: str
    model: Any


@dataclass(frozen=True)
class Prepared:
    """The model as the converter should see it, what preparing it changed, and its float32 .tflite
    (None where it is not built: a large Keras model, whose size alone it would have given)."""

    model: Frontend
    float_tflite: bytes | None
    folded_batchnorm: tuple[str, ...] = ()
    recurrent: tuple[RecurrentNote, ...] = ()


@dataclass(frozen=True)
class Quantized:
    """A quantized .tflite and the names its signature gives its inputs and outputs."""

    model: bytes
    names: IONames


class Frontend(Protocol):
    """A model of some framework, loaded in the conversion's child process."""

    input_specs: list[InputSpec]  # as the device takes them

    @property
    def identity(self) -> Identity: ...

    @property
    def can_train(self) -> bool:
        """Whether quantization-aware training is possible (the search's last lever)."""
        ...

    @property
    def accuracy_hint(self) -> str | None:
        """What to try when quantization costs too much accuracy, where this framework's levers
        differ from the converter's (None: the converter's)."""
        ...

    @property
    def source_specs(self) -> list[InputSpec]:
        """The inputs as the user's data come (checked against these before any layout change)."""
        ...

    def predict(self, inputs: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Float outputs on the device layout's inputs, one array per output, `batch_size` samples at a
        time (None: `reference_batch`)."""
        ...

    def reference_batch(self, inputs: Sequence[np.ndarray]) -> int:
        """Samples per batch for `predict` on `inputs`: as many as the model's activations let fit
        the memory budget (edgeq.budget)."""
        ...

    def as_model_takes(self, sets: DataSets, on_step: Step) -> DataSets:
        """The user's data sets (checked against `source_specs`) in the loaded model's input order and
        layout, where a translation of the model changed them."""
        ...

    def for_device(self, sets: DataSets, shapes: Shapes, on_step: Step) -> tuple[Frontend, Shapes, DataSets]:
        """The model in the layout the device takes (channels last where that saves ops), its sample
        shapes and the data sets moved into that layout once."""
        ...

    def layout(self) -> str | None:
        """How the C header and the report describe a 4-D input (None: as the model says)."""
        ...

    def source_layout(self) -> str | None:
        """The user's data layout where the device takes another (device-check transposes for it)."""
        ...

    def prepared(self, mode: str, sample: Dataset | None, shapes: Shapes, on_step: Step,
                 runtimes: Worker) -> Prepared: ...

    def quantize(self, recipe: Recipe, data: Dataset | None, shapes: Shapes,
                 progress: Callable[[int], None] | None) -> Quantized: ...

    def qat(self, train: Dataset, settings: TrainSettings, shapes: Shapes, per_channel: bool, on_step: Step,
            progress: Progress | None) -> tuple[Frontend, QATResult]: ...

    def layers(self) -> Layers | None:
        """The model's layers for `edgeq precision`; None where it has none to change (a SavedModel,
        onnx2tf's translation)."""
        ...

    def converter_source(self, shapes: Shapes) -> ConverterSource | None:
        """The TFLite converter's view of the model, for the per-layer debugger and the search's
        conversions; None where the model does not go through that converter."""
        ...


class ModelFile(Protocol):
    """A model as the parent process sees it: checked, named, not loaded."""

    spec: str  # what the user passed (a path, or package.module:factory)

    @property
    def default_name(self) -> str: ...

    def refuse(self, recipe: Recipe, *, qat: bool, search: bool, weights: str | Path | None) -> None:
        """What this framework cannot do with this file, as a RecipeError that says why and what to
        try instead: modes it does not make, QAT, the recipe search, --weights."""
        ...

    def checked(self, *, weights: str | Path | None, trust_model: bool) -> ModelFile:
        """The file after the checks that need no framework; what `load` needs of them kept."""
        ...

    def load(self, *, weights: Path | None, trust_model: bool, data: Dataset | None, on_step: Step) -> Frontend:
        """The model, loaded in the conversion's child process (`data`: a sample for shapes)."""
        ...


def sample_shapes(specs: Sequence[InputSpec], label: str, given: dict[str, tuple[int, ...]], data: Dataset | None,
                  on_step: Step) -> Shapes:
    """Each input's sample shape for the converter: given by --input-shape, else the model's own,
    else (for open dimensions) the data's, said out loud. Never silently 1."""
    names = [spec.name for spec in specs]
    unknown = [n for n in given if n not in names and n not in [m.split(":")[0] for m in names]]
    if unknown:
        raise ModelLoadError(f"--input-shape names {', '.join(unknown)}, but the model's inputs are "
                             f"{', '.join(n.split(':')[0] for n in names)}",
                             hint="pass --input-shape <input name>=<d1>,<d2>,... (no batch dimension)")
    shapes = []
    for k, spec in enumerate(specs):
        dims = tuple(spec.shape[1:])
        chosen = given.get(spec.name, given.get(spec.name.split(":")[0]))
        if chosen is not None:
            if len(chosen) != len(dims) or any(d is not None and d != c for d, c in zip(dims, chosen)):
                raise ModelLoadError(f"--input-shape {spec.name}={','.join(map(str, chosen))} does not fit the "
                                     f"model's input shape {_dims(dims)}",
                                     hint="give every dimension but the batch, keeping the fixed ones")
            shapes.append(tuple(chosen))
        elif None not in dims:
            shapes.append(tuple(int(d) for d in dims))
        elif data is not None:
            shape = tuple(int(d) for d in data.inputs[k].shape[1:])
            on_step(f"input '{spec.name}' has open dimensions {_dims(dims)}: converting for {_dims(shape)}, the shape of "
                    f"{data.name}; pass --input-shape {spec.name.split(':')[0]}=... to choose another")
            shapes.append(shape)
        else:
            raise ModelLoadError(f"{label}: input '{spec.name}' has open dimensions {_dims(dims)}, and a device "
                                 "needs fixed ones", hint=f"pass --input-shape {spec.name.split(':')[0]}="
                                 + ",".join("N" if d is None else str(d) for d in dims) + " (N: the size you want)")
    return shapes


def _dims(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def fixed_specs(specs: Sequence[InputSpec], shapes: Sequence[tuple[int, ...]]) -> list[InputSpec]:
    """The model's input specs with the sample shapes chosen for conversion."""
    return [replace(spec, shape=(None, *shape)) for spec, shape in zip(specs, shapes)]


def channels_moved_last(data: Dataset | None, moved: Sequence[int]) -> Dataset | None:
    """`data` with the channels of inputs `moved` (NCHW) last: what a channels-last device takes."""
    if data is None:
        return None
    return replace(data, inputs=tuple(np.ascontiguousarray(np.moveaxis(x, 1, -1)) if k in moved else x
                                      for k, x in enumerate(data.inputs)))


@dataclass
class TrainingBar:
    """One progress bar over every batch of every QAT epoch, made at the first batch."""

    progress: Progress | None
    epochs: int
    epoch: int = 0
    _bar: Callable[[int], None] | None = field(default=None, repr=False)
    _total: int = 0

    def on_batch(self, index: int, per_epoch: int) -> None:
        if self.progress is None:
            return
        if self._bar is None:
            self._total = self.epochs * per_epoch
            self._bar = self.progress("training", self._total)
        self._bar(self.epoch * per_epoch + index + 1)

    def on_epoch(self, epoch: int, total: int, logs: dict[str, Any]) -> None:
        self.epoch = epoch + 1

    def finish(self) -> None:
        if self._bar is not None:
            self._bar(self._total)  # early stopping ends before the last batch


def trained_line(result: QATResult) -> str:
    """What QAT did, in one step line: epochs run, the epoch kept and its metrics, the loss used."""
    best = (result.best_epoch or result.epochs_run) - 1
    kept = {k: v[best] for k, v in result.history.items() if len(v) > best}
    return (f"trained {result.epochs_run} epoch(s){' (stopped early)' if result.stopped_early else ''}; "
            f"kept epoch {best + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(kept.items()))
            + f"; loss {result.loss}, {result.loss_source.split(':')[0]}")


def trained(train: Dataset, settings: TrainSettings, on_step: Step, progress: Progress | None, kind: str,
            run: Callable[[TrainingBar], Any]) -> Any:
    """Quantization-aware training as every frontend reports it: the step line, one progress bar,
    the data set named in its errors, and what was kept. `run(bar)` trains and returns its result,
    whose last element is the QATResult (or which is one)."""
    from edgeq.errors import CalibrationError

    on_step(f"{kind}quantization-aware training on {train.num_samples} samples of {train.name} "
            f"(up to {settings.epochs} epochs, early stopping on validation loss)")
    bar = TrainingBar(progress, settings.epochs)
    try:
        got = run(bar)
    except CalibrationError as exc:
        if exc.message.startswith(train.name):
            raise
        raise CalibrationError(f"training data '{train.name}': {exc.message}", hint=exc.hint) from exc
    bar.finish()
    on_step(trained_line(got[-1] if isinstance(got, tuple) else got))
    return got
