"""How much quantization cost: the quantized model's outputs against the float model's.

Three views, because each misses something: top-1 accuracy against labels (what users care about,
needs labels), agreement with the float model's top-1 (needs no labels), and per-output error
statistics (SNR, cosine; also for regression outputs). `evaluate` picks the runtime: TFLite Micro
is ~10-100x slower per sample than LiteRT, so a TFLM target is confirmed on a subset and the full
set runs on LiteRT only where the two agree bit for bit. `per_layer_errors` says *where* the error
comes from, using TFLite's QuantizationDebugger.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgeq.emulator.runtimes import RunResult, run_litert, run_tflm
from edgeq.progress import Advance
from edgeq.records import Record, optional
from edgeq.vocab import Runtime

SNR_CAP_DB = 200.0
"""SNR reported for identical outputs (true value: +inf, which JSON cannot hold); -200 for no signal."""

TFLM_CONFIRM_KERNELS = "builtin"
"""LiteRT kernels compared with TFLM: its builtin kernels matched TFLM bit for bit on int8 CNNs
here, while the default (XNNPACK delegate) differed on 0.25-2.5 % of samples, by up to 7 output
LSB (one top-1 flip in 1,000 MNIST samples)."""


# -- output statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputError:
    """Float reference vs quantized, over all samples and elements of one output."""

    mean_abs: float
    max_abs: float
    snr_db: float   # 10*log10(sum(ref^2) / sum((ref-q)^2)), clipped to +-SNR_CAP_DB
    cosine: float   # of the flattened arrays; 1.0 when both are all zero

    def part(self) -> OutputErrorPart:
        """As report.json has it: rounded to 6 decimals."""
        return OutputErrorPart(**{k: round(v, 6) for k, v in asdict(self).items()})


@dataclass(frozen=True)
class OutputErrorPart(Record):
    """One output's error against the float model: mean and max absolute error, SNR (dB, capped at
    +-200), cosine similarity."""

    mean_abs: float
    max_abs: float
    snr_db: float
    cosine: float


def output_error(reference: np.ndarray, quantized: np.ndarray) -> OutputError:
    """Error statistics of `quantized` against `reference` (same shape).

    SNR is capped at +SNR_CAP_DB dB (identical outputs would be +inf, which is not JSON) and at
    -SNR_CAP_DB dB (an all-zero reference with non-zero error would be -inf).
    """
    ref = np.asarray(reference, dtype=np.float64)
    q = np.asarray(quantized, dtype=np.float64)
    if ref.shape != q.shape:
        raise ValueError(f"reference shape {ref.shape} does not match quantized shape {q.shape}")
    diff = np.abs(ref - q)
    signal, noise = float(np.sum(ref ** 2)), float(np.sum(diff ** 2))
    if noise == 0.0:
        snr = SNR_CAP_DB
    elif signal == 0.0:
        snr = -SNR_CAP_DB
    else:
        snr = float(np.clip(10.0 * math.log10(signal / noise), -SNR_CAP_DB, SNR_CAP_DB))
    return OutputError(mean_abs=float(diff.mean()) if diff.size else 0.0,
                       max_abs=float(diff.max()) if diff.size else 0.0,
                       snr_db=snr, cosine=1.0 if noise == 0.0 else _cosine(ref.ravel(), q.ravel()))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


# -- accuracy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccuracyMetrics:
    samples: int
    float_top1: float | None       # fraction in [0, 1]; None without labels or float reference
    quantized_top1: float | None   # None without labels (or when the first output is not class scores)
    top1_agreement: float | None   # argmax(float) == argmax(quantized); None without float reference
    drop_points: float | None      # (float_top1 - quantized_top1) * 100, percentage points
    errors: tuple[OutputError, ...] | None   # per output; None without float reference
    float_auc: float | None = None      # anomaly detection (groups + binary y, an autoencoder): per-file AUC
    quantized_auc: float | None = None
    auc_files: int | None = None

    def part(self, evaluation: Evaluation | None) -> AccuracyPart:
        """report.json's accuracy: floats rounded to 6 decimals, with how `evaluation` ran."""
        def rounded(v: float | None) -> float | None:
            return None if v is None else round(v, 6)

        ev = evaluation
        return AccuracyPart(
            samples=self.samples, float_top1=rounded(self.float_top1), quantized_top1=rounded(self.quantized_top1),
            top1_agreement=rounded(self.top1_agreement), drop_points=rounded(self.drop_points),
            errors=None if self.errors is None else [e.part() for e in self.errors],
            runtime_used=ev.runtime_used if ev else None,
            # LiteRT's kernel choice (runtimes.KERNELS): "builtin" when checked against TFLM,
            # "default" (XNNPACK applied) for LiteRT targets; None for TFLM.
            kernels=(ev.result.kernels or None) if ev else None, batched=ev.result.batched if ev else None,
            confirmation=ev.confirmation if ev else None, note=ev.result.note if ev else "",
            float_auc=rounded(self.float_auc), quantized_auc=rounded(self.quantized_auc), auc_files=self.auc_files)

    @property
    def auc_drop_points(self) -> float | None:
        """(float AUC - quantized AUC) * 100, where both exist."""
        if self.float_auc is None or self.quantized_auc is None:
            return None
        return (self.float_auc - self.quantized_auc) * 100.0


