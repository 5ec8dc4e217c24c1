"""The gate's rules on small hand-built graphs: each check's verdict, numbers and advice."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgeq.checks import DEFAULT_MAX_ACCURACY_DROP, CheckInput, gate_summary, run_checks
from edgeq.emulator.accuracy import AccuracyMetrics
from edgeq.emulator.memory_report import MemoryReport
from edgeq.tflite.facts import infer_mode
from edgeq.targets import fitting_targets
from edgeq.targets import load_target
from edgeq.tflite.reader import ModelInfo, OpInfo, TensorInfo


def _graph(act: str, weights: str, io: str | None = None, file_bytes: int = 10_000) -> ModelInfo:
    """input -> FULLY_CONNECTED(weights, bias) -> SOFTMAX -> output."""
    io = io or act
    tensors = (
        TensorInfo(0, "input", io, (1, 16), (0.1,), (0,)),
        TensorInfo(1, "weights", weights, (8, 16), buffer_bytes=128),
        TensorInfo(2, "bias", "int32" if weights == "int8" and act != "float32" else "float32", (8,), buffer_bytes=32),
        TensorInfo(3, "dense/MatMul;dense/BiasAdd", act, (1, 8)),
        TensorInfo(4, "output", io, (1, 8)),
    )
    ops = (OpInfo(0, "FULLY_CONNECTED", (0, 1, 2), (3,)), OpInfo(1, "SOFTMAX", (3,), (4,)))
    return ModelInfo("g.tflite", file_bytes, 3, "", 1, tensors, ops, (0,), (4,), ("FULLY_CONNECTED", "SOFTMAX"))


def _input(info: ModelInfo, target: str = "mcu", **kw) -> CheckInput:  # type: ignore[no-untyped-def]
    profile = load_target(target)
    mode = infer_mode(info)
    i, o = profile.io_dtypes(mode)
    return CheckInput(info, profile, mode, i, o, fitting_targets=fitting_targets, **kw)


def _by_name(c: CheckInput) -> dict:  # type: ignore[type-arg]
    return {r.name: r for r in run_checks(c)}


def _memory(needed: int | None, target: str = "mcu", attempted: bool = True) -> MemoryReport:
    m = load_target(target).memory
    return MemoryReport(10_000, m.runtime_flash_bytes, m.flash_bytes, "arena", needed, m.arena_margin_bytes,
                        m.reserved_ram_bytes, m.ram_bytes, attempted=attempted, note="" if attempted else "no TFLM")


def test_modes_are_inferred_from_dtypes():
    assert infer_mode(_graph("int8", "int8")) == "int8"
    assert infer_mode(_graph("int16", "int8")) == "int16x8"
    assert infer_mode(_graph("float32", "int8")) == "dynamic"
    assert infer_mode(_graph("float32", "float16")) == "float16"
    assert infer_mode(_graph("float32", "float32")) == "float32"


def test_full_int8_passes_every_static_check():
    results = _by_name(_input(_graph("int8", "int8")))
    assert all(r.passed for r in results.values()), [r for r in results.values() if not r.passed]
    assert results["accuracy"].skipped and results["ram"].skipped


def test_hybrid_kernels_are_named_for_mcu_but_fine_for_a_phone():
    results = _by_name(_input(_graph("float32", "int8")))
    assert not results["kernels"].passed
    assert "hybrid kernels FULLY_CONNECTED #0" in results["kernels"].message
    assert not results["mode"].passed and "dynamic" in results["mode"].message
    assert not results["integer_only"].passed and "dense/MatMul" in results["integer_only"].message
    phone = _by_name(_input(_graph("float32", "int8"), "phone"))
    assert phone["kernels"].passed and phone["mode"].passed and phone["integer_only"].passed


def test_io_dtypes_follow_the_target():
    results = _by_name(_input(_graph("int8", "int8", io="float32")))
    assert not results["io_dtypes"].passed and "expected int8" in results["io_dtypes"].message
    assert _by_name(_input(_graph("int8", "int8", io="float32"), "iot"))["io_dtypes"].passed


def test_ram_over_budget_says_by_how_much_and_where_it_fits():
    c = _input(_graph("int8", "int8"), memory=_memory(300_000))
    ram = _by_name(c)["ram"]
    budget = c.target.memory.ram_bytes
    total = 300_000 + c.target.memory.arena_margin_bytes + c.target.memory.reserved_ram_bytes
    assert not ram.passed and f"by {total - budget:,} B" in ram.message
    assert "fits: " in ram.hint and "stm32h743" in ram.hint and "mcu" not in ram.hint.split("fits: ")[1].split(", ")
    assert _by_name(replace(c, memory=_memory(3_000)))["ram"].passed
    skipped = _by_name(replace(c, memory=_memory(None, attempted=False)))["ram"]
    assert skipped.passed and skipped.skipped
    failed = _by_name(replace(c, memory=_memory(None)))["ram"]
    assert not failed.passed


def test_flash_over_budget_fails_with_the_excess():
    c = _input(_graph("int8", "int8", file_bytes=1_000_000))
    flash = _by_name(c)["flash"]
    excess = 1_000_000 + c.target.memory.runtime_flash_bytes - c.target.memory.flash_bytes
    assert not flash.passed and f"by {excess:,} B" in flash.message and "stm32h743" in flash.hint


@pytest.mark.parametrize("drop, passes", [(0.0, True), (1.0, True), (1.25, False), (-0.5, True)])
def test_accuracy_drop_limit(drop, passes):
    metrics = AccuracyMetrics(400, 0.98, 0.98 - drop / 100, 0.99, drop, None)
    result = _by_name(_input(_graph("int8", "int8"), accuracy=metrics))["accuracy"]
    assert result.passed is passes
    if not passes:
        assert "over the limit of 1 by 0.25" in result.message and "calibration" in result.hint


def test_an_accuracy_hint_offers_a_pytorch_model_what_its_path_has():
    from edgeq.frontends.torch_frontend import ACCURACY_HINT

    metrics = AccuracyMetrics(400, 0.98, 0.96, 0.99, 2.0, None)
    keras = _by_name(_input(_graph("int8", "int8"), accuracy=metrics))["accuracy"]
    torch = _by_name(_input(_graph("int8", "int8"), accuracy=metrics, accuracy_hint=ACCURACY_HINT))["accuracy"]
    assert "--mode int16x8 where the target allows it" in keras.hint
    assert "--qat --train" in torch.hint and "through an ONNX export" in torch.hint


def test_accuracy_without_labels_is_reported_not_gated():
    metrics = AccuracyMetrics(400, None, None, None, None, None)
    result = _by_name(_input(_graph("int8", "int8"), accuracy=metrics))["accuracy"]
    assert result.passed and result.skipped and "no labels" in result.message


def test_gate_summary_and_cli_default_agree():
    from edgeq.cli import DEFAULT_DROP

    assert DEFAULT_DROP == DEFAULT_MAX_ACCURACY_DROP
    results = run_checks(_input(_graph("float32", "int8")))
    gate = gate_summary(results, forced=True)
    assert not gate.passed and gate.forced and "kernels" in gate.failed
    assert gate_summary(run_checks(_input(_graph("int8", "int8"))), forced=True).forced is False
