"""The commands that explain number formats before a target is chosen: formats, precision."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeq.cli import main, _step
from edgeq.errors import EdgeqError


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("values", nargs=-1, required=True)
@click.option("--bits", "bits", multiple=True, type=click.Choice(["8", "4"]), default=("8",), show_default=True,
              help="Integer widths to show (repeat for both).")
@click.option("--range", "value_range", nargs=2, type=float, default=None, metavar="MIN MAX",
              help="The float range the integer codes cover. Default: the values' own range, with 0.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Use this scale instead of a range (with --zero-point).")
@click.option("--zero-point", type=int, default=None, help="With --scale: the integer that 0.0 maps to.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def formats(values: tuple[str, ...], bits: tuple[str, ...], value_range: tuple[float, float] | None,
            scale: float | None, zero_point: int | None, as_json: bool) -> None:
    """Show how VALUES are stored in FP32, FP16, BF16, FP8 and as INT8/INT4 codes.

    \b
    For each value and float format: the sign, exponent and mantissa bits, the biased exponent,
    the value actually stored and the rounding error, with overflow to Inf and underflow to
    subnormal or zero called out. For integers, the linear quantization code:
      asymmetric  s = (max - min)/(2^k - 1), q = round(x/s) + z, x' = s*(q - z)
      symmetric   s = max|x|/(2^(k-1) - 1), q = round(x/s),     x' = s*q
    Then each format's range (smallest subnormal and normal, largest) and precision (epsilon).

    \b
    Examples:
      edgeq formats 85.125                       # 0 10000101 01010100100000000000000 in FP32
      edgeq formats 65504 65520 1e-8 -2.5 nan
      edgeq formats 0.3 -1.2 --range -2 2 --bits 8 --bits 4
    """
    from edgeq.precision.explain import explain, parse_value, render_text, to_json

    parsed = [parse_value(text) for text in values]
    if scale is None and zero_point is not None:
        raise EdgeqError("--zero-point needs --scale", hint="e.g. --scale 0.05 --zero-point -10")
    if scale is not None and value_range is not None:
        raise EdgeqError("give either --range or --scale, not both",
                         hint="--range MIN MAX derives the scale; --scale S [--zero-point Z] sets it")
    low, high = value_range if value_range else (None, None)
    report = explain(parsed, bits=tuple(sorted({int(b) for b in bits}, reverse=True)), min=low, max=high,
                     scale=scale, zero_point=zero_point)
    if as_json:
        click.echo(json.dumps(to_json(report), indent=2, sort_keys=True, allow_nan=False))
    else:
        click.echo(render_text(report), nl=False)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-d", "--data", required=True, metavar="SET",
              help="Samples to run: a bundled set (its eval split: 'digits') or a .npz/.npy with x (and y).")
@click.option("-t", "--target", default=None, help="Mark which formats this target profile can run.")
@click.option("-n", "--limit", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Use at most the first N samples.")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=None,
              help="Folder for precision.json, precision.md and precision.png. Default: edgeq-out/<name>-precision.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--trust-model", is_flag=True, help="Allow Lambda layers (runs code from the model file); a PyTorch "
              "model always needs it.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="PyTorch: the state_dict for MODEL given as package.module:factory (torch.load(weights_only=True)).")
@click.option("--json", "as_json", is_flag=True, help="Print precision.json instead of the table.")
def precision(model: Path, data: str, target: str | None, limit: int, outdir: Path | None, overwrite: bool,
              trust_model: bool, weights: Path | None, as_json: bool) -> None:
    """What each number format would cost MODEL (.keras or .h5; PyTorch: a .pt2, or
    package.module:factory with --weights, NCHW data) in accuracy, and save in size.

    \b
    The weights are rounded to each format and back, and the float model runs on the data:
      FP16, BF16, FP8 E4M3 / E5M2 (per-tensor scale), INT8 symmetric / asymmetric per tensor /
      per channel, INT4 per channel; and FP16 / BF16 for weights *and* activations.
    For each: the exact weight bytes, mean and max logit difference from FP32, top-1 agreement
    with FP32 and accuracy on the labels; with --target, whether that target can run it.
    Also: per layer, how much per-channel beats per-tensor INT8, and one dot product per layer
    computed in FP32, BF16, FP16 and INT8.

    \b
    Examples:
      edgeq precision examples/digits_cnn.keras --data digits --target mcu
      edgeq precision nets:cnn --weights cnn.pt --trust-model --data eval_nchw.npz
      edgeq formats 85.125 65504 1e-8      # the bits behind the table
    """
    from edgeq.precision.report import render_text, run_precision

    done = run_precision(model, data, target=target, limit=limit, outdir=outdir, overwrite=overwrite,
                         trust_model=trust_model, weights=weights, on_step=(lambda m: None) if as_json else _step)
    if as_json:
        click.echo(json.dumps(done.report, indent=2, sort_keys=True))
        return
    click.echo("")
    click.echo(render_text(done.result), nl=False)
    click.echo(f"\nwrote {', '.join(str(p) for p in done.written)}")
