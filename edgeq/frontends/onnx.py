"""ONNX models in: onnx2tf turns the graph into a TensorFlow SavedModel, and from there the model
takes the SavedModel path (every mode, the search, the C backend); onnxruntime runs the ONNX file
itself as the float reference that emulation compares against.

An .onnx file is data, not code: it needs no --trust-model. It is still read defensively
(`check_onnx_model`, in the calling process, before anything heavy starts): a file that is not
ONNX, an external-data path that leaves the model's folder, an operator domain no converter knows,
an input that is not a float tensor of fixed size are each refused with a message naming them.

The layout stays as the ONNX model has it (NCHW for an export from PyTorch): onnx2tf is told to
keep every input's layout, so calibration, evaluation and device data are the arrays the user
already feeds the model, and the device's input is the same bytes.

onnx2tf runs in its own child process: it sets TF_USE_LEGACY_KERAS for the process it runs in and
may crash natively on a graph it does not expect, and neither may reach the conversion's worker.
It also fetches a sample-image file from the internet for some 4-D inputs; in that child the
network is off and that function returns the user's calibration samples instead.
"""

from __future__ import annotations

import os
import tempfile
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np

from edgeq.calibration import Dataset
from edgeq.errors import ConversionError, ModelLoadError
from edgeq.loading import LoadedModel
from edgeq.specs import InputSpec
from edgeq.vocab import Layout, SourceFormat

ONNX_SUFFIXES = (".onnx",)
ONNX2TF = "onnx2tf==1.29.24"
ONNX_HINT = (f"pip install 'edgeq[onnx]' && pip install --no-deps {ONNX2TF} (onnx2tf's own exact pins would "
             "downgrade TensorFlow, so it goes in without them)")
# onnx2tf's graph against onnxruntime on the calibration samples: a larger difference (relative to
# the outputs' range) is a mistranslation, not rounding.
FIDELITY_TOLERANCE = 1e-3
FIDELITY_SAMPLES = 20
_STANDARD_DOMAINS = {"", "ai.onnx"}
_FLOAT = 1  # onnx.TensorProto.FLOAT


def is_onnx_model(spec: str | Path) -> bool:
    return Path(str(spec)).suffix.lower() in ONNX_SUFFIXES


@dataclass(frozen=True)
class OnnxSummary:
    """What `check_onnx_model` read from the file: enough to plan the conversion."""

    inputs: tuple[tuple[str, tuple[int | None, ...]], ...]   # name, shape (None: a symbolic dimension)
    outputs: tuple[str, ...]
    opset: int
    producer: str  # "pytorch 2.13.0", or "" when the file does not say
    parameters: int  # elements of the float initializers (the weights)
    conv_inputs: tuple[str, ...] = ()  # 4-D inputs of more than one channel that only convolutions read


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ModelLoadError("ONNX models need the onnx extra", hint=ONNX_HINT) from None
    return onnx


def check_onnx_model(path: str | Path) -> OnnxSummary:
    """The file parsed (without its external weights) and checked: inputs, operator domains and
    external-data locations. ModelLoadError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist", hint="pass an .onnx file (torch.onnx.export writes one)")
    onnx = _onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, and whatever a truncated file raises
        raise ModelLoadError(f"{path}: not an ONNX model ({type(exc).__name__}: {str(exc)[:200]})",
                             hint="export it again (torch.onnx.export, tf2onnx); the file may be truncated") from None
    graph = model.graph
    if not graph.node:
        raise ModelLoadError(f"{path}: the ONNX graph has no operators", hint="export the model again")
    domains = sorted({n.domain for n in graph.node} - _STANDARD_DOMAINS)
    if domains:
        ops = sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in _STANDARD_DOMAINS})
        raise ModelLoadError(f"{path}: operators from custom domains ({', '.join(ops[:5])}) that onnx2tf does not "
                             "convert", hint="export with standard ONNX operators only (no custom or contrib ops)")
    _check_external_data(path, model)
    initializers = {t.name for t in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue  # old exporters list weights as inputs too
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor.elem_type != _FLOAT:
            kind = onnx.TensorProto.DataType.Name(tensor.elem_type) if value.type.HasField("tensor_type") else "not a tensor"
            raise ModelLoadError(f"{path}: input '{value.name}' is {kind}; edgeq quantizes models with float32 inputs",
                                 hint="export the model with float inputs (normalize in the model, not before)")
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tensor.shape.dim)
        if not dims:
            raise ModelLoadError(f"{path}: input '{value.name}' has no shape", hint="export with a fixed input shape")
        if any(d is None for d in dims[1:]):
            shown = ", ".join("?" if d is None else str(d) for d in dims)
            raise ModelLoadError(f"{path}: input '{value.name}' has an open dimension ({shown}) besides the batch",
                                 hint="export with a fixed sample shape (torch.onnx.export with a batch-1 example "
                                      "and no dynamic_axes / dynamic_shapes)")
        inputs.append((value.name, dims))
    if not inputs:
        raise ModelLoadError(f"{path}: the ONNX graph has no inputs")
    opset = next((int(o.version) for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 0)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    parameters = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == _FLOAT)
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    conv_inputs = tuple(name for name, dims in inputs
                        if len(dims) == 4 and (dims[1] or 0) > 1 and readers.get(name, set()) == {"Conv"})
    return OnnxSummary(tuple(inputs), tuple(o.name for o in graph.output), opset, producer, parameters, conv_inputs)


def _check_external_data(path: Path, model: Any) -> None:
    """Weights in side files (torch writes `model.onnx.data` for large models) must sit in the
    model's folder: a location that is absolute or climbs out with '..' is refused."""
    folder = path.resolve().parent
    for tensor in model.graph.initializer:
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        pure = PurePosixPath(location.replace("\\", "/"))
        target = (folder / location).resolve()
        if not location or pure.is_absolute() or ".." in pure.parts or folder not in target.parents:
            raise ModelLoadError(f"{path}: tensor '{tensor.name}' keeps its data at '{location}', outside the model's "
                                 "folder", hint="keep the .onnx and its .data file side by side (relative location)")
        if not target.is_file():
            raise ModelLoadError(f"{path}: tensor '{tensor.name}' keeps its data in {target.name}, which is missing",
                                 hint=f"copy {target.name} next to {path.name}")


