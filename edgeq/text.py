"""Text for people: percentages, byte counts, and tables in Markdown or aligned plain text.

The one place the reports (report.md, precision.md, device-check's report, supported_ops.md), the
terminal summary and `edgeq inspect` build their tables and numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

DASH = "–"  # what the Markdown reports show for a figure that was not measured


def percent(x: float | None, *, missing: str = DASH) -> str:
    """A fraction as a percentage with two decimals: 0.985 -> "98.50%"."""
    return missing if x is None else f"{100 * x:.2f}%"


def kib(n: int | float) -> str:
    """Bytes for people: 4.3 KiB, 256 KiB, 1 MiB."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):,.4g} MiB"
    return f"{n / 1024:,.4g} KiB"


def escape_pipes(text: Any) -> str:
    """A Markdown table cell: its pipes escaped."""
    return str(text).replace("|", "\\|")


def one_line_cell(text: Any) -> str:
    """A Markdown table cell on one line: whitespace runs collapsed, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, align: Sequence[str] | None = None,
                   cell: Callable[[Any], str] = escape_pipes, header_cell: Callable[[Any], str] = str) -> list[str]:
    """The lines of a Markdown table. Without `align`, the separator is compact (`|---|---|`); with
    it, each column's marker (`---`, `:---:`, `---:`) is spaced like the cells."""
    head = "| " + " | ".join(header_cell(h) for h in header) + " |"
    rule = ("|" + "|".join("---" for _ in header) + "|") if align is None else "| " + " | ".join(align) + " |"
    return [head, rule, *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns, two spaces apart, for the terminal."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
