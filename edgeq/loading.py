"""Load a Keras model safely, whatever saved it: Keras 3 (.keras, .h5), Keras 2 (.keras, .h5,
SavedModel) or a Keras 3 `model.export()` SavedModel.

Safe mode stays on: a Lambda layer (arbitrary Python) is refused unless the caller passes
trust_model=True, and edgeq never retries with safe mode off by itself. Where a loader does
not enforce safe mode (tf_keras on .h5), Keras 3 is used instead, which does. SavedModel
directories are never deserialized into Python layers: they are converted and run from
their TensorFlow graph.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeq._tf import captured_output, tf
from edgeq.calibration import InputSpec
from edgeq.errors import ModelLoadError

SUPPORTED = ".keras (Keras 3 or 2), .h5/.hdf5 (Keras 2 or 3), or a SavedModel directory"

# A .keras file is a zip that Keras decompresses into memory: bound what it may claim to hold.
MAX_ARCHIVE_BYTES = 2 * 1024**3  # total uncompressed size of all members
MAX_ARCHIVE_BYTES_ENV = "EDGEQ_MAX_ARCHIVE_BYTES"  # overrides MAX_ARCHIVE_BYTES (read at check time)
MAX_COMPRESSION_RATIO = 1000  # uncompressed / compressed, for members larger than RATIO_CHECK_BYTES
RATIO_CHECK_BYTES = 10 * 1024**2


@dataclass
class LoadedModel:
    path: Path
    format: str  # "keras" | "h5" | "savedmodel"
    saved_by: str  # "keras 3.15.1", "tf_keras 2.21.0", "savedmodel"
    input_specs: list[InputSpec]
    parameter_count: int
    _predict: Callable[[list[np.ndarray]], list[np.ndarray]]
    _make_converter: Callable[[], Any]
    keras_model: Any = None

    def predict(self, inputs: Sequence[np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
        """Float reference outputs, one array per model output."""
        n = len(inputs[0])
        chunks = [self._predict([x[i : i + batch_size] for x in inputs]) for i in range(0, n, batch_size)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    def make_converter(self) -> Any:
        return self._make_converter()


def load_model(path: str | Path, *, trust_model: bool = False) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist", hint=f"supported: {SUPPORTED}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return _load_saved_model(path)
        raise ModelLoadError(
            f"{path} is a directory without saved_model.pb, so not a SavedModel",
            hint=f"pass a model file; supported: {SUPPORTED}",
        )
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _load_keras_archive(path, trust_model)
    if suffix in (".h5", ".hdf5"):
        return _load_keras(path, "h5", _keras3_loader(trust_model), trust_model)
    raise ModelLoadError(f"{path}: unsupported model format '{suffix or path.name}'", hint=f"supported: {SUPPORTED}")


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


def _load_keras_archive(path: Path, trust: bool) -> LoadedModel:
    """A .keras zip: Keras 3 or tf_keras, decided by the version recorded inside."""
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
    version = str(meta.get("keras_version", ""))
    loader = _tf_keras_loader(trust) if version.startswith("2.") else _keras3_loader(trust)
    return _load_keras(path, "keras", loader, trust)


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


def _load_keras(path: Path, fmt: str, loader: Callable[[Path], Any], trust: bool) -> LoadedModel:
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
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: cannot load the Keras model: {first[:300]}",
                             hint="check that the file is complete and was saved by Keras (model.save); "
                                  "custom layers must be registered with keras.saving.register_keras_serializable"
                             ) from exc
    return from_keras_object(model, path, fmt)


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
        _make_converter=_batch1_converter_factory(model, specs), keras_model=model,
    )


def _batch1_converter_factory(model: Any, specs: list[InputSpec]) -> Callable[[], Any]:
    """Converters for the model with its batch dimension fixed to 1.

    `from_keras_model` keeps a dynamic batch, and Flatten then costs SHAPE, STRIDED_SLICE
    and PACK ops (and their kernels and arena) on every inference. A device runs one sample
    at a time, so edgeq converts with batch 1: fewer ops, a smaller file.
    """
    tfm = tf()
    signature = [
        tfm.TensorSpec([1, *s.shape[1:]], dtype=s.dtype, name=s.name.split(":")[0]) for s in specs
    ]
    if type(model).__module__.startswith("tf_keras"):
        fn = tfm.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
        concrete = fn.get_concrete_function(*signature)
        return lambda: tfm.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    export_dir: list[Any] = []  # exported once, on first use, and kept for this model's lifetime

    def make() -> Any:
        if not export_dir:
            import tempfile

            export_dir.append(tempfile.TemporaryDirectory(prefix="edgeq-export-"))
            with captured_output():
                model.export(export_dir[0].name, format="tf_saved_model", verbose=False,
                             input_signature=signature if len(signature) == 1 else [signature])
        return tfm.lite.TFLiteConverter.from_saved_model(export_dir[0].name)

    return make


def _load_saved_model(path: Path) -> LoadedModel:
    tfm = tf()
    try:
        with captured_output():
            loaded = tfm.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except KeyError as exc:
        raise ModelLoadError(f"{path}: SavedModel has no 'serving_default' signature") from exc
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load the SavedModel: {str(exc).splitlines()[0][:300]}") from exc
    _, kwargs = signature.structured_input_signature
    names = sorted(kwargs)
    specs = [InputSpec(name=n, shape=tuple(kwargs[n].shape.as_list()), dtype=kwargs[n].dtype.name) for n in names]
    out_names = sorted(signature.structured_outputs)
    params = int(sum(np.prod(v.shape) for v in getattr(loaded, "variables", [])))

    def predict(xs: list[np.ndarray]) -> list[np.ndarray]:
        result = signature(**{n: tfm.constant(x) for n, x in zip(names, xs)})
        return [np.asarray(result[k]) for k in out_names]

    return LoadedModel(
        path=path, format="savedmodel", saved_by="savedmodel", input_specs=specs, parameter_count=params,
        _predict=predict, _make_converter=lambda: tfm.lite.TFLiteConverter.from_saved_model(str(path)),
    )


def _framework_version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version("tf-keras" if module.startswith("tf_keras") else "keras")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "?"


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", None) or str(dtype)