@dataclass(frozen=True)
class OnnxModel(LoadedModel):
    """A LoadedModel of the SavedModel onnx2tf made, with what the user's data need to reach it.

    The data stay as the ONNX model takes them: convert() checks them against `source_specs` (the
    ONNX inputs, in their order), then puts them in `input_order` (the SavedModel's, which sorts
    its inputs by name) and moves the channels of `moved_inputs` last, once, for every stage after."""

    source_specs: list[InputSpec] = field(default_factory=list)
    input_order: list[int] = field(default_factory=list)
    moved_inputs: list[int] = field(default_factory=list)
    device_layout: str = Layout.NCHW
    folder: Any = None  # the SavedModel's temporary directory: it lives as long as the model


def load_onnx_model(path: str | Path, *, calibration: Dataset | None, on_step: Callable[[str], None],
                    summary: OnnxSummary | None = None) -> OnnxModel:
    """The ONNX model as an OnnxModel of the SavedModel onnx2tf makes, whose float reference is
    onnxruntime on the .onnx itself. In the conversion's worker process. `summary`: what
    check_onnx_model read already (in the calling process), so the file is parsed once."""
    from edgeq.isolation import ChildCrashed, Worker
    from edgeq.loading import _load_saved_model

    path = Path(path)
    summary = summary or check_onnx_model(path)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"{path}: ONNX models need onnxruntime (the float reference)", hint=ONNX_HINT) from None
    # Channels last on the device where that costs nothing: an input that only convolutions read
    # (TFLite convolves NHWC, so NCHW would put a TRANSPOSE there). Every other input keeps its layout.
    moved_names = set(summary.conv_inputs)
    # (onnx2tf keeps the layout of 3-D to 5-D inputs when told; it leaves the others as they are.)
    kept = [name for name, dims in summary.inputs if name not in moved_names and 3 <= len(dims) <= 5]
    arrays = _by_input(calibration, [n for n, _ in summary.inputs]) if calibration is not None else None
    samples = None
    if arrays is not None:
        samples = [np.ascontiguousarray(np.moveaxis(x[:FIDELITY_SAMPLES], 1, -1) if name in moved_names
                                        else x[:FIDELITY_SAMPLES], dtype=np.float32)
                   for (name, _), x in zip(summary.inputs, arrays)]
    folder = tempfile.TemporaryDirectory(prefix="edgeq-onnx2tf-")
    how = ("moving the channels of the inputs only convolutions read last" if moved_names
           else "keeping its input layout")
    on_step(f"converting {path.name} to TensorFlow with onnx2tf ({how}; in a child process)")
    try:
        with Worker() as worker:
            version = worker.call(_run_onnx2tf, str(path.resolve()), folder.name, kept, samples)
    except ChildCrashed as crash:
        raise ConversionError(f"{path}: onnx2tf {crash.how}{crash.last_words()}",
                              hint="set EDGEQ_VERBOSE=1 for onnx2tf's own output") from None
    loaded = _load_saved_model(Path(folder.name))
    session = _session(path)
    # The SavedModel's inputs in its signature's order, each matched to its ONNX input.
    order = _matched(loaded.input_specs, summary.inputs, path)
    inputs = tuple(summary.inputs[j] for j in order)
    moved = [k for k, (name, _) in enumerate(inputs) if name in moved_names]
    source_specs = [InputSpec(name, (None, *shape[1:]), "float32") for name, shape in summary.inputs]
    specs = [InputSpec(name, (None, *shape[2:], shape[1]) if k in moved else (None, *shape[1:]), "float32")
             for k, (name, shape) in enumerate(inputs)]
    reference = _Reference(session, [n for n, _ in inputs], list(summary.outputs), inputs, moved=moved)
    fidelity = ""
    if samples is not None:
        fidelity = reference.check_against(loaded, [samples[j] for j in order], path)
    fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)}
    fields.update(path=path, format=SourceFormat.ONNX, input_specs=specs, parameter_count=summary.parameters,
                  saved_by=summary.producer + (f" (ONNX opset {summary.opset})" if summary.producer
                                               else f"ONNX opset {summary.opset}"),
                  _predict=reference.predict, converted_by=f"onnx2tf {version}" + (f"; {fidelity}" if fidelity else ""))
    return OnnxModel(**fields, source_specs=source_specs, input_order=order, moved_inputs=moved,
                     device_layout=Layout.NHWC if moved else Layout.NCHW, folder=folder)


