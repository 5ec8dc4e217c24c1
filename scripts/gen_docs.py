#!/usr/bin/env python3
"""Generate docs/supported_ops.md from the target profiles (edgeq/data/targets/*.toml) and their op sets.

Run after changing a profile or regenerating the op sets:
    .venv/bin/python scripts/gen_docs.py            # write the file
    .venv/bin/python scripts/gen_docs.py --check    # exit 1 if it is out of date (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeq.errors import EdgeqError  # noqa: E402
from edgeq.opsdoc import render_supported_ops_markdown  # noqa: E402
from edgeq.targets import load_all  # noqa: E402

DOC = ROOT / "docs" / "supported_ops.md"


def render() -> str:
    return render_supported_ops_markdown(load_all(ROOT / "edgeq" / "data" / "targets"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"do not write; exit 1 if {DOC.relative_to(ROOT)} is out of date")
    args = parser.parse_args(argv)
    try:
        text = render()
    except EdgeqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rel = DOC.relative_to(ROOT)
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.is_file() else None
        if current != text:
            print(f"{rel} is out of date; run: python scripts/gen_docs.py", file=sys.stderr)
            return 1
        print(f"{rel} is up to date")
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(DOC)
    print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
