"""Checks of a converted model against its target: the gate before anything is emitted.

One function per rule; its text is the user's message, with by how much and what to try.
Every check sees the same `CheckInput`: the model as read back from its bytes, the target,
the mode, and what the emulator measured (memory, accuracy) when it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edgeq.defaults import DEFAULT_MAX_ACCURACY_DROP
from edgeq.modes import MODES
from edgeq.records import Record
from edgeq.targets import TargetProfile
from edgeq.tflite.reader import FLOAT_DTYPES, ModelInfo
from edgeq.vocab import CheckName, Runtime

if TYPE_CHECKING:
    from edgeq.emulator.accuracy import AccuracyMetrics
    from edgeq.emulator.memory_report import MemoryReport



@dataclass(frozen=True)
class CheckResult(Record):
    """One check of the model against the target: passed or not, the message with the numbers,
    what to try; `skipped` checks had nothing to check (passed, and say why)."""

    name: CheckName
    passed: bool
    message: str
    hint: str = ""
    skipped: bool = False  # nothing to check (e.g. no labels): passed, but says why


@dataclass(frozen=True)
class CheckInput:
    info: ModelInfo
    target: TargetProfile
    mode: str
    input_dtype: str
    output_dtype: str
    memory: MemoryReport | None = None
    accuracy: AccuracyMetrics | None = None
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    fitting_targets: Callable[[int, int, str | None], list[str]] | None = None  # (flash, ram, runtime) -> fits
    model: bytes | None = None  # the .tflite itself: the c runtime's kernel check lowers it
    accuracy_hint: str | None = None  # what to try where the frontend's levers differ from the converter's


def _ok(name: str, message: str) -> CheckResult:
    return CheckResult(name, True, message)


def _skip(name: str, message: str) -> CheckResult:
    return CheckResult(name, True, message, skipped=True)


def check_mode(c: CheckInput) -> CheckResult:
    """The model's quantization mode is one the target runs."""
    allowed = c.target.quantization.modes
    if c.mode not in allowed:
        return CheckResult(
            CheckName.MODE, False,
            f"the model is {c.mode} ({MODES[c.mode].summary}); {c.target.name} runs {', '.join(allowed)}",
            f"convert with --mode {c.target.quantization.default_mode}",
        )
    return _ok(CheckName.MODE, f"{c.mode} is supported by {c.target.name}")


def check_ops(c: CheckInput) -> CheckResult:
    """Every op of the model has a kernel in the target's runtime."""
    missing = [op for op in c.info.all_op_names if op not in c.target.supported_ops]
    if missing:
        named = [f"{op} ({where})" if (where := op_origin(c.info, op)) else op for op in missing]
        return CheckResult(
            CheckName.OPS, False,
            f"{len(missing)} op(s) not supported by {c.target.name} ({c.target.ops.set}): {', '.join(named)}",
            "replace the layers that produce them, or choose a target whose runtime has them",
        )
    return _ok(CheckName.OPS, f"all {len(c.info.all_op_names)} op types supported by {c.target.ops.set}")


def op_origin(info: ModelInfo, op_name: str) -> str:
    """Where the first `op_name` op came from, read from its output tensor's name: the module of a
    PyTorch model (litert-torch names tensors by module path: 'Net/torch.nn.modules.container.
    Sequential_block/torch.nn.modules.activation.GELU_2' is module 'block.2', a GELU), or the layer of
    a Keras one ('model/dense_1/MatMul'); '' when the name says nothing."""
    op = next((o for o in info.ops if o.name == op_name and o.outputs), None)
    if op is None or op.outputs[0] < 0:
        return ""
    name = info.tensors[op.outputs[0]].name.split(";")[0]
    if not name:
        return ""
    parts = name.split("/")
    if len(parts) > 1 and all("." in p for p in parts):  # torch: package.Class_attribute per level
        attrs = [p.rsplit(".", 1)[-1] for p in parts[1:]]
        path = ".".join(a.split("_", 1)[1] for a in attrs if "_" in a)
        kind = attrs[-1].split("_", 1)[0] if attrs else parts[0].rsplit(".", 1)[-1]
        root = parts[0].rsplit(".", 1)[-1]
        return f"from torch module '{path}', a {kind}" if path else f"in {root}.forward"
    if len(parts) > 2:
        return f"from layer '{parts[-2]}'"
    return ""


