"""edgeq.report: report.json, report.md and report.png say what the conversion measured."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgeq.checks import Gate
from edgeq.emulator.accuracy import Confirmation
from edgeq.report_types import ConvertReport
from edgeq.report import render_json, render_markdown, render_png
from edgeq.report_meta import sha256_path
from edgeq.text import kib

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> ConvertReport:
    """The bundled example's real report for mcu (a conversion of a few seconds), as its record."""
    from edgeq.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("report")
    result = convert(REPO / "examples" / "digits_cnn.keras", "mcu", ConvertOptions(calibration="digits", outdir=out))
    assert json.loads((out / "report.json").read_bytes()) == json.loads(render_json(result.report))
    return result.report


def test_json_is_sorted_and_refuses_nan(report) -> None:
    text = render_json(report).decode()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # keys sorted at every level
    assert list(json.loads(text)) == sorted(report.to_dict())
    broken = replace(report, sizes=replace(report.sizes, ratio=float("nan")))
    with pytest.raises(ValueError):
        render_json(broken)


def test_markdown_states_the_measured_figures(report) -> None:
    md = render_markdown(report).decode()
    ram, flash = report.emulation.memory.ram, report.emulation.memory.flash
    assert md.startswith("# edgeq report: digits_cnn.keras for mcu\n") and "**Gate: PASSED**" in md
    assert f"smallest that runs **{ram.tflm_arena.smallest:,} B**" in md
    assert f"model {flash.model_bytes:,} B" in md
    assert f"{100 * report.emulation.accuracy.quantized_top1:.2f}%" in md
    checks = md[md.index("## Checks"):md.index("## Reproduce")]
    rows = [line.split(" | ")[0][2:] for line in checks.splitlines()[4:] if line.startswith("| ")]
    assert rows == [c.name for c in report.checks]
    failed = replace(report, gate=Gate(passed=False, failed=["ram"], forced=False))
    assert "**Gate: FAILED — no model files written** (failed: ram)" in render_markdown(failed).decode()


def test_png_is_a_png_and_the_same_every_time(report) -> None:
    first, second = render_png(report), render_png(report)
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and first == second


def test_confirmation_phrases() -> None:
    assert Confirmation("tflm", 100, identical=True).summary() == \
        "LiteRT was bit-exact with TFLM on the first 100 samples"
    differs = Confirmation("tflm", 100, identical=False, differing_samples=3, max_lsb_difference=2).summary()
    assert differs == "LiteRT's kernels on this CPU differed from TFLM by up to 2 LSB on 3 of the first 100 samples"
    assert Confirmation("tflm", 5, identical=False, error="LiteRT failed: x").summary() == "LiteRT failed: x"


def test_sizes_and_hashes_for_people_and_for_reproduction(tmp_path) -> None:
    assert (kib(4403), kib(256 * 1024), kib(1 << 20)) == ("4.3 KiB", "256 KiB", "1 MiB")
    (tmp_path / "a").write_bytes(b"x")
    before = sha256_path(tmp_path)
    (tmp_path / "a").rename(tmp_path / "b")
    assert sha256_path(tmp_path) != before  # a folder's hash covers its file names
    assert sha256_path(tmp_path / "b") == sha256_path(tmp_path / "b")
