"""report.json, report.md and report.png of `convert` and `emulate`, rendered from the typed
reports (edgeq/report_types.py): what was done, with what, to what, so a result can be reproduced.

No timestamps or absolute paths, so the same inputs give the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from edgeq.checks import CheckResult
from edgeq.device.harness_manifest import CortexMSize, HarnessManifest
from edgeq.emulator.emulate import EmulationPart
from edgeq.report_types import ArenaPlanPart, ConvertReport, EmulateReport
from edgeq.text import markdown_table
from edgeq.text import percent as _pct
from edgeq.vocab import Runtime, SourceFormat

Report = ConvertReport | EmulateReport


def render_json(report: Any) -> bytes:
    """A record (or plain JSON data) as report.json: sorted keys, 2-space indent, NaN refused."""
    data = report.to_dict() if hasattr(report, "to_dict") else report
    return (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _b(n: int | None) -> str:
    return "–" if n is None else f"{n:,} B"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [*markdown_table(header, rows), ""]


def render_markdown(report: Report) -> bytes:
    """report.md: the same facts as report.json, as tables a person reads top to bottom."""
    emu, gate, target = report.emulation, report.gate, report.target
    verdict = "PASSED" if gate.passed else ("FAILED — outputs written anyway (--force)" if gate.forced
                                            else "FAILED — no model files written")
    out = [f"# edgeq report: {report.input.model} for {target.name}", "",
           f"**Gate: {verdict}**" + (f" (failed: {', '.join(gate.failed)})" if gate.failed else ""), "",
           f"Target `{target.name}` ({target.description}), runtime {target.runtime}, mode {emu.mode or '?'}.", ""]
    if isinstance(report, ConvertReport):
        out += _source_md(report)
        out += _method_md(report)
        out += _search_md(report)
    out += _accuracy_md(emu, _float_label(report))
    out += _sizes_md(report)
    out += _memory_md(emu, report.arena_plan if isinstance(report, ConvertReport) else None)
    out += _latency_md(emu)
    out += _per_layer_md(emu)
    if isinstance(report, ConvertReport):
        out += _harness_md(report.harness)
    out += ["## Checks", ""]
    out += _table(["check", "result", "details", "what to try"], [_check_row(c) for c in report.checks])
    out += ["## Reproduce", ""]
    inputs = [["model", report.input.model, report.input.sha256]]
    if isinstance(report, ConvertReport) and report.calibration:
        inputs.append(["calibration", report.calibration.name, report.calibration.sha256])
    if emu.data:
        inputs.append(["evaluation", emu.data.name, emu.data.sha256])
    out += _table(["input", "name", "sha256"], inputs)
    out += _table(["package", "version"], [[k, v] for k, v in report.versions.items()])
    return ("\n".join(out).rstrip() + "\n").encode()


def _source_md(report: ConvertReport) -> list[str]:
    """Where a PyTorch or ONNX model's data layout and translation show: what firmware must feed."""
    source, out = report.input, []
    if source.input_layout:
        out.append(f"Device input layout: {source.input_layout} (feed the same bytes the model takes).")
    if source.converted_by:
        out.append(f"Translated to TensorFlow by {source.converted_by}.")
    return out + [""] if out else []


def _search_md(report: ConvertReport) -> list[str]:
    search = report.search
    if search is None:
        return []
    rows = [[("**" + c.label + "** (written)") if c.chosen else c.label, _b(c.ram_bytes), _b(c.flash_bytes),
             "-" if c.latency_ms is None else f"{c.latency_ms:.3f}", "-" if c.quality is None else f"{c.quality:.3f}",
             "pass" if c.passed else "fails " + ", ".join(c.failed_checks)] for c in search.candidates]
    out = ["## Recipe search", "",
           f"Searched: {search.space}; objective: {search.objective}; quality: {search.quality_metric}. "
           f"{search.tried} candidates over {search.layers} layers; stopped because {search.stopped_because}.", ""]
    out += _table(["recipe", "RAM", "flash", "latency (ms, estimated)", "quality", "checks"], rows)
    for what, layers in (("per-tensor weights", report.recipe.per_tensor_layers),
                         ("int16 activations", report.recipe.int16_layers)):
        if layers:
            out += [f"Layers with {what} in the recipe written: " + ", ".join(f"`{n}`" for n in layers)
                    + ". Replay it with `edgeq convert ... --recipe report.json`.", ""]
    if report.method == "qat":
        out += ["The recipe written was trained (QAT): replay it with `edgeq convert ... --recipe report.json --qat`.", ""]
    return out