def _hybrid_ops(info: ModelInfo) -> list[str]:
    """Ops computing in float from int8 constant weights: dynamic-range (hybrid) kernels."""
    found = []
    for op in info.ops:
        ins = [info.tensors[i] for i in op.inputs if i >= 0]
        outs = [info.tensors[i] for i in op.outputs]
        int_weights = any(t.is_constant and t.dtype in ("int8", "int4") for t in ins)
        float_act = any(not t.is_constant and t.dtype in FLOAT_DTYPES for t in ins + outs)
        if int_weights and float_act:
            found.append(f"{op.name} #{op.index}")
    return found


def _float16_ops(info: ModelInfo) -> list[str]:
    """Ops computing from float16 data: the consumers of DEQUANTIZE(float16) and float16 ops."""
    from_f16 = {out for op in info.ops if op.name == "DEQUANTIZE"
                for i in op.inputs if i >= 0 and info.tensors[i].dtype == "float16" for out in op.outputs}
    return [f"{op.name} #{op.index}" for op in info.ops if op.name != "DEQUANTIZE"
            and any(i in from_f16 or info.tensors[i].dtype == "float16" for i in (*op.inputs, *op.outputs) if i >= 0)]


def _short(name: str) -> str:
    return name.split(";")[0][:60]


SOFTMAX_MIN_INPUT_SCALE = 2.0 ** -26
"""TFLM's int8/int16 SOFTMAX turns beta * input scale * 2^26 into a multiplier that must exceed 1,
and aborts the process (a failed TFLITE_CHECK) when it does not."""


def _softmax_scales_too_small(info: ModelInfo) -> list[str]:
    """SOFTMAX ops whose integer input scale TFLM's kernel cannot take (it would abort)."""
    found = []
    for op in info.ops:
        if op.name != "SOFTMAX" or not op.inputs or op.inputs[0] < 0:
            continue
        tensor = info.tensors[op.inputs[0]]
        if tensor.dtype in ("int8", "int16") and tensor.scales and tensor.scales[0] <= SOFTMAX_MIN_INPUT_SCALE:
            found.append(f"SOFTMAX #{op.index} (input scale {tensor.scales[0]:.3g})")
    return found


def _c_kernels(c: CheckInput) -> CheckResult:
    """The c runtime: edgeq/aot lowers every op, with its dtypes and options, to a C kernel."""
    from edgeq.aot.lower import lower
    from edgeq.errors import TargetCheckError

    if c.model is None:
        return _skip(CheckName.KERNELS, "the c runtime's kernels are checked on the model itself")
    try:
        program = lower(c.model, c.info)
    except TargetCheckError as exc:
        return CheckResult(CheckName.KERNELS, False, exc.message, exc.hint)
    return _ok(CheckName.KERNELS, f"a C kernel for each of the {len(program.steps)} ops")


def check_kernels(c: CheckInput) -> CheckResult:
    """TFLite Micro has neither float16 kernels nor hybrid (int8 weights, float compute) ones; the c
    runtime has the int8 kernels of edgeq/aot."""
    if c.target.runtime == Runtime.C:
        return _c_kernels(c)
    if c.target.runtime != Runtime.TFLM:
        return _skip(CheckName.KERNELS, f"{c.target.runtime} has float16 and hybrid kernels")
    problems = []
    if f16 := _float16_ops(c.info):
        problems.append(f"float16 weights feed {', '.join(f16[:6])}{' ...' if len(f16) > 6 else ''}"
                        " (TFLM has no float16 kernels)")
    if hybrid := _hybrid_ops(c.info):
        problems.append(f"hybrid kernels {', '.join(hybrid[:6])}{' ...' if len(hybrid) > 6 else ''}"
                        " (int8 weights with float activations; TFLM has none)")
    if problems:
        return CheckResult(CheckName.KERNELS, False, "; ".join(problems),
                           "convert with --mode int8 and calibration data (full integer)")
    if tiny := _softmax_scales_too_small(c.info):
        return CheckResult(CheckName.KERNELS, False,
                           f"{', '.join(tiny[:3])}: TFLM's softmax kernel needs an input scale above 2^-26 "
                           "and would abort; the logits barely vary on the calibration data",
                           "calibrate with real, varied samples (an untrained model or constant data gives "
                           "such logits), or end the model without Softmax and apply it on the host")
    return _ok(CheckName.KERNELS, "no float16 or hybrid kernels")


