"""Run a .tflite on float data in the runtime the device uses: LiteRT (phones, Linux boards) or
TFLite Micro (microcontrollers), quantizing inputs and dequantizing outputs at the edges.

Accuracy needs the whole evaluation set. A per-sample LiteRT loop pays Python and per-invoke
overhead on every sample (~3 us here) and cannot use a second core on one small image; how much
batching wins therefore depends on how much compute a sample costs (see scripts/bench_emulate.py).
edgeq converts with batch 1 baked in (RESHAPE carries a constant [1, ...]), so LiteRT runs an
evaluation-only copy of the flatbuffer whose batch dimension is free. Batching must never change a
number: the first batch is checked against one-at-a-time inference on the original model, and any
doubt (unsafe ops, a copy that does not build or run, a mismatch) falls back to the per-sample loop,
with the reason in `RunResult.note`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq._tf import captured_output
from edgeq.errors import CalibrationError, EdgeqError
from edgeq.progress import Advance
from edgeq.tflite.batch import Unbatchable, free_batch_dimension
from edgeq.vocab import Runtime


KERNELS = ("default", "builtin", "reference")
"""LiteRT kernel choices: its default (XNNPACK delegate applied, as on a phone), its builtin
kernels without default delegates (bit-identical to TFLM on int8 models measured here), or the
slow reference kernels."""

SELF_CHECK_SAMPLES = 8
"""Samples of the first batch compared with one-at-a-time inference before batching is trusted."""

TFLM_CHUNK = 32
"""TFLM samples run per fd-level capture; progress is reported between chunks, outside it."""

MIN_TFLM_ARENA = 64 * 1024

MAX_THREADS = 4

@dataclass(frozen=True)
class RunResult:
    runtime: str                  # "litert" or "tflm"
    outputs: list[np.ndarray]     # per model output: float32, dequantized, shape [N, ...]
    samples: int
    seconds: float
    batched: bool                 # LiteRT: True when the batch dimension was resized
    note: str = ""                # e.g. why batching was not possible
    kernels: str = ""             # LiteRT kernel choice (see KERNELS); "" for TFLM
    raw_outputs: list[np.ndarray] | None = None  # the outputs in the model's dtype, before dequantizing


# -- quantization at the edges ------------------------------------------------------------------


def quantize_inputs(x: np.ndarray, dtype: Any, scale: float, zero_point: int) -> np.ndarray:
    """Float data -> the model's input dtype: round(x / scale) + zero_point, clipped to the dtype.

    Rounds half away from zero, in float32, as TFLite's own QUANTIZE kernel does. Float dtypes pass
    through (cast, no copy when the type is already right); an integer input without quantization
    (scale 0) is rounded and clipped only. Works through the samples a slice at a time, so that a
    large data set is not held two or three times over in float32 on the way.
    """
    target = np.dtype(dtype)
    x = np.asarray(x)
    if target.kind == "f":
        return x.astype(target, copy=False)
    out = np.empty(x.shape, dtype=target)
    rows = x.shape[0] if x.ndim else 1
    per_row = max(1, x.size // max(rows, 1))
    step = max(1, (4 << 20) // per_row)  # about 4 M elements (16 MB of float32) a slice
    flat_in, flat_out = (x.reshape(1, -1), out.reshape(1, -1)) if x.ndim == 0 else (x, out)
    for start in range(0, max(rows, 1), step):
        values = np.array(flat_in[start:start + step], dtype=np.float32)  # a private copy, worked in place
        if scale:
            np.divide(values, np.float32(scale), out=values)
        half = np.copysign(np.float32(0.5), values)
        np.add(values, half, out=values)
        np.trunc(values, out=values)  # trunc(v + copysign(0.5, v)): half away from zero
        if scale:
            np.add(values, np.float32(zero_point), out=values)
        info = np.iinfo(target)
        np.clip(values, info.min, info.max, out=values)
        flat_out[start:start + step] = values.astype(target)
    return out


def dequantize(q: np.ndarray, scale: Any, zero_point: Any) -> np.ndarray:
    """(q - zero_point) * scale as float32; no quantization (scale 0 or empty) -> plain cast.

    `scale` and `zero_point` may be arrays broadcastable against `q` (per-axis quantization).
    """
    scales = np.asarray(scale, dtype=np.float32)
    if scales.size == 0 or not np.any(scales):
        return np.asarray(q).astype(np.float32)
    zeros = np.asarray(zero_point, dtype=np.float32)
    return ((np.asarray(q).astype(np.float32) - zeros) * scales).astype(np.float32)


def _params(detail: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", ()), dtype=np.float32)
    zeros = np.asarray(qp.get("zero_points", ()), dtype=np.int64)
    return scales, zeros, int(qp.get("quantized_dimension", 0))


def _quantize_detail(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scales, zeros, _ = _params(detail)
    scale = float(scales[0]) if scales.size else 0.0
    return quantize_inputs(x, detail["dtype"], scale, int(zeros[0]) if zeros.size else 0)


def _dequantize_detail(q: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scales, zeros, axis = _params(detail)
    if scales.size > 1:
        shape = [1] * q.ndim
        shape[axis] = scales.size
        return dequantize(q, scales.reshape(shape), zeros.reshape(shape))
    return dequantize(q, scales, zeros)


# -- inputs -------------------------------------------------------------------------------------


def _prepare_inputs(inputs: Sequence[np.ndarray], details: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """Check each array against its model input (by position) and convert it to the input dtype."""
    if len(inputs) != len(details):
        names = ", ".join(repr(d["name"]) for d in details)
        raise CalibrationError(f"the model has {len(details)} input(s) ({names}) but {len(inputs)} input "
                               "array(s) were given", hint="pass one array per model input, in model order")
    arrays = [np.asarray(x) for x in inputs]
    for i, (x, detail) in enumerate(zip(arrays, details)):
        expected = tuple(int(d) for d in detail["shape"][1:])
        if x.ndim == 0 or tuple(x.shape[1:]) != expected:
            raise CalibrationError(
                f"model input {i} ('{detail['name']}') expects samples of shape {expected} "
                f"(array shape (N, {', '.join(map(str, expected))})), got an array of shape {x.shape}",
                hint="samples go on axis 0; reshape or preprocess the data the way the model was trained")
    counts = {int(x.shape[0]) for x in arrays}
    if len(counts) > 1:
        raise CalibrationError(f"input arrays have different sample counts: {sorted(counts)}",
                               hint="every input array needs one row per sample, in the same order")
    if counts == {0}:
        raise CalibrationError("no samples to run (the input arrays are empty)")
    return [_quantize_detail(x, d) for x, d in zip(arrays, details)]


# -- LiteRT -------------------------------------------------------------------------------------


def default_threads() -> int:
    """Cores this process may use, at most MAX_THREADS (more only adds contention on shared hosts)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_THREADS))