def _check_row(c: CheckResult) -> list[str]:
    return [c.name, "skipped" if c.skipped else ("pass" if c.passed else "**FAIL**"), c.message, c.hint or ""]


def _method_md(report: ConvertReport) -> list[str]:
    out = []
    if report.folded_batchnorm:
        out += [f"BatchNormalization folded into the Dense layer before it (the converter leaves these as "
                f"MUL/ADD): {', '.join(report.folded_batchnorm)}.", ""]
    if report.recurrent:
        out += ["Recurrent layers: " + "; ".join(f"'{r.layer}' ({r.kind}) {r.action}" for r in report.recurrent)
                + ".", ""]
    qat = report.qat
    if qat:
        best = (qat.best_epoch or qat.epochs_run) - 1
        last = {k: v[best] for k, v in qat.history.items() if len(v) > best}
        out += ["## Quantization-aware training", "",
                f"tfmot `quantize_model` (default 8-bit scheme), fine-tuned {qat.epochs_run} epoch(s)"
                + (" (stopped early on validation loss)" if qat.stopped_early else "")
                + f"; loss {qat.loss} ({qat.loss_source})"
                + ("; rebuilt from Keras 3 as tf_keras first" if qat.bridged else "") + ".", ""]
        if last:
            out += _table([f"epoch {best + 1} (kept)", "value"], [[k, f"{v:.4g}"] for k, v in sorted(last.items())])
    rows = report.comparison
    if rows:
        out += ["## PTQ vs QAT", ""]
        out += _table(["method", "top-1", "drop (points)", "SNR vs original float (dB)", ".tflite", "RAM", "est. ms",
                       "gate"],
                      [[m.upper(), _pct(r.quantized_top1), "–" if r.drop_points is None else f"{r.drop_points:+.2f}",
                        "–" if r.snr_db is None else f"{r.snr_db:.1f}", _b(r.tflite_bytes), _b(r.ram_bytes),
                        f"{r.latency_ms:.4g}", "pass" if r.gate_passed else "FAIL"]
                       for m, r in rows.items()])
    return out


def _float_label(report: Any) -> str:
    """What ran the float reference: the framework the model came from."""
    fmt = getattr(getattr(report, "input", None), "format", "")
    return {SourceFormat.TORCH_MODULE: "PyTorch", SourceFormat.TORCH_EXPORT: "PyTorch", SourceFormat.ONNX: "onnxruntime",
            "savedmodel": "TensorFlow"}.get(fmt, "Keras")


def _accuracy_md(emu: EmulationPart, reference: str = "Keras") -> list[str]:
    acc = emu.accuracy
    out = ["## Accuracy", ""]
    if not acc:
        return out + ["Not evaluated: pass evaluation data (`--eval SET`).", ""]
    out += _table(["", f"float ({reference})", f"quantized ({acc.runtime_used})"],
                  [["top-1 accuracy", _pct(acc.float_top1), _pct(acc.quantized_top1)]])
    facts = [f"{acc.samples} samples of `{emu.data.name if emu.data else '?'}`."]
    if acc.drop_points is not None:
        facts.append(f"Drop: {acc.drop_points:+.2f} points.")
    if acc.top1_agreement is not None:
        facts.append(f"Top-1 agreement with the float model: {_pct(acc.top1_agreement)}.")
    conf = acc.confirmation
    if conf:
        facts.append(f"{conf.summary()}; the full set ran in {'LiteRT' if acc.runtime_used == 'litert' else 'TFLM'}.")
    if acc.note and not (conf and acc.runtime_used == Runtime.TFLM):  # TFLM's note restates the line above
        facts.append(acc.note)
    out += [" ".join(facts), ""]
    if acc.errors:
        out += _table(["output", "mean abs error", "max abs error", "SNR (dB)", "cosine"],
                      [[i, f"{e.mean_abs:.4g}", f"{e.max_abs:.4g}", f"{e.snr_db:.1f}", f"{e.cosine:.5f}"]
                       for i, e in enumerate(acc.errors)])
    return out


