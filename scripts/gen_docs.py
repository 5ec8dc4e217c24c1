#!/usr/bin/env python3
"""Generate the docs made from code: docs/supported_ops.md from the target profiles
(edgeq/data/targets/*.toml) and their op sets, docs/report.schema.json from the report types
(edgeq/report_types.py), docs/cli.md from the click commands (edgeq/cli/).

Run after changing a profile, regenerating the op sets, changing a report's fields or a command's
options or help:
    .venv/bin/python scripts/gen_docs.py            # write the files
    .venv/bin/python scripts/gen_docs.py --check    # exit 1 if one is out of date (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeq.cli.reference import render_cli_markdown  # noqa: E402
from edgeq.errors import EdgeqError  # noqa: E402
from edgeq.opsdoc import render_supported_ops_markdown  # noqa: E402
from edgeq.targets import load_all  # noqa: E402

DOC = ROOT / "docs" / "supported_ops.md"
SCHEMA = ROOT / "docs" / "report.schema.json"
CLI = ROOT / "docs" / "cli.md"


def render() -> str:
    return render_supported_ops_markdown(load_all(ROOT / "edgeq" / "data" / "targets"))


def render_schema() -> str:
    from edgeq.report_schema import report_schema

    return json.dumps(report_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a generated doc is out of date")
    args = parser.parse_args(argv)
    try:
        docs = {DOC: render(), SCHEMA: render_schema(), CLI: render_cli_markdown()}
    except EdgeqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = 0
    for path, text in docs.items():
        rel = path.relative_to(ROOT)
        if args.check:
            current = path.read_text(encoding="utf-8") if path.is_file() else None
            if current != text:
                print(f"{rel} is out of date; run: python scripts/gen_docs.py", file=sys.stderr)
                stale += 1
            else:
                print(f"{rel} is up to date")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8", newline="\n")
        tmp.replace(path)
        print(f"wrote {rel}")
    return 1 if stale else 0

if __name__ == "__main__":
    raise SystemExit(main())
