"""Post-training quantization with the TFLite converter, driven by a Recipe."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Callable

from edgeq._tf import captured_output, tf
from edgeq.calibration import Dataset, to_representative_dataset
from edgeq.errors import ConversionError
from edgeq.loading import ConverterSource
from edgeq.modes import MODES
from edgeq.quantize.recipe import Recipe
from edgeq.vocab import Granularity


def convert_float32(source: ConverterSource) -> bytes:
    """The unquantized reference .tflite, for size comparison."""
    converter = source.make()
    converter.exclude_conversion_metadata = True
    return _run(converter, source)


def quantize(source: ConverterSource, recipe: Recipe, calibration: Dataset | None,
             on_progress: Callable[[int], None] | None = None) -> bytes:
    """`source` quantized as `recipe` says. With per-tensor layers in a per-channel recipe, the
    model is converted both ways (each once per source and calibration set: a search asks for many
    mixes) and the named layers' weights come from the per-tensor conversion."""
    if recipe.int16_layers:
        return _with_int16(source, recipe, calibration, on_progress)
    if not recipe.per_tensor_layers or not recipe.per_channel:
        return _converted(source, replace(recipe, per_tensor_layers=None), calibration, on_progress)
    from edgeq.quantize.granularity import mixed

    per_channel = _converted(source, replace(recipe, per_tensor_layers=None), calibration, on_progress)
    per_tensor = _converted(source, replace(recipe, per_tensor_layers=None, per_channel=False), calibration, None)
    return mixed(per_channel, per_tensor, set(recipe.per_tensor_layers), source=source.label)


def wide(recipe: Recipe) -> Recipe:
    """`recipe` in int16x8 (the conversion int16 layers come from): int16 I/O where it was int8."""
    io = {"int8": "int16"}
    return replace(recipe, mode="int16x8", activations="int16", input_dtype=io.get(recipe.input_dtype, recipe.input_dtype),
                   output_dtype=io.get(recipe.output_dtype, recipe.output_dtype), per_tensor_layers=None,
                   int16_layers=None)


def _with_int16(source: ConverterSource, recipe: Recipe, calibration: Dataset | None,
                on_progress: Callable[[int], None] | None) -> bytes:
    from edgeq.quantize.int16 import mixed

    if recipe.mode != "int8" or recipe.per_tensor_layers:
        raise ConversionError(f"{source.label}: int16 activations per layer need an int8 recipe without per-tensor "
                              "layers", hint="drop int16_layers or per_tensor_layers from the recipe")
    int8 = _converted(source, replace(recipe, int16_layers=None), calibration, on_progress)
    int16 = _converted(source, wide(recipe), calibration, None)
    assert recipe.int16_layers is not None
    return mixed(int8, int16, set(recipe.int16_layers), source=source.label)


_CONVERTED: dict[tuple[int, Recipe, str], bytes] = {}  # (source, recipe, calibration sha256) -> .tflite


def _converted(source: ConverterSource, recipe: Recipe, calibration: Dataset | None,
               on_progress: Callable[[int], None] | None) -> bytes:
    key = (id(source), recipe, calibration.sha256 if calibration is not None else "")
    if key not in _CONVERTED:
        if len(_CONVERTED) > 8:  # one search's two conversions, not a process's history
            _CONVERTED.clear()
        _CONVERTED[key] = _run(configured_converter(source, recipe, calibration, on_progress), source)
    return _CONVERTED[key]


def configured_converter(source: ConverterSource, recipe: Recipe, calibration: Dataset | None,
                         on_progress: Callable[[int], None] | None = None) -> Any:
    """A TFLiteConverter set up for `recipe`: the one place converter flags are chosen.

    Also what TFLite's QuantizationDebugger needs to re-create exactly edgeq's quantized model.
    Calibration samples reach the converter by input name, whatever order it gives the inputs.
    """
    tfm = tf()
    converter = source.make()
    converter.exclude_conversion_metadata = True  # no timestamps/versions: byte-identical reruns
    mode = MODES[recipe.mode]
    if mode.optimize:
        converter.optimizations = [tfm.lite.Optimize.DEFAULT]
    if mode.needs_calibration:
        assert calibration is not None
        converter.representative_dataset = to_representative_dataset(calibration, limit=recipe.calibration_samples,
                                                                     on_progress=on_progress,
                                                                     names=source.input_names)
    if mode.ops_set:
        converter.target_spec.supported_ops = [getattr(tfm.lite.OpsSet, mode.ops_set)]
        converter.inference_input_type = getattr(tfm, recipe.input_dtype)
        converter.inference_output_type = getattr(tfm, recipe.output_dtype)
    if mode.supported_types:
        converter.target_spec.supported_types = [getattr(tfm, t) for t in mode.supported_types]
    if recipe.granularity == Granularity.PER_TENSOR:
        converter._experimental_disable_per_channel = True
    return converter


_OP_ERROR = re.compile(r"'(tf\.[A-Za-z0-9_]+)' op is neither a custom op nor a flex op")
_LOCATION = re.compile(r'loc\((?:fused\[)?(.*?)\]?\)')


def _run(converter: Any, model: ConverterSource) -> bytes:
    log = None
    try:
        with captured_output() as log:
            result = converter.convert()
    except Exception as exc:  # ConverterError, ValueError, RuntimeError: all about this model
        raise _explain(model, f"{exc}\n{log.text if log else ''}") from exc
    return bytes(result)


def _layer_names(text: str) -> list[str]:
    """Layer paths from MLIR locations: loc(fused["Erf:", "model/layer/Erf@__inference_..."])."""
    names = set()
    for group in _LOCATION.findall(text):
        for item in re.findall(r'"([^"]+)"', group):
            item = item.split("@")[0]
            if "/" in item and "PartitionedCall" not in item:
                names.add(item)
    return sorted(names)[:5]


def _explain(model: ConverterSource, text: str) -> ConversionError:
    ops = sorted(set(_OP_ERROR.findall(text)))
    if ops:
        where = _layer_names(text)
        return ConversionError(
            f"{model.label}: the model uses TensorFlow op(s) that no TFLite builtin covers: {', '.join(ops)}"
            + (f" (at {', '.join(where)})" if where else ""),
            hint="replace the layer(s) with ones TFLite supports; edgeq does not enable TF Select ops, "
            "which microcontrollers cannot run",
        )
    if "TensorListReserve" in text:
        return ConversionError(
            f"{model.label}: the model keeps a recurrent loop (LSTM, GRU or SimpleRNN) that the TFLite converter "
            "cannot turn into TFLite ops",
            hint="convert the Keras file (.keras or .h5) instead of a SavedModel: edgeq then rewrites recurrent "
                 "layers into ops TFLite Micro runs")
    errors = [line.strip() for line in text.splitlines() if "error" in line.lower()][:5]
    detail = "; ".join(errors) if errors else text.strip().splitlines()[0][:300] if text.strip() else "unknown"
    return ConversionError(
        f"{model.label}: the TFLite converter failed: {detail[:600]}",
        hint="set EDGEQ_VERBOSE=1 to see the converter's full log",
    )