def _sizes_md(report: Report) -> list[str]:
    s = report.sizes
    rows = []
    if s.float32_tflite_bytes:
        rows.append(["float32 .tflite", _b(s.float32_tflite_bytes)])
    rows.append(["quantized .tflite", _b(s.quantized_tflite_bytes)])
    if s.ratio:
        rows.append(["ratio", f"{s.ratio:.2f}x smaller"])
    rows.append(["parameter bytes", _b(s.parameter_bytes)])
    return ["## Sizes", "", *_table(["", "bytes"], rows)]


def _arena_plan_md(plan: ArenaPlanPart) -> str:
    tried = (f"edgeq's plan places the activations in {plan.planned_head_bytes:,} B, TFLM's own planner in "
             f"{plan.tflm_head_bytes:,} B; none can use less than {plan.lower_bound_bytes:,} B, the most alive at once")
    if plan.kept:
        return (f"Arena plan: {tried}. The model carries edgeq's plan (TFLM's OfflineMemoryAllocation metadata, "
                f"{plan.extra_flash_bytes:,} B of flash): the smallest arena went from {plan.arena_bytes:,} B "
                f"to {plan.planned_arena_bytes:,} B.")
    why = ("the smallest arena would not shrink by more than the plan's flash is worth on this target"
           if plan.arena_bytes is not None else "the saving is smaller than the plan's flash is worth on this target"
           if plan.planned_head_bytes < plan.tflm_head_bytes else "it is no better")
    return (f"Arena plan: {tried}. TFLM plans the arena itself: {why} (the plan would take "
            f"{plan.extra_flash_bytes:,} B of flash).")


def _memory_md(emu: EmulationPart, plan: ArenaPlanPart | None = None) -> list[str]:
    f, r = emu.memory.flash, emu.memory.ram
    rows = [["flash", f"model {_b(f.model_bytes)} + runtime {_b(f.runtime_bytes)}", _b(f.total_bytes),
             _b(f.budget_bytes), _share(f.total_bytes, f.budget_bytes)]]
    need = "not measured" if r.needed_bytes is None else f"{r.kind} {_b(r.needed_bytes)}"
    rows.append(["RAM", f"{need} + margin {_b(r.margin_bytes)} + reserved {_b(r.reserved_bytes)}",
                 _b(r.total_bytes), _b(r.budget_bytes), _share(r.total_bytes, r.budget_bytes)])
    out = ["## Memory", "", *_table(["", "made of", "total", "budget", "used"], rows)]
    arena = r.tflm_arena
    if arena and r.kind == "static arena":
        out += [f"The c runtime's activations sit in one static arena of {r.needed_bytes or 0:,} B that edgeq "
                f"planned at generation time (`<NAME>_ARENA_BYTES`). For comparison, TFLite Micro would need an "
                f"arena of {arena.smallest:,} B for the same model; the emulator runs the model in TFLM, whose "
                "outputs the C reproduces byte for byte.", ""]
    elif arena:
        out += [f"TFLite Micro arena: smallest that runs **{arena.smallest:,} B** (search of {arena.trials} "
                f"trials, each in a child process); the recording allocator reported {arena.recorded_total:,} B "
                f"(head {arena.recorded_head:,} B planned activations, tail {arena.recorded_tail:,} B "
                f"persistent). Measured in TFLM's host build (reference kernels, 64-bit pointers): on the device, "
                f"optimized kernels (CMSIS-NN) may ask for scratch buffers and pointers are smaller, which the "
                f"target's margin is for. The C header declares `k_<name>_tensor_arena_size` = "
                f"{r.firmware_arena_bytes:,} B (smallest + margin).", ""]
    if plan:
        out += [_arena_plan_md(plan), ""]
    act = r.litert_activations
    if act:
        out += [f"LiteRT peak activations: {act.peak_bytes:,} B at op #{act.peak_op_index} "
                f"({act.peak_op_name}); without reuse all activations would take "
                f"{act.total_activation_bytes:,} B.", ""]
    if r.note:
        out += [f"Note: {r.note}", ""]
    return out


