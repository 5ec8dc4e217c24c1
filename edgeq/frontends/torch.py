"""PyTorch models in: a torch.export program (.pt2), or an nn.Module factory with its state_dict.

The model stays as torch users have it, NCHW. It is exported at batch 1 (a device runs one sample
at a time), quantized by PT2E with litert-torch's quantizer (symmetric int8, per-channel weights),
calibrated one sample at a time, and converted by litert-torch into a full-integer .tflite with
int8 I/O, which the rest of edgeq measures as it measures a Keras model's.

litert-torch's quantizer leaves some ops it has no pattern for (a residual `+`, `mean`, `*` after
torch.export) in float, with DEQUANTIZE and QUANTIZE around them, which TFLite Micro's int8 gate
refuses. The quantizer in pt2e.py (`_quantizer_class`) annotates those ops too, so they come out as int8 ADD, MEAN and MUL.

Loading is safe where it can be: a state_dict is read with `torch.load(weights_only=True)`. A
factory is Python code and a .pt2 a serialized program: both need --trust-model, as a Keras
Lambda does. Nothing here imports torch until a torch model is used.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeq.calibration import Dataset
from edgeq.specs import InputSpec
from edgeq.errors import ConversionError, ModelLoadError
from edgeq.frontends.pt2e import _explained, _quantizer_class, _reused_modules, _torch_loss
from edgeq.vocab import Layout, SourceFormat

FACTORY = re.compile(r"^([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")  # package.module:factory
TORCH_SUFFIXES = (".pt2",)
TORCH_HINT = "pip install 'edgeq[torch]' (torch and litert-torch)"


def is_torch_model(spec: str | Path) -> bool:
    """Whether `spec` names a PyTorch model: a .pt2 file, or `package.module:factory`."""
    text = str(spec)
    return Path(text).suffix.lower() in TORCH_SUFFIXES or (FACTORY.match(text) is not None and not Path(text).exists())


def is_torch_module(obj: object) -> bool:
    """Whether `obj` is a PyTorch nn.Module in memory (without importing torch to ask)."""
    return hasattr(obj, "state_dict") and hasattr(obj, "forward")


def check_torch_model(spec: str | Path, *, weights: str | Path | None, trust_model: bool) -> None:
    """What can be checked without importing torch: the file or the weights exist, and the model
    is trusted (a factory and a .pt2 both run code)."""
    text = str(spec)
    if FACTORY.match(text) and not Path(text).exists():
        if weights is None:
            raise ModelLoadError(f"{text}: an nn.Module factory needs its trained weights",
                                 hint="pass --weights state_dict.pt (saved with torch.save(model.state_dict(), path))")
        if not Path(weights).is_file():
            raise ModelLoadError(f"--weights {weights} does not exist", hint="pass the state_dict file")
        if not trust_model:
            raise ModelLoadError(f"{text}: building the model imports and runs that Python code",
                                 hint="pass --trust-model if you trust it")
        return
    path = Path(text)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist", hint="pass a .pt2 from torch.export.save")
    if not trust_model:
        raise ModelLoadError(f"{path}: a torch.export program is deserialized code (it can run arbitrary "
                             "operators)", hint="pass --trust-model if you trust the file")
    if weights is not None:
        raise ModelLoadError(f"--weights {weights}: a .pt2 carries its own weights",
                             hint="drop --weights, or pass package.module:factory with them")


@dataclass(frozen=True)
class TorchModel:
    """A PyTorch model as the pipeline uses a LoadedModel: its inputs, a float predict, and the two
    conversions (float32 and PT2E int8) into .tflite. Lives in the process that loaded it."""

    path: Path           # the .pt2, or the state_dict file of a factory
    format: str          # SourceFormat.TORCH_EXPORT | SourceFormat.TORCH_MODULE
    saved_by: str        # "torch 2.13.0"
    input_specs: list[InputSpec]
    parameter_count: int
    module: Any          # the eval-mode nn.Module (or the exported program's module)
    label: str           # what the user passed, for messages
    device_layout: str = Layout.NCHW  # NHWC once channels_last() moved 4-D inputs' channels last
    _converted: dict[Any, bytes] = field(default_factory=dict)

    def channels_last(self, shapes: Sequence[tuple[int, ...]]) -> tuple[TorchModel, list[tuple[int, ...]]] | None:
        """The model taking its 4-D inputs with the channels last (litert-torch's
        to_channel_last_io), and its sample shapes; None if no input has more than one channel
        (one channel: NCHW and NHWC are the same bytes)."""
        import litert_torch

        moved = [k for k, shape in enumerate(shapes) if len(shape) == 3 and shape[0] > 1]
        if not moved:
            return None
        wrapped = litert_torch.to_channel_last_io(self.module, args=moved).eval()
        new_shapes = [(s[1], s[2], s[0]) if k in moved else tuple(s) for k, s in enumerate(shapes)]
        specs = [InputSpec(spec.name, (None, *new_shapes[k]), spec.dtype) for k, spec in enumerate(self.input_specs)]
        return TorchModel(self.path, self.format, self.saved_by, specs, self.parameter_count, wrapped, self.label,
                          device_layout=Layout.NHWC), new_shapes

    def reference_batch(self, inputs: Sequence[np.ndarray]) -> int:
        """Samples per batch for `predict`: 1 for an exported program (it keeps the batch it was
        exported with), else as many as the activations of `inputs`' first sample let fit the
        memory budget (edgeq.budget)."""
        import torch

        from edgeq.budget import batch_for, module_output_bytes

        if self.format == SourceFormat.TORCH_EXPORT:
            return 1
        first = [torch.from_numpy(np.ascontiguousarray(x[:1], dtype=np.float32)) for x in inputs]

        def once() -> None:
            with torch.no_grad():
                self.module(*first)

        return batch_for(module_output_bytes(self.module, once) or None)

    def predict(self, inputs: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Float outputs of the torch model, one array per output (NCHW in, as torch has it),
        `batch_size` samples at a time (by default as many as its activations let fit the memory
        budget, edgeq.budget)."""
        import torch

        batch_size = 1 if self.format == SourceFormat.TORCH_EXPORT else batch_size or self.reference_batch(inputs)
        outs: list[list[np.ndarray]] = []
        with torch.no_grad():
            for i in range(0, len(inputs[0]), batch_size):
                try:
                    got = self.module(*[torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32))
                                        for x in inputs])
                except Exception as exc:  # shapes the model does not take, and the like
                    raise ConversionError(f"{self.label}: the float model failed on samples {i}-{i + batch_size - 1} "
                                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
                                          hint="check that the data's shape is the model's input (NCHW for torch)"
                                          ) from None
                got = list(got) if isinstance(got, (tuple, list)) else [got]
                outs.append([g.detach().numpy() for g in got])
        return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]

    def sample_args(self, shapes: Sequence[tuple[int, ...]]) -> tuple[Any, ...]:
        import torch

        return tuple(torch.zeros((1, *shape), dtype=torch.float32) for shape in shapes)

    def float_tflite(self, shapes: Sequence[tuple[int, ...]]) -> bytes:
        """The float32 .tflite (the reference size), through litert-torch."""
        key = ("float32", tuple(shapes))
        if key not in self._converted:
            self._converted[key] = self._convert(self.module, self.sample_args(shapes), None)
        return self._converted[key]

    def quantized(self, shapes: Sequence[tuple[int, ...]], calibration: Dataset, samples: int,
                  per_channel: bool = True, on_progress: Callable[[int], None] | None = None) -> bytes:
        """The model in full int8 (int8 I/O) by PT2E: exported at batch 1, observed on `samples`
        calibration samples one at a time, converted."""
        key = ("int8", tuple(shapes), calibration.sha256, samples, per_channel)
        if key in self._converted:
            return self._converted[key]
        import torch
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

        args = self.sample_args(shapes)
        quantizer = _quantizer_class()().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False))
        try:
            exported = torch.export.export(self.module, args).module()
            prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
        except Exception as exc:  # torch.export and PT2E raise many kinds; all are about this model
            raise _explained(self.label, exc, _reused_modules(self.module, args)) from None
        count = min(samples, calibration.num_samples)
        with torch.no_grad():
            for i in range(count):
                prepared(*[torch.from_numpy(np.ascontiguousarray(x[i:i + 1], dtype=np.float32))
                           for x in calibration.inputs])
                if on_progress:
                    on_progress(i + 1)
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        self._converted[key] = self._convert(converted, args, QuantConfig(pt2e_quantizer=quantizer))
        return self._converted[key]

    def qat_trained(self, shapes: Sequence[tuple[int, ...]], train: Dataset, settings: Any, per_channel: bool = True,
                    on_batch: Callable[[int, int], None] | None = None) -> tuple[QatTorchModel, Any]:
        """Quantization-aware fine-tuning with PT2E (prepare_qat_pt2e): the model exported with a
        dynamic batch, BatchNorm folded into the convolutions first (as tfmot folds it), trained
        with fake quantization on `train` (Adam, early stopping on a validation split, the best
        epoch kept), converted at batch 1. (the int8 model, the QATResult for the report)."""
        import copy

        import torch
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization import pt2e as pt2e_api
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.utils import _fuse_conv_bn_

        from edgeq.quantize.training import QATResult

        args = self.sample_args(shapes)
        module = self.module
        loss_fn, loss_name, source, metric = _torch_loss(module, train, self.label)
        quantizer = _quantizer_class(qat=True)().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False, is_qat=True))
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        two = tuple(torch.zeros((2, *a.shape[1:]), dtype=a.dtype) for a in args)
        try:
            exported = torch.export.export(module, two, dynamic_shapes=tuple({0: batch} for _ in two)).module()
            _fuse_conv_bn_(exported)
            prepared = quantize_pt2e.prepare_qat_pt2e(exported, quantizer)
        except Exception as exc:
            raise _explained(self.label, exc, _reused_modules(module, args)) from None
        inputs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in train.inputs]
        with torch.no_grad():
            targets = (torch.from_numpy(np.asarray(train.labels)) if train.labels is not None
                       else torch.cat([module(*[x[i:i + 256] for x in inputs]) for i in range(0, len(inputs[0]), 256)]))
        if metric == "accuracy":
            targets = targets.long()
        else:
            targets = targets.float()
        n = len(inputs[0])
        order = torch.from_numpy(np.random.default_rng(settings.seed).permutation(n))
        n_train = max(1, int(n * (1 - settings.validation_split)))
        train_idx, val_idx = order[:n_train], order[n_train:]
        torch.manual_seed(settings.seed)
        optimizer = torch.optim.Adam(prepared.parameters(), lr=settings.learning_rate)
        history: dict[str, list[float]] = {}
        best, best_state, waited, stopped = float("inf"), copy.deepcopy(prepared.state_dict()), 0, False
        per_epoch = max(1, -(-n_train // settings.batch_size))

        def measured(idx: Any) -> tuple[float, float | None]:
            pt2e_api.move_exported_model_to_eval(prepared)
            with torch.no_grad():
                out = torch.cat([prepared(*[x[idx[i:i + 256]] for x in inputs]) for i in range(0, len(idx), 256)])
            acc = float((out.argmax(1) == targets[idx]).float().mean()) if metric == "accuracy" else None
            return float(loss_fn(out, targets[idx])), acc

        for epoch in range(settings.epochs):
            pt2e_api.move_exported_model_to_train(prepared)
            shuffled = train_idx[torch.randperm(n_train)]
            for b in range(per_epoch):
                idx = shuffled[b * settings.batch_size:(b + 1) * settings.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(prepared(*[x[idx] for x in inputs]), targets[idx])
                if not torch.isfinite(loss):
                    raise ConversionError(f"{self.label}: QAT's loss became {float(loss)} in epoch {epoch + 1}",
                                          hint="lower --qat-lr (the learning rate)")
                loss.backward()
                optimizer.step()
                if on_batch:
                    on_batch(b, per_epoch)
            logs = dict(zip(("loss", "accuracy"), measured(train_idx)))
            if len(val_idx):
                logs.update(zip(("val_loss", "val_accuracy"), measured(val_idx)))
            for key, value in logs.items():
                if value is not None:
                    history.setdefault(key, []).append(value)
            watched = logs.get("val_loss", logs["loss"])
            if watched < best:
                best, best_state, waited = watched, copy.deepcopy(prepared.state_dict()), 0
            else:
                waited += 1
                if waited > settings.patience:
                    stopped = True
                    break
        prepared.load_state_dict(best_state)
        pt2e_api.move_exported_model_to_eval(prepared)
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        tflite = self._convert(converted, args, QuantConfig(pt2e_quantizer=quantizer))
        result = QATResult(model=None, loss=loss_name, metrics=("accuracy",) if metric == "accuracy" else (),
                           loss_source=source, epochs_run=len(history.get("loss", [])), stopped_early=stopped,
                           history=history)
        trained = QatTorchModel(self.path, self.format, self.saved_by, self.input_specs, self.parameter_count,
                                self.label, tflite)
        return trained, result

    def _convert(self, module: Any, args: tuple[Any, ...], quant_config: Any) -> bytes:
        import litert_torch

        from edgeq._tf import captured_output

        try:
            with captured_output():
                edge = litert_torch.convert(module, args, quant_config=quant_config)
        except Exception as exc:
            raise _explained(self.label, exc) from None
        model = bytes(edge.model_content())
        return model


@dataclass(frozen=True)
class QatTorchModel:
    """A PyTorch model after PT2E quantization-aware training: its int8 .tflite, made already."""

    path: Path
    format: str
    saved_by: str
    input_specs: list[InputSpec]
    parameter_count: int
    label: str
    tflite: bytes

    def quantized(self, *args: Any, **kwargs: Any) -> bytes:
        return self.tflite


def load_torch_model(spec: str | Path, *, weights: str | Path | None, example: Sequence[tuple[int, ...]] | None,
                     trust_model: bool) -> TorchModel:
    """The model named by `spec` (a .pt2, or package.module:factory with `weights`), in eval mode.
    `example`: each input's shape without the batch dimension, where the model file does not say
    (a factory); from the calibration data."""
    check_torch_model(spec, weights=weights, trust_model=trust_model)
    try:
        import torch
    except ImportError:
        raise ModelLoadError(f"{spec}: PyTorch models need torch and litert-torch", hint=TORCH_HINT) from None
    text = str(spec)
    if FACTORY.match(text) and not Path(text).exists():
        module, path = _from_factory(text, Path(weights)), Path(weights)  # type: ignore[arg-type]
        fmt = SourceFormat.TORCH_MODULE
        shapes = list(example or [])
    else:
        path = Path(text)
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a torch.export program ({type(exc).__name__}: {str(exc)[:200]})",
                                 hint="save it with torch.export.save(torch.export.export(model, args), path)") from None
        module, fmt = program.module(), SourceFormat.TORCH_EXPORT
        shapes = [tuple(int(d) for d in a.shape[1:]) for a in program.example_inputs[0]]
    if not shapes:
        raise ModelLoadError(f"{text}: the input shape is not known", hint="pass --calibration data with the inputs")
    specs = [InputSpec(f"x{k}" if len(shapes) > 1 else "x", (None, *shape), "float32") for k, shape in enumerate(shapes)]
    count = sum(int(p.numel()) for p in module.parameters()) if hasattr(module, "parameters") else 0
    return TorchModel(path, fmt, f"torch {torch.__version__.split('+')[0]}", specs, count, module, text)


def export_to_file(module: Any, example_input: Any, path: Path) -> Path:
    """`module` (an nn.Module in memory) exported by torch.export at `example_input` and saved as a
    .pt2 at `path`; ConversionError (naming what torch.export said) if it cannot be traced."""
    import torch

    if example_input is None:
        raise ModelLoadError(f"{type(module).__name__}: an nn.Module needs example_input (one sample, batch 1)",
                             hint="pass example_input=torch.zeros(1, C, H, W) (NCHW, as the module takes it)")
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    try:
        program = torch.export.export(module.eval(), args)
    except Exception as exc:
        raise _explained(type(module).__name__, exc) from None
    torch.export.save(program, str(path))
    return path


def _from_factory(spec: str, weights: Path) -> Any:
    import torch

    name, factory = FACTORY.match(spec).groups()  # type: ignore[union-attr]
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # package.module is looked up from where the user runs edgeq
    try:
        module = getattr(importlib.import_module(name), factory)()
    except Exception as exc:
        raise ModelLoadError(f"{spec}: could not build the model ({type(exc).__name__}: {str(exc)[:200]})",
                             hint="the factory must be importable from the current folder and take no arguments"
                             ) from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{spec}: the factory returned {type(module).__name__}, not an nn.Module")
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"--weights {weights}: not a state_dict torch can load safely "
                             f"({type(exc).__name__}: {str(exc)[:200]})",
                             hint="save it with torch.save(model.state_dict(), path); pickled objects are refused"
                             ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        module.load_state_dict(state)
    except Exception as exc:
        raise ModelLoadError(f"--weights {weights}: does not fit {spec} ({str(exc).splitlines()[0][:300]})",
                             hint="pass the state_dict saved from this architecture") from None
    return module.eval()