@dataclass(frozen=True)
class Confirmation(Record):
    """How LiteRT compared with TFLM on the first `samples` samples (TFLM targets): whether
    identical, on how many samples they differed, by how many output LSB at most (null where an
    output is float) and by how much after dequantizing; `error` when LiteRT could not run it."""

    runtime: Runtime
    samples: int
    identical: bool
    max_abs_difference: float | None = None
    differing_samples: int | None = None
    max_lsb_difference: int | None = None
    error: str | None = optional()

    def summary(self) -> str:
        """One phrase for how LiteRT compared with TFLM on the confirmation subset."""
        k = self.samples
        if self.error:
            return self.error
        if self.identical:
            return f"LiteRT was bit-exact with TFLM on the first {k} samples"
        lsb = self.max_lsb_difference
        how = f"by up to {lsb} LSB" if lsb is not None else f"by up to {self.max_abs_difference or 0:g}"
        on = (f"{self.differing_samples} of the first {k} samples" if self.differing_samples is not None
              else f"the first {k} samples")
        return f"LiteRT's kernels on this CPU differed from TFLM {how} on {on}"


@dataclass(frozen=True)
class AccuracyPart(Record):
    """Accuracy on the evaluation data: top-1 (fractions in [0, 1]) of the float and the
    quantized model, their agreement, the drop in percentage points, per-output error; and how the
    quantized model ran (runtime, LiteRT kernels, batched, the LiteRT-vs-TFLM confirmation)."""

    samples: int
    float_top1: float | None
    quantized_top1: float | None
    top1_agreement: float | None
    drop_points: float | None
    errors: list[OutputErrorPart] | None
    runtime_used: Runtime | None
    kernels: str | None
    batched: bool | None
    confirmation: Confirmation | None
    note: str
    float_auc: float | None = optional()      # per-file AUC of an anomaly detector (groups in the data)
    quantized_auc: float | None = optional()
    auc_files: int | None = optional()


def _is_class_scores(output: np.ndarray) -> bool:
    return output.ndim >= 2 and output.shape[-1] > 1


