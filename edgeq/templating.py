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

from edgeq._version import __version__


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    def load(name: str) -> str:
        return resources.files("edgeq.templates").joinpath(name).read_text(encoding="utf-8")

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["c_rows"] = c_rows
    return env


def c_rows(values: Any, per_line: int = 16) -> str:
    """Integers as the rows of a C initializer: `per_line` a row, indented, comma-separated."""
    items = [str(int(v)) for v in values]
    return ",\n".join("  " + ", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))


def render(name: str, **values: Any) -> str:
    """Template `name` (a file of edgeq/templates/) with `values`; `version` is edgeq's unless given."""
    return _environment().get_template(name).render({"version": __version__, **values})
