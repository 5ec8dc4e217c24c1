"""edgeq.vocab: named words that still read, compare and serialize as the plain strings."""

from __future__ import annotations

import json

import pytest

from edgeq.errors import TargetProfileError
from edgeq.targets import load_target
from edgeq.vocab import CheckName, DeviceVerdict, Runtime, Scheme


def test_members_are_their_text_everywhere() -> None:
    assert Runtime.TFLM == "tflm" and f"{Runtime.LITERT}" == "litert" and str(CheckName.IO_DTYPES) == "io_dtypes"
    assert json.dumps({"runtime": Runtime.TFLM, "verdict": DeviceVerdict.PASS}) == '{"runtime": "tflm", "verdict": "pass"}'
    assert {"tflm": 1}[Runtime.TFLM] == 1 and f"{Scheme.SYMMETRIC:>10}" == " symmetric"


def test_a_profile_runtime_is_the_named_member_and_a_bad_one_names_the_choices(tmp_path) -> None:
    assert load_target("mcu").runtime is Runtime.TFLM and load_target("phone").runtime is Runtime.LITERT
    (tmp_path / "odd.toml").write_text('inherits = "mcu"\nruntime = "tvm"\n')
    with pytest.raises(TargetProfileError) as caught:
        load_target(str(tmp_path / "odd.toml"))
    assert "'tvm' is not one of: litert, tflm" in caught.value.message


def test_the_gate_runs_its_checks_in_the_named_order() -> None:
    from test_checks import _graph, _input

    from edgeq.checks import run_checks

    results = run_checks(_input(_graph("int8", "int8")))
    assert [r.name for r in results] == list(CheckName)
    assert all(isinstance(r.name, CheckName) for r in results)
