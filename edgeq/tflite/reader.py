"""A defensive reader for .tflite files: what is inside, checked before anything trusts it.

A .tflite file may come from anywhere (a colleague, a download, a half-copied file), so it is
untrusted. The accessors generated from the TFLite schema do no bounds checks (and `struct` reads
negative offsets from the *end* of the buffer, so corruption yields garbage, not errors); the object
API (`ModelT.InitFromBuf`) unpacks everything unchecked. So this module walks the file with the
accessor API, verifies every table, vector and string position before use, then checks the graph
(indices in range, sane quantization: quant_checks.py) and returns it as the types of
model_info.py. Whatever still fails becomes a `TFLiteFormatError`: no other exception leaves
`read_tflite`, whatever the bytes. Imports the LiteRT schema module (pure Python), never
TensorFlow, so `edgeq inspect` starts fast.
"""

from __future__ import annotations

import os
import stat
import struct
from collections import Counter
from typing import Any, NoReturn, TypeVar

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgeq.errors import TFLiteFormatError
from edgeq.tflite.model_info import (FLOAT_DTYPES, Graph, ModelInfo, OpInfo, TensorInfo, TensorPart, flowing,
                                     reading_notes)
from edgeq.tflite.quant_checks import check_quantization

# The model's types live in model_info.py; much of edgeq imports them from here.
__all__ = ["FLOAT_DTYPES", "MAX_FILE_BYTES", "OP_NAMES", "ModelInfo", "OpInfo", "TensorInfo", "TensorPart",
           "read_tflite", "read_tflite_bytes", "read_tflite_file"]

MAX_FILE_BYTES = 2 * 1024**3
"""Flatbuffers address at most 2 GiB; larger files are refused before being read whole."""

_HINT = "the file is corrupt or not produced by the TFLite converter; re-export it"

OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper() and isinstance(v, int)}
_DTYPES = {v: k.lower() for k, v in vars(schema.TensorType).items() if k.isupper() and isinstance(v, int)}

# vtable slots (4 + 2 * field id, fixed by schema.fbs) of the vector/string/table fields read
# here without the generated accessors, because those would read before we could check bounds.
_M_OPCODES, _M_SUBGRAPHS, _M_DESCRIPTION, _M_BUFFERS, _M_SIGNATURES = 6, 8, 10, 12, 18
_SD_INPUTS, _SD_OUTPUTS, _SD_KEY = 4, 6, 8
_TM_NAME = 4
_OC_CUSTOM_CODE = 6
_SG_TENSORS, _SG_INPUTS, _SG_OUTPUTS, _SG_OPERATORS = 4, 6, 8, 10
_T_SHAPE, _T_NAME, _T_QUANTIZATION, _T_SHAPE_SIGNATURE = 4, 10, 12, 18
_OP_INPUTS, _OP_OUTPUTS, _OP_BUILTIN_OPTIONS = 6, 8, 12
_Q_SCALE, _Q_ZERO_POINT = 8, 10
_B_DATA = 4

_T = TypeVar("_T")

# Builtin options kept in OpInfo.options, by operator: (union type, table class, [(name, accessor,
# smallest valid value)]). Only what the latency estimate needs (window sizes, strides, dilation).
_Fields = tuple[tuple[str, str, int], ...]
_CONV_FIELDS: _Fields = (("stride_h", "StrideH", 1), ("stride_w", "StrideW", 1),
                         ("dilation_h_factor", "DilationHFactor", 1), ("dilation_w_factor", "DilationWFactor", 1))
_POOL_OPTIONS = (schema.BuiltinOptions.Pool2DOptions, schema.Pool2DOptions,
                 (("filter_height", "FilterHeight", 1), ("filter_width", "FilterWidth", 1),
                  ("stride_h", "StrideH", 1), ("stride_w", "StrideW", 1)))
_OPTIONS: dict[str, tuple[int, type, _Fields]] = {
    "CONV_2D": (schema.BuiltinOptions.Conv2DOptions, schema.Conv2DOptions, _CONV_FIELDS),
    # depth_multiplier is informational (newer converters may leave it 0; kernels use the shapes).
    "DEPTHWISE_CONV_2D": (schema.BuiltinOptions.DepthwiseConv2DOptions, schema.DepthwiseConv2DOptions,
                          (*_CONV_FIELDS, ("depth_multiplier", "DepthMultiplier", 0))),
    "AVERAGE_POOL_2D": _POOL_OPTIONS, "MAX_POOL_2D": _POOL_OPTIONS, "L2_POOL_2D": _POOL_OPTIONS,
}
_OPTION_TYPE_NAMES = {v: k for k, v in vars(schema.BuiltinOptions).items() if isinstance(v, int)}


