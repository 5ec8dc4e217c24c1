"""The model as a microcontroller stores it: without the strings TFLite Micro never reads.

A converter's .tflite names every tensor (fused names run to hundreds of characters), keeps
a signature for LiteRT's runner, and metadata for tools: on a DS-CNN that was 9.4 KB of a
53 KB file. TFLM needs none of it, so edgeq flashes the model without tensor and subgraph
names, description, signatures, shape signatures (LiteRT's resizable shapes) and metadata
(except TFLM's own "OfflineMemoryAllocation").
The names are kept in a sidecar, `<name>_names.json`, which `inspect`, the report and
`device-check` read, so nothing a person reads loses its names. The lean form (the default, which
the pipeline keeps only where TFLM gives the same outputs bit for bit) also leaves out
- the per-channel scales and zero points of int32 biases: TFLM's int8 kernels compute the bias
  scale from the input's and the weights';
- all but one of a per-channel tensor's zero points when they are all 0 (the weights' always
  are): TFLM's allocator reads a single zero point as every channel's. That is 8 bytes a channel,
  13 KB of a 294 KB autoencoder. LiteRT insists on one per channel ("QuantizationParam has 1
  zero_point values and N scale values"), so this form lives only in the flashed bytes (the C
  array, the harness firmware). The `.tflite` edgeq writes is `litert_loadable(flashed)`, a zero
  point per channel again, which LiteRT and every tool built on its loader open; its sidecar
  records the flashed bytes' sha256, and `read_flashed` derives them again from the file for
  export-c, the firmware and device-check.
Buffers stay 16-byte aligned, as the converter writes them (CMSIS-NN kernels want it).

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


def strip_for_device(model: bytes, info: ModelInfo, *, lean: bool = True) -> tuple[bytes, dict[str, Any]]:
    """(the model without names, signatures and metadata; the sidecar that names it again).

    `info`: the checked reader's view of `model`, whose names the sidecar keeps. If `lean`, the
    quantization parameters of int32 biases of per-channel int8 convolutions and dense layers go
    too, and all-zero per-channel zero points shrink to one. Callers check the lean result in
    TFLM (the pipeline does, and flashes the plain stripped form where TFLM's outputs would change).
    """
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    except Exception as exc:  # pragma: no cover - the reader accepted the file
        raise TFLiteFormatError(f"{info.source}: cannot rewrite the model without names: {exc}") from exc
    names = [[text(t.name) for t in (sg.tensors or [])] for sg in (obj.subgraphs or [])]
    obj.description = None
    obj.signatureDefs = None
    for subgraph in obj.subgraphs or []:
        subgraph.name = None
        for tensor in subgraph.tensors or []:
            tensor.name = None
            tensor.shapeSignature = None  # LiteRT's resizable shape; TFLM allocates from `shape`
    kept = []
    for entry in obj.metadata or []:
        if text(entry.name) in KEEP_METADATA:
            kept.append(entry)
        elif obj.buffers and 0 <= entry.buffer < len(obj.buffers):
            obj.buffers[entry.buffer].data = None  # its bytes go; the empty slot costs a few
    obj.metadata = kept or None
    dropped = _drop_bias_quantization(obj, info) if lean else 0
    collapsed = _collapse_zero_points(obj) if lean else 0
    align_buffers(obj)
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
        "zero_points_collapsed": collapsed,  # per-channel tensors that keep one zero point for all
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


def _collapse_zero_points(obj: Any) -> int:
    """Keep one zero point for per-channel tensors whose zero points are all 0."""
    collapsed = 0
    for subgraph in obj.subgraphs or []:
        for tensor in subgraph.tensors or []:
            q = tensor.quantization
            if q is None or q.scale is None or q.zeroPoint is None:
                continue
            zero_points = np.asarray(q.zeroPoint, dtype=np.int64)
            if len(q.scale) > 1 and zero_points.size == len(q.scale) and not zero_points.any():
                q.zeroPoint = np.zeros(1, dtype=np.int64)
                collapsed += 1
    return collapsed


def litert_loadable(model: bytes) -> bytes:
    """`model` with a zero point per channel again wherever the lean form kept one for all.

    TFLM reads a single zero point as every channel's; LiteRT refuses the tensor ("QuantizationParam
    has 1 zero_point values and N scale values"). Returns `model` itself when nothing is collapsed.
    """
    from ai_edge_litert import schema_py_generated as schema

    try:
        root = schema.Model.GetRootAs(model, 0)
        collapsed = any(_has_collapsed(root.Subgraphs(g).Tensors(t))
                        for g in range(root.SubgraphsLength()) for t in range(root.Subgraphs(g).TensorsLength()))
    except Exception:  # noqa: BLE001 - not ours to judge: LiteRT says what is wrong with it
        return model
    if not collapsed:
        return model
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    for subgraph in obj.subgraphs or []:
        for tensor in subgraph.tensors or []:
            q = tensor.quantization
            if q is not None and q.scale is not None and q.zeroPoint is not None \
                    and len(q.zeroPoint) == 1 and len(q.scale) > 1:
                q.zeroPoint = np.full(len(q.scale), int(q.zeroPoint[0]), dtype=np.int64)
    align_buffers(obj)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def lean_again(model: bytes) -> bytes:
    """`model` (a `litert_loadable` file) with one zero point again for each per-channel tensor whose
    zero points are all 0: the flashed bytes it was made from."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    _collapse_zero_points(obj)
    align_buffers(obj)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def canonical(flashed: bytes) -> bytes:
    """`flashed` as `lean_again` writes it from its `litert_loadable` file: the same model, laid out
    so that the file gives these very bytes back (a flatbuffer written twice from equal objects can
    still differ in padding, so the flashed form is made the way `read_flashed` remakes it)."""
    standard = litert_loadable(flashed)
    return flashed if standard is flashed else lean_again(standard)


def file_form(flashed: bytes, sidecar: dict[str, Any] | None) -> tuple[bytes, dict[str, Any] | None]:
    """(the .tflite to write for `flashed`, its sidecar): the file LiteRT opens, whose sidecar names
    it by its own sha256 and the flashed bytes by `flashed_sha256` when the two differ. `flashed`
    must be `canonical` (the pipeline's is), so that `read_flashed` finds the same bytes."""
    standard = litert_loadable(flashed)
    if standard is flashed or sidecar is None:
        return flashed, sidecar
    if lean_again(standard) != flashed:
        raise ValueError("the flashed model is not in its canonical form (edgeq.tflite.strip.canonical)")
    return standard, {**sidecar, "model_sha256": hashlib.sha256(standard).hexdigest(),
                      "flashed_sha256": hashlib.sha256(flashed).hexdigest()}


def read_flashed(path: Path) -> tuple[bytes, ModelInfo]:
    """What goes on the device for the .tflite at `path`, read and checked, with its sidecar's names:
    the file itself, or, when edgeq wrote it from a leaner flashed form (its sidecar says
    `flashed_sha256`), that form derived again from it."""
    from edgeq.tflite.reader import read_tflite, read_tflite_bytes

    data = read_tflite_bytes(path)
    sidecar = read_sidecar(Path(path), data)
    flashed_sha = (sidecar or {}).get("flashed_sha256")
    if flashed_sha and flashed_sha != hashlib.sha256(data).hexdigest():
        lean = lean_again(data)
        if hashlib.sha256(lean).hexdigest() != flashed_sha:
            raise TFLiteFormatError(f"{path}: its names file says the flashed model has sha256 {flashed_sha[:16]}…, "
                                    "and the model's lean form is not that",
                                    hint=f"delete {sidecar_path(Path(path)).name} or convert the model again")
        data = lean
    info = read_tflite(data, source=str(path))
    return data, (with_names(info, sidecar) if sidecar is not None else info)


def _has_collapsed(tensor: Any) -> bool:
    q = tensor.Quantization()
    return q is not None and q.ScaleLength() > 1 and q.ZeroPointLength() == 1


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
    """The names sidecar next to `tflite`, if there is one and it was written for these bytes (the
    file's, or the flashed form's that `read_flashed` derives from it)."""
    path = sidecar_path(tflite)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        return None
    if hashlib.sha256(model).hexdigest() not in (sidecar.get("model_sha256"), sidecar.get("flashed_sha256")):
        return None
    return sidecar


def read_tflite_named(path: Path) -> tuple[bytes, ModelInfo]:
    """A .tflite read and checked, with the names from its sidecar if it was stripped by edgeq."""
    from edgeq.tflite.reader import read_tflite, read_tflite_bytes

    data = read_tflite_bytes(path)
    info = read_tflite(data, source=str(path))
    sidecar = read_sidecar(Path(path), data)
    return data, (with_names(info, sidecar) if sidecar is not None else info)


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def align_buffers(obj: Any) -> None:
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
