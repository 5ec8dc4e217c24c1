"""PT2E's parts that the PyTorch frontend configures: the int8 quantizer that also annotates the
ops litert-torch's own leaves in float (`+`, `*`, `mean`), the loss QAT trains with, and what a
failed export or conversion means in a user's words."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeq.calibration import Dataset
from edgeq.errors import ConversionError


def _torch_loss(module: Any, train: Dataset, label: str) -> tuple[Any, str, str, str | None]:
    """(loss function, its name, where it came from, "accuracy" or None), from the data as the
    Keras path infers it: class indices -> cross-entropy on the logits; float targets shaped like
    the output -> mean squared error; no labels -> mean squared error against the float model's own
    outputs (the trained model stays close to what it was)."""
    import torch
    from torch.nn import functional

    from edgeq.errors import CalibrationError

    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(x[:2], dtype=np.float32)) for x in train.inputs])
    if isinstance(out, (tuple, list)):
        raise CalibrationError(f"{label}: QAT trains single-output models; this one has {len(out)} outputs",
                               hint="drop --qat for post-training quantization")
    shape = tuple(out.shape[1:])
    labels = train.labels
    if labels is None:
        return (functional.mse_loss, "mean_squared_error (against the float model's outputs)",
                "inferred from the data: no labels -> the float model's own outputs as targets", None)
    labels = np.asarray(labels)
    if labels.dtype.kind in "biu" and labels.shape[1:] == () and len(shape) == 1:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= shape[0]:
            raise CalibrationError(f"QAT: labels y range from {lo} to {hi}, but the model's output has {shape[0]} "
                                   f"classes (0..{shape[0] - 1})", hint="y must hold class indices 0..N-1")
        return (functional.cross_entropy, "cross_entropy (on the logits)",
                "inferred from the data: integer labels -> cross-entropy", "accuracy")
    if labels.dtype.kind == "f" and tuple(labels.shape[1:]) == shape:
        return functional.mse_loss, "mean_squared_error", "inferred from the data: float targets -> mean squared error", None
    raise CalibrationError(f"QAT: labels y have per-sample shape {tuple(labels.shape[1:])} and dtype {labels.dtype}, "
                           f"which fits neither class indices nor the model's output {list(shape)}",
                           hint="save y as class indices (N,) for a classifier, or targets shaped like the output")


_QUANTIZER: dict[bool, Any] = {}


def _quantizer_class(qat: bool = False) -> Any:
    """litert-torch's quantizer, which also annotates the elementwise ops and `mean` it has no
    pattern for: each input and the output get the global config's activation spec. With `qat`,
    without litert-torch's conv+BatchNorm QAT patterns, which torch 2.13's export cannot trace
    (BatchNorm is folded into the convolutions before QAT instead)."""
    if qat in _QUANTIZER:
        return _QUANTIZER[qat]
    import torch
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    aten = torch.ops.aten
    extra = {aten.add.Tensor, aten.mul.Tensor, aten.mean.dim, aten.sub.Tensor}

    from litert_torch.quantize import pt2e_quantizer

    class Int8Everywhere(pt2e_quantizer.PT2EQuantizer):  # type: ignore[misc]
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            config = self.global_config
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in extra or "quantization_annotation" in node.meta:
                    continue
                inputs = {a: utils.get_input_act_qspec(config) for a in node.args if isinstance(a, torch.fx.Node)}
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, output_qspec=utils.get_output_act_qspec(config), _annotated=True)
            return model

    if not qat:
        _QUANTIZER[qat] = Int8Everywhere
        return Int8Everywhere

    class Int8EverywhereQat(Int8Everywhere):  # type: ignore[misc,valid-type]
        def _annotate_all_static_patterns(self, model: Any, quantization_config: Any, filter_fn: Any = None) -> Any:
            if quantization_config is None:
                return model
            for op in self.STATIC_OPS:  # not STATIC_QAT_ONLY_OPS (conv_bn, conv_bn_relu)
                utils.OP_TO_ANNOTATOR[op](model, quantization_config, filter_fn)
            return model

    _QUANTIZER[qat] = Int8EverywhereQat
    return Int8EverywhereQat


def _reused_modules(module: Any, args: tuple[Any, ...]) -> list[str]:
    """The submodules (by their names in the model) that one forward pass calls more than once."""
    import torch

    calls: dict[str, int] = {}
    hooks = [sub.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
             for name, sub in module.named_modules() if name and not list(sub.children())]
    try:
        with torch.no_grad():
            module(*args)
    except Exception:  # the model's own failure is reported elsewhere
        return []
    finally:
        for hook in hooks:
            hook.remove()
    return sorted(name for name, count in calls.items() if count > 1)


def _explained(label: str, exc: BaseException, reused: Sequence[str] = ()) -> ConversionError:
    """A torch.export, PT2E or litert-torch failure as a user error naming the model (and the
    submodules called more than once, which PT2E cannot observe apart)."""
    text = f"{type(exc).__name__}: {exc}"
    first = text.strip().splitlines()[0][:400] if text.strip() else type(exc).__name__
    if reused:
        names = ", ".join(f"'{n}'" for n in reused)
        many = len(reused) > 1
        return ConversionError(f"{label}: PT2E could not prepare the model: the module instance{'s' if many else ''} "
                               f"{names} {'are' if many else 'is'} called more than once in forward, and PT2E "
                               f"observes each instance once ({first})",
                               hint="give each call its own instance (e.g. self.pool1 and self.pool2), or use the "
                                    "functional form (torch.nn.functional.max_pool2d)")
    if isinstance(exc, AssertionError) or "AssertionError" in text:
        return ConversionError(f"{label}: PT2E could not prepare the model ({first})",
                               hint="a module instance called twice (one nn.MaxPool2d or nn.ReLU used at two places) "
                                    "is the usual cause: give each call its own instance, or use the functional form")
    if "export" in text.lower() or "dynamo" in text.lower() or "guard" in text.lower():
        return ConversionError(f"{label}: torch.export could not trace the model ({first})",
                               hint="torch.export needs a forward without data-dependent Python control flow; "
                                    "see the PyTorch export docs")
    return ConversionError(f"{label}: litert-torch could not convert the model ({first})",
                           hint="set EDGEQ_VERBOSE=1 for the full error")
