"""`<name>_model.c` and `<name>_model.h` from a lowered Program (edgeq/templates/aot_*.j2)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from edgeq.aot.kernels import CTYPES, ELEMENT_BYTES
from edgeq.aot.lower import Program, lower
from edgeq.export.c_arrays import c_identifier
from edgeq.templating import render
from edgeq.tflite.model_info import ModelInfo


@dataclass(frozen=True)
class AotSources:
    ident: str
    files: dict[str, bytes]
    arena_bytes: int
    values: dict[str, object] = field(default_factory=dict, repr=False)  # what the templates were given


def _io(program: Program, info: ModelInfo, indices: tuple[int, ...]) -> list[dict[str, object]]:
    out = []
    for i in indices:
        t = info.tensors[i]
        scale = f"scale {t.scales[0]:.9g}, zero point {t.zero_points[0]}" if t.scales else "not quantized"
        out.append({"offset": program.offsets[i], "bytes": program.sizes[i], "shape": list(t.shape),
                    "dtype": t.dtype, "ctype": CTYPES[t.dtype], "quantization": scale,
                    "count": program.sizes[i] // ELEMENT_BYTES[t.dtype]})
    return out


def emit_c(name: str, model: bytes, info: ModelInfo) -> AotSources:
    """The model as two C99 files; TargetCheckError (from `lower`) for what the backend lacks."""
    program = lower(model, info)
    ident = c_identifier(name)
    inputs, outputs = _io(program, info, program.inputs), _io(program, info, program.outputs)
    signature = ", ".join([f"const {t['ctype']} *input{i}" for i, t in enumerate(inputs)]
                          + [f"{t['ctype']} *output{i}" for i, t in enumerate(outputs)])
    float_math = any(t.dtype == "float32" for i, t in enumerate(info.tensors) if i in program.sizes)
    values = dict(ident=ident, IDENT=ident.upper(), arena_bytes=program.arena_bytes, inputs=inputs,
                  outputs=outputs, signature=signature, float_io=any(t["dtype"] == "float32" for t in inputs + outputs),
                  float_math=float_math,
                  float_ops=any(info.tensors[i].dtype == "float32" for s in program.steps
                                if s.kernel not in ("quantize_float", "dequantize") for i in (*s.inputs, *s.outputs)),
                  states=list(program.states), state_bytes=sum(s["bytes"] for s in program.states))
    header = render("aot_model.h.j2", guard=f"EDGEQ_{ident.upper()}_MODEL_H_", model_bytes=len(model),
                    sha256=hashlib.sha256(model).hexdigest(), **values)
    source = render("aot_model.c.j2", constants=program.constants, steps=program.steps, offsets=program.offsets,
                    **values)
    return AotSources(ident, {f"{ident}_model.h": header.encode(), f"{ident}_model.c": source.encode()},
                      program.arena_bytes, values)


def aot_readme(sources: AotSources, board: object | None = None) -> bytes:
    """README.md for the two files: how to call them and drop them into a Zephyr, Arduino or
    bare-metal project; `board` (an EmulatedBoardPart) adds what the emulated Cortex-M measured."""
    v = sources.values
    call = ", ".join([f"input{i}" for i in range(len(v["inputs"]))] + [f"output{i}" for i in range(len(v["outputs"]))])
    return render("aot_README.md.j2", call=call, board=board, **v).encode()