def _share(used: int, budget: int | None) -> str:
    return "–" if not budget else f"{100 * used / budget:.1f}%"


def _latency_md(emu: EmulationPart) -> list[str]:
    lat = emu.latency
    out = ["## Latency", "",
           f"Estimated **{lat.total_ms:.4g} ms** per inference on the device at {lat.clock_mhz:g} MHz "
           f"({lat.total_macs:,} MACs; cycles per MAC from the target profile)."
           + (f" **Caution:** {lat.note}." if lat.note else ""), ""]
    out += _table(["op kind", "ops", "MACs", "est. ms"],
                  [[k, v.ops, f"{v.macs:,}", f"{v.ms:.4g}"] for k, v in lat.by_kind.items()])
    slow = sorted(lat.ops, key=lambda o: -o.ms)[:5]
    out += _table(["slowest ops", "kind", "MACs", "est. ms"],
                  [[f"#{o.index} {o.op}", o.kind, f"{o.macs:,}", f"{o.ms:.4g}"] for o in slow])
    board = lat.emulated_board
    if board:
        flash = board.text_bytes + board.rodata_bytes + board.data_bytes
        out += [f"Measured on emulated {board.cpu} (QEMU {board.board}, one instruction per virtual nanosecond): "
                f"**{board.instructions_median:,} instructions** per inference (max {board.instructions_max:,}), "
                f"bit-exact with TFLM on {board.bit_exact} of {board.samples} samples. The firmware (the C model, "
                f"edgeq's device loop and protocol, startup) takes {flash:,} B of flash (text {board.text_bytes:,}, "
                f"rodata {board.rodata_bytes:,}, data {board.data_bytes:,})"
                + (f"; its stack reached {board.stack_bytes:,} B." if board.stack_bytes is not None else "."), ""]
    host = emu.host_latency
    if host:
        out += [f"Measured on this host in LiteRT (1 thread): median {host.median_us:.1f} µs, "
                f"p90 {host.p90_us:.1f} µs over {host.runs} runs.", ""]
    return out


def _per_layer_md(emu: EmulationPart) -> list[str]:
    layers, note = emu.per_layer.worst, emu.per_layer.note
    out = ["## Per-layer error", ""]
    if not layers:
        return out + [note or "Not available.", ""]
    out += ["Where quantization loses most, from TFLite's QuantizationDebugger (each layer's int8 output against "
            "its float output for the same input; RMSE/scale near 0.29 is pure rounding noise).", ""]
    out += _table(["layer", "op", "RMSE/scale", "mean abs error", "max abs error"],
                  [[l.layer, l.op, f"{l.rmse_over_scale:.3f}", f"{l.mean_abs_error:.4g}", f"{l.max_abs_error:.4g}"]
                   for l in layers])
    return out + ([note, ""] if note else [])