def _by_input(data: Dataset, names: list[str]) -> list[np.ndarray] | None:
    """`data`'s arrays in the ONNX inputs' order: by their x_<name> keys where the file has them,
    else by position; None when they cannot be matched (the conversion checks them later)."""
    if len(data.inputs) != len(names):
        return None
    if data.input_names is None or len(names) == 1:
        return list(data.inputs)
    given = dict(zip(data.input_names, data.inputs))
    return [given[n] for n in names] if all(n in given for n in names) else None


def _matched(tf_specs: Sequence[InputSpec], onnx_inputs: Sequence[tuple[str, Any]], path: Path) -> list[int]:
    """For each SavedModel input, the index of its ONNX input: onnx2tf keeps the names, made valid
    for TensorFlow (':' '/' '.' and the like become '_')."""
    def plain(name: str) -> str:
        return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()

    if len(tf_specs) != len(onnx_inputs):
        raise ConversionError(f"{path}: onnx2tf made {len(tf_specs)} inputs of the model's {len(onnx_inputs)}",
                              hint="set EDGEQ_VERBOSE=1 for onnx2tf's own output")
    if len(onnx_inputs) == 1:
        return [0]
    index = {plain(name): j for j, (name, _) in enumerate(onnx_inputs)}
    order = [index.get(plain(spec.name.split(":")[0])) for spec in tf_specs]
    if None in order or sorted(order) != list(range(len(onnx_inputs))):  # type: ignore[type-var]
        raise ConversionError(f"{path}: cannot match onnx2tf's inputs ({', '.join(s.name for s in tf_specs)}) to the "
                              f"ONNX model's ({', '.join(n for n, _ in onnx_inputs)})",
                              hint="give the ONNX inputs plain names (letters, digits, '_') in the export")
    return order  # type: ignore[return-value]


def _session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{path}: onnxruntime cannot load the model ({str(exc).splitlines()[0][:300]})",
                             hint="check it with onnx.checker.check_model; re-export with a supported opset") from None


