"""Per-layer quantization error from TFLite's QuantizationDebugger: the converter re-creates the int8
model with a float twin of every quantized tensor, and the two are compared layer by layer. It
lives with the converter it drives; the emulator only keeps the record (`LayerError`)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from edgeq.emulator.accuracy import LayerError, short_layer_name


def per_layer_errors_of(source: Any, recipe: Any, calibration: Any, debug_inputs: Sequence[np.ndarray], *,
                        samples: int = 64) -> list[LayerError]:
    """per_layer_errors of the int8 model that `recipe` makes from `source` (a ConverterSource):
    what edgeq runs in its converter's child process. `debug_inputs` in the .tflite's input order."""
    from edgeq.quantize.ptq import configured_converter

    return per_layer_errors(configured_converter(source, recipe, calibration), debug_inputs, samples=samples)


def per_layer_errors(converter: Any, debug_inputs: Sequence[np.ndarray], *, samples: int = 64) -> list[LayerError]:
    """Per-layer quantization error of an int8 model, worst first (by rmse_over_scale).

    `converter`: configured for int8 exactly as the model was made
    (`edgeq.quantize.ptq.configured_converter`), so the debugger re-creates that model; it is used
    up by the call. `debug_inputs`: float arrays, one per input of the converted model, in its
    order (the debugger feeds them by position); the first `samples` rows.

    Only for int8: the debugger builds its model with `mlir_quantize(...)`, which always quantizes
    activations to int8 (int16x8 would be reported as int8), and float16/dynamic/float32 models
    have no NumericVerify points to compare.
    """
    from edgeq._tf import captured_output, tf

    tfm = tf()
    count = max(1, min(samples, len(debug_inputs[0])))
    arrays = [np.asarray(x[:count], dtype=np.float32) for x in debug_inputs]

    def dataset() -> Any:
        for i in range(count):
            yield [x[i:i + 1] for x in arrays]

    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = tfm.lite.experimental.QuantizationDebugOptions(
            layer_debug_metrics={"mean_abs_error": lambda diffs: float(np.mean(np.abs(diffs)))},
            layer_direct_compare_metrics={"step_over_median": _step_over_median})
        debugger = tfm.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset,
                                                               debug_options=options)
        debugger.run()
        rows = [_layer_error(debugger, name, metrics) for name, metrics in debugger.layer_statistics.items()]
    return sorted(rows, key=lambda r: (not math.isfinite(r.rmse_over_scale), -r.rmse_over_scale
                                       if math.isfinite(r.rmse_over_scale) else 0.0))


def _layer_error(debugger: Any, name: str, metrics: dict[str, float]) -> LayerError:
    """One NumericVerify point: its quantized tensor's name, defining op and scale.

    Mirrors `QuantizationDebugger.layer_statistics_dump` (which only writes CSV).
    """
    interp = debugger._quant_interpreter
    tensor_index = int(debugger._numeric_verify_op_details[name]["inputs"][0])
    op = interp._get_op_details(debugger._defining_op[tensor_index])["op_name"]
    scales = interp._get_tensor_details(tensor_index, subgraph_index=0)["quantization_parameters"]["scales"]
    scale = float(scales[0]) if len(scales) else 0.0
    tensor_name, _ = debugger._get_operand_name_and_index(name)
    mse = float(metrics.get("mean_squared_error", math.nan))
    return LayerError(layer=short_layer_name(tensor_name), op=str(op),
                      rmse_over_scale=math.sqrt(mse) / scale if scale > 0 and mse >= 0 else math.nan,
                      mean_abs_error=float(metrics.get("mean_abs_error", math.nan)),
                      max_abs_error=float(metrics.get("max_abs_error", math.nan)),
                      step_over_median=float(metrics.get("step_over_median", math.nan)))


def _step_over_median(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    """One sample's int8 step over the median magnitude of its nonzero float values (NaN if all zero)."""
    magnitudes = np.abs(np.asarray(float_values, dtype=np.float64)).ravel()
    magnitudes = magnitudes[magnitudes > 0]
    return float(scale) / float(np.median(magnitudes)) if magnitudes.size else math.nan