def _interpreter_factory(kernels: str, num_threads: int | None) -> Callable[[bytes], Any]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    resolver = {"default": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "reference": OpResolverType.BUILTIN_REF}[kernels]
    threads = num_threads if num_threads is not None else default_threads()

    def make(model: bytes) -> Any:
        with captured_output():  # LiteRT announces its XNNPACK delegate on stderr
            interp = Interpreter(model_content=model, experimental_op_resolver_type=resolver, num_threads=threads)
            interp.allocate_tensors()
        return interp

    return make


def run_litert(model: bytes, inputs: Sequence[np.ndarray], *, batch_size: int | None = None,
               on_progress: Advance | None = None, kernels: str = "default",
               num_threads: int | None = None) -> RunResult:
    """Run every sample through LiteRT, batched when that provably gives the same numbers.

    `kernels`: see KERNELS. `num_threads`: None -> default_threads(). `batch_size`: None -> as many
    samples as the model's activations let fit the memory budget (edgeq.budget).
    """
    from edgeq.budget import batch_for
    from edgeq.tflite.reader import read_tflite
    from edgeq.tflite.strip import litert_loadable

    if batch_size is None:
        try:
            batch_size = batch_for(read_tflite(model).activation_bytes)
        except EdgeqError:  # not for the reader to stop a run LiteRT may manage: the usual batch
            batch_size = batch_for(None)

    start = time.perf_counter()
    model = litert_loadable(model)  # a model flashed for TFLM may keep one zero point for all channels
    make = _interpreter_factory(kernels, num_threads)
    original = make(model)
    in_details, out_details = original.get_input_details(), original.get_output_details()
    xs = _prepare_inputs(inputs, in_details)
    n = len(xs[0])
    outputs, note = _run_batched(model, original, make, xs, max(1, batch_size), on_progress)
    if outputs is None:
        outputs = _per_sample_litert(original, xs, 0, on_progress)
    result = [_dequantize_detail(q, d) for q, d in zip(outputs, out_details)]
    return RunResult(Runtime.LITERT, result, n, time.perf_counter() - start, batched=not note, note=note,
                     kernels=kernels, raw_outputs=outputs)


