"""The precision explorer's outputs: a table for the terminal (and markdown), and size-vs-error PNG."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.precision.simulate import PrecisionResult
from edgeq.text import markdown_table
from edgeq.text import percent as _pct


SHORT = {"fp16": "FP16", "bf16": "BF16", "fp8_e4m3": "FP8 E4M3", "fp8_e5m2": "FP8 E5M2",
         "int8_sym_tensor": "INT8 sym/tensor", "int8_sym_channel": "INT8 sym/channel",
         "int8_asym_tensor": "INT8 asym/tensor", "int8_asym_channel": "INT8 asym/channel",
         "int4_sym_channel": "INT4 sym/channel", "fp16_act": "FP16 weights+act", "bf16_act": "BF16 weights+act"}


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}"


def format_rows(result: PrecisionResult) -> list[list[str]]:
    rows = []
    for f in result.formats:
        runs = "" if f.target_runs is None else ("yes" if f.target_runs else "no")
        rows.append([f.label, f"{f.weight_bytes:,}", _num(f.mean_logit_diff), _num(f.max_logit_diff),
                     _pct(f.top1_agreement), _pct(f.accuracy), *([runs] if result.target else []),
                     f.note])
    return rows


def _header(result: PrecisionResult) -> list[str]:
    what = _what(result)
    return ["format", "weight bytes", f"mean |Δ {what}|", f"max |Δ {what}|", "top-1 = FP32", "accuracy",
            *([f"runs on {result.target}"] if result.target else []), "note"]


def render_text(result: PrecisionResult) -> str:
    header, rows = _header(result), format_rows(result)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    right = {1, 2, 3, 4, 5}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"{result.model} on {result.samples} samples of {result.data}: {result.parameters:,} parameters "
           f"({result.kernel_parameters:,} in kernels)", "", line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out += [""] + [f"note: {n}" for n in result.notes]
    if result.channel_gains:
        g = result.channel_gains[0]
        out.append(f"per-channel beats per-tensor most in {g.layer}/{g.weight} {list(g.shape)}: INT8 weight MSE "
                   f"{g.per_tensor_mse:.3g} -> {g.per_channel_mse:.3g} ({_gain(g.gain)})")
    if result.dot_products:
        out += ["", "one output element per layer, |error| vs float64 (products in the format, FP32 sums):"]
        for d in result.dot_products:
            errs = ", ".join(f"{k} {v:.2g}" for k, v in d.errors.items())
            out.append(f"  {d.layer:<24} {d.terms:>5} terms  value {d.reference:+.5g}  {errs}")
    if result.target:
        notes = {f.label: f.target_note for f in result.formats if f.target_note}
        out += ["", f"what {result.target} can run:"] + [f"  {k}: {v}" for k, v in notes.items()]
    return "\n".join(out).rstrip() + "\n"


def _what(result: PrecisionResult) -> str:
    return {"logits": "logit", "probabilities": "probability"}.get(result.output_kind, "output")


def _gain(gain: float) -> str:
    if math.isinf(gain):
        return "exact per channel"
    if gain >= 1:
        return f"{gain:.1f}x lower"
    return f"{1 / gain:.1f}x higher"


def render_markdown(result: PrecisionResult) -> str:
    header, rows = _header(result), format_rows(result)
    out = [f"# Precision of {result.model}", "",
           f"{result.samples} samples of {result.data}; {result.parameters:,} parameters, "
           f"{result.kernel_parameters:,} of them in kernels.", "",
           *markdown_table(header, rows)]
    out += [""] + [f"Note: {n}." for n in result.notes] + [""]
    if result.channel_gains:
        out += ["## Per channel vs per tensor (INT8 symmetric weights)", "",
                "| layer | weight | shape | MSE per tensor | MSE per channel | gain |", "|---|---|---|---:|---:|---:|"]
        out += [f"| {g.layer} | {g.weight} | {list(g.shape)} | {g.per_tensor_mse:.3g} | {g.per_channel_mse:.3g} | "
                f"{_gain(g.gain)} |" for g in result.channel_gains]
        out += [""]
    if result.dot_products:
        names = list(result.dot_products[0].errors)
        out += ["## One dot product per layer", "",
                "One output element from the layer's real input (first sample); |error| against float64.", "",
                "| layer | terms | value | " + " | ".join(names) + " |", "|---|---:|---:|" + "---:|" * len(names)]
        out += [f"| {d.layer} | {d.terms} | {d.reference:+.5g} | " + " | ".join(f"{d.errors[n]:.2g}" for n in names)
                + " |" for d in result.dot_products]
        out += [""]
    return "\n".join(out)


def render_png(result: PrecisionResult) -> bytes:
    """Weight size vs mean logit difference, one labelled point per format (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [f for f in result.formats
              if f.mean_logit_diff is not None and math.isfinite(f.mean_logit_diff) and f.name != "fp32"]
    left_out = [SHORT.get(f.name, f.label) for f in result.formats
                if f.mean_logit_diff is not None and not math.isfinite(f.mean_logit_diff)]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    floor = min((f.mean_logit_diff for f in points if f.mean_logit_diff and f.mean_logit_diff > 0), default=1e-6)
    # Points of one size sit in a column: label them left and right in turn so the labels stay apart.
    side: dict[int, int] = {}
    for f in sorted(points, key=lambda f: f.mean_logit_diff):
        y = f.mean_logit_diff if f.mean_logit_diff > 0 else floor / 10
        color = {"int": "tab:blue", "fp8": "tab:orange", "float": "tab:green", "policy": "tab:red"}[
            _kind(f.name)]
        marker = "o" if f.target_runs is None else ("o" if f.target_runs else "x")
        ax.scatter(f.weight_bytes, y, color=color, marker=marker, s=50)
        column = round(math.log10(f.weight_bytes) * 20)
        turn = side[column] = side.get(column, -1) + 1
        left = turn % 2 == 1
        ax.annotate(SHORT.get(f.name, f.label), (f.weight_bytes, y), textcoords="offset points",
                    xytext=(-6 if left else 6, 3), ha="right" if left else "left", fontsize=8)
    fp32 = next((f for f in result.formats if f.name == "fp32"), None)
    if fp32:
        ax.axvline(fp32.weight_bytes, color="grey", linestyle=":", linewidth=1)
        ax.annotate("FP32 size", (fp32.weight_bytes, floor), fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weight bytes")
    ax.set_ylabel(f"mean |Δ {_what(result)}| vs FP32")
    if left_out:
        ax.text(0.01, 0.01, f"not shown (overflow): {', '.join(left_out)}", transform=ax.transAxes, fontsize=7)
    title = f"{result.model}: size vs error per number format"
    if result.target:
        title += f" (x: {result.target} cannot run it)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _kind(name: str) -> str:
    from edgeq.precision.simulate import FORMATS

    return FORMATS[name].kind


def to_json(result: PrecisionResult) -> dict[str, Any]:
    """precision.json's contents (edgeq.precision.simulate.PrecisionReport as JSON)."""
    return result.part().to_dict()


PRECISION_FILES = ("precision.json", "precision.md", "precision.png")


@dataclass(frozen=True)
class PrecisionRun:
    """What `edgeq precision` measured, the precision.json it wrote, and where."""

    result: PrecisionResult
    report: dict[str, Any]
    outdir: Path
    written: list[Path]


def run_precision(model: Path, data: str, *, target: str | None = None, limit: int = 1000,
                  outdir: Path | None = None, overwrite: bool = False, trust_model: bool = False,
                  weights: Path | None = None,
                  on_step: Callable[[str], None] = lambda message: None) -> PrecisionRun:
    """Every number format's cost for `model` (.keras or .h5; or a PyTorch .pt2, or
    package.module:factory with `weights`) on the first `limit` samples of
    `data`, written as precision.json / .md / .png (default folder edgeq-out/<name>-precision)."""
    from edgeq.calibration import load_dataset, validate_for_model
    from edgeq.errors import EdgeqError
    from edgeq.export.atomic import check_output_dir, write_files_atomically
    from edgeq.export.c_arrays import c_identifier
    from edgeq.precision.simulate import simulate
    from edgeq.report import render_json
    from edgeq.targets import load_target

    from edgeq.frontends import frontend_for

    file = frontend_for(model)
    model = Path(model)
    profile = load_target(target) if target else None
    ident = c_identifier(file.default_name)
    out = outdir if outdir is not None else Path("edgeq-out") / f"{ident}-precision"
    check_output_dir(out, list(PRECISION_FILES), overwrite=overwrite)
    file = file.checked(weights=weights, trust_model=trust_model)
    raw = load_dataset(data, default_split="eval")
    loaded = file.load(weights=Path(weights) if weights is not None else None, trust_model=trust_model, data=raw,
                       on_step=on_step)
    layers = loaded.layers()
    if layers is None:
        raise EdgeqError(f"{model}: `edgeq precision` changes a model's weights layer by layer and needs its layers; "
                         f"this {loaded.identity.format} model has none to change",
                         hint="pass the .keras or .h5 file (or the PyTorch module) the model was exported from")
    dataset = validate_for_model(raw, loaded.input_specs, purpose="evaluation")
    n = min(limit, dataset.num_samples)
    inputs, labels = [x[:n] for x in dataset.inputs], None if dataset.labels is None else dataset.labels[:n]
    if layers.api == "torch":
        from edgeq.precision.simulate import simulate_runner
        from edgeq.precision.torch_runner import torch_runner

        result = simulate_runner(torch_runner(layers.model), inputs, labels, model_name=str(model),
                                 data_name=dataset.name, target=profile, on_step=on_step,
                                 notes=["PyTorch model: the data are NCHW, as the module takes them; differences are "
                                        "in the module's outputs"])
    else:
        result = simulate(layers.model, inputs, labels, model_name=model.name, data_name=dataset.name, target=profile,
                          on_step=on_step)
    report = to_json(result)
    files = {"precision.json": render_json(report), "precision.md": render_markdown(result).encode(),
             "precision.png": render_png(result)}
    return PrecisionRun(result, report, out, write_files_atomically(out, files, overwrite=overwrite))
