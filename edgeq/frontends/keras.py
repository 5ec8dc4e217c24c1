"""Keras models (.keras, .h5, SavedModel) as a frontend: the file vetted without TensorFlow
(loading.check_model_file), then, in the conversion's child, the model loaded safely and prepared
for the converter: Dense->BatchNormalization folded, recurrent layers made convertible, the fused
LSTM checked against Keras."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeq.frontends.base import DataSets, Frontend, Identity, IONames, Layers, Prepared, Quantized, Shapes, trained
from edgeq.progress import Progress, Step
from edgeq.specs import InputSpec

if TYPE_CHECKING:
    from edgeq.calibration import Dataset
    from edgeq.isolation import Worker
    from edgeq.loading import ConverterSource, LoadedModel
    from edgeq.quantize.recipe import Recipe
    from edgeq.quantize.training import QATResult, TrainSettings

SAVED_MODEL_QAT = ("quantization-aware training needs a Keras model (.keras or .h5), not a SavedModel",
                   "drop --qat for post-training quantization")

FUSED_LSTM_TOLERANCE = 1.0
"""Largest output difference accepted from the fused LSTM op (float model vs its float .tflite), in
int8 steps of each output (its range on the sample over 255): below one step the int8 model cannot
tell the two apart, and a verdict that far from the line does not change with the float round-off
that varies from run to run (a fixed 1e-3 did, on a trained LSTM off by 0.0039)."""


@dataclass(frozen=True)
class KerasFile:
    """A Keras model file or SavedModel directory, before TensorFlow starts."""

    spec: str

    @property
    def default_name(self) -> str:
        path = Path(self.spec)
        return path.name.removesuffix(path.suffix) or path.name

    def refuse(self, recipe: Recipe, *, qat: bool, search: bool, weights: str | Path | None) -> None:
        from edgeq.errors import RecipeError

        if qat and Path(self.spec).is_dir():
            raise RecipeError(f"{Path(self.spec)}: {SAVED_MODEL_QAT[0]}", hint=SAVED_MODEL_QAT[1])

    def checked(self, *, weights: str | Path | None, trust_model: bool) -> KerasFile:
        from edgeq.loading import check_model_file

        check_model_file(self.spec, trust_model=trust_model)  # a missing, mangled or Lambda model fails fast
        return self

    def load(self, *, weights: Path | None, trust_model: bool, data: Dataset | None, on_step: Step) -> Frontend:
        from edgeq.loading import load_model

        on_step(f"loading {self.spec} (TensorFlow start-up takes a few seconds)")
        return KerasFrontend(load_model(Path(self.spec), trust_model=trust_model))


FLOAT_REFERENCE_MAX_PARAMETERS = 1_000_000
"""Above this many parameters the float32 .tflite, which only gives the report its "float32 size",
is not built: on MobileNetV2 1.0 (2.4 M) it was a third of a convert's time."""