def _per_sample_litert(interp: Any, xs: list[np.ndarray], first: int, on_progress: Advance | None,
                       limit: int | None = None) -> list[np.ndarray]:
    in_idx = [d["index"] for d in interp.get_input_details()]
    out_idx = [d["index"] for d in interp.get_output_details()]
    stop = len(xs[0]) if limit is None else min(limit, len(xs[0]))
    rows: list[list[np.ndarray]] = [[] for _ in out_idx]
    for i in range(first, stop):
        for idx, x in zip(in_idx, xs):
            interp.set_tensor(idx, x[i:i + 1])
        interp.invoke()
        for row, idx in zip(rows, out_idx):
            row.append(interp.get_tensor(idx))
        if on_progress and ((i + 1) % 64 == 0 or i + 1 == stop):
            on_progress(i + 1)
    return [np.concatenate(r) for r in rows]


def _run_batched(model: bytes, original: Any, make: Callable[[bytes], Any], xs: list[np.ndarray],
                 batch_size: int, on_progress: Advance | None) -> tuple[list[np.ndarray] | None, str]:
    """Outputs of the batch-free copy, or (None, reason) when the per-sample loop must be used."""
    n = len(xs[0])
    if n == 1:
        return None, "a single sample: nothing to batch"
    if batch_size == 1:
        return None, "batch size 1 requested"
    try:
        patched = free_batch_dimension(model)
    except Unbatchable as exc:
        return None, str(exc)
    except Exception as exc:  # an unusual but valid file: not worth failing the run for
        return None, f"could not free the batch dimension ({type(exc).__name__}: {exc})"
    size = min(batch_size, n)
    try:
        interp = make(patched)
        _resize(interp, xs, size)
        first = _invoke_batch(interp, xs, 0, size)
    except Exception as exc:
        return None, f"the batch-free copy did not run ({type(exc).__name__}: {str(exc)[:200]})"
    reason = _check_first_batch(original, xs, first, size)
    if reason:
        return None, reason
    chunks = [first]
    if on_progress:
        on_progress(size)
    for begin in range(size, n, size):
        count = min(size, n - begin)
        if count != size:
            _resize(interp, xs, count)
        chunks.append(_invoke_batch(interp, xs, begin, count))
        if on_progress:
            on_progress(begin + count)
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(first))], ""


def _resize(interp: Any, xs: list[np.ndarray], size: int) -> None:
    for detail, x in zip(interp.get_input_details(), xs):
        interp.resize_tensor_input(detail["index"], [size, *x.shape[1:]])
    with captured_output():
        interp.allocate_tensors()


