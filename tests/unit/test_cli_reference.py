"""docs/cli.md: the command-line reference generated from the click commands (edgeq/cli/reference.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from edgeq.cli import main
from edgeq.cli.reference import render_cli_markdown

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "cli.md"


def _command_paths(group: click.Group, prefix: str = "edgeq") -> list[str]:
    ctx = click.Context(group, info_name=prefix)
    paths = [prefix]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            paths += _command_paths(command, f"{prefix} {name}")
        else:
            paths.append(f"{prefix} {name}")
    return paths


def test_cli_doc_is_up_to_date() -> None:
    assert DOC.is_file(), "run: python scripts/gen_docs.py"
    assert DOC.read_text(encoding="utf-8") == render_cli_markdown(), \
        "docs/cli.md is out of date; run: python scripts/gen_docs.py"


def test_every_command_has_a_section_and_a_contents_row() -> None:
    text = render_cli_markdown()
    paths = _command_paths(main)
    assert {"edgeq convert", "edgeq device-check", "edgeq targets list", "edgeq calibration list"} <= set(paths)
    for path in paths:
        assert f"\n## `{path}`\n" in text, path
        assert f"| [`{path}`](#{path.replace(' ', '-')}) |" in text, path
        assert f"Usage: {path} [OPTIONS]" in text, path


def test_options_carry_their_help_and_the_default_click_shows() -> None:
    lines = render_cli_markdown().splitlines()
    convert = lines[lines.index("## `edgeq convert`"):lines.index("## `edgeq device-check`")]

    def row(spec: str) -> list[str]:
        line = next(line for line in convert if line.startswith(f"| `{spec}` |"))
        return [c.strip() for c in line.strip("|").split(" | ")]

    assert row("-t, --target TEXT")[1:] == [
        "Target profile name (see `edgeq targets list`) or a path to your own .toml.", "`mcu`"]
    assert row("--objective [ram\\|flash\\|latency]")[2] == "`ram`"  # pipes escaped, even in code
    assert row("--workers INTEGER RANGE")[2] == "(the number of cores)"
    assert row("--epochs INTEGER RANGE")[1].endswith("[x>=1]")
    assert row("--qat")[2] == ""  # a flag: click shows no default
    assert row("-o, --output PATH")[1] == "Output folder. Default: edgeq-out/\\<name>-\\<target>."
    assert "  edgeq convert model.keras --target mcu --calibration digits" in convert  # the help, as click prints it


def test_rendering_is_light_and_ignores_the_terminal_width() -> None:
    """No TensorFlow (or torch) imported, and the same text on a 37-column terminal."""
    code = ("import sys; from edgeq.cli.reference import render_cli_markdown; text = render_cli_markdown(); "
            "heavy = [m for m in ('tensorflow', 'torch', 'keras', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy; sys.stdout.write(text)")
    env = {**os.environ, "COLUMNS": "37", "LINES": "10"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render_cli_markdown()
