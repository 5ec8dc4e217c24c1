"""`<name>_model.c` and `<name>_model.h` from a lowered Program (edgeq/templates/aot_*.j2)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from edgeq.aot.lower import Program, lower
from edgeq.export.c_arrays import c_identifier
from edgeq.templating import render
from edgeq.tflite.reader import ModelInfo


@dataclass(frozen=True)
class AotSources:
    ident: str
    files: dict[str, bytes]
    arena_bytes: int


def _io(program: Program, info: ModelInfo, indices: tuple[int, ...]) -> list[dict[str, object]]:
    out = []
    for i in indices:
        t = info.tensors[i]
        out.append({"offset": program.offsets[i], "bytes": program.sizes[i], "shape": list(t.shape),
                    "scale": f"{t.scales[0]:.9g}", "zero_point": t.zero_points[0]})
    return out


def emit_c(name: str, model: bytes, info: ModelInfo) -> AotSources:
    """The model as two C99 files; TargetCheckError (from `lower`) for what the backend lacks."""
    program = lower(model, info)
    ident = c_identifier(name)
    inputs, outputs = _io(program, info, program.inputs), _io(program, info, program.outputs)
    signature = ", ".join([f"const int8_t *input{i}" for i in range(len(inputs))]
                          + [f"int8_t *output{i}" for i in range(len(outputs))])
    values = dict(ident=ident, IDENT=ident.upper(), arena_bytes=program.arena_bytes, inputs=inputs,
                  outputs=outputs, signature=signature)
    header = render("aot_model.h.j2", guard=f"EDGEQ_{ident.upper()}_MODEL_H_", model_bytes=len(model),
                    sha256=hashlib.sha256(model).hexdigest(), **values)
    source = render("aot_model.c.j2", constants=program.constants, steps=program.steps, offsets=program.offsets,
                    **values)
    return AotSources(ident, {f"{ident}_model.h": header.encode(), f"{ident}_model.c": source.encode()},
                      program.arena_bytes)
