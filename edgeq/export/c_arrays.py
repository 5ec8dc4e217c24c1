"""C/C++ sources for TensorFlow Lite Micro firmware: model data and an op resolver.

Follows TFLM's own convention (`alignas(16) const unsigned char g_<name>_model_data[]` in a
.cc, `extern` declarations and a size constant in the .h). Identifiers are derived from a
sanitised name only; no raw file name ever reaches the generated code, so a model called
`*/ #include <evil>` cannot inject anything.
"""

from __future__ import annotations

import hashlib
import keyword
import re
import unicodedata
from dataclasses import dataclass

from edgeq.errors import TargetCheckError
from edgeq.templating import render
from edgeq.tflite.tflm_ops import resolver_method

BYTES_PER_LINE = 12
_HEX = [f"0x{b:02x}," for b in range(256)]
# Every C (C23) and C++ (C++23) keyword and alternative token that is all lowercase (identifiers
# are lowercased), plus Python's: the identifier alone must never be a reserved word.
_C_KEYWORDS = {
    "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break", "case",
    "catch", "char", "char8_t", "char16_t", "char32_t", "class", "co_await", "co_return", "co_yield",
    "compl", "concept", "const", "const_cast", "consteval", "constexpr", "constinit", "continue",
    "decltype", "default", "delete", "do", "double", "dynamic_cast", "else", "enum", "explicit", "export",
    "extern", "false", "float", "for", "friend", "goto", "if", "inline", "int", "long", "mutable",
    "namespace", "new", "noexcept", "not", "not_eq", "nullptr", "operator", "or", "or_eq", "private",
    "protected", "public", "register", "reinterpret_cast", "requires", "restrict", "return", "short",
    "signed", "sizeof", "static", "static_assert", "static_cast", "struct", "switch", "template", "this",
    "thread_local", "throw", "true", "try", "typedef", "typeid", "typename", "typeof", "typeof_unqual",
    "union", "unsigned", "using", "virtual", "void", "volatile", "wchar_t", "while", "xor", "xor_eq",
} | set(keyword.kwlist)


def c_identifier(name: str) -> str:
    """A lowercase C identifier from any name: 'my-model 2' -> 'my_model_2', '3d' -> 'model_3d'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ident = re.sub(r"[^0-9a-zA-Z]+", "_", ascii_name).strip("_").lower()
    if not ident:
        return "model"
    if ident[0].isdigit() or ident in _C_KEYWORDS:
        ident = f"model_{ident}"
    return ident[:64].rstrip("_")


@dataclass(frozen=True)
class CSources:
    name: str
    files: dict[str, bytes]  # file name -> contents


@dataclass(frozen=True)
class ArenaSize:
    """The tensor arena the firmware declares: TFLM's measured smallest plus the target's margin."""

    measured: int
    margin: int

    @property
    def total(self) -> int:
        return self.measured + self.margin


def _has_plan(model: bytes) -> bool:
    from edgeq.tflite.arena_plan import read_plan

    try:
        return read_plan(model) is not None
    except Exception:  # noqa: BLE001 - a file the checked reader accepted; no plan is the safe answer
        return False


def _io_lines(model: bytes, layout: str | None) -> list[str]:
    """One comment line per model input and output: dtype, shape (with the layout of 4-D ones),
    scale and zero point, so that firmware feeds the right bytes. None for bytes that are no model."""
    from edgeq.tflite.reader import read_tflite

    try:
        info = read_tflite(model)
    except Exception:  # noqa: BLE001 - the sources carry any bytes; a non-model has no I/O to describe
        return []
    lines = []
    for kind, tensors in (("input", info.input_tensors), ("output", info.output_tensors)):
        for k, t in enumerate(tensors):
            shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
            where = f" ({layout})" if layout and len(t.shape) == 4 and kind == "input" else ""
            quant = f", scale {t.scales[0]:.9g}, zero point {t.zero_points[0]}" if t.scales else ""
            lines.append(f"{kind} {k}: {t.dtype} {shape}{where}{quant}")
    return lines


def model_data_sources(name: str, model: bytes, *, alignment: int = 16,
                       arena: ArenaSize | None = None, layout: str | None = None) -> dict[str, bytes]:
    """`<name>_model_data.h` and `.cc` holding the model bytes in flash (const), and the arena size.
    `layout`: how a 4-D input is ordered (a PyTorch model's NCHW; None where the model file says it
    itself, as Keras' data_format does), said in the header next to each input's shape."""
    ident = c_identifier(name)
    array = f"g_{ident}_model_data"
    guard = f"EDGEQ_{ident.upper()}_MODEL_DATA_H_"
    values = dict(ident=ident, array=array, size=len(model), sha256=hashlib.sha256(model).hexdigest(),
                  alignment=max(16, alignment))
    header = render("model_data.h.j2", guard=guard, arena=arena, planned=arena is not None and _has_plan(model),
                    io=_io_lines(model, layout), **values)
    hex_lines = "\n".join("    " + " ".join(_HEX[b] for b in model[i:i + BYTES_PER_LINE])
                           for i in range(0, len(model), BYTES_PER_LINE))
    source = render("model_data.cc.j2", hex_lines=hex_lines, **values)
    return {f"{ident}_model_data.h": header.encode(), f"{ident}_model_data.cc": source.encode()}


def op_resolver_source(name: str, op_names: list[str] | tuple[str, ...]) -> dict[str, bytes]:
    """`<name>_op_resolver.h`: a MicroMutableOpResolver<N> with exactly the model's ops."""
    ident = c_identifier(name)
    ops = sorted(set(op_names))
    missing = [op for op in ops if resolver_method(op) is None]
    if missing:
        raise TargetCheckError(
            f"model '{name}' uses op(s) with no TensorFlow Lite Micro kernel: {', '.join(missing)}",
            hint="change the model to avoid them, or target a LiteRT device (e.g. --target iot)",
        )
    text = render("op_resolver.h.j2", ident=ident, guard=f"EDGEQ_{ident.upper()}_OP_RESOLVER_H_",
                  ops=[(op, resolver_method(op)) for op in ops])
    return {f"{ident}_op_resolver.h": text.encode()}


def tflm_sources(name: str, model: bytes, op_names: list[str] | tuple[str, ...], *, alignment: int = 16,
                 arena: ArenaSize | None = None, layout: str | None = None) -> CSources:
    files = {**model_data_sources(name, model, alignment=alignment, arena=arena, layout=layout),
             **op_resolver_source(name, op_names)}
    return CSources(c_identifier(name), files)
