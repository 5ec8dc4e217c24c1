"""Load a Keras model safely, whatever saved it: Keras 3 (.keras, .h5), Keras 2 (.keras, .h5,
SavedModel) or a Keras 3 `model.export()` SavedModel.

Safe mode stays on: a Lambda layer (arbitrary Python) is refused unless the caller passes
trust_model=True, and edgeq never retries with safe mode off by itself. Before any Keras sees
a .keras or .h5 file, edgeq reads its architecture as JSON (edgeq/keras_files.py), refuses
Lambda layers and unregistered classes, and takes the Keras version that wrote it from the
file: tf_keras loads what tf_keras wrote (every Keras 2 MobileNet .h5 among them), Keras 3
the rest. SavedModel directories are never deserialized into Python layers: they are
converted and run from their TensorFlow graph.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeq._tf import captured_output, tf
from edgeq.errors import ModelLoadError
from edgeq.specs import InputSpec
from edgeq.keras_files import KerasFile, read_keras_file, refuse_lambda, vet_layers

SUPPORTED = (".keras (Keras 3 or 2), .h5/.hdf5 (Keras 2 or 3), a SavedModel directory, .onnx, or PyTorch: a .pt2 "
             "(torch.export) or package.module:factory with --weights")

# A .keras file is a zip that Keras decompresses into memory: bound what it may claim to hold.
MAX_ARCHIVE_BYTES = 2 * 1024**3  # total uncompressed size of all members
MAX_ARCHIVE_BYTES_ENV = "EDGEQ_MAX_ARCHIVE_BYTES"  # overrides MAX_ARCHIVE_BYTES (read at check time)
MAX_COMPRESSION_RATIO = 1000  # uncompressed / compressed, for members larger than RATIO_CHECK_BYTES
RATIO_CHECK_BYTES = 10 * 1024**2


@dataclass(frozen=True)
class ConverterSource:
    """What the TFLite converter reads: the model traced with batch-1 inputs named like the
    model's inputs, and a factory for fresh converters on it (a converter is used up by
    convert()). Lives in the process that loaded the model."""

    make: Callable[[], Any]        # () -> a TFLiteConverter for the batch-1 model
    input_names: tuple[str, ...]   # signature input keys, in the model's input order
    output_names: tuple[str, ...]  # signature output keys, in the model's output order
    label: str                     # the user's model file, for messages


Exporter = Callable[[list[tuple[int, ...]]], ConverterSource]


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    format: str  # "keras" | "h5" | "savedmodel"
    saved_by: str  # "keras 3.15.1", "tf_keras 2.21.0", "savedmodel"
    input_specs: list[InputSpec]
    parameter_count: int
    _predict: Callable[[list[np.ndarray]], list[np.ndarray]]
    _export: Exporter
    keras_model: Any = None
    converted_by: str | None = None  # another framework's model, translated (frontends/onnx.py: onnx2tf)
    _exports: dict[tuple[tuple[int, ...], ...], ConverterSource] = field(default_factory=dict)

    def predict(self, inputs: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Float reference outputs, one array per model output, `batch_size` samples at a time (by
        default as many as the model's activations let fit the memory budget, edgeq.budget)."""
        n = len(inputs[0])
        batch_size = batch_size or self.reference_batch()
        chunks = [self._predict([x[i : i + batch_size] for x in inputs]) for i in range(0, n, batch_size)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    def reference_batch(self) -> int:
        """Samples per float-reference batch: the budget's share (edgeq.budget), else a cautious 32."""
        from edgeq.budget import batch_for, layer_output_bytes

        sample = layer_output_bytes(self.keras_model)  # None without a Keras model (a SavedModel)
        return batch_for(sample) if sample else 32

    def converter_source(self, sample_shapes: Sequence[tuple[int, ...]] | None = None) -> ConverterSource:
        """The model exported for the converter with batch 1, once per set of input shapes.

        `sample_shapes`: each input's shape without the batch dimension, where the model leaves a
        dimension open (None); by default the model's own shapes, which must then be complete.
        A device runs one sample at a time, so batch 1 costs nothing and saves the SHAPE,
        STRIDED_SLICE and PACK ops (and their kernels and arena) that a dynamic batch puts
        around Flatten.
        """
        shapes = [tuple(s) for s in sample_shapes] if sample_shapes is not None else [
            tuple(d for d in spec.shape[1:]) for spec in self.input_specs]
        for spec, shape in zip(self.input_specs, shapes):
            if any(d is None or int(d) < 1 for d in shape):
                raise ModelLoadError(f"{self.path}: input '{spec.name}' has an open dimension "
                                     f"({_shape_text(spec.shape)}) and no size was chosen for it",
                                     hint=f"pass --input-shape {spec.name}=" + ",".join(
                                         "N" if d is None else str(d) for d in spec.shape[1:]))
        key = tuple(tuple(int(d) for d in shape) for shape in shapes)
        if key not in self._exports:
            with captured_output():
                self._exports[key] = self._export([tuple(k) for k in key])
        return self._exports[key]


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _signature_names(specs: Sequence[InputSpec]) -> list[str]:
    """Signature keys for the inputs: their names, made valid and unique."""
    names: list[str] = []
    for i, spec in enumerate(specs):
        base = re.sub(r"[^A-Za-z0-9_]", "_", spec.name.split(":")[0]) or f"input_{i}"
        if not base[0].isalpha():
            base = f"input_{base}"
        name, n = base, 1
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def check_model_file(path: str | Path, *, trust_model: bool = False) -> KerasFile | None:
    """What can be checked about a model file without TensorFlow (fast, and before any child
    process starts): that it exists and has a supported format, a .keras archive's members,
    which Keras wrote it, and that it holds no Lambda layer unless trusted. Returns the file's
    architecture, or None for a SavedModel directory."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist", hint=f"supported: {SUPPORTED}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return None
        raise ModelLoadError(
            f"{path} is a directory without saved_model.pb, so not a SavedModel",
            hint=f"pass a model file; supported: {SUPPORTED}",
        )
    suffix = path.suffix.lower()
    if suffix == ".keras":
        file = read_keras_file(path, _archive_metadata(path))
    elif suffix in (".h5", ".hdf5"):
        file = read_keras_file(path)
    else:
        raise ModelLoadError(f"{path}: unsupported model format '{suffix or path.name}'",
                             hint=f"supported: {SUPPORTED}")
    refuse_lambda(file, trust=trust_model)
    return file


def load_model(path: str | Path, *, trust_model: bool = False) -> LoadedModel:
    path = Path(path)
    file = check_model_file(path, trust_model=trust_model)
    if file is None:
        return _load_saved_model(path)
    vet_layers(file, trust=trust_model)
    loader = _tf_keras_loader(trust_model) if file.keras_major == 2 else _keras3_loader(trust_model)
    return _load_keras(path, "keras" if file.container == "keras" else "h5", loader, file.writer)


def _keras3_loader(trust: bool) -> Callable[[Path], Any]:
    def load(p: Path) -> Any:
        tf()
        import keras

        return keras.saving.load_model(p, compile=False, safe_mode=not trust)

    return load


def _tf_keras_loader(trust: bool) -> Callable[[Path], Any]:
    def load(p: Path) -> Any:
        tf()
        import tf_keras

        return tf_keras.models.load_model(p, compile=False, safe_mode=not trust)

    return load


def _archive_metadata(path: Path) -> dict[str, Any]:
    """A .keras zip's metadata.json, after checking its members (before anything is decompressed)."""
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path}: not a .keras archive (not a zip file); the file is corrupt or misnamed",
                             hint="a .keras file is the zip written by model.save('model.keras'); an HDF5 file "
                                  "should end in .h5")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_archive_members(path, archive.infolist())
            meta = json.loads(archive.read("metadata.json"))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path}: .keras archive has no readable metadata.json ({exc})",
                             hint="the file is damaged or was not written by Keras; save the model again "
                                  "with model.save('model.keras')") from exc
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: the archive's metadata.json is not a JSON object",
                             hint="the file is damaged or was not written by Keras; save the model again")
    return meta


