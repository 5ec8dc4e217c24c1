"""docs/report.schema.json, derived from the report records of every command (scripts/gen_docs.py
writes it; a test fails while the file is stale). It names the records of convert, emulate,
device-check and precision, so it sits above all of them."""

from __future__ import annotations

from typing import Any

from edgeq.records import json_schema
from edgeq.report_meta import SCHEMA_ID, SCHEMA_VERSION


def report_schema() -> dict[str, Any]:
    """docs/report.schema.json: every report.json (and precision.json) edgeq writes is one of these records."""
    from edgeq.device.check import DeviceReport
    from edgeq.precision.simulate import PrecisionReport
    from edgeq.report_types import ConvertReport, EmulateReport

    return json_schema(
        {"convert": ConvertReport, "emulate": EmulateReport, "device-check": DeviceReport,
         "precision": PrecisionReport},
        title=f"edgeq report.json, schema version {SCHEMA_VERSION}",
        description=("The report.json that `edgeq convert`, `edgeq emulate` and `edgeq device-check` write, and "
                     "the precision.json of `edgeq precision`. Generated from the report records "
                     "(edgeq/report_types.py and the parts it names) by scripts/gen_docs.py; do not edit."),
        schema_id=SCHEMA_ID)