def _search_png(ax: Any, search: Any) -> None:
    """The candidates of --search: quality against RAM, the passing ones filled, the written one ringed."""
    for c in search.candidates:
        if c.ram_bytes is None or c.quality is None:
            continue
        ax.scatter([c.ram_bytes / 1024], [c.quality], s=60 if c.chosen else 30,
                   color="#1b9e77" if c.passed else "white", edgecolors="#d95f02" if c.chosen else "#555555",
                   linewidths=2 if c.chosen else 1, zorder=3)
        ax.annotate(_shorten(c.label, 22), (c.ram_bytes / 1024, c.quality), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("RAM (KiB)")
    ax.set_ylabel(search.quality_metric.split(" (")[0] + (" (%)" if "top-1" in search.quality_metric else " (dB)"),
                  fontsize=8)
    ax.set_title(f"Recipe search: {search.tried} candidates (filled: pass)")


def render_png(report: Report) -> bytes:
    """report.png: per-layer error, size and accuracy before and after (matplotlib, Agg, no timestamps)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    emu = report.emulation
    search = report.search if isinstance(report, ConvertReport) else None
    fig = Figure(figsize=(16 if search else 12, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 4 if search else 3, width_ratios=[2, 1, 1, 1.5] if search else [2, 1, 1])
    ax_layers, ax_size, ax_acc = axes[:3]
    if search:
        _search_png(axes[3], search)
    layers = emu.per_layer.worst
    if layers:
        names = [_shorten(l.layer) for l in layers][::-1]
        ax_layers.barh(names, [l.rmse_over_scale for l in layers][::-1], color="#d95f02")
        ax_layers.axvline(0.29, color="grey", linestyle="--", linewidth=1, label="rounding noise")
        ax_layers.legend(loc="lower right", fontsize=8)
        ax_layers.tick_params(axis="y", labelsize=7)
    else:
        ax_layers.text(0.5, 0.5, "per-layer error not available", ha="center", va="center")
    ax_layers.set_title("Per-layer error (RMSE / scale), worst first")
    sizes = report.sizes
    bars = [("float32", sizes.float32_tflite_bytes), ("quantized", sizes.quantized_tflite_bytes)]
    bars = [(k, v) for k, v in bars if v]
    ax_size.bar([k for k, _ in bars], [v / 1024 for _, v in bars], color=["#7570b3", "#1b9e77"][-len(bars):])
    ax_size.set_title("Model size (KiB)")
    acc = emu.accuracy
    points = [("float", acc.float_top1 if acc else None), ("quantized", acc.quantized_top1 if acc else None)]
    points = [(k, v) for k, v in points if v is not None]
    if points:
        ax_acc.bar([k for k, _ in points], [100 * v for _, v in points], color=["#7570b3", "#1b9e77"][-len(points):])
        low = min(100 * v for _, v in points)
        ax_acc.set_ylim(max(0, low - 10), 100)
    else:
        ax_acc.text(0.5, 0.5, "no labelled evaluation data", ha="center", va="center")
    ax_acc.set_title("Top-1 accuracy (%)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _shorten(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _harness_md(harness: HarnessManifest | None) -> list[str]:
    """The device-check harness firmware (convert --harness) and its Cortex-M sizes."""
    if not harness:
        return []
    out = ["## Harness firmware (`edgeq device-check`)", "",
           f"{len(harness.files)} files (start with README.md) for model SHA-256 `{harness.model_sha256[:16]}…`, "
           f"frames up to {harness.max_payload:,} bytes.", ""]
    size = harness.cortex_m_size
    if not isinstance(size, CortexMSize):
        return out + [size.note if size else "", ""]
    out += _table(["part (arm-none-eabi-size)", "flash", "RAM"],
                  [[f"model array `{size.model.symbol}` in `{size.model.section}`", f"{size.model.bytes:,} B", "0 B"],
                   ["protocol + device loop + bare-metal port", f"{size.harness.flash:,} B",
                    f"{size.harness.ram:,} B"]])
    return out + [f"{size.compiler}, `{' '.join(size.cpu_flags)}`. {size.note}.", ""]