def _interior_float_tensors(info: ModelInfo) -> list[str]:
    """Float tensors other than the graph's own inputs and outputs (allowed at the edges)."""
    edges = set(info.inputs) | set(info.outputs)
    return [_short(t.name) for t in info.flowing_tensors if t.dtype in FLOAT_DTYPES and t.index not in edges]


def check_integer_only(c: CheckInput) -> CheckResult:
    """An integer-only target has no float tensor on the path between input and output."""
    integer_target = all(MODES[m].integer_only for m in c.target.quantization.modes)
    if not integer_target and not (c.target.runtime.micro and MODES[c.mode].integer_only):
        return _skip(CheckName.INTEGER_ONLY, f"{c.target.name} also runs float; not required")
    floats = _interior_float_tensors(c.info)
    if floats:
        return CheckResult(
            CheckName.INTEGER_ONLY, False,
            f"{len(floats)} float tensor(s) between input and output of an integer-only target: "
            + ", ".join(floats[:5]) + (" ..." if len(floats) > 5 else ""),
            "some layer has no integer kernel; `edgeq inspect` shows which ops stay float",
        )
    return _ok(CheckName.INTEGER_ONLY, "no float tensors between input and output")


def check_io_dtypes(c: CheckInput) -> CheckResult:
    """Inputs and outputs have the dtypes the target demands in this mode."""
    bad = [
        f"{kind} '{t.name}' is {t.dtype}, expected {want}"
        for kind, tensors, want in (
            ("input", c.info.input_tensors, c.input_dtype),
            ("output", c.info.output_tensors, c.output_dtype),
        )
        for t in tensors
        if t.dtype != want
    ]
    if bad:
        return CheckResult(CheckName.IO_DTYPES, False, "; ".join(bad),
                           f"convert with edgeq for {c.target.name}, which sets the I/O types it needs")
    return _ok(CheckName.IO_DTYPES, f"inputs {c.input_dtype}, outputs {c.output_dtype}")


def _elsewhere(c: CheckInput, flash: int, ram: int) -> str:
    """Bundled targets that would hold the model: same runtime first, else any."""
    if not c.fitting_targets:
        return ""
    fits = c.fitting_targets(flash, ram, c.target.runtime) or c.fitting_targets(flash, ram, None)
    return f"; fits: {', '.join(fits)}" if fits else ""


def check_flash(c: CheckInput) -> CheckResult:
    """Model bytes plus the runtime's code fit in the target's flash."""
    m = c.target.memory
    need = c.info.file_bytes + m.runtime_flash_bytes
    if m.flash_bytes is None:
        return _skip(CheckName.FLASH, f"{need:,} B needed; {c.target.name} has no flash budget")
    if need > m.flash_bytes:
        ram = c.memory.ram_needed if c.memory else 0
        return CheckResult(
            CheckName.FLASH, False,
            f"model {c.info.file_bytes:,} B + runtime {m.runtime_flash_bytes:,} B = {need:,} B "
            f"exceeds flash {m.flash_bytes:,} B by {need - m.flash_bytes:,} B",
            "use a smaller model, int8 instead of a wider mode, or a target with more flash"
            + _elsewhere(c, c.info.file_bytes, ram),
        )
    return _ok(CheckName.FLASH, f"{need:,} B of {m.flash_bytes:,} B flash ({100 * need / m.flash_bytes:.1f}%)")


