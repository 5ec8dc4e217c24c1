"""Facts about a converted model that several stages need, read from the checked reader's view.

Which quantization mode a .tflite was converted in, and what data for it must look like. The
emulator, the pipeline's re-check of a .tflite, `emulate`, `firmware` and `device-check` ask here
rather than each working it out.
"""

from __future__ import annotations

from edgeq.specs import InputSpec
from edgeq.tflite.reader import FLOAT_DTYPES, ModelInfo


def infer_mode(info: ModelInfo) -> str:
    """The quantization mode a .tflite was converted in, from its tensors' dtypes."""
    if any(t.dtype == "float16" for t in info.tensors):
        return "float16"
    edges = set(info.inputs) | set(info.outputs)
    acts = {t.dtype for t in info.flowing_tensors if not t.is_constant and t.index not in edges}
    acts = acts or {t.dtype for t in info.flowing_tensors if not t.is_constant}
    int_weights = any(t.is_constant and t.dtype in ("int8", "int4") for t in info.tensors)
    if acts & set(FLOAT_DTYPES):
        return "dynamic" if int_weights else "float32"
    # int8 activations make it int8, even with some int16 ones (the integer LSTM's cell state).
    return "int16x8" if "int16" in acts and "int8" not in acts else "int8"


def input_specs(info: ModelInfo) -> list[InputSpec]:
    """What data for this .tflite must look like: float samples of each input's shape, in the
    graph's input order, named as its signature names them (else by tensor name)."""
    names = info.input_names or ("",) * len(info.inputs)
    return [InputSpec(name or t.name, (None, *(d if d > 0 else None for d in t.shape[1:])), "float32")
            for name, t in zip(names, info.input_tensors)]
