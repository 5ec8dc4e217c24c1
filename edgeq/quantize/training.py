"""What quantization-aware training is asked (`TrainSettings`) and what it hands back
(`QATResult`, and its report record `QatPart`): plain values, no TensorFlow, so that the driver,
the PyTorch frontend and the report can name them without starting a framework."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import RecipeError
from edgeq.records import Record


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-4
    validation_split: float = 0.1
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"QAT epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            problems.append(f"QAT batch size must be at least 1 (got {self.batch_size})")
        if not (self.learning_rate >= 0 and math.isfinite(self.learning_rate)):
            problems.append(f"QAT learning rate must be a finite number >= 0 (got {self.learning_rate})")
        if not 0 <= self.validation_split < 1:
            problems.append(f"QAT validation split must be in [0, 1) (got {self.validation_split})")
        if self.patience < 0:
            problems.append(f"QAT early-stopping patience must be >= 0 (got {self.patience})")
        if problems:
            raise RecipeError("; ".join(problems), hint="typical QAT settings: 3-10 epochs, learning rate 1e-4 "
                                                        "to 1e-5, validation split 0.1, patience 2-3")


@dataclass(frozen=True)
class QATResult:
    model: Any                        # the quantize_model-wrapped tf_keras model, fine-tuned, best weights restored
    loss: str                         # display name, e.g. "sparse_categorical_crossentropy(from_logits=False)"
    metrics: tuple[str, ...]
    loss_source: str                  # "model compile settings" or "inferred from the data: ..."
    epochs_run: int
    stopped_early: bool
    history: dict[str, list[float]] = field(default_factory=dict)  # loss, val_loss, (accuracy, val_accuracy)
    bridged: bool = False             # True if the model was rebuilt from Keras 3

    @property
    def best_epoch(self) -> int | None:
        """1-based epoch whose weights the model holds (lowest val_loss, else lowest loss)."""
        values = self.history.get("val_loss") or self.history.get("loss") or []
        finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
        return min(finite)[1] + 1 if finite else None

    def part(self) -> QatPart:
        """report.json's record of the training: floats rounded, NaN/Inf as null, no model."""
        return QatPart(self.loss, list(self.metrics), self.loss_source, self.epochs_run, self.stopped_early,
                       self.best_epoch, {k: [_round(v) for v in vs] for k, vs in self.history.items()}, self.bridged)

    def to_dict(self) -> dict[str, Any]:
        return self.part().to_dict()


@dataclass(frozen=True)
class QatPart(Record):
    """Quantization-aware training: the loss (and where it came from), the epochs run, whether it
    stopped early, the 1-based epoch whose weights were kept, the per-epoch history, and whether
    the model was rebuilt from Keras 3 in tf_keras first."""

    loss: str
    metrics: list[str]
    loss_source: str
    epochs_run: int
    stopped_early: bool
    best_epoch: int | None
    history: dict[str, list[float | None]]
    bridged: bool


def _round(value: float) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None