def top1_accuracy(scores: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Fraction of samples whose argmax matches the label (labels as ids or one-hot rows)."""
    if labels is None or not _is_class_scores(scores):
        return None
    predicted = np.argmax(scores, axis=-1)
    truth = np.asarray(labels)
    if truth.ndim == predicted.ndim + 1 and truth.shape[-1] == 1:
        truth = truth[..., 0]                      # a column of class ids
    elif truth.ndim == predicted.ndim + 1 and truth.shape[-1] == scores.shape[-1]:
        truth = np.argmax(truth, axis=-1)          # one-hot rows
    if truth.shape != predicted.shape:
        return None
    return float(np.mean(predicted == truth))


def reconstruction_auc(inputs: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None,
                       groups: np.ndarray | None) -> tuple[float, int] | None:
    """Per-file AUC of an autoencoder used as an anomaly detector, and the number of files; None
    unless the data has `groups` (a file id per sample) and binary `y`, one label per file, and the
    output has the input's shape. A sample's score is its mean squared reconstruction error, a
    file's the mean of its samples'; the AUC is the chance that an anomalous file scores above a
    normal one (ties count half), as machine-sound anomaly detection is judged."""
    if labels is None or groups is None or outputs.shape != inputs.shape or len(groups) != len(labels):
        return None
    y = np.asarray(labels).reshape(len(labels), -1)
    if y.shape[1] != 1 or not np.isin(y, (0, 1)).all():
        return None
    scores = np.mean((outputs.astype(np.float64) - inputs.astype(np.float64)) ** 2,
                     axis=tuple(range(1, inputs.ndim)))
    files, index = np.unique(np.asarray(groups), return_inverse=True)
    file_score = np.bincount(index, weights=scores) / np.bincount(index)
    file_label = np.zeros(len(files))
    np.maximum.at(file_label, index, y[:, 0])
    if (np.bincount(index, weights=y[:, 0]) % np.bincount(index) != 0).any():  # a file with mixed labels
        return None
    normal, anomalous = file_score[file_label == 0], file_score[file_label == 1]
    if not len(normal) or not len(anomalous):
        return None
    above = (anomalous[:, None] > normal[None, :]).sum() + 0.5 * (anomalous[:, None] == normal[None, :]).sum()
    return float(above / (len(normal) * len(anomalous))), len(files)


def compare(float_outputs: list[np.ndarray] | None, quantized_outputs: list[np.ndarray],
            labels: np.ndarray | None, *, inputs: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> AccuracyMetrics:
    """Top-1 metrics on the first output (class scores: last dimension > 1) and per-output errors;
    with `groups`, an autoencoder's per-file AUC instead of top-1 (see reconstruction_auc)."""
    first = np.asarray(quantized_outputs[0])
    quantized_auc = None if inputs is None else reconstruction_auc(inputs, first, labels, groups)
    if quantized_auc is not None:
        float_auc = None if float_outputs is None else reconstruction_auc(inputs, np.asarray(float_outputs[0]),
                                                                          labels, groups)
        errors = None if float_outputs is None else tuple(output_error(f, q)
                                                          for f, q in zip(float_outputs, quantized_outputs))
        return AccuracyMetrics(len(first), None, None, None, None, errors,
                               None if float_auc is None else float_auc[0], quantized_auc[0], quantized_auc[1])
    quantized_top1 = top1_accuracy(first, labels)
    if float_outputs is None:
        return AccuracyMetrics(len(first), None, quantized_top1, None, None, None)
    if len(float_outputs) != len(quantized_outputs):
        raise ValueError(f"{len(float_outputs)} float outputs but {len(quantized_outputs)} quantized outputs")
    reference = np.asarray(float_outputs[0])
    float_top1 = top1_accuracy(reference, labels)
    agreement = (float(np.mean(np.argmax(reference, -1) == np.argmax(first, -1)))
                 if _is_class_scores(first) and reference.shape == first.shape else None)
    drop = None if float_top1 is None or quantized_top1 is None else (float_top1 - quantized_top1) * 100.0
    errors = tuple(output_error(f, q) for f, q in zip(float_outputs, quantized_outputs))
    return AccuracyMetrics(len(first), float_top1, quantized_top1, agreement, drop, errors)


def _max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    diffs = [float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
             for x, y in zip(a, b)]
    return max(diffs, default=0.0)


# -- the device's runtime, affordably -----------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    result: RunResult             # the outputs used for accuracy (full set)
    runtime_used: str             # "litert" or "tflm"
    confirmation: Confirmation | None   # TFLM targets: how LiteRT compared with TFLM (see _confirm)


def evaluate(model: bytes, inputs: Sequence[np.ndarray], *, runtime: str, confirm_samples: int = 100,
             arena_size: int | None = None, on_progress: Advance | None = None) -> Evaluation:
    """Outputs of `model` on every sample, from the target's runtime or a runtime proven identical.

    runtime "litert": batched LiteRT. runtime "tflm": TFLM on the first `confirm_samples`, LiteRT
    (builtin kernels) on all; identical on the subset -> LiteRT's outputs are used for the full set,
    otherwise TFLM runs the rest. Whether LiteRT matches TFLM depends on the CPU (LiteRT picks
    kernels by CPU features), so both branches happen in the field. Progress counts samples whose
    final outputs are known.
    """
    if runtime == Runtime.LITERT:
        result = run_litert(model, inputs, on_progress=on_progress)
        return Evaluation(result, Runtime.LITERT, None)
    if runtime != Runtime.TFLM:
        raise ValueError(f"runtime must be 'litert' or 'tflm', got {runtime!r}")
    n = len(inputs[0])
    k = max(1, min(confirm_samples, n))
    head = run_tflm(model, [x[:k] for x in inputs], arena_size=arena_size, on_progress=on_progress)
    lite, confirmation = _confirm(model, inputs, head, k)
    if lite is not None and k < n:
        if on_progress:
            on_progress(n)
        return Evaluation(lite, Runtime.LITERT, confirmation)
    if k == n:
        return Evaluation(head, Runtime.TFLM, confirmation)
    rest = run_tflm(model, [x[k:] for x in inputs], arena_size=arena_size,
                    on_progress=(lambda done: on_progress(k + done)) if on_progress else None)
    outputs = [np.concatenate([a, b]) for a, b in zip(head.outputs, rest.outputs)]
    raw = [np.concatenate([a, b]) for a, b in zip(head.raw_outputs or [], rest.raw_outputs or [])]
    full = RunResult(Runtime.TFLM, outputs, n, head.seconds + rest.seconds, batched=False,
                     note=f"{confirmation.summary()}; every sample ran in TFLM", raw_outputs=raw)
    return Evaluation(full, Runtime.TFLM, confirmation)


def _confirm(model: bytes, inputs: Sequence[np.ndarray], head: RunResult,
             k: int) -> tuple[RunResult | None, Confirmation]:
    """LiteRT's run over all samples if its first k outputs equal TFLM's (else None), and the record."""
    try:
        lite = run_litert(model, inputs, kernels=TFLM_CONFIRM_KERNELS)
    except (RuntimeError, ValueError) as exc:  # LiteRT refused a model TFLM runs: TFLM it is
        return None, Confirmation(Runtime.TFLM, k, identical=False,
                                  error=f"LiteRT could not run the model: {str(exc).splitlines()[0][:200]}")
    differing, lsb = raw_disagreement([o[:k] for o in lite.raw_outputs or []], head.raw_outputs or [])
    record = Confirmation(Runtime.TFLM, k, identical=differing == 0, differing_samples=differing,
                          max_lsb_difference=lsb,
                          max_abs_difference=round(_max_difference([o[:k] for o in lite.outputs], head.outputs), 9))
    return (lite if record.identical else None), record


def raw_disagreement(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray]) -> tuple[int, int | None]:
    """How two runs' raw outputs (one array per output, samples on axis 0) differ: the number of
    samples with any element unequal, and the largest difference in output LSB (None when an
    output is float, where an LSB means nothing). NaN equals NaN here."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"cannot compare runs with {len(ours)} and {len(theirs)} outputs")
    differing = np.zeros(len(ours[0]), dtype=bool)
    lsb: int | None = 0
    for a, b in zip(ours, theirs):
        if a.shape != b.shape:
            raise ValueError(f"cannot compare outputs of shapes {a.shape} and {b.shape}")
        if a.dtype.kind in "iu" and b.dtype.kind in "iu":
            unequal = a != b
            if lsb is not None and a.size:
                lsb = max(lsb, int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))))
        else:
            unequal = ~np.isclose(a, b, rtol=0.0, atol=0.0, equal_nan=True)
            lsb = None
        differing |= unequal.reshape(len(a), -1).any(axis=1)
    return int(differing.sum()), lsb


# -- per-layer error ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerError:
    layer: str               # the quantized tensor's name, shortened when huge
    op: str
    rmse_over_scale: float   # sqrt(mean squared error) / scale; ~0.29 (1/sqrt(12)) is pure rounding noise
    mean_abs_error: float
    max_abs_error: float
    # The int8 step over the median magnitude of the layer's nonzero float values: how coarse int8 is
    # for a typical value. An outlier channel makes it large for every other channel of the layer,
    # while rmse_over_scale stays at rounding noise. Not in report.json (the recipe search orders by it).
    step_over_median: float = math.nan

    def part(self) -> LayerErrorPart:
        return LayerErrorPart(self.layer, self.op, _json_float(self.rmse_over_scale),
                              _json_float(self.mean_abs_error), _json_float(self.max_abs_error))


@dataclass(frozen=True)
class LayerErrorPart(Record):
    """One quantized layer's output error from the QuantizationDebugger (null where not finite)."""

    layer: str
    op: str
    rmse_over_scale: float | None
    mean_abs_error: float | None
    max_abs_error: float | None


def _json_float(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


_MAX_NAME = 60


def short_layer_name(name: str) -> str:
    """The converter joins fused op names with ';' (hundreds of characters): keep the first."""
    first = name.split(";")[0]
    if re.fullmatch(r"(StatefulPartitionedCall(_\d+)?|serving_default_\w+):\d+", first):
        return "the model's output"  # the converter names the last layer's tensor after the signature
    first = re.sub(r"^(StatefulPartitionedCall(_\d+)?/)+", "", first)
    return first if len(first) <= _MAX_NAME else "..." + first[-(_MAX_NAME - 3):]
