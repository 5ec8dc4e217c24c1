"""Models of each framework behind one interface (base.py). This module is the only place that
tells the formats apart: `frontend_for` picks a model file's frontend, and `in_memory_model` says
whether an object in memory is a model a frontend can save for `convert`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeq.frontends.base import ModelFile


def frontend_for(spec: str | Path) -> ModelFile:
    """The framework of the model `spec` names: a PyTorch .pt2 or module:factory, an .onnx file,
    or a Keras model (.keras, .h5, SavedModel)."""
    from edgeq.frontends.onnx import is_onnx_model
    from edgeq.frontends.torch import is_torch_model

    if is_torch_model(spec):
        from edgeq.frontends.torch_frontend import TorchFile

        return TorchFile(str(spec))
    if is_onnx_model(spec):
        from edgeq.frontends.onnx_frontend import OnnxFile

        return OnnxFile(str(spec))
    from edgeq.frontends.keras import KerasFile

    return KerasFile(str(spec))


def in_memory_model(model: object) -> bool:
    """Whether `model` is a framework's object in memory (a PyTorch nn.Module) rather than a file."""
    from edgeq.frontends.torch import is_torch_module

    return is_torch_module(model)


def saved_model_file(model: Any, example_input: Any, path: Path) -> Path:
    """An in-memory model saved where `convert` reads it (an nn.Module exported by torch.export to a .pt2)."""
    from edgeq.frontends.torch import export_to_file

    return export_to_file(model, example_input, path.parent / f"{path.name}.pt2")
