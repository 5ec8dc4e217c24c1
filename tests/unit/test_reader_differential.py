"""The checked reader against TensorFlow Lite Micro, on structured mutants of real models.

Each mutant is a converter-made int8 model with one to three fields edited through the flatbuffer
object API: fields a real file may carry and TFLM may ignore or handle (quantized dimensions, shape
signatures, zero points and scales, names, description, version, signature defs, metadata,
operator-code versions and the two builtin-code fields, variable flags, unused buffers, builtin
options). Every mutant goes through `read_tflite` here and through TFLM's Python interpreter in a
child process (load, set inputs, invoke), which may crash. The run fails when

(a) the reader refuses a mutant that TFLM loads and invokes, for a reason that is not one of the
    SAFETY conditions below (the reader must not be stricter than TFLM), or
(b) the reader accepts a mutant that crashes TFLM (the child dies by a signal or hangs), or whose
    C (`export-c --runtime c`), built with gcc's address and undefined-behaviour sanitizers, fails
    them on one input.

scripts/fuzz_reader.py --differential runs the same check for as long as asked; this module holds
the mutations and the classification both use.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

SAFETY: dict[str, str] = {
    # message fragment of a refusal -> why refusing it is right whatever TFLM does
    "scales must be finite and > 0": "the requantization multiplier of a 0, negative, inf or NaN scale is undefined",
    " quantization scales but ": "kernels index a zero point per scale: fewer entries are read past the vector",
    "), outside the ": "a zero point beyond its dtype overflows the kernels' integer offsets: results are garbage",
    "is quantized per channel along axis": "the axis indexes the shape: past the rank it reads out of the dims",
    "per-channel scales, but its dimension": "one scale is read per channel: fewer scales than channels overrun",
    "outside the file": "the file points outside its own bytes",
    "past the end of the file": "the data would be read past the end of the buffer",
    "more than the file can hold": "a vector longer than the file would be read out of bounds",
    "outside its own table": "a field lies outside its table: reading it goes out of bounds",
    "malformed field table": "a vtable that cannot be walked without reading out of bounds",
    "far more often than a model can": "shared tables in a loop: reading it would not end",
    "cannot read ": "the data points outside the file or holds values no accessor can decode",
    "refers to tensor": "the graph names a tensor that does not exist",
    "uses buffer": "a tensor names a buffer that does not exist",
    "uses operator code": "an operator names an operator code that does not exist",
    "no subgraphs": "there is no graph to run",
    "; it must be >= ": "a stride, dilation or window below 1 divides by zero in TFLM's output size or "
                        "averages over an empty window",
}
"""Refusals the differential accepts even when TFLM runs the mutant (message fragment -> why)."""


def safety_reason(message: str) -> str | None:
    return next((frag for frag in SAFETY if frag in message), None)


# -- seed models ------------------------------------------------------------------------------------


def build_seeds() -> dict[str, bytes]:
    """Small Keras models through the real converter: int8 dense (batch left open), int8 conv, and
    int8 inside float32 I/O."""
    from edgeq._tf import tf

    tf()
    import keras

    from tests.conftest import plain_tflite

    keras.utils.set_random_seed(7)
    L = keras.layers
    dense = keras.Sequential([L.Input((6,)), L.Dense(8, activation="relu"), L.Dense(3)])
    conv = keras.Sequential([L.Input((6, 6, 2), batch_size=1), L.Conv2D(4, 3, padding="same", activation="relu"),
                             L.DepthwiseConv2D(3), L.MaxPooling2D(), L.Flatten(), L.Dense(3)])
    rng = np.random.default_rng(1)
    seeds = {}
    for name, model, io in (("dense-int8", dense, "int8"), ("conv-int8", conv, "int8"),
                            ("dense-float-io", dense, "float32_io")):
        data = rng.normal(0, 1, size=(16, *model.inputs[0].shape[1:])).astype(np.float32)
        seeds[name] = plain_tflite(model, io=io, data=data)
    return seeds


# -- mutations (object API) ----------------------------------------------------------------------


def _graph(m: Any) -> Any:
    return m.subgraphs[0]


def _pick_tensor(rng: random.Random, m: Any, want: Callable[[Any], bool] = lambda t: True) -> tuple[int, Any] | None:
    found = [(i, t) for i, t in enumerate(_graph(m).tensors) if want(t)]
    return rng.choice(found) if found else None


def _quantized(t: Any) -> bool:
    return t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale) > 0


def _per_channel(t: Any) -> bool:
    return _quantized(t) and len(t.quantization.scale) > 1


def _rank(t: Any) -> int:
    return 0 if t.shape is None else len(t.shape)


def m_quantized_dimension(rng: random.Random, m: Any) -> str:
    rank1 = rng.random() < 0.5
    hit = _pick_tensor(rng, m, lambda t: _quantized(t) and (_rank(t) == 1) == rank1) or _pick_tensor(rng, m, _quantized)
    if hit is None:
        return "no quantized tensor"
    i, t = hit
    axis = rng.choice([0, 1, 2, 3, 4, -1, 7, _rank(t) - 1, _rank(t)])
    t.quantization.quantizedDimension = axis
    return f"tensor {i} (rank {_rank(t)}, {len(t.quantization.scale)} scales) quantizedDimension={axis}"


def m_shape_signature(rng: random.Random, m: Any) -> str:
    i, t = _pick_tensor(rng, m, lambda t: _rank(t) > 0)  # type: ignore[misc]
    shape = [int(d) for d in t.shape]
    kind = rng.choice(["batch -1", "absent", "too long", "too short", "all -1", "differs"])
    sig = {"batch -1": [-1, *shape[1:]], "absent": None, "too long": [*shape, 1], "too short": shape[:-1],
           "all -1": [-1] * len(shape), "differs": [d + 1 for d in shape]}[kind]
    t.shapeSignature = None if sig is None else np.array(sig, dtype=np.int32)
    return f"tensor {i} shape {shape} shapeSignature {kind}: {sig}"


def m_single_zero_point(rng: random.Random, m: Any) -> str:
    hit = _pick_tensor(rng, m, _per_channel)
    if hit is None:
        return "no per-channel tensor"
    i, t = hit
    zp = rng.choice([0, 0, 1, -3])
    t.quantization.zeroPoint = np.array([zp], dtype=np.int64)
    return f"tensor {i} ({len(t.quantization.scale)} scales) a single zero point {zp}"


def m_zero_point(rng: random.Random, m: Any) -> str:
    i, t = _pick_tensor(rng, m, _quantized)  # type: ignore[misc]
    q = t.quantization
    kind = rng.choice(["value", "value", "absent", "empty", "extra"])
    if kind == "value" and q.zeroPoint is not None and len(q.zeroPoint):
        zp = np.array(q.zeroPoint, dtype=np.int64)
        k = rng.randrange(len(zp))
        zp[k] = rng.choice([0, 1, -1, 127, -128, 128, -129, 255, 32767, 40000, 1 << 40])
        q.zeroPoint = zp
        return f"tensor {i} ({t.type=}) zeroPoint[{k}]={int(zp[k])}"
    if kind == "extra":
        q.zeroPoint = np.array([*(q.zeroPoint if q.zeroPoint is not None else []), 0], dtype=np.int64)
        return f"tensor {i} one more zero point than scales"
    q.zeroPoint = None if kind == "absent" else np.array([], dtype=np.int64)
    return f"tensor {i} zero points {kind}"


def m_scale(rng: random.Random, m: Any) -> str:
    i, t = _pick_tensor(rng, m, _quantized)  # type: ignore[misc]
    q = t.quantization
    scale = np.array(q.scale, dtype=np.float32)
    k = rng.randrange(len(scale))
    kind = rng.choice(["0", "-", "nan", "inf", "tiny", "huge", "x2", "denormal", "drop", "extra"])
    if kind == "drop":
        q.scale = scale[:-1]
        return f"tensor {i} one scale fewer ({len(scale) - 1})"
    if kind == "extra":
        q.scale = np.array([*scale, scale[-1]], dtype=np.float32)
        return f"tensor {i} one scale more ({len(scale) + 1})"
    scale[k] = {"0": 0.0, "-": -scale[k], "nan": math.nan, "inf": math.inf, "tiny": 1e-30, "huge": 1e30,
                "x2": scale[k] * 2, "denormal": 1e-42}[kind]
    q.scale = scale
    return f"tensor {i} scale[{k}]={float(scale[k])!r} ({kind})"


def m_quant_extras(rng: random.Random, m: Any) -> str:
    i, t = _pick_tensor(rng, m)  # type: ignore[misc]
    kind = rng.choice(["min/max", "no quantization", "empty quantization"])
    if kind == "min/max" and _quantized(t):
        t.quantization.min = np.array([-1.0], dtype=np.float32)
        t.quantization.max = np.array([1.0], dtype=np.float32)
    elif kind == "no quantization" and _quantized(t) and t.type in (0, 1):  # only where it means float
        t.quantization = None
    elif kind == "empty quantization" and t.quantization is None:
        from ai_edge_litert import schema_py_generated as schema

        t.quantization = schema.QuantizationParametersT()
    else:
        return f"tensor {i} quantization unchanged"
    return f"tensor {i} {kind}"


def m_description_version(rng: random.Random, m: Any) -> str:
    if rng.random() < 0.5:
        m.description = rng.choice([None, b"", b"x" * 5000, b"\xff\xfe\x80 not utf-8", "caf\u00e9".encode()])
        return f"description {m.description[:20] if m.description else m.description!r}"
    m.version = rng.choice([0, 1, 2, 4, 0xFFFFFFFF])
    return f"model version {m.version}"


def m_tensor_name(rng: random.Random, m: Any) -> str:
    i, t = _pick_tensor(rng, m)  # type: ignore[misc]
    t.name = rng.choice([None, b"", b"n" * 20000, b"\xff\xfe\xc3", b"same", b"a\x00b"])
    return f"tensor {i} name {t.name[:12] if t.name else t.name!r}"


def m_signature(rng: random.Random, m: Any) -> str:
    sigs = m.signatureDefs or []
    kind = rng.choice(["none", "subgraph 1", "subgraph 7", "no inputs", "no outputs", "no key", "bad tensor",
                       "two"])
    if not sigs or kind == "none":
        m.signatureDefs = None
        return "no signature defs"
    s = sigs[0]
    if kind == "subgraph 1":
        s.subgraphIndex = 1
    elif kind == "subgraph 7":
        s.subgraphIndex = 7
    elif kind == "no inputs":
        s.inputs = None
    elif kind == "no outputs":
        s.outputs = None
    elif kind == "no key":
        s.signatureKey = None
    elif kind == "bad tensor" and s.inputs:
        s.inputs[0].tensorIndex = 999
    elif kind == "two":
        import copy

        m.signatureDefs = [s, copy.deepcopy(s)]
    return f"signature def {kind}"


def m_metadata(rng: random.Random, m: Any) -> str:
    from ai_edge_litert import schema_py_generated as schema

    kind = rng.choice(["drop", "add", "add bad buffer", "non-utf-8 name", "metadata buffer list"])
    if kind == "drop":
        m.metadata = None
        return "metadata dropped"
    if kind == "metadata buffer list":
        m.metadataBuffer = [0, len(m.buffers) - 1]
        return "metadataBuffer list set"
    entry = schema.MetadataT()
    entry.name = b"\xff\xfemeta" if kind == "non-utf-8 name" else b"edgeq_fuzz"
    if kind == "add bad buffer":
        entry.buffer = len(m.buffers) + 3
    else:
        buf = schema.BufferT()
        buf.data = np.frombuffer(rng.randbytes(rng.choice([0, 3, 17, 256])), dtype=np.uint8)
        m.buffers.append(buf)
        entry.buffer = len(m.buffers) - 1
    m.metadata = [*(m.metadata or []), entry]
    return f"metadata {kind}"


def m_opcode(rng: random.Random, m: Any) -> str:
    k = rng.randrange(len(m.operatorCodes))
    code = m.operatorCodes[k]
    real = max(code.deprecatedBuiltinCode, code.builtinCode)
    kind = rng.choice(["version", "deprecated 127", "builtin 0", "builtin other", "custom code"])
    if kind == "version":
        code.version = rng.choice([0, 1, 2, 7, 99])
    elif kind == "deprecated 127":
        code.deprecatedBuiltinCode = 127  # the placeholder for codes above 127
    elif kind == "builtin 0":
        code.deprecatedBuiltinCode, code.builtinCode = real, 0  # an old file: only the int8 field
    elif kind == "builtin other":
        code.builtinCode = rng.choice([1, 3, 9, 25])  # the two fields disagree
    else:
        code.customCode = b"ignored"
    return f"operator code {k} ({real}) {kind}: dep={code.deprecatedBuiltinCode} builtin={code.builtinCode} " \
           f"v={code.version}"


def m_variable(rng: random.Random, m: Any) -> str:
    i, t = _pick_tensor(rng, m)  # type: ignore[misc]
    t.isVariable = True
    return f"tensor {i} isVariable"


def m_unused_buffer(rng: random.Random, m: Any) -> str:
    from ai_edge_litert import schema_py_generated as schema

    used = {t.buffer for sg in m.subgraphs for t in sg.tensors}
    kind = rng.choice(["append", "buffer 0 data", "unused data"])
    data = np.frombuffer(rng.randbytes(rng.choice([1, 4, 64, 1000])), dtype=np.uint8)
    if kind == "append":
        buf = schema.BufferT()
        buf.data = data
        m.buffers.append(buf)
    elif kind == "buffer 0 data" and 0 not in used:
        m.buffers[0].data = data
    else:
        free = [b for b in range(len(m.buffers)) if b not in used]
        if not free:
            return "no unused buffer"
        m.buffers[rng.choice(free)].data = data
    return f"unused buffer {kind} ({len(data)} B)"


def m_options(rng: random.Random, m: Any) -> str:
    ops = _graph(m).operators
    k = rng.randrange(len(ops))
    op = ops[k]
    opts = op.builtinOptions
    kind = rng.choice(["absent", "field"])
    if kind == "absent" or opts is None:
        op.builtinOptions, op.builtinOptionsType = None, 0
        return f"operator {k} builtin options absent"
    fields = [f for f in vars(opts) if isinstance(getattr(opts, f), (int, bool))]
    if not fields:
        return f"operator {k} has no int option"
    f = rng.choice(fields)
    value = rng.choice([False, True]) if isinstance(getattr(opts, f), bool) else rng.choice([0, 1, 2, 5, 7, 100, -1])
    setattr(opts, f, value)
    return f"operator {k} option {f}={value}"


def m_bias_absent(rng: random.Random, m: Any) -> str:
    ops = [op for op in _graph(m).operators if op.inputs is not None and len(op.inputs) == 3]
    if not ops:
        return "no op with a bias"
    op = rng.choice(ops)
    op.inputs = np.array([op.inputs[0], op.inputs[1], -1], dtype=np.int32)
    return f"op {_graph(m).operators.index(op)} bias input -1 (optional)"


def m_subgraph_name(rng: random.Random, m: Any) -> str:
    _graph(m).name = rng.choice([None, b"", b"\xff\xfe", b"g" * 3000])
    return "subgraph name edited"


MUTATIONS: dict[str, Callable[[random.Random, Any], str]] = {
    "quantized_dimension": m_quantized_dimension, "shape_signature": m_shape_signature,
    "single_zero_point": m_single_zero_point, "zero_point": m_zero_point, "scale": m_scale,
    "quant_extras": m_quant_extras, "description_version": m_description_version, "tensor_name": m_tensor_name,
    "signature_def": m_signature, "metadata": m_metadata, "operator_code": m_opcode, "is_variable": m_variable,
    "unused_buffer": m_unused_buffer, "builtin_options": m_options, "bias_absent": m_bias_absent,
    "subgraph_name": m_subgraph_name,
}


@dataclass
class Mutant:
    index: int
    seed_model: str
    kinds: list[str]
    what: list[str]
    data: bytes

    def describe(self) -> str:
        return f"mutant {self.index} of {self.seed_model}: " + "; ".join(f"[{k}] {w}" for k, w in
                                                                          zip(self.kinds, self.what))


def make_mutant(run_seed: int, index: int, seeds: dict[str, bytes]) -> Mutant:
    """Mutant `index` of a run: a pure function of (run_seed, index, seeds)."""
    from ai_edge_litert.tools import flatbuffer_utils

    rng = random.Random(f"differential:{run_seed}:{index}")
    name = rng.choice(sorted(seeds))
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(seeds[name]))
    kinds = rng.sample(sorted(MUTATIONS), rng.choice([1, 1, 1, 2, 3]))
    what = [MUTATIONS[k](rng, model) for k in kinds]
    return Mutant(index, name, kinds, what, bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


# -- the two verdicts ---------------------------------------------------------------------------


def reader_verdict(data: bytes) -> tuple[bool, str]:
    """(accepted, the refusal's message or '')."""
    from edgeq.errors import TFLiteFormatError
    from edgeq.tflite.reader import read_tflite

    try:
        read_tflite(data, source="mutant.tflite")
    except TFLiteFormatError as exc:
        return False, exc.message
    return True, ""


_CHILD = r"""
import json, os, struct, sys
import numpy as np
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # what TFLM prints goes to the log, not into the replies
from tflite_micro.python.tflite_micro import runtime
requests = sys.stdin.buffer
while True:
    head = requests.read(8)
    if len(head) < 8:
        break
    size, count = struct.unpack("<II", head)
    model = requests.read(size)
    try:
        interp = runtime.Interpreter.from_bytes(model, arena_size=1 << 20)
        rng = np.random.default_rng(0)
        for i in range(count):
            d = interp.get_input_details(i)
            dtype = np.dtype(d["dtype"])
            x = (rng.integers(-100, 100, size=d["shape"]) if dtype.kind in "iu" else rng.normal(size=d["shape"]))
            interp.set_input(x.astype(dtype), i)
        interp.invoke()
        interp.get_output(0)
        reply = {"verdict": "ok", "detail": ""}
    except Exception as exc:
        reply = {"verdict": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""


class Tflm:
    """One child process running TFLM on mutant after mutant; a crash or hang starts a new one."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Any = None

    def _start(self) -> subprocess.Popen[bytes]:
        self.close()
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env)
        return self.proc

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream:
                    stream.close()
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def _tail(self) -> str:
        self.log.seek(0)
        lines = [ln for ln in self.log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return " | ".join(lines[-3:])[:300]

    def run(self, data: bytes, inputs: int) -> tuple[str, str]:
        """('ok' | 'error' | 'crash' | 'hang', detail): TFLM loading `data` and invoking it once."""
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(struct.pack("<II", len(data), inputs) + data)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
            line = proc.stdout.readline() if ready else None
        except (BrokenPipeError, OSError):
            line = b""
        if line is None:
            self.close()
            return "hang", f"no answer in {self.timeout:g} s"
        if not line:
            code = proc.wait()
            tail = self._tail()
            self.close()
            return ("crash" if code < 0 else "error"), f"child exit {code}; {tail}"
        reply = json.loads(line)
        return reply["verdict"], reply["detail"]


def input_count(data: bytes) -> int:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    return model.Subgraphs(0).InputsLength()


@dataclass
class Outcome:
    mutant: Mutant
    reader_ok: bool
    reader_message: str
    tflm: str
    tflm_detail: str
    c: str = ""  # "", "not for the c runtime: ...", "ok", "sanitizer: ..."

    @property
    def failure(self) -> str | None:
        if not self.reader_ok and self.tflm == "ok" and safety_reason(self.reader_message) is None:
            return "(a) the reader refuses what TFLM runs, for no safety reason"
        if self.reader_ok and self.tflm in ("crash", "hang"):
            return f"(b) the reader accepts what makes TFLM {self.tflm}"
        if self.c.startswith("sanitizer"):
            return "(b) the reader and the c runtime accept what the sanitizers catch in the C"
        return None

    def report(self) -> str:
        reader = "accepts" if self.reader_ok else f"refuses: {self.reader_message}"
        return (f"{self.failure or 'ok'}\n  {self.mutant.describe()}\n  reader: {reader}\n"
                f"  TFLM: {self.tflm} {self.tflm_detail}" + (f"\n  C: {self.c}" if self.c else ""))


def judge(mutant: Mutant, tflm: Tflm) -> Outcome:
    ok, message = reader_verdict(mutant.data)
    try:
        count = input_count(mutant.data)
    except Exception:  # the mutant is well formed (we built it); be safe anyway
        count = 1
    verdict, detail = tflm.run(mutant.data, count)
    return Outcome(mutant, ok, message, verdict, detail)


_MAIN_C = """#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "m_model.h"
int main(void) {
%s
  int rc = m_invoke(%s);
  printf("rc %%d\\n", rc);
%s
  return 0;
}
"""


def c_check(data: bytes, workdir: Path) -> str:
    """'not for the c runtime: ...' if emit_c refuses the mutant, else its C built with gcc's address
    and undefined-behaviour sanitizers and run on one input: 'ok' or 'sanitizer: ...'."""
    from edgeq.aot.emit import emit_c
    from edgeq.errors import TargetCheckError
    from edgeq.tflite.reader import read_tflite

    try:
        sources = emit_c("m", data, read_tflite(data))
    except TargetCheckError as exc:
        return f"not for the c runtime: {exc.message[:120]}"
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in sources.files.items():
        (workdir / name).write_bytes(text)
    tensors = [("in", t) for t in sources.values["inputs"]] + [("out", t) for t in sources.values["outputs"]]  # type: ignore[operator]
    names = [f"{kind}{k}" for k, (kind, _) in enumerate(tensors)]
    alloc = "\n".join(f"  {t['ctype']} *{n} = malloc({t['bytes']}); memset({n}, 3, {t['bytes']});"
                      for n, (_, t) in zip(names, tensors))
    free = "\n".join(f"  free({n});" for n in names)
    (workdir / "main.c").write_text(_MAIN_C % (alloc, ", ".join(names), free))
    exe = workdir / "m"
    build = subprocess.run(["gcc", "-std=c99", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                            "-I", str(workdir), str(workdir / "m_model.c"), str(workdir / "main.c"), "-o", str(exe),
                            "-lm"], capture_output=True, text=True, timeout=120)
    if build.returncode != 0:
        return f"sanitizer: the C does not build: {build.stderr[-300:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    if run.returncode != 0 or "runtime error" in run.stderr or "AddressSanitizer" in run.stderr:
        return f"sanitizer: exit {run.returncode}: {run.stderr[-400:]}"
    return "ok"


# -- the test -------------------------------------------------------------------------------------

MUTANTS = 300
RUN_SEED = 20261208
C_CHECKS = 3


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    pytest.importorskip("tflite_micro")
    return build_seeds()


def test_seed_models_are_accepted_by_both(seeds: dict[str, bytes]) -> None:
    tflm = Tflm()
    try:
        for name, data in seeds.items():
            assert reader_verdict(data) == (True, ""), name
            assert tflm.run(data, input_count(data))[0] == "ok", name
    finally:
        tflm.close()


def test_reader_is_neither_stricter_than_tflm_nor_accepts_what_crashes_it(seeds: dict[str, bytes],
                                                                          tmp_path: Path) -> None:
    tflm = Tflm()
    outcomes, c_done = [], 0
    try:
        for index in range(MUTANTS):
            outcome = judge(make_mutant(RUN_SEED, index, seeds), tflm)
            if outcome.reader_ok and outcome.tflm == "ok" and c_done < C_CHECKS and shutil.which("gcc"):
                outcome.c = c_check(outcome.mutant.data, tmp_path / f"c{index}")
                c_done += not outcome.c.startswith("not for")
            outcomes.append(outcome)
    finally:
        tflm.close()
    failures = [o.report() for o in outcomes if o.failure]
    assert not failures, f"{len(failures)} of {len(outcomes)} mutants:\n" + "\n".join(failures)
    # The run exercised what it is about: every mutation, mutants both accept, and refusals both make.
    assert {k for o in outcomes for k in o.mutant.kinds} == set(MUTATIONS)
    assert sum(o.reader_ok and o.tflm == "ok" for o in outcomes) > MUTANTS // 3
    assert any(not o.reader_ok and o.tflm != "ok" for o in outcomes)
    assert c_done == C_CHECKS or not shutil.which("gcc")


def test_a_depthwise_conv_without_its_listed_bias_is_refused_by_name(seeds: dict[str, bytes]) -> None:
    """Found by this differential: TFLM's depthwise prepare frees a bias listed as -1 and dies
    (SIGSEGV), where conv and fully connected run without it. The reader refuses it, naming the op."""
    from ai_edge_litert.tools import flatbuffer_utils

    def without_bias(kind: str) -> bytes:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(seeds["conv-int8"]))
        codes = [max(c.deprecatedBuiltinCode, c.builtinCode) for c in model.operatorCodes]
        op = next(op for op in _graph(model).operators if codes[op.opcodeIndex] == kind)
        op.inputs = np.array([op.inputs[0], op.inputs[1], -1], dtype=np.int32)
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))

    tflm = Tflm()
    try:
        depthwise, conv = without_bias(4), without_bias(3)  # DEPTHWISE_CONV_2D, CONV_2D
        ok, message = reader_verdict(depthwise)
        assert not ok and "DEPTHWISE_CONV_2D" in message and "bias as absent (-1)" in message
        assert tflm.run(depthwise, 1)[0] == "crash"
        assert reader_verdict(conv) == (True, "") and tflm.run(conv, 1)[0] == "ok"
    finally:
        tflm.close()