@dataclass
class _Reference:
    """onnxruntime on the .onnx: the float outputs, in the order and layout of the SavedModel's."""

    session: Any
    input_names: list[str]
    output_names: list[str]
    inputs: tuple[tuple[str, tuple[int | None, ...]], ...]
    order: list[int] | None = None           # SavedModel output k is onnxruntime output order[k]
    channels_last: list[bool] | None = None  # whether onnx2tf moved output k's channels last
    moved: list[int] = field(default_factory=list)  # inputs given channels last (the device's layout)

    def raw(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """onnxruntime's outputs for inputs in the device's layout (moved ones back to NCHW first)."""
        xs = [np.moveaxis(x, -1, 1) if k in self.moved else x for k, x in enumerate(xs)]
        batch_1 = any(shape[0] == 1 for _, shape in self.inputs)
        n = len(xs[0])
        step = 1 if batch_1 else max(1, n)
        outs: list[list[np.ndarray]] = []
        for i in range(0, n, step):
            feed = {name: np.ascontiguousarray(x[i:i + step], dtype=np.float32) for name, x in zip(self.input_names, xs)}
            try:
                outs.append(self.session.run(self.output_names, feed))
            except Exception as exc:
                raise ConversionError(f"onnxruntime failed on samples {i}-{i + step - 1} "
                                      f"({str(exc).splitlines()[0][:300]})",
                                      hint="check that the data's shape is the ONNX model's input") from None
        return [np.concatenate([o[k] for o in outs]) for k in range(len(self.output_names))]

    def predict(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        got = self.raw(xs)
        order = self.order or list(range(len(got)))
        moved = self.channels_last or [False] * len(got)
        return [np.moveaxis(got[k], 1, -1) if last else got[k] for k, last in zip(order, moved)]

    def check_against(self, loaded: Any, samples: list[np.ndarray], path: Path) -> str:
        """Match onnx2tf's outputs to onnxruntime's (by order, then shape, channels last where onnx2tf
        moved them) and measure the difference; ConversionError when onnx2tf's graph computes
        something else."""
        ours = self.raw(samples)
        theirs = loaded.predict(samples, batch_size=1)
        if len(ours) != len(theirs):
            raise ConversionError(f"{path}: onnx2tf's model has {len(theirs)} outputs, the ONNX model {len(ours)}")
        order, moved, worst = [], [], 0.0
        free = list(range(len(ours)))
        for k, tf_out in enumerate(theirs):
            match = None
            for j in free:
                for last in (False, True):
                    candidate = np.moveaxis(ours[j], 1, -1) if last and ours[j].ndim > 2 else ours[j]
                    if candidate.shape == tf_out.shape:
                        error = float(np.max(np.abs(candidate - tf_out))) if candidate.size else 0.0
                        scale = max(float(np.max(np.abs(candidate))) if candidate.size else 0.0, 1e-6)
                        if match is None or error / scale < match[2]:
                            match = (j, last, error / scale, error)
            if match is None:
                raise ConversionError(f"{path}: onnx2tf's output {k} has shape {list(tf_out.shape)}, which no ONNX "
                                      f"output has ({', '.join(str(list(o.shape)) for o in ours)})")
            j, last, relative, error = match
            if relative > FIDELITY_TOLERANCE:
                raise ConversionError(f"{path}: onnx2tf's TensorFlow graph computes other outputs than onnxruntime "
                                      f"(output '{self.output_names[j]}': max difference {error:.3g}, "
                                      f"{relative:.2%} of its range, on {len(samples[0])} calibration samples)",
                                      hint="this is an onnx2tf mistranslation; try another opset in the export, "
                                           "or file it with onnx2tf")
            free.remove(j)
            order.append(j)
            moved.append(last)
            worst = max(worst, error)
        self.order, self.channels_last = order, moved
        return f"max |TensorFlow - onnxruntime| {worst:.2g} on {len(samples[0])} calibration samples"


def _network_off() -> None:
    """No connection leaves this process from now on (for onnx2tf's child: it would download)."""
    import socket

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("edgeq runs onnx2tf with the network off (it would download sample data)")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]


def _run_onnx2tf(path: str, folder: str, input_names: list[str], samples: list[np.ndarray] | None) -> str:
    """onnx2tf into `folder` (a SavedModel with a serving signature), in a child of its own, with
    the network off. Returns onnx2tf's version."""
    _network_off()
    from edgeq._tf import captured_output

    try:
        with captured_output():
            import onnx2tf
            from onnx2tf import onnx2tf as core
    except ImportError as exc:
        raise ModelLoadError(f"{Path(path).name}: ONNX models need onnx2tf ({exc})", hint=ONNX_HINT) from None
    os.chdir(folder)  # onnx2tf writes side files (JSON, float .tflite) where it runs

    def calibration_images() -> np.ndarray:
        # onnx2tf's own sample data are 20 RGB images from the internet; it asks for them for a
        # 4-D input whose last dimension is 3. These are the calibration samples in its input layout.
        if samples is None or len(samples) != 1:
            raise ConversionError("onnx2tf asked for sample images to check its conversion, and there are none",
                                  hint="pass --calibration data")
        return samples[0]

    core.download_test_image_data = calibration_images
    verbose = bool(os.environ.get("EDGEQ_VERBOSE"))
    try:
        with captured_output():
            onnx2tf.convert(input_onnx_file_path=path, output_folder_path=folder, output_signaturedefs=True,
                            keep_ncw_or_nchw_or_ncdhw_input_names=input_names, not_use_onnxsim=True,
                            non_verbose=not verbose, verbosity="debug" if verbose else "error")
    except ConversionError:
        raise
    except BaseException as exc:  # onnx2tf exits (SystemExit) on many of its errors
        raise ConversionError(f"{Path(path).name}: onnx2tf could not convert the model "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''})",
                              hint="set EDGEQ_VERBOSE=1 for onnx2tf's own messages; its README lists the ops it "
                                   "converts") from None
    if not (Path(folder) / "saved_model.pb").is_file():
        raise ConversionError(f"{Path(path).name}: onnx2tf wrote no SavedModel", hint="set EDGEQ_VERBOSE=1")
    return str(getattr(onnx2tf, "__version__", "?"))