def _short(name: str, limit: int = 60) -> str:
    """A tensor name for an error message: corrupt files can hold megabytes of junk names."""
    return repr(name if len(name) <= limit else name[: limit - 3] + "...")


# The usual mistake is passing the Keras model itself: say so instead of "bad identifier".
_MAGIC_HINTS = {b"PK\x03\x04": "this looks like a zip archive (a .keras model?); convert it with `edgeq convert`",
                b"\x89HDF": "this looks like an HDF5 (.h5) Keras model; convert it with `edgeq convert`"}
_NOT_TFLITE = "this is not a TFLite flatbuffer; pass the .tflite file produced by the converter"


class _Parser:
    """Walks one buffer; `where` always names the part being read, for error messages."""

    def __init__(self, data: bytes, source: str) -> None:
        self.buf = data
        self.size = len(data)
        self.source = source
        self.where = "the file header"
        self._vtable_sizes: dict[int, int] = {}  # checked vtable position -> object size
        # What TFLM reads otherwise than the file says (ModelInfo.notes), by main-graph tensor:
        self.open_batch: list[str] = []  # the batch left open (-1), which TFLM runs as 1
        self.bias_axis: list[str] = []  # a rank-1 per-channel tensor whose quantized dimension is not 0
        # Vector entries visited. A valid file stores each vector once, so more entries than
        # bytes means tables are shared in a loop-like way meant to make the reader hang.
        self._budget = self.size + 4096

    def fail(self, message: str, hint: str = _HINT) -> NoReturn:
        raise TFLiteFormatError(f"{self.source}: {message}", hint=hint)

    def _u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > self.size:
            self.fail(f"{self.where}: offset {pos} points outside the file ({self.size} bytes)")
        return struct.unpack_from("<I", self.buf, pos)[0]

    def table(self, cls: type[_T], pos: int, what: str) -> _T:
        """Check the table header and its vtable at `pos`, then wrap it in the generated class."""
        if pos < 0 or pos + 4 > self.size:
            self.fail(f"{self.where}: {what} at offset {pos} lies outside the file ({self.size} bytes)")
        vtable = pos - struct.unpack_from("<i", self.buf, pos)[0]
        obj_size = self._vtable_sizes.get(vtable)
        if obj_size is None:
            if vtable < 0 or vtable + 4 > self.size:
                self.fail(f"{self.where}: {what} has its field table at offset {vtable}, outside the file")
            vt_size, obj_size = struct.unpack_from("<HH", self.buf, vtable)
            if vt_size < 4 or vt_size % 2 or vtable + vt_size > self.size or obj_size < 4:
                self.fail(f"{self.where}: {what} has a malformed field table at offset {vtable}")
            fields = struct.unpack_from(f"<{(vt_size - 4) // 2}H", self.buf, vtable + 4)
            if any(f and not 4 <= f < obj_size for f in fields):
                self.fail(f"{self.where}: {what} has a field outside its own table (offset {vtable})")
            self._vtable_sizes[vtable] = obj_size
        if pos + obj_size > self.size:
            self.fail(f"{self.where}: {what} at offset {pos} runs past the end of the file")
        obj = cls()
        obj.Init(self.buf, pos)  # type: ignore[attr-defined]
        return obj

    def _vector(self, obj: Any, slot: int, elem_size: int, what: str) -> tuple[int, int]:
        """(start, length) of a vector field, after checking it fits in the file; (0, 0) if absent."""
        off = obj._tab.Offset(slot)
        if not off:
            return 0, 0
        at = obj._tab.Pos + off
        vec = at + self._u32(at)
        length = self._u32(vec)
        start = vec + 4
        if length * elem_size > self.size - start:
            self.fail(f"{self.where}: {what} claims {length} entries, more than the file can hold")
        return start, length

    def _charge(self, entries: int) -> None:
        self._budget -= entries
        if self._budget < 0:
            self.fail(f"{self.where}: the file refers to the same data far more often than a model can")

    def numbers(self, obj: Any, slot: int, dtype: str, what: str) -> list[Any]:
        start, length = self._vector(obj, slot, np.dtype(dtype).itemsize, what)
        self._charge(length)
        return np.frombuffer(self.buf, dtype=dtype, count=length, offset=start).tolist()

    def tables(self, obj: Any, slot: int, cls: type[_T], what: str) -> list[_T]:
        start, length = self._vector(obj, slot, 4, f"the {what} list")
        self._charge(length)
        return [self.table(cls, start + 4 * j + self._u32(start + 4 * j), f"{what} {j}") for j in range(length)]

    def subtable(self, obj: Any, slot: int, cls: type[_T], what: str) -> _T | None:
        off = obj._tab.Offset(slot)
        if not off:
            return None
        at = obj._tab.Pos + off
        return self.table(cls, at + self._u32(at), what)

    def string(self, obj: Any, slot: int, what: str) -> str:
        start, length = self._vector(obj, slot, 1, what)
        return self.buf[start : start + length].decode("utf-8", "replace")

    # -- the model --------------------------------------------------------------------------

    def model(self) -> ModelInfo:
        if self.size == 0:
            self.fail("the file is empty (0 bytes)", hint="the export or copy did not finish; re-export it")
        if self.size < 8:
            self.fail(f"the file is only {self.size} bytes; a TFLite model has at least an 8-byte header",
                      hint="the file is truncated; re-export or copy it again")
        if not schema.Model.ModelBufferHasIdentifier(self.buf, 0):
            self.fail(f"file identifier (bytes 4..8) is {self.buf[4:8]!r}, expected b'TFL3'",
                      hint=_MAGIC_HINTS.get(self.buf[:4], _NOT_TFLITE))
        root = self._u32(0)
        if not 8 <= root <= self.size - 4:
            self.fail(f"root table offset {root} is outside the file ({self.size} bytes)",
                      hint="the file is truncated or corrupt; re-export it")
        model = self.table(schema.Model, root, "the model table")
        version = model.Version()
        description = self.string(model, _M_DESCRIPTION, "the description")
        self.where = "the operator codes"
        op_names = [self._op_name(code) for code in
                    self.tables(model, _M_OPCODES, schema.OperatorCode, "operator code")]
        self.where = "the buffers"
        buffers = self.tables(model, _M_BUFFERS, schema.Buffer, "buffer")
        buffer_sizes = [self._buffer_size(i, b) for i, b in enumerate(buffers)]
        self.where = "the subgraphs"
        subgraphs = self.tables(model, _M_SUBGRAPHS, schema.SubGraph, "subgraph")
        if not subgraphs:
            self.fail("the model has no subgraphs, so there is no graph to run")
        used_buffers: set[int] = set()
        graphs = [self._subgraph(si, sg, op_names, buffer_sizes, used_buffers) for si, sg in enumerate(subgraphs)]
        tensors, ops, inputs, outputs = graphs[0]
        input_names, output_names = self._signature_names(model, inputs, outputs)
        histogram = Counter(op.name for graph in graphs for op in graph[1])
        return ModelInfo(
            source=self.source, file_bytes=self.size, version=version, description=description,
            subgraph_count=len(subgraphs), tensors=tensors, ops=ops, inputs=inputs, outputs=outputs,
            all_op_names=tuple(sorted(histogram)), op_histogram=tuple(sorted(histogram.items())),
            all_dtypes=tuple(sorted({t.dtype for graph in graphs for t in flowing(graph)})),
            constant_buffers=tuple(buffer_sizes[b] for b in sorted(used_buffers) if buffer_sizes[b]),
            input_names=input_names, output_names=output_names,
            notes=reading_notes(self.open_batch, self.bias_axis),
        )

    def _signature_names(self, model: schema.Model, inputs: tuple[int, ...],
                         outputs: tuple[int, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Signature names of the graph's inputs and outputs: the names a Keras model gave them,
        where the converter may have put the tensors in another order."""
        self.where = "the signatures"
        signatures = self.tables(model, _M_SIGNATURES, schema.SignatureDef, "signature")
        if not signatures or signatures[0].SubgraphIndex() != 0:
            return ("",) * len(inputs), ("",) * len(outputs)

        def names(slot: int, tensors: tuple[int, ...], what: str) -> tuple[str, ...]:
            by_tensor = {}
            for entry in self.tables(signatures[0], slot, schema.TensorMap, what):
                by_tensor[entry.TensorIndex()] = self.string(entry, _TM_NAME, f"a {what} name")
            return tuple(by_tensor.get(t, "") for t in tensors)

        return names(_SD_INPUTS, inputs, "signature input"), names(_SD_OUTPUTS, outputs, "signature output")

    def _op_name(self, code: schema.OperatorCode) -> str:
        # Codes above 127 only fit in the newer int32 field; the old int8 field then holds 127.
        builtin = max(code.DeprecatedBuiltinCode(), code.BuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            return "CUSTOM:" + self.string(code, _OC_CUSTOM_CODE, "custom operator name")
        return OP_NAMES.get(builtin, f"UNKNOWN_{builtin}")

    def _buffer_size(self, index: int, buffer: schema.Buffer) -> int:
        _, inline = self._vector(buffer, _B_DATA, 1, f"buffer {index} data")
        offset, size = buffer.Offset(), buffer.Size()
        if offset > 1:  # models over 2 GiB keep weights after the flatbuffer (offset from file start)
            if offset + size > self.size:
                self.fail(f"buffer {index} stores {size} bytes at offset {offset}, past the end of the file "
                          f"({self.size} bytes)", hint="the file is truncated; re-export or copy it again")
            return size
        return inline

    def _subgraph(self, si: int, subgraph: schema.SubGraph, op_names: list[str], buffer_sizes: list[int],
                  used_buffers: set[int]) -> Graph:
        self.where = f"subgraph {si}"
        tensors = tuple(self._tensor(si, ti, t, buffer_sizes, used_buffers) for ti, t in
                        enumerate(self.tables(subgraph, _SG_TENSORS, schema.Tensor, "tensor")))
        count = len(tensors)

        def check(indices: list[int], label: str, optional: bool = False) -> tuple[int, ...]:
            for k, idx in enumerate(indices):
                if not (0 <= idx < count or (optional and idx == -1)):
                    self.fail(f"{label} {k} refers to tensor {idx}, but subgraph {si} has only {count} tensors")
            return tuple(indices)

        self.where = f"subgraph {si}"
        inputs = check(self.numbers(subgraph, _SG_INPUTS, "<i4", "the input list"), f"subgraph {si} input")
        outputs = check(self.numbers(subgraph, _SG_OUTPUTS, "<i4", "the output list"), f"subgraph {si} output")
        ops = []
        for oi, op in enumerate(self.tables(subgraph, _SG_OPERATORS, schema.Operator, "operator")):
            self.where = f"subgraph {si} operator {oi}"
            code = op.OpcodeIndex()
            if code >= len(op_names):
                self.fail(f"operator {oi} in subgraph {si} uses operator code {code}, "
                          f"but the model has only {len(op_names)} operator codes")
            label = f"operator {oi} ({op_names[code]})"
            ins = check(self.numbers(op, _OP_INPUTS, "<i4", "the input list"), f"{label} input", optional=True)
            outs = check(self.numbers(op, _OP_OUTPUTS, "<i4", "the output list"), f"{label} output")
            if op_names[code] == "DEPTHWISE_CONV_2D" and len(ins) == 3 and ins[2] == -1:
                # TFLM's depthwise prepare counts three inputs as "has a bias" and frees the missing
                # one: it crashes (conv and fully connected check for the absent bias; it does not).
                self.fail(f"{label} in subgraph {si} lists its bias as absent (-1); TFLite Micro crashes on "
                          "a depthwise convolution like that", hint="give it a zero bias or list only two inputs")
            both = sorted(set(ins).intersection(outs))
            if both:
                self.fail(f"{label} in subgraph {si} uses tensor {both[0]} as both input and output")
            options = self._options(op, op_names[code], f"{label} in subgraph {si}")
            ops.append(OpInfo(oi, op_names[code], ins, outs, options))
        return tensors, tuple(ops), inputs, outputs

    def _options(self, op: schema.Operator, name: str, label: str) -> tuple[tuple[str, int], ...]:
        """The builtin options of the ops listed in _OPTIONS, checked like everything else."""
        spec = _OPTIONS.get(name)
        if spec is None:
            return ()
        expected, cls, fields = spec
        kind = op.BuiltinOptionsType()
        if kind == schema.BuiltinOptions.NONE:
            return ()
        if kind != expected:
            found = _OPTION_TYPE_NAMES.get(kind, f"unknown options type {kind}")
            self.fail(f"{label} stores {found}, expected {_OPTION_TYPE_NAMES[expected]}")
        table = self.subtable(op, _OP_BUILTIN_OPTIONS, cls, f"the {_OPTION_TYPE_NAMES[expected]}")
        if table is None:
            return ()
        values = []
        for key, accessor, minimum in fields:
            value = getattr(table, accessor)()
            if value < minimum:
                self.fail(f"{label} has {key} {value}; it must be >= {minimum}")
            values.append((key, value))
        return tuple(values)

    def _tensor(self, si: int, ti: int, tensor: schema.Tensor, buffer_sizes: list[int],
                used_buffers: set[int]) -> TensorInfo:
        self.where = f"subgraph {si} tensor {ti}"
        name = self.string(tensor, _T_NAME, "the tensor name")
        label = f"tensor {ti} ({_short(name)}) in subgraph {si}"
        dtype = _DTYPES.get(tensor.Type())
        if dtype is None:
            self.fail(f"{label} has unknown type code {tensor.Type()}",
                      hint="the file is corrupt or uses a newer schema; upgrade ai-edge-litert or re-export it")
        shape = self.numbers(tensor, _T_SHAPE, "<i4", "the shape")
        signature = self.numbers(tensor, _T_SHAPE_SIGNATURE, "<i4", "the shape signature")
        buffer = tensor.Buffer()
        if buffer >= len(buffer_sizes):
            self.fail(f"{label} uses buffer {buffer}, but the model has only {len(buffer_sizes)} buffers")
        used_buffers.add(buffer)
        scales, zero_points, axis = [], [], 0
        quant = self.subtable(tensor, _T_QUANTIZATION, schema.QuantizationParameters, "the quantization")
        if quant is not None:
            scales = self.numbers(quant, _Q_SCALE, "<f4", "the quantization scales")
            zero_points = self.numbers(quant, _Q_ZERO_POINT, "<i8", "the zero points")
            axis = quant.QuantizedDimension()
            if len(shape) == 1 and len(scales) == shape[0] > 1 and axis != 0:
                # A per-channel bias with the filter's axis (TFLM's person_detect has one): TFLM reads a
                # bias's scales by channel and never looks at its quantized dimension.
                if si == 0:
                    self.bias_axis.append(f"#{ti} {_short(name)}")
                axis = 0
            check_quantization(self.fail, label, dtype, shape, scales, zero_points, axis)
            if len(zero_points) == 1 and len(scales) > 1:
                zero_points = zero_points * len(scales)  # what TFLM's allocator reads it as
        # TFLM runs the file's `shape` (an open batch is 1 there, -1 only in the signature) and
        # refuses -1 in `shape` itself as a dynamic tensor; the signature is what the file declares.
        declared = tuple(signature if signature and len(signature) == len(shape) else shape)
        runtime = tuple(shape)
        if si == 0 and declared and declared[0] == -1 and runtime[0] == 1:
            self.open_batch.append(f"#{ti} {_short(name)}")
        return TensorInfo(
            index=ti, name=name, dtype=dtype, shape=runtime,
            scales=tuple(scales), zero_points=tuple(zero_points), quantized_dimension=axis,
            buffer_bytes=buffer_sizes[buffer], shape_signature=declared if declared != runtime else (),
        )


def read_tflite(data: bytes, *, source: str = "<bytes>") -> ModelInfo:
    """Parse and verify a .tflite flatbuffer. Raises only TFLiteFormatError for bad contents."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"read_tflite expects bytes, got {type(data).__name__}")
    parser = _Parser(data, source)
    try:
        return parser.model()
    except TFLiteFormatError:
        raise
    except (IndexError, KeyError, ValueError, TypeError, OverflowError, UnicodeError, struct.error,
            MemoryError, RecursionError) as exc:
        kind = "struct.error" if isinstance(exc, struct.error) else type(exc).__name__
        raise TFLiteFormatError(f"{source}: cannot read {parser.where}: the data points outside the file "
                                f"or holds invalid values ({kind}: {exc})", hint=_HINT) from None


def read_tflite_file(path: str | os.PathLike[str]) -> ModelInfo:
    """Read and verify a .tflite file; every problem (missing, a folder, unreadable) is a TFLiteFormatError."""
    return read_tflite(read_tflite_bytes(path), source=os.fsdecode(path))


def read_tflite_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a .tflite file, bounded in size; for callers that need both bytes and ModelInfo."""
    shown = os.fsdecode(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TFLiteFormatError(f"{shown}: no such file", hint="check the path and file name") from None
    except OSError as exc:
        raise TFLiteFormatError(f"{shown}: cannot access the file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise TFLiteFormatError(f"{shown}: is a directory, expected a .tflite file",
                                hint="pass the path of the .tflite file itself")
    data = b""
    if info.st_size <= MAX_FILE_BYTES:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)  # bounded: the file may grow, or not be a regular file
        except OSError as exc:
            raise TFLiteFormatError(f"{shown}: cannot read the file ({exc.strerror or exc})",
                                    hint="check the file permissions") from None
    if info.st_size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:
        raise TFLiteFormatError(f"{shown}: the file is larger than 2 GiB, the limit of a TFLite flatbuffer",
                                hint="this is not a single .tflite model; check the path")
    return data
