"""The model as a microcontroller stores it: without the strings TFLite Micro never reads.

A converter's .tflite names every tensor (fused names run to hundreds of characters), keeps
a signature for LiteRT's runner, and metadata for tools: on a DS-CNN that was 9.4 KB of a
53 KB file. TFLM needs none of it, so edgeq flashes the model without tensor and subgraph
names, description, signatures, shape signatures (LiteRT's resizable shapes) and metadata
(except TFLM's own "OfflineMemoryAllocation").
The names are kept in a sidecar, `<name>_names.json`, which `inspect`, the report and
`device-check` read, so nothing a person reads loses its names. The per-channel scales and zero
points of int32 biases go too: TFLM's int8 kernels compute the bias scale from the input's and
the weights'. Buffers stay 16-byte aligned, as the converter writes them (CMSIS-NN kernels want
it).

The rewrite goes through the flatbuffer object API, which trusts its input: only models the
checked reader (edgeq/tflite/reader.py) has read come here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import TFLiteFormatError
from edgeq.tflite.reader import ModelInfo

SIDECAR_FORMAT = "edgeq-names/1"
KEEP_METADATA = frozenset({"OfflineMemoryAllocation"})  # read by TFLM's allocator
_ALIGNMENT = 16


def sidecar_path(tflite: Path) -> Path:
    return tflite.with_name(f"{tflite.stem}_names.json")


# Ops whose int32 bias carries per-channel quantization parameters (a float32 scale and an int64
# zero point per output channel) that TFLM's int8 kernels never read: they derive the bias scale
# from the input and weight scales. 12 bytes a channel: 9% of the bundled example's file.
_BIASED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})


def strip_for_device(model: bytes, info: ModelInfo, *, bias_quantization: bool = False) -> tuple[bytes, dict[str, Any]]:
    """(the model without names, signatures and metadata; the sidecar that names it again).

    `info`: the checked reader's view of `model`, whose names the sidecar keeps. Unless
    `bias_quantization`, the quantization parameters of int32 biases of per-channel int8
    convolutions and dense layers go too. Callers check the result in TFLM (the pipeline does,
    and keeps them where TFLM's outputs would change).
    """
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    except Exception as exc:  # pragma: no cover - the reader accepted the file
        raise TFLiteFormatError(f"{info.source}: cannot rewrite the model without names: {exc}") from exc
    names = [[_text(t.name) for t in (sg.tensors or [])] for sg in (obj.subgraphs or [])]
    obj.description = None
    obj.signatureDefs = None
    for subgraph in obj.subgraphs or []:
        subgraph.name = None
        for tensor in subgraph.tensors or []:
            tensor.name = None
            tensor.shapeSignature = None  # LiteRT's resizable shape; TFLM allocates from `shape`
    kept = []
    for entry in obj.metadata or []:
        if _text(entry.name) in KEEP_METADATA:
            kept.append(entry)
        elif obj.buffers and 0 <= entry.buffer < len(obj.buffers):
            obj.buffers[entry.buffer].data = None  # its bytes go; the empty slot costs a few
    obj.metadata = kept or None
    dropped = 0 if bias_quantization else _drop_bias_quantization(obj, info)
    _align_buffers(obj)
    stripped = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
    sidecar = {
        "format": SIDECAR_FORMAT,
        "model_sha256": hashlib.sha256(stripped).hexdigest(),
        "description": info.description,
        "inputs": [{"name": n, "tensor": t} for n, t in zip(info.input_names, info.inputs)],
        "outputs": [{"name": n, "tensor": t} for n, t in zip(info.output_names, info.outputs)],
        "tensors": names,
        "stripped_bytes": len(model) - len(stripped),
        "bias_quantization_dropped": dropped,  # tensors whose (unused) bias scales were left out
    }
    return stripped, sidecar


def _drop_bias_quantization(obj: Any, info: ModelInfo) -> int:
    """Leave out the quantization of int32 biases whose op has per-channel int8 weights."""
    graph = obj.subgraphs[0]
    dropped = 0
    for op in info.ops:
        if op.name not in _BIASED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        weights, bias = info.tensors[op.inputs[1]], info.tensors[op.inputs[2]]
        if weights.dtype == "int8" and len(weights.scales) > 1 and bias.dtype == "int32" and bias.is_constant:
            graph.tensors[bias.index].quantization = None
            dropped += 1
    return dropped


def render_sidecar(sidecar: dict[str, Any]) -> bytes:
    return (json.dumps(sidecar, indent=1, sort_keys=True) + "\n").encode()


def with_names(info: ModelInfo, sidecar: dict[str, Any]) -> ModelInfo:
    """`info` of a stripped model with the names its sidecar keeps (tensors of the main graph,
    signature names of the inputs and outputs)."""
    tensors = sidecar.get("tensors") or [[]]
    main = tensors[0] if tensors else []
    renamed = tuple(dataclasses.replace(t, name=main[t.index]) if t.index < len(main) and not t.name else t
                    for t in info.tensors)
    by_tensor_in = {e["tensor"]: e["name"] for e in sidecar.get("inputs", [])}
    by_tensor_out = {e["tensor"]: e["name"] for e in sidecar.get("outputs", [])}
    return dataclasses.replace(
        info, tensors=renamed, description=info.description or sidecar.get("description", ""),
        input_names=tuple(by_tensor_in.get(t, "") for t in info.inputs),
        output_names=tuple(by_tensor_out.get(t, "") for t in info.outputs))


def read_sidecar(tflite: Path, model: bytes) -> dict[str, Any] | None:
    """The names sidecar next to `tflite`, if there is one and it was written for these bytes."""
    path = sidecar_path(tflite)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        return None
    if sidecar.get("model_sha256") != hashlib.sha256(model).hexdigest():
        return None
    return sidecar


def read_tflite_named(path: Path) -> tuple[bytes, ModelInfo]:
    """A .tflite read and checked, with the names from its sidecar if it was stripped by edgeq."""
    from edgeq.tflite.reader import read_tflite, read_tflite_bytes

    data = read_tflite_bytes(path)
    info = read_tflite(data, source=str(path))
    sidecar = read_sidecar(Path(path), data)
    return data, (with_names(info, sidecar) if sidecar is not None else info)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def _align_buffers(obj: Any) -> None:
    """Pack every buffer's bytes at a 16-byte boundary (the object API would align them to 4)."""
    from ai_edge_litert import schema_py_generated as schema

    class AlignedBuffer(schema.BufferT):  # type: ignore[misc, valid-type]
        def Pack(self, builder: Any) -> int:  # noqa: N802 (the generated API's name)
            data = None
            if self.data is not None:
                payload = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(payload), _ALIGNMENT)
                builder.head -= len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                data = builder.EndVector(len(payload))
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    for k, buffer in enumerate(obj.buffers or []):
        aligned = AlignedBuffer()
        aligned.data, aligned.offset, aligned.size = buffer.data, buffer.offset, buffer.size
        obj.buffers[k] = aligned
