"""A Keras model file, read without deserializing it: which Keras wrote it and what layers it holds.

Loading a Keras model runs constructors of the classes its config names, and a `Lambda` layer
runs Python bytecode stored in the file. tf_keras enforces no safe mode for .h5 files, so edgeq
reads the architecture first (the HDF5 root attribute `model_config`, or the archive's
`config.json`), refuses `Lambda` layers and classes that are neither built in nor registered,
and only then hands the file to the Keras that wrote it. Reads JSON and HDF5 attributes only:
no TensorFlow.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import ModelLoadError

TRUST_HINT = "pass --trust-model only if you wrote or fully trust this file"
_MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})
# tf_keras layers that call a TensorFlow function by its name (tf.math.add, tensor slicing):
# built in, and no stored bytecode. `Lambda` is the one that runs code from the file.
_TF_OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})
# Config keys under which a layer holds other layers (wrappers, RNNs, nested models).
_NESTED_KEYS = ("layer", "forward_layer", "backward_layer", "cell")


@dataclass(frozen=True)
class KerasFile:
    path: Path
    container: str        # "keras" (the zip archive) or "h5"
    keras_version: str    # as recorded by the writer, e.g. "2.21.0" (tf_keras) or "3.15.1"
    config: dict[str, Any]

    @property
    def keras_major(self) -> int:
        return int(self.keras_version.split(".")[0])

    @property
    def writer(self) -> str:
        return f"{'tf_keras' if self.keras_major == 2 else 'Keras'} {self.keras_version}"


def read_keras_file(path: Path, archive_metadata: dict[str, Any] | None = None) -> KerasFile:
    """The writer's Keras version and the model config of a .keras archive or an .h5 file.

    `archive_metadata`: metadata.json of an archive already opened (and checked) by the caller.
    """
    if path.suffix.lower() == ".keras":
        return _read_archive(path, archive_metadata)
    return _read_h5(path)


def _read_archive(path: Path, metadata: dict[str, Any] | None) -> KerasFile:
    try:
        with zipfile.ZipFile(path) as archive:
            if metadata is None:
                metadata = json.loads(archive.read("metadata.json"))
            config = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path}: the .keras archive has no readable metadata.json and config.json ({exc})",
                             hint="the file is damaged or was not written by Keras; save the model again "
                                  "with model.save('model.keras')") from exc
    return KerasFile(path, "keras", _version(path, metadata.get("keras_version")), _model_config(path, config))


def _read_h5(path: Path) -> KerasFile:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            attrs = {key: handle.attrs[key] for key in ("keras_version", "model_config") if key in handle.attrs}
    except OSError as exc:
        raise ModelLoadError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})",
                             hint="the file is damaged or is not an .h5 Keras model; save the model again "
                                  "with model.save('model.h5')") from exc
    if "model_config" not in attrs:
        raise ModelLoadError(f"{path}: the HDF5 file holds no model architecture (no 'model_config' attribute): "
                             "it holds weights only",
                             hint="save the whole model (model.save('model.h5')), not model.save_weights()")
    try:
        config = json.loads(_text(attrs["model_config"]))
    except ValueError as exc:
        raise ModelLoadError(f"{path}: the model architecture in the HDF5 file is not valid JSON ({exc})",
                             hint="the file is damaged; save the model again") from exc
    return KerasFile(path, "h5", _version(path, attrs.get("keras_version")), _model_config(path, config))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _version(path: Path, value: Any) -> str:
    version = _text(value).strip() if value is not None else ""
    if not version[:1].isdigit() or version.split(".")[0] not in ("2", "3"):
        raise ModelLoadError(f"{path}: cannot tell which Keras wrote the file (keras_version is "
                             f"{version or 'missing'!r}); edgeq loads files written by tf_keras 2 or Keras 3",
                             hint="load the model in the Keras that made it and save it again with model.save()")
    return version


def _model_config(path: Path, config: Any) -> dict[str, Any]:
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ModelLoadError(f"{path}: the model architecture has no class_name at its top",
                             hint="the file is damaged or was not written by Keras; save the model again")
    return config


# -- what the file would make Keras construct ----------------------------------------------------


@dataclass(frozen=True)
class LayerEntry:
    class_name: str
    name: str
    module: str | None
    registered_name: str | None


def layer_entries(config: dict[str, Any]) -> Iterator[LayerEntry]:
    """Every layer (and model) entry of an architecture, nested ones included, in config order."""
    stack = [config]
    while stack:
        entry = stack.pop(0)
        inner = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        yield LayerEntry(str(entry.get("class_name")), str(inner.get("name", "?")),
                         entry.get("module") if isinstance(entry.get("module"), str) else None,
                         entry.get("registered_name") if isinstance(entry.get("registered_name"), str) else None)
        children = [c for c in inner.get("layers", []) if isinstance(c, dict) and "class_name" in c]
        children += [inner[k] for k in _NESTED_KEYS if isinstance(inner.get(k), dict) and "class_name" in inner[k]]
        children += [c for c in inner.get("cells", []) if isinstance(c, dict) and "class_name" in c]
        stack[:0] = children


def refuse_lambda(file: KerasFile, *, trust: bool) -> None:
    """Refuse a Lambda layer (Python code stored in the file) unless trusted. Reads JSON only."""
    if trust:
        return
    for entry in layer_entries(file.config):
        if entry.class_name == "Lambda":
            raise ModelLoadError(
                f"{file.path}: refused to load: layer '{entry.name}' is a Lambda layer, Python code stored in the "
                "file, which edgeq does not run (Keras safe mode)",
                hint="replace the Lambda with built-in layers, or " + TRUST_HINT)


def vet_layers(file: KerasFile, *, trust: bool) -> None:
    """Refuse, before anything is deserialized, a Lambda layer or a class the loading Keras has
    neither built in nor registered. With `trust`, nothing is refused here."""
    if trust:
        return
    refuse_lambda(file, trust=trust)
    known = _known_classes(file.keras_major)
    for entry in layer_entries(file.config):
        if entry.class_name in known or _builtin_op(file.keras_major, entry) or _registered(file.keras_major, entry):
            continue
        origin = f" from module '{entry.module}'" if entry.module and not entry.module.startswith("keras") else ""
        raise ModelLoadError(
            f"{file.path}: refused to load: layer '{entry.name}' is of class '{entry.class_name}'{origin}, which is "
            f"neither built into {'tf_keras' if file.keras_major == 2 else 'Keras'} nor registered; loading it "
            "would need your code",
            hint="register the class (keras.saving.register_keras_serializable) and convert from Python with "
                 "edgeq.convert, rebuild the model from built-in layers, or " + TRUST_HINT)


def _known_classes(major: int) -> frozenset[str]:
    from edgeq._tf import tf

    tf()
    if major == 2:
        import tf_keras as keras_module
    else:
        import keras as keras_module
    layers = {name for name in dir(keras_module.layers) if name[:1].isupper()}
    return frozenset(layers | _MODEL_CLASSES | (_TF_OP_LAYERS if major == 2 else set()))


def _builtin_op(major: int, entry: LayerEntry) -> bool:
    """A Keras 3 operation in a functional graph (keras.ops.erf is class Erf of keras.src.ops.math)."""
    module = entry.module or ""
    if major != 3 or not module.startswith(("keras.src.ops.", "keras.ops")):
        return False
    import importlib

    try:
        found = getattr(importlib.import_module(module), entry.class_name, None)
    except ImportError:
        return False
    return isinstance(found, type)


def _registered(major: int, entry: LayerEntry) -> bool:
    """A custom class registered in this process (keras.saving.register_keras_serializable)."""
    if major == 2:
        import tf_keras

        return tf_keras.saving.get_registered_object(entry.registered_name or entry.class_name) is not None
    import keras

    return entry.registered_name is not None and keras.saving.get_registered_object(entry.registered_name) is not None