@dataclass(frozen=True)
class KerasFrontend:
    """A loaded Keras model (or a SavedModel, which has no Keras object to prepare)."""

    loaded: LoadedModel

    @property
    def identity(self) -> Identity:
        m = self.loaded
        return Identity(m.path, m.format, m.saved_by, m.parameter_count, m.converted_by)

    @property
    def input_specs(self) -> list[InputSpec]:
        return self.loaded.input_specs

    @property
    def source_specs(self) -> list[InputSpec]:
        return self.loaded.input_specs

    @property
    def can_train(self) -> bool:
        return self.loaded.keras_model is not None

    @property
    def accuracy_hint(self) -> str | None:
        return None

    def predict(self, inputs: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        return self.loaded.predict(inputs, batch_size)

    def reference_batch(self, inputs: Sequence[np.ndarray]) -> int:
        return self.loaded.reference_batch()

    def as_model_takes(self, sets: DataSets, on_step: Step) -> DataSets:
        return sets

    def for_device(self, sets: DataSets, shapes: Shapes, on_step: Step) -> tuple[Frontend, Shapes, DataSets]:
        return self, shapes, sets

    def layout(self) -> str | None:
        return None

    def source_layout(self) -> str | None:
        return None

    def converter_source(self, shapes: Shapes) -> ConverterSource:
        return self.loaded.converter_source(shapes)

    def layers(self) -> Layers | None:
        return None if self.loaded.keras_model is None else Layers("keras", self.loaded.keras_model)

    def with_keras(self, keras_model: Any) -> KerasFrontend:
        """The same file's model, replaced by a rewritten Keras object (folded, unrolled, trained)."""
        from edgeq.loading import from_keras_object

        return replace(self, loaded=from_keras_object(keras_model, self.loaded.path, self.loaded.format))

    def prepared(self, mode: str, sample: Dataset | None, shapes: Shapes, on_step: Step,
                 runtimes: Worker) -> Prepared:
        """Dense->BatchNormalization folded (for PTQ and QAT: tfmot folds Conv+BN itself, not
        Dense+BN), recurrent layers made convertible, and the float32 .tflite."""
        from edgeq.quantize.ptq import convert_float32

        model, folded = self._folded(sample, on_step)
        rewritten, recurrent = model._recurrent(mode, sample, shapes, on_step)
        fused_lstm = any(r.kind == "LSTM" and r.action.startswith("fused") for r in recurrent)
        if self.identity.parameter_count > FLOAT_REFERENCE_MAX_PARAMETERS and not fused_lstm:
            on_step(f"float32 .tflite not built: with {self.identity.parameter_count / 1e6:.1f} M parameters it "
                    "would be a second full conversion for its size alone")
            return Prepared(rewritten, None, tuple(folded), tuple(recurrent))
        on_step("converting to float32 (reference size)")
        float_bytes = convert_float32(rewritten.converter_source(shapes))
        if fused_lstm:
            difference, steps = _float_difference(float_bytes, rewritten.converter_source(shapes), rewritten,
                                                  sample, runtimes)
            if steps > FUSED_LSTM_TOLERANCE:
                on_step(f"TFLite's fused LSTM computes other outputs than Keras (max difference {difference:.3g}, "
                        f"{steps:.2f} int8 steps, on the float model): unrolling the LSTM instead")
                rewritten, recurrent = model._recurrent(mode, sample, shapes, on_step, unroll_lstm=True)
                recurrent = [n.with_action(f"; TFLite's fused LSTM was off by {difference:.3g} ({steps:.2f} int8 "
                                           "steps) on the float model") if n.kind == "LSTM" else n for n in recurrent]
                float_bytes = convert_float32(rewritten.converter_source(shapes))
        return Prepared(rewritten, float_bytes, tuple(folded), tuple(recurrent))

    def _folded(self, sample: Dataset | None, on_step: Step) -> tuple[KerasFrontend, tuple[str, ...]]:
        """Dense->BatchNormalization pairs folded into the Dense, verified on `sample` (1e-5)."""
        if self.loaded.keras_model is None or sample is None:
            return self, ()
        from edgeq.quantize.fold import fold_dense_batchnorm

        result = fold_dense_batchnorm(self.loaded.keras_model, [x[:32] for x in sample.inputs])
        if not result.folded:
            return self, ()
        on_step(f"folded BatchNormalization into Dense: {', '.join(result.folded)} "
                f"(max output difference {result.max_abs_difference:.1e})")
        return self.with_keras(result.model), result.folded

    def _recurrent(self, mode: str, sample: Dataset | None, shapes: Shapes, on_step: Step, *,
                   unroll_lstm: bool = False) -> tuple[KerasFrontend, list[Any]]:
        """LSTM, GRU and SimpleRNN layers rewritten into what converts for `mode` (quantize/recurrent.py)."""
        if self.loaded.keras_model is None or sample is None:
            return self, []
        from edgeq.quantize.recurrent import prepare_recurrent

        rewritten, notes = prepare_recurrent(self.loaded.keras_model, mode, list(sample.inputs), shapes,
                                             unroll_lstm=unroll_lstm)
        for note in notes:
            on_step(f"recurrent layer '{note.layer}' ({note.kind}): {note.action}")
        if rewritten is self.loaded.keras_model:
            return self, notes
        return self.with_keras(rewritten), notes

    def quantize(self, recipe: Recipe, data: Dataset | None, shapes: Shapes,
                 progress: Callable[[int], None] | None) -> Quantized:
        from edgeq.quantize.ptq import quantize

        source = self.converter_source(shapes)
        return Quantized(quantize(source, recipe, data, progress), IONames(source.input_names, source.output_names))

    def qat(self, train: Dataset, settings: TrainSettings, shapes: Shapes, per_channel: bool, on_step: Step,
            progress: Progress | None) -> tuple[Frontend, QATResult]:
        from edgeq.quantize.qat import quantization_aware_train

        result = trained(train, settings, on_step, progress, "", lambda bar: quantization_aware_train(
            self.loaded.keras_model, train, settings, on_epoch=bar.on_epoch if progress else None,
            on_batch=bar.on_batch if progress else None))
        return self.with_keras(result.model), result


def _float_difference(float_tflite: bytes, source: ConverterSource, model: Frontend, sample: Dataset | None,
                      worker: Worker) -> tuple[float, float]:
    """The largest difference between the Keras model and its float32 .tflite on up to 32 samples,
    absolute and in int8 steps of the output it is largest in (an output's range over 255)."""
    from edgeq.emulator.runtimes import run_litert
    from edgeq.iomap import from_graph_outputs, natural_output_names, to_graph_inputs
    from edgeq.tflite.reader import read_tflite

    if sample is None:
        return 0.0, 0.0
    xs = [x[:32] for x in sample.inputs]
    info = read_tflite(float_tflite)
    run = worker.call(run_litert, float_tflite, to_graph_inputs(xs, source.input_names, info), kernels="builtin")
    ours = from_graph_outputs(run.outputs, list(source.output_names) or natural_output_names(info), info)
    theirs = model.predict(xs)
    worst = (0.0, 0.0)
    for a, b in zip(ours, theirs):
        if not a.size:
            continue
        difference = float(np.max(np.abs(a - b)))
        step = max(float(np.max(b) - np.min(b)) / 255.0, np.finfo(np.float32).tiny)
        worst = max(worst, (difference, difference / step), key=lambda pair: pair[1])
    return worst