def _invoke_batch(interp: Any, xs: list[np.ndarray], begin: int, count: int) -> list[np.ndarray]:
    for detail, x in zip(interp.get_input_details(), xs):
        interp.set_tensor(detail["index"], x[begin:begin + count])
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def _check_first_batch(original: Any, xs: list[np.ndarray], batch: list[np.ndarray], size: int) -> str:
    """'' if the first batch has the right shapes and matches one-at-a-time inference, else why not."""
    details = original.get_output_details()
    for detail, out in zip(details, batch):
        expected = (size, *(int(d) for d in detail["shape"][1:]))
        if tuple(out.shape) != expected:
            return (f"batching changed the shape of output '{detail['name']}' ({tuple(out.shape)} for "
                    f"{expected}): the model combines samples or has a fixed batch")
    k = min(SELF_CHECK_SAMPLES, size)
    single = _per_sample_litert(original, xs, 0, None, limit=k)
    for detail, out, ref in zip(details, batch, single):
        if not _same(out[:k], ref):
            diff = float(np.max(np.abs(out[:k].astype(np.float64) - ref.astype(np.float64))))
            return (f"batched inference differed from one-at-a-time inference on output '{detail['name']}' "
                    f"(max difference {diff:g} over the first {k} samples)")
    return ""


def _same(batched: np.ndarray, single: np.ndarray) -> bool:
    if batched.shape != single.shape:
        return False
    if batched.dtype.kind == "f":
        return bool(np.allclose(batched, single, rtol=1e-5, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(batched, single))


# -- the batch-free copy ------------------------------------------------------------------------


# -- TFLite Micro -------------------------------------------------------------------------------


def run_tflm(model: bytes, inputs: Sequence[np.ndarray], *, arena_size: int | None = None,
             on_progress: Advance | None = None) -> RunResult:
    """Run every sample, one at a time, in the TFLite Micro interpreter (as the device does)."""
    from tflite_micro.python.tflite_micro import runtime

    start = time.perf_counter()
    arena = arena_size if arena_size is not None else max(10 * len(model), MIN_TFLM_ARENA)
    in_names, out_count = _io_names(model)
    log = None
    try:
        with captured_output() as log:
            interp = runtime.Interpreter.from_bytes(model, arena_size=arena)
            in_details = [{**interp.get_input_details(i), "name": name} for i, name in enumerate(in_names)]
            out_details = [interp.get_output_details(i) for i in range(out_count)]
    except (RuntimeError, ValueError) as exc:
        detail = log.text.strip() if log else ""
        raise RuntimeError(f"TFLite Micro could not load the model (arena {arena} bytes): {exc}\n{detail}") from exc
    xs = _prepare_inputs(inputs, in_details)
    n = len(xs[0])
    rows: list[list[np.ndarray]] = [[] for _ in out_details]
    for begin in range(0, n, TFLM_CHUNK):
        stop = min(begin + TFLM_CHUNK, n)
        log = None
        try:
            with captured_output() as log:
                _tflm_chunk(interp, xs, rows, begin, stop)
        except RuntimeError as exc:
            detail = log.text.strip() if log else ""
            raise RuntimeError(f"TFLite Micro failed between samples {begin} and {stop - 1}: {exc}\n{detail}") from exc
        if on_progress:
            on_progress(stop)
    raw = [np.concatenate(r) for r in rows]
    outputs = [_dequantize_detail(r, d) for r, d in zip(raw, out_details)]
    return RunResult(Runtime.TFLM, outputs, n, time.perf_counter() - start, batched=False, raw_outputs=raw)


def tflm_outputs_identical(a: bytes, b: bytes, inputs: Sequence[np.ndarray]) -> bool:
    """Whether two models give the same raw outputs in TFLM on every sample of `inputs`."""
    first, second = run_tflm(a, inputs), run_tflm(b, inputs)
    return all(np.array_equal(x, y) for x, y in zip(first.raw_outputs or [], second.raw_outputs or []))


def _tflm_chunk(interp: Any, xs: list[np.ndarray], rows: list[list[np.ndarray]], begin: int, stop: int) -> None:
    for i in range(begin, stop):
        for j, x in enumerate(xs):
            interp.set_input(x[i:i + 1], j)
        interp.invoke()
        for j, row in enumerate(rows):
            row.append(np.array(interp.get_output(j), copy=True))


def _io_names(model: bytes) -> tuple[list[str], int]:
    """Input names (signature names, else tensor names) and the output count of subgraph 0,
    from the checked reader. TFLM's Python wrapper only has per-index getters, and an index out
    of range is not safe to try."""
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(model)
    names = [name or tensor.name for name, tensor in zip(info.input_names, info.input_tensors)]
    return names, len(info.outputs)