def check_ram(c: CheckInput) -> CheckResult:
    """Arena (TFLM) or peak activations (LiteRT), plus margin and reserved RAM, fit the budget."""
    mem = c.memory
    if mem is None:
        return _skip(CheckName.RAM, "not measured (no emulation)")
    if mem.ram_needed is None and not mem.attempted:
        return _skip(CheckName.RAM, f"not measured: {mem.note}")
    if mem.ram_needed is None:
        return CheckResult(CheckName.RAM, False, f"could not be measured: {mem.note}",
                           "the arena is measured by running the model in TFLM; fix what stops it from running")
    budget = c.target.memory.ram_bytes
    parts = f"{mem.ram_label} {mem.ram_needed:,} B"
    if mem.margin:
        parts += f" + margin {mem.margin:,} B"
    parts += f" + reserved {mem.reserved:,} B = {mem.ram_total:,} B"
    if budget is None:
        return _skip(CheckName.RAM, f"{parts}; {c.target.name} has no RAM budget")
    if mem.ram_total > budget:
        return CheckResult(
            CheckName.RAM, False, f"{parts} exceeds RAM {budget:,} B by {mem.ram_total - budget:,} B",
            "use a model with smaller activations (fewer filters, more stride), int8 instead of int16x8, "
            "or a target with more RAM" + _elsewhere(c, c.info.file_bytes, mem.ram_needed),
        )
    return _ok(CheckName.RAM, f"{parts} of {budget:,} B RAM ({100 * mem.ram_total / budget:.1f}%)")


def check_accuracy(c: CheckInput) -> CheckResult:
    """Top-1 accuracy on the device runtime is within --max-accuracy-drop of the float model."""
    acc = c.accuracy
    if acc is None:
        return _skip(CheckName.ACCURACY, "not evaluated (no --eval data)")
    if acc.auc_drop_points is not None:
        summary = (f"per-file AUC: float {acc.float_auc:.4f} -> quantized {acc.quantized_auc:.4f} on {acc.auc_files} "
                   f"files ({acc.samples} samples): drop {acc.auc_drop_points:+.2f} points")
        if acc.auc_drop_points > c.max_accuracy_drop:
            return CheckResult(CheckName.ACCURACY, False, f"{summary}, over the limit of {c.max_accuracy_drop:g}",
                               "more or more typical calibration data, per-channel weights (--search keeps the "
                               "layers that matter), or raise --max-accuracy-drop if this is acceptable")
        return _ok(CheckName.ACCURACY, f"{summary} (limit {c.max_accuracy_drop:g})")
    if acc.drop_points is None:
        why = ("no top-1 accuracy (no labels in the data, or the first output is not a vector of class scores)"
               if acc.quantized_top1 is None else "no float reference model")
        return _skip(CheckName.ACCURACY, f"drop not checked: {why}")
    summary = (f"float {100 * acc.float_top1:.2f}% -> quantized {100 * acc.quantized_top1:.2f}% "
               f"on {acc.samples} samples: drop {acc.drop_points:+.2f} points")
    if acc.drop_points > c.max_accuracy_drop:
        return CheckResult(
            CheckName.ACCURACY, False,
            f"{summary}, over the limit of {c.max_accuracy_drop:g} by {acc.drop_points - c.max_accuracy_drop:.2f}",
            c.accuracy_hint or
            "more or more typical calibration data (--calibration-samples), --mode int16x8 where the "
            "target allows it, quantization-aware training, or raise --max-accuracy-drop if this is acceptable",
        )
    return _ok(CheckName.ACCURACY, f"{summary} (limit {c.max_accuracy_drop:g})")


ALL_CHECKS = (check_mode, check_ops, check_kernels, check_integer_only, check_io_dtypes, check_flash,
              check_ram, check_accuracy)


def run_checks(c: CheckInput) -> list[CheckResult]:
    return [check(c) for check in ALL_CHECKS]


@dataclass(frozen=True)
class Gate(Record):
    """The verdict of the checks: passed when none failed; `forced` when outputs were written
    although some failed (--force)."""

    passed: bool
    failed: list[CheckName]
    forced: bool


def gate_summary(checks: list[CheckResult], *, forced: bool = False) -> Gate:
    failed = [c.name for c in checks if not c.passed]
    return Gate(passed=not failed, failed=failed, forced=forced and bool(failed))


def require_tflm_kernels(info: ModelInfo, profile: TargetProfile | None = None) -> None:
    """float16 and hybrid models have no TFLM kernels: say so (exit 3) before trying to run them."""
    from edgeq.errors import TargetCheckError
    from edgeq.targets import load_target
    from edgeq.tflite.facts import infer_mode

    profile = profile or load_target("mcu")
    mode = infer_mode(info)
    result = check_kernels(CheckInput(info, profile, mode, *profile.io_dtypes(mode)))
    if not result.passed:
        raise TargetCheckError(f"{info.source} is a {mode} model: {result.message}", hint=result.hint)
