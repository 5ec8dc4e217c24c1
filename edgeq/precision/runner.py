"""What the formats need of a model, whatever framework it is in (a Runner; built by
edgeq/precision/keras_runner.py and edgeq/precision/torch_runner.py), and the dot product both
frameworks' runners compute in every precision."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeq.precision.array_quantization import quantize_dequantize
from edgeq.precision.results import DotProduct

__all__ = ["Runner", "WeightInfo", "dot_errors"]


@dataclass(frozen=True)
class WeightInfo:
    """Where one of a model's weights sits, and whether the formats treat it as a kernel."""

    index: int                # position in model.get_weights()
    layer: str
    name: str
    kernel: bool
    depthwise: bool           # channels are in x multiplier: the last two axes together
    channel_axis: int = -1    # the output-channel axis TFLite quantizes per channel


@dataclass
class Runner:
    """What the formats need of a model, whatever framework it is in: its weights (with which of
    them are kernels and where their output channels are), a way to put other weights in, a run
    of the float model on the inputs (first output, float32), and a run with every layer computing
    in a float dtype ("float16", "bfloat16")."""

    weights: list[np.ndarray]
    meta: list[WeightInfo]
    set_weights: Callable[[list[np.ndarray]], None]
    predict: Callable[[Sequence[np.ndarray]], np.ndarray]
    predict_in: Callable[[str, Sequence[np.ndarray]], np.ndarray]
    dot_products: Callable[[Sequence[np.ndarray], Callable[[str], None]], list[DotProduct]]
    output_count: int = 1
    output_name: str = "0"


def dot_errors(x: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """|x . w - reference| with x and w in FP32, BF16 and FP16 (products summed in FP32, as hardware with
    FP32 accumulators does) and INT8 (symmetric, int32 accumulation); the reference is float64."""
    import ml_dtypes

    reference = float(np.dot(x.astype(np.float64), w.astype(np.float64)))
    errors = {"fp32": abs(float(np.dot(x, w)) - reference)}
    for name, dtype in (("bf16", ml_dtypes.bfloat16), ("fp16", np.float16)):
        with np.errstate(over="ignore", invalid="ignore"):
            xr = x.astype(dtype).astype(np.float32)
            wr = w.astype(dtype).astype(np.float32)
        errors[name] = abs(float(np.sum(xr * wr, dtype=np.float32)) - reference)
    qx = quantize_dequantize(x, bits=8, scheme="symmetric", axis=None)
    qw = quantize_dequantize(w, bits=8, scheme="symmetric", axis=None)
    acc = int(np.sum(qx.q.astype(np.int64) * qw.q.astype(np.int64)))  # what an int32 accumulator holds
    errors["int8"] = abs(acc * float(qx.scales) * float(qw.scales) - reference)
    return errors
