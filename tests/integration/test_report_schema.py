"""docs/report.schema.json: generated from the report types, current, and true of real reports.

The reports checked here are real: the bundled example converted (PTQ for mcu and for phone),
emulated, and run on the simulated board with device-check. A field added to a report without
its type, or a type changed without regenerating the schema, fails here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from edgeq.records import Record, jsonable, json_schema, key, optional
from edgeq.report_schema import report_schema
from edgeq.report_meta import SCHEMA_VERSION
from edgeq.report_types import ConvertReport, EmulateReport

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "docs" / "report.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def test_schema_file_is_current() -> None:
    assert SCHEMA_FILE.is_file(), "run: python scripts/gen_docs.py"
    assert json.loads(SCHEMA_FILE.read_text(encoding="utf-8")) == report_schema(), \
        "docs/report.schema.json is out of date; run: python scripts/gen_docs.py"


def test_schema_is_a_valid_draft_2020_12_schema(schema: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert f"schema version {SCHEMA_VERSION}" in schema["title"]
    for root in ("ConvertReport", "EmulateReport", "DeviceReport", "PrecisionReport"):
        assert schema["$defs"][root]["properties"]["schema_version"] == {"enum": [SCHEMA_VERSION]}


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def test_real_convert_reports_match(schema: dict, mcu_report: dict, phone_report: dict) -> None:
    for report in (mcu_report, phone_report):
        errors = sorted(_validator(schema).iter_errors(report), key=str)
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def test_real_emulate_device_and_precision_reports_match(schema: dict, emulate_report: dict, device_report: dict,
                                                         tmp_path) -> None:
    from edgeq.precision.report import run_precision

    precision = run_precision(REPO / "examples" / "digits_cnn.keras", "digits", target="mcu", limit=64,
                              outdir=tmp_path / "precision")
    written = json.loads((tmp_path / "precision" / "precision.json").read_text())
    assert written == precision.report and written["formats"][0]["name"] == "fp32"
    for report in (emulate_report, device_report, written):
        errors = sorted(_validator(schema).iter_errors(report), key=str)
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def test_schema_rejects_what_no_report_holds(schema: dict, mcu_report: dict) -> None:
    validator = _validator(schema)
    extra = json.loads(json.dumps(mcu_report))
    extra["emulation"]["memory"]["ram"]["surprise"] = 1
    assert not validator.is_valid(extra)  # records are closed: an unknown key is a schema change
    missing = json.loads(json.dumps(mcu_report))
    del missing["gate"]["passed"]
    assert not validator.is_valid(missing)
    wrong = json.loads(json.dumps(mcu_report))
    wrong["emulation"]["runtime"] = "tensorrt"
    assert not validator.is_valid(wrong)
    newer = json.loads(json.dumps(mcu_report))
    newer["schema_version"] = SCHEMA_VERSION + 1
    assert not validator.is_valid(newer)


def test_the_typed_report_is_what_report_json_holds(mcu_result, mcu_report: dict) -> None:
    report = mcu_result.report
    assert isinstance(report, ConvertReport)
    assert report.to_dict() == mcu_report
    assert report.emulation.memory.ram.needed_bytes == mcu_report["emulation"]["memory"]["ram"]["needed_bytes"]
    assert report.gate.passed is mcu_report["gate"]["passed"]


@dataclass(frozen=True)
class Inner(Record):
    """An inner record."""

    n: int


@dataclass(frozen=True)
class Outer(Record):
    kind: str = key("class")
    items: tuple[Inner, ...] = ()
    maybe: float | None = optional()
    table: dict[str, list[int]] | None = None


def test_records_serialise_and_describe_themselves() -> None:
    value = Outer("x", (Inner(1), Inner(2)), None, {"a": [1]})
    assert value.to_dict() == {"class": "x", "items": [{"n": 1}, {"n": 2}], "table": {"a": [1]}}
    assert jsonable(Outer("y", maybe=0.5))["maybe"] == 0.5
    schema = json_schema({"outer": Outer}, title="t", description="d", schema_id="x")
    outer = schema["$defs"]["Outer"]
    assert outer["required"] == ["class", "items", "table"]  # `maybe` may be left out
    assert outer["properties"]["items"] == {"type": "array", "items": {"$ref": "#/$defs/Inner"}}
    assert schema["$defs"]["Inner"]["description"] == "An inner record."
    jsonschema.validate(value.to_dict(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"class": "x", "items": [{"n": "one"}], "table": None}, schema)


# -- real reports ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mcu_result(tmp_path_factory):
    from edgeq.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("schema") / "mcu"
    return convert(REPO / "examples" / "digits_cnn.keras", "mcu",
                   ConvertOptions(calibration="digits", outdir=out, per_layer=False))


@pytest.fixture(scope="module")
def mcu_report(mcu_result) -> dict:
    return json.loads((mcu_result.outdir / "report.json").read_text())


@pytest.fixture(scope="module")
def phone_report(tmp_path_factory) -> dict:
    from edgeq.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("schema") / "phone"
    convert(REPO / "examples" / "digits_cnn.keras", "phone",
            ConvertOptions(calibration="digits", outdir=out, per_layer=False))
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def emulate_report(mcu_result, tmp_path_factory) -> dict:
    from edgeq.pipeline import emulate_file

    out = tmp_path_factory.mktemp("schema") / "emulate"
    emulate_file(mcu_result.outdir / "digits_cnn.tflite", "mcu", data="digits",
                 reference=REPO / "examples" / "digits_cnn.keras", report_dir=out)
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["reference"]["model"] == "digits_cnn.keras" and report["emulation"]["host_latency"]
    return report


@pytest.fixture(scope="module")
def device_report(mcu_result, tmp_path_factory) -> dict:
    """device-check against `edgeq device-sim` (another process, a pseudo-terminal), one reply dropped."""
    from edgeq.device.check import device_check

    model = mcu_result.outdir / "digits_cnn.tflite"
    sim = subprocess.Popen([sys.executable, "-m", "edgeq", "device-sim", str(model), "--fault", "drop@2"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None
        port = sim.stdout.readline().strip()
        assert port.startswith("/dev/"), port
        out = tmp_path_factory.mktemp("schema") / "device"
        result = device_check(port, model, "digits", limit=8, output_dir=out, timeout=1.0)
    finally:
        sim.send_signal(signal.SIGINT)
        sim.communicate(timeout=30)
    report = json.loads((out / "report.json").read_text())
    assert report == result.report.to_dict() and report["run"]["link"]["resends"] >= 1
    return report


def test_emulate_report_type(emulate_report: dict) -> None:
    assert set(emulate_report) == {f.name for f in EmulateReport.__dataclass_fields__.values()}
