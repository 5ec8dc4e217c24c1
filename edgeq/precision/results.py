"""What `edgeq precision` measured: each format's cost, per-channel against per-tensor INT8 on
every kernel, one dot product per layer in several precisions; and the records of precision.json
built from them (docs/report.schema.json is generated from those records)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeq.records import Record

__all__ = ["ChannelGainPart", "DotProduct", "DotProductPart", "FormatPart", "FormatResult", "LayerChannelGain",
           "PrecisionReport", "PrecisionResult"]


@dataclass(frozen=True)
class FormatResult:
    name: str
    label: str
    bits: int
    weight_bytes: int
    mean_logit_diff: float | None
    max_logit_diff: float | None
    top1_agreement: float | None      # fraction of samples whose argmax equals FP32's
    accuracy: float | None            # fraction correct on the labels
    target_runs: bool | None = None   # None when no target was given
    target_note: str = ""
    note: str = ""

    def part(self) -> FormatPart:
        def n(x: float | None) -> float | str | None:
            return _json_number(x, 8)

        return FormatPart(self.name, self.label, self.bits, self.weight_bytes, n(self.mean_logit_diff),
                          n(self.max_logit_diff), n(self.top1_agreement), n(self.accuracy), self.target_runs,
                          self.target_note, self.note)

    def to_dict(self) -> dict[str, Any]:
        return self.part().to_dict()


@dataclass(frozen=True)
class FormatPart(Record):
    """One format's cost: weight bytes, mean and max difference from FP32 ("inf" on overflow),
    top-1 agreement with FP32 and accuracy (fractions); whether the target runs it, and why."""

    name: str
    label: str
    bits: int
    weight_bytes: int
    mean_logit_diff: float | str | None
    max_logit_diff: float | str | None
    top1_agreement: float | str | None
    accuracy: float | str | None
    target_runs: bool | None
    target_note: str
    note: str


def _json_number(x: float | None, digits: int | None = None) -> float | str | None:
    """JSON has no Inf or NaN: they become "inf", "-inf", "nan" (as `edgeq formats --json` writes them)."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return round(x, digits) if digits is not None else x


@dataclass(frozen=True)
class LayerChannelGain:
    layer: str
    weight: str
    shape: tuple[int, ...]
    per_tensor_mse: float
    per_channel_mse: float

    @property
    def gain(self) -> float:
        """per-tensor MSE / per-channel MSE: above 1 when per channel is better."""
        if self.per_channel_mse > 0:
            return self.per_tensor_mse / self.per_channel_mse
        return 1.0 if self.per_tensor_mse == 0 else math.inf

    def part(self) -> ChannelGainPart:
        gain = self.gain
        return ChannelGainPart(self.layer, self.weight, list(self.shape), self.per_tensor_mse, self.per_channel_mse,
                               None if math.isinf(gain) else round(gain, 4))


@dataclass(frozen=True)
class ChannelGainPart(Record):
    """How much per-channel INT8 beats per-tensor on one weight: both MSEs and their ratio (null: infinite)."""

    layer: str
    weight: str
    shape: list[int]
    per_tensor_mse: float
    per_channel_mse: float
    gain: float | None


@dataclass(frozen=True)
class DotProduct:
    """One output element of a layer computed from its real input in several precisions."""

    layer: str
    terms: int                 # length of the dot product
    reference: float           # float64
    errors: dict[str, float]   # format -> |value - reference|

    def part(self) -> DotProductPart:
        return DotProductPart(self.layer, self.terms, _json_number(self.reference),
                              {k: _json_number(v) for k, v in self.errors.items()})


@dataclass(frozen=True)
class DotProductPart(Record):
    """One output element of a layer in float64, and each format's absolute error on it."""

    layer: str
    terms: int
    reference: float | str | None
    errors: dict[str, float | str | None]


@dataclass(frozen=True)
class PrecisionResult:
    model: str
    data: str
    samples: int
    parameters: int
    kernel_parameters: int
    formats: list[FormatResult]
    channel_gains: list[LayerChannelGain]
    dot_products: list[DotProduct]
    target: str | None = None
    notes: list[str] = field(default_factory=list)
    output_kind: str = "logits"  # what the differences are measured on: logits, probabilities, outputs

    def part(self) -> PrecisionReport:
        return PrecisionReport(1, "precision", self.model, self.data, self.samples, self.parameters,
                               self.output_kind, self.kernel_parameters, self.target,
                               [f.part() for f in self.formats], [g.part() for g in self.channel_gains],
                               [d.part() for d in self.dot_products], list(self.notes))

    def to_dict(self) -> dict[str, Any]:
        """precision.json without its schema_version and command (to_json adds them)."""
        data = self.part().to_dict()
        del data["schema_version"], data["command"]
        return data


@dataclass(frozen=True)
class PrecisionReport(Record):
    """precision.json of `edgeq precision`: every number format's cost for a Keras model on data."""

    schema_version: Literal[1]
    command: Literal["precision"]
    model: str
    data: str
    samples: int
    parameters: int
    output_kind: str
    kernel_parameters: int
    target: str | None
    formats: list[FormatPart]
    per_channel_vs_per_tensor: list[ChannelGainPart]
    dot_products: list[DotProductPart]
    notes: list[str]
