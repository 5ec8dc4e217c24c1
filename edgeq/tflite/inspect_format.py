"""The human-readable text of `edgeq inspect`: what a person checks before flashing a model.

Kept apart from the reader so the parser stays small and the text can change without touching it.
The machine-readable form is `ModelInfo.to_dict()`.
"""

from __future__ import annotations

import textwrap

from edgeq.text import text_table
from edgeq.tflite.reader import ModelInfo, TensorInfo

NAME_WIDTH = 40


def _truncate(name: str, width: int = NAME_WIDTH) -> str:
    """Converter names can be 150 characters of scope path; the end is the informative part."""
    return name if len(name) <= width else "..." + name[-(width - 3):]


def format_shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def format_quantization(tensor: TensorInfo) -> str:
    """'scale=0.003906 zp=-128', 'per-channel x16 (axis 0)' or '-' for float tensors."""
    if not tensor.scales:
        return "-"
    if tensor.is_per_channel:
        return f"per-channel x{len(tensor.scales)} (axis {tensor.quantized_dimension})"
    zero_point = tensor.zero_points[0] if tensor.zero_points else 0
    return f"scale={tensor.scales[0]:.4g} zp={zero_point}"


def _io_lines(title: str, tensors: tuple[TensorInfo, ...]) -> list[str]:
    rows = [(f"#{t.index}", _truncate(t.name), t.dtype, format_shape(t.declared_shape), format_quantization(t))
            for t in tensors]
    if not rows:
        return [f"{title}: none"]
    return [f"{title}:", *text_table(("tensor", "name", "dtype", "shape", "quantization"), rows)]


def format_inspect(info: ModelInfo) -> str:
    """Summary, inputs/outputs, op counts and the tensor table of the main graph, as plain text."""
    params = info.parameter_bytes
    share = f" ({100 * params / info.file_bytes:.0f}% of the file)" if info.file_bytes else ""
    counts = info.op_counts()
    lines = [
        f"{info.source}",
        f"  file size        {info.file_bytes:,} bytes",
        f"  parameters       {params:,} bytes{share}",
        f"  fully integer    {'yes' if info.is_fully_integer else 'no'}",
        f"  subgraphs        {info.subgraph_count}",
        f"  schema version   {info.version}" + (f" ({info.description})" if info.description else ""),
        "",
        *_io_lines("inputs", info.input_tensors),
        "",
        *_io_lines("outputs", info.output_tensors),
        "",
        f"operators: {sum(counts.values())} in {info.subgraph_count} subgraph"
        f"{'s' if info.subgraph_count != 1 else ''}, {len(counts)} distinct",
    ]
    if counts:
        lines += text_table(("op", "count"), [(name, str(n)) for name, n in counts.items()])
    lines += ["", f"tensors (main graph): {len(info.tensors)}"]
    rows = [(str(t.index), _truncate(t.name), t.dtype, format_shape(t.declared_shape),
             f"{t.buffer_bytes:,}" if t.is_constant else "-", format_quantization(t)) for t in info.tensors]
    if rows:
        lines += text_table(("#", "name", "dtype", "shape", "const bytes", "quantization"), rows)
    if info.notes:
        lines += ["", "notes (what TFLite Micro reads otherwise than the file says, and edgeq with it):"]
        for note in info.notes:
            lines += textwrap.wrap(note, width=100, initial_indent="  - ", subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines) + "\n"