def _max_archive_bytes() -> int:
    raw = os.environ.get(MAX_ARCHIVE_BYTES_ENV, "").strip()
    if not raw:
        return MAX_ARCHIVE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ModelLoadError(f"{MAX_ARCHIVE_BYTES_ENV}={raw!r} is not a positive number of bytes",
                             hint=f"unset it to use the default limit of {MAX_ARCHIVE_BYTES:,} bytes")
    return value


def _unsafe_member_name(name: str) -> bool:
    """An absolute path, a drive letter or a '..' component: a name that could escape a folder."""
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":") or "\0" in normal:
        return True
    return ".." in normal.split("/")


def _check_archive_members(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse a .keras zip with unsafe member names or a decompressed size out of all proportion
    (a zip bomb), from the central directory alone: before anything is decompressed."""
    for info in members:
        if _unsafe_member_name(info.filename):
            raise ModelLoadError(
                f"{path}: refused: the .keras archive has a member named {info.filename!r}, a path outside the "
                "archive (absolute or with '..'); Keras never writes such names",
                hint="the file was crafted or damaged; save the model again with model.save('model.keras')")
        if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise ModelLoadError(
                f"{path}: refused: member {info.filename!r} of the .keras archive expands {ratio:,.0f}x "
                f"({info.compress_size:,} -> {info.file_size:,} bytes), more than {MAX_COMPRESSION_RATIO}x: "
                "a zip bomb, not model weights",
                hint="the file was crafted or damaged; save the model again with model.save('model.keras')")
    limit = _max_archive_bytes()
    total = sum(info.file_size for info in members)
    if total > limit:
        raise ModelLoadError(
            f"{path}: refused: the .keras archive would decompress to {total:,} bytes, more than the limit of "
            f"{limit:,} bytes",
            hint=f"if this really is your model, raise the limit with {MAX_ARCHIVE_BYTES_ENV}=<bytes>; "
            "otherwise the file was crafted or damaged")


def _load_keras(path: Path, fmt: str, loader: Callable[[Path], Any], writer: str) -> LoadedModel:
    try:
        with captured_output():
            model = loader(path)
    except Exception as exc:  # Keras raises many types for bad files; all are the user's input
        text = str(exc)
        if "Lambda" in text or "safe_mode" in text or "arbitrary code" in text:
            raise ModelLoadError(
                f"{path}: refused to load: the model contains a Lambda layer (arbitrary Python code), "
                "which Keras safe mode does not run",
                hint="replace the Lambda with built-in layers, or pass --trust-model if you wrote "
                "or fully trust this file",
            ) from exc
        cause = error_cause(text) or type(exc).__name__
        raise ModelLoadError(f"{path}: cannot load the Keras model (written by {writer}): {cause}",
                             hint=_load_hint(cause, writer)) from exc
    return from_keras_object(model, path, fmt)


_CAUSE_MARKER = "Exception encountered:"
_MAX_CAUSE = 2000


def error_cause(text: str) -> str:
    """The part of an exception's text that says what went wrong, whole.

    Keras' deserialization errors start with the whole layer config ("Error when deserializing
    class 'DepthwiseConv2D' using config={...}") and put the cause after "Exception encountered:".
    """
    if _CAUSE_MARKER in text:
        text = text.split(_CAUSE_MARKER, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    cause = lines[0] if lines else ""
    return cause if len(cause) <= _MAX_CAUSE else cause[:_MAX_CAUSE] + f"... ({len(cause) - _MAX_CAUSE:,} more characters)"


def _load_hint(cause: str, writer: str) -> str:
    if "Unrecognized keyword argument" in cause or "unexpected keyword argument" in cause:
        return (f"the file's layer settings do not match this Keras; it was written by {writer}: load and save it "
                "again with that Keras version, or rebuild the layer with today's arguments")
    if "Unknown layer" in cause or "Could not locate" in cause or "custom" in cause.lower():
        return ("custom layers must be registered with keras.saving.register_keras_serializable and converted "
                "from Python (edgeq.convert)")
    return "check that the file is complete and was saved by Keras (model.save)"


def from_keras_object(model: Any, path: Path, fmt: str) -> LoadedModel:
    """A LoadedModel for an in-memory Keras 3 or tf_keras model (loaded, folded or QAT-trained).

    `path` and `fmt` name where it came from, for reports and messages.
    """
    module = type(model).__module__
    saved_by = f"{'tf_keras' if module.startswith('tf_keras') else 'keras'} {_framework_version(module)}"
    specs = [
        InputSpec(name=str(getattr(t, "name", f"input_{i}")), shape=tuple(t.shape), dtype=_dtype_name(t.dtype))
        for i, t in enumerate(model.inputs)
    ]
    tf()  # TensorFlow initialised (quietly) before the first call into the model

    def predict(xs: list[np.ndarray]) -> list[np.ndarray]:
        out = model(xs if len(xs) > 1 else xs[0], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in outs]

    return LoadedModel(
        path=path, format=fmt, saved_by=saved_by, input_specs=specs,
        parameter_count=int(model.count_params()), _predict=predict,
        _export=_keras_exporter(model, specs, str(path)), keras_model=model,
    )


def _keras_exporter(model: Any, specs: list[InputSpec], label: str) -> Exporter:
    """Trace a Keras 3 or tf_keras model with batch-1 inputs, for the converter."""
    tfm = tf()
    names = _signature_names(specs)
    outputs = tuple(f"output_{i}" for i in range(len(model.outputs)))

    def export(shapes: list[tuple[int, ...]]) -> ConverterSource:
        signature = [tfm.TensorSpec([1, *shape], dtype=s.dtype, name=n) for s, shape, n in zip(specs, shapes, names)]
        if type(model).__module__.startswith("tf_keras"):
            def serve(*xs: Any) -> dict[str, Any]:
                out = model(list(xs) if len(xs) > 1 else xs[0], training=False)
                return dict(zip(outputs, out if isinstance(out, (list, tuple)) else [out]))

            concrete = tfm.function(serve).get_concrete_function(*signature)
            return ConverterSource(lambda: tfm.lite.TFLiteConverter.from_concrete_functions([concrete], model),
                                   tuple(names), outputs, label)
        # Keras 3 models convert from their own export (TF's function tracing does not take them).
        folder = tempfile.TemporaryDirectory(prefix="edgeq-export-")  # removed with the source
        model.export(folder.name, format="tf_saved_model", verbose=False,
                     input_signature=signature if len(signature) == 1 else [signature])

        def make(folder: Any = folder) -> Any:
            return tfm.lite.TFLiteConverter.from_saved_model(folder.name)

        return ConverterSource(make, tuple(names), outputs, label)

    return export


def _load_saved_model(path: Path) -> LoadedModel:
    tfm = tf()
    try:
        with captured_output():
            loaded = tfm.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except KeyError as exc:
        raise ModelLoadError(f"{path}: SavedModel has no 'serving_default' signature",
                             hint="export the model with a serving signature (model.export() in Keras 3)") from exc
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load the SavedModel: {error_cause(str(exc))}") from exc
    _, kwargs = signature.structured_input_signature
    names = sorted(kwargs)
    specs = [InputSpec(name=n, shape=tuple(kwargs[n].shape.as_list()), dtype=kwargs[n].dtype.name) for n in names]
    out_names = sorted(signature.structured_outputs)
    params = int(sum(np.prod(v.shape) for v in getattr(loaded, "variables", [])))

    def predict(xs: list[np.ndarray]) -> list[np.ndarray]:
        result = signature(**{n: tfm.constant(x) for n, x in zip(names, xs)})
        return [np.asarray(result[k]) for k in out_names]

    def export(shapes: list[tuple[int, ...]]) -> ConverterSource:
        """The serving signature again, traced with batch 1 (the converter keeps a dynamic batch)."""
        specs_1 = [tfm.TensorSpec([1, *shape], dtype=kwargs[n].dtype, name=n) for n, shape in zip(names, shapes)]

        def serve(*xs: Any) -> dict[str, Any]:
            result = signature(**dict(zip(names, xs)))
            return {k: result[k] for k in out_names}

        concrete = tfm.function(serve).get_concrete_function(*specs_1)
        return ConverterSource(lambda: tfm.lite.TFLiteConverter.from_concrete_functions([concrete], loaded),
                               tuple(names), tuple(out_names), str(path))

    return LoadedModel(
        path=path, format="savedmodel", saved_by="savedmodel", input_specs=specs, parameter_count=params,
        _predict=predict, _export=export,
    )


def _framework_version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version("tf-keras" if module.startswith("tf_keras") else "keras")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "?"


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", None) or str(dtype)
