"""A model's input and output tensors as the device protocol describes them, and their bytes.

Shared by the virtual device (which answers HELLO with them) and device-check (which compares
the device's HELLO with the model file, and packs and unpacks sample bytes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeq.device.protocol import DType, WireTensor
from edgeq.errors import EdgeqError
from edgeq.tflite.reader import ModelInfo
from edgeq.tflite.reader import TensorInfo as ModelTensor

# Model tensor types the protocol's dtype byte can name (schema TensorType numbers).
WIRE_DTYPES = {"float32": DType.FLOAT32, "float16": DType.FLOAT16, "int32": DType.INT32, "uint8": DType.UINT8,
            "int64": DType.INT64, "int16": DType.INT16, "int8": DType.INT8}


def dtype_code(name: str) -> int:
    try:
        return int(WIRE_DTYPES[name])
    except KeyError:
        raise EdgeqError(f"the device protocol cannot carry a {name} tensor",
                         hint="use int8, uint8, int16, int32, int64, float16 or float32 model inputs and outputs"
                         ) from None


def numpy_dtype(code: int) -> np.dtype:
    """The little-endian NumPy dtype of a protocol dtype code (the wire is little-endian)."""
    name = DType(code).name.lower()
    return np.dtype(name).newbyteorder("<")


def wire_tensor(tensor: ModelTensor) -> WireTensor:
    scale = float(np.float32(tensor.scales[0])) if tensor.scales else 0.0
    zero_point = int(tensor.zero_points[0]) if tensor.zero_points else 0
    # The reader keeps the shape signature (-1 for a free batch); TFLM allocates the static shape, 1 there.
    return WireTensor(dtype_code(tensor.dtype), tuple(1 if d < 0 else int(d) for d in tensor.shape), scale,
                      zero_point)


def wire_tensors(info: ModelInfo) -> tuple[tuple[WireTensor, ...], tuple[WireTensor, ...]]:
    return (tuple(wire_tensor(t) for t in info.input_tensors), tuple(wire_tensor(t) for t in info.output_tensors))


def nbytes(tensor: WireTensor) -> int:
    return int(np.prod(tensor.shape, dtype=np.int64)) * numpy_dtype(tensor.dtype).itemsize


def describe(tensor: WireTensor) -> str:
    text = f"{DType(tensor.dtype).name.lower() if tensor.dtype in DType._value2member_map_ else tensor.dtype}" \
           f"[{', '.join(map(str, tensor.shape))}]"
    if tensor.scale:
        text += f" scale {tensor.scale:.6g} zero point {tensor.zero_point}"
    return text


def pack(arrays: Sequence[np.ndarray], tensors: Sequence[WireTensor]) -> bytes:
    """One sample's tensors, in order, as the bytes an INFER frame carries."""
    return b"".join(np.ascontiguousarray(a, dtype=numpy_dtype(t.dtype)).tobytes() for a, t in zip(arrays, tensors))


def unpack(data: bytes, tensors: Sequence[WireTensor]) -> list[np.ndarray]:
    """Split concatenated tensor bytes back into arrays; ValueError if the size is wrong."""
    expected = sum(nbytes(t) for t in tensors)
    if len(data) != expected:
        raise ValueError(f"{len(data)} bytes, expected {expected}")
    out, offset = [], 0
    for t in tensors:
        size = nbytes(t)
        out.append(np.frombuffer(data, dtype=numpy_dtype(t.dtype), count=size // numpy_dtype(t.dtype).itemsize,
                                 offset=offset).reshape(t.shape))
        offset += size
    return out
