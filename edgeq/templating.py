"""The text files edgeq generates (C sources, headers, the harness README) come from Jinja
templates in edgeq/templates/, so that each file reads as what it produces.

Rendering is strict: a value the template names but the caller did not pass is an error, not an
empty string. Blocks take no whitespace of their own (`trim_blocks`, `lstrip_blocks`), files end
as the template does, and nothing is escaped: these are C and Markdown, not HTML.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from edgeq._version import __version__


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    def load(name: str) -> str:
        return resources.files("edgeq.templates").joinpath(name).read_text(encoding="utf-8")

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["c_rows"] = c_rows
    env.filters["c_literal"] = c_literal
    return env


def c_literal(value: Any) -> str:
    """One number as a C99 constant: an integer as written, a float32 as a hexadecimal float (the
    exact bits, no decimal rounding) with an `f` suffix."""
    if isinstance(value, (float, np.floating)):
        x = float(np.float32(value))
        if not np.isfinite(x):
            return "(1.0f / 0.0f)" if x > 0 else "(-1.0f / 0.0f)" if x < 0 else "(0.0f / 0.0f)"
        return f"{x.hex()}f"
    v = int(value)
    return "(-9223372036854775807LL - 1)" if v == -(1 << 63) else f"{v}LL" if not -(1 << 31) <= v < (1 << 31) else str(v)


def c_rows(values: Any, per_line: int = 16) -> str:
    """Numbers as the rows of a C initializer (see `c_literal`): `per_line` a row, indented, comma-separated."""
    items = [c_literal(v) for v in np.asarray(values).reshape(-1)]
    return ",\n".join("  " + ", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))


def render(name: str, **values: Any) -> str:
    """Template `name` (a file of edgeq/templates/) with `values`; `version` is edgeq's unless given."""
    return _environment().get_template(name).render({"version": __version__, **values})
