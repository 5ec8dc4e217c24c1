"""The commands that take a model file: convert, search, emulate, inspect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgeq.cli import main, _progress_factory, _step, _summary
from edgeq.defaults import DEFAULT_MAX_ACCURACY_DROP as DEFAULT_DROP
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD, LENGTH_LIMIT, MIN_PAYLOAD
from edgeq.errors import EdgeqError


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", default="mcu", show_default=True,
              help="Target profile name (see `edgeq targets list`) or a path to your own .toml.")
@click.option("-m", "--mode", default=None,
              help="int8, int16x8, float16, dynamic or float32. Default: the target's default mode.")
@click.option("--search", is_flag=True,
              help="Search recipes and write the cheapest that passes every check: weight granularity layer by "
                   "layer (per channel, or one scale per tensor); if none keeps the accuracy floor, more calibration "
                   "samples, int16 activations for the worst layers (targets that allow int16x8), then QAT (with "
                   "training data). The report tables every candidate measured.")
@click.option("--objective", type=click.Choice(["ram", "flash", "latency"]), default="ram", show_default=True,
              help="--search: what 'cheapest' means (latency: the target's estimate).")
@click.option("--max-snr-loss", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="--search, for models without top-1 accuracy: the dB of SNR (first output, against the float "
                   "model) a recipe may lose against the converter's default.")
@click.option("--min-snr", default=None, type=float, metavar="DB",
              help="--search, for models without top-1 accuracy: an absolute floor instead, the least SNR (dB, first "
                   "output against the float model) a recipe must keep; lets the search go past the converter's "
                   "default (int16 activations, QAT) when that misses it.")
@click.option("--workers", default=None, show_default="the number of cores", type=click.IntRange(min=1),
              help="--search: measure independent candidates in this many local processes (each loads "
                   "TensorFlow once; worth it for models that take longer to convert than that).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="--search: measure candidates as tasks on this Ray cluster (pip install 'edgeq[ray]'); each "
                   "task gets the model, the data and the recipe, no shared file system.")
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path), default=None,
              help="Replay a recorded recipe: the report.json of an earlier convert (its `recipe`), or that object "
                   "alone. The same model, data and versions give the same bytes.")
@click.option("--runtime", type=click.Choice(["tflm", "c"]), default=None,
              help="c: write the model as plain C99 (<name>_model.c/.h, no interpreter, bit-exact with TFLM) "
                   "instead of the TFLM model array and op resolver. Default: the target's runtime.")
@click.option("-c", "--calibration", default=None, metavar="SET",
              help="Representative data: a bundled set (`edgeq calibration list`), NAME:SPLIT, or your .npz/.npy.")
@click.option("--calibration-samples", default=200, show_default=True, type=int,
              help="How many calibration samples the converter sees.")
@click.option("-e", "--eval", "eval_set", default=None, metavar="SET",
              help="Held-out data for the accuracy check. Default: the 'eval' split of a bundled calibration set.")
@click.option("--no-eval", is_flag=True, help="Skip the accuracy check (memory and op checks still run).")
@click.option("--max-accuracy-drop", default=DEFAULT_DROP, show_default=True, type=click.FloatRange(min=0),
              help="Largest top-1 drop (percentage points, float vs quantized) the gate accepts.")
@click.option("--qat", is_flag=True,
              help="Quantization-aware training instead of PTQ, int8 only: tfmot quantize_model for Keras models, "
                   "PT2E prepare_qat_pt2e for a PyTorch nn.Module; fine-tuned on --train.")
@click.option("--train", "train_set", default=None, metavar="SET",
              help="Labelled training data for --qat (and for --search's last resort, QAT). Default: the 'train' split "
                   "of a bundled calibration set.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1),
              help="QAT: most epochs (early stopping on validation loss ends sooner).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="QAT: batch size.")
@click.option("--learning-rate", "--qat-lr", default=1e-4, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="QAT: Adam learning rate (fine-tuning: keep it small).")
@click.option("--compare", is_flag=True, help="Run PTQ and QAT on the same model and data; report both side by "
                                               "side (the outputs are QAT's).")
@click.option("--force", is_flag=True, help="Write the outputs even if a check fails; the report says so.")
@click.option("--harness", is_flag=True, help="Also write the test-harness firmware for `edgeq device-check` "
              "(see `edgeq firmware --help`). TFLM targets only.")
@click.option("--max-payload", default=DEFAULT_MAX_PAYLOAD, show_default=True,
              type=click.IntRange(min=MIN_PAYLOAD, max=LENGTH_LIMIT),
              help="With --harness: the largest protocol frame payload (EDGEQ_MAX_PAYLOAD).")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=None,
              help="Output folder. Default: edgeq-out/<name>-<target>.")
@click.option("--name", default=None, help="Base name of the outputs and C identifiers. Default: the model file name.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (otherwise edgeq refuses).")
@click.option("--weights", type=click.Path(path_type=Path), default=None, metavar="STATE_DICT",
              help="PyTorch: the state_dict (torch.save(model.state_dict(), path)) for MODEL given as "
                   "package.module:factory; read with torch.load(weights_only=True).")
@click.option("--trust-model", is_flag=True,
              help="Allow Lambda layers and unregistered classes (they run code from the file). Only for models you "
                   "wrote or fully trust.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...",
              help="The sample shape (no batch) to convert an input with open dimensions for, e.g. "
                   "--input-shape audio=49,10. Default: the calibration data's shape, which edgeq names.")
# Half of this function is its docstring, which is `edgeq convert --help`.
def convert(model: Path, target: str, mode: str | None, calibration: str | None, calibration_samples: int,
            eval_set: str | None, no_eval: bool, max_accuracy_drop: float, qat: bool, train_set: str | None,
            epochs: int, batch_size: int, learning_rate: float, compare: bool, force: bool, harness: bool,
            max_payload: int, outdir: Path | None, name: str | None, overwrite: bool, trust_model: bool,
            input_shapes: tuple[str, ...], runtime: str | None, search: bool, objective: str, max_snr_loss: float,
            min_snr: float | None, recipe_file: Path | None, workers: int | None, ray_address: str | None,
            weights: Path | None) -> None:
    """Quantize MODEL (.keras, .h5, SavedModel dir; PyTorch: a .pt2 from torch.export.save, or
    package.module:factory with --weights; or .onnx), check it against a target, write deployable
    files. PyTorch and ONNX models keep their NCHW layout on the device: pass NCHW data.

    \b
    Before anything is written, the quantized model runs in the target's runtime (TFLite Micro
    for MCU targets, LiteRT otherwise): accuracy against the float model on held-out data, the
    exact tensor arena, flash and RAM against the budgets, an estimated latency. With --runtime
    c, the C also runs on an emulated Cortex-M4 (QEMU, when installed): instructions per
    inference, stack, and bytes checked against TFLM. If a check fails, edgeq exits with code 3
    and writes only the report.

    \b
    Writes, atomically:
      <name>.tflite                      the quantized model, the standard form LiteRT loads
                                         (TFLM targets: without names; what is flashed drops repeated zero points)
      <name>_names.json                  its tensor and signature names, for inspect and device-check (TFLM)
      <name>_model_data.cc / .h          the model as a C array and k_<name>_tensor_arena_size (TFLM)
      <name>_op_resolver.h               a MicroMutableOpResolver with exactly the model's ops
      <name>_model.c / .h, README.md     with --runtime c (or a c target): the model as plain C99,
                                         its weights, kernels and static arena; no TFLM needed
      report.json / report.md / .png     accuracy, sizes, memory, latency, per-layer error, checks;
                                         report.json also each stage's time and peak memory (timings)
      README.md, edgeq_*.c/.h, ports/    with --harness: firmware for `edgeq device-check`

    \b
    Memory: the model runs on many samples in batches sized so that their activations fit 512 MiB
    (EDGEQ_MEMORY_BUDGET=2G to change it). Keras models over 1 M parameters skip the float32 .tflite
    (only the report's float32 size needed it). On models over 1 MB of parameters the per-layer
    error is an estimate on 16 samples of --eval, and without --eval it is not measured.

    \b
    Examples:
      edgeq convert model.keras --target mcu --calibration digits
      edgeq convert model.h5 --target nrf52840 --calibration my_data.npz --eval my_test.npz -o firmware/model
      edgeq convert saved_model_dir --target phone --mode float16
      edgeq convert model.keras --target mcu --calibration digits --qat --compare
      edgeq convert kws.keras --target mcu --calibration mfcc.npz --input-shape audio=49,10
      edgeq convert model.keras --target mcu --calibration digits --runtime c
      edgeq convert ae.keras --target stm32f072rb --calibration sound.npz --eval sound_test.npz --search
      edgeq convert regressor.keras --target mcu --calibration data.npz --search --min-snr 20
      edgeq convert nets.cnn:build --weights cnn.pt --trust-model --target mcu --calibration data_nchw.npz
      edgeq convert cnn.onnx --target mcu --calibration data_nchw.npz --eval test_nchw.npz

    
    Several inputs: save the data with one array per input, named x_<input name> (or x0, x1, ...
    in the model's input order); edgeq feeds each input its array by name, whatever order the
    converter gives the inputs.
    """
    from edgeq.pipeline import ConvertOptions, GateError, HarnessOptions, QatOptions, SearchOptions
    from edgeq.pipeline import convert as run_convert

    evaluation = None if no_eval else (eval_set or "auto")
    settings = None
    if qat or compare or search:
        from edgeq.quantize.training import TrainSettings

        settings = TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    try:
        options = ConvertOptions(
            mode=mode, calibration=calibration, calibration_samples=calibration_samples, evaluation=evaluation,
            max_accuracy_drop=max_accuracy_drop, force=force, outdir=outdir, name=name, overwrite=overwrite,
            trust_model=trust_model, input_shapes=_parse_shapes(input_shapes),
            qat=QatOptions(train=train_set or "auto", settings=settings, compare=compare) if qat or compare else None,
            harness=HarnessOptions(max_payload=max_payload) if harness else None, runtime=runtime,
            search=SearchOptions(objective, max_snr_loss, min_snr, workers=workers, ray=ray_address,
                                 train=train_set or "auto", train_settings=settings) if search else None,
            recipe_file=recipe_file, weights=weights)
        result = run_convert(model, target, options, on_step=_step, progress=_progress_factory(quiet=False))
    except GateError as exc:
        click.echo(f"\n{model} does not fit {exc.result.target.name}:", err=True)
        _summary(exc.result.report, err=True)
        _search_table(exc.result.report, err=True)
        raise
    method = "QAT" if result.report.method == "qat" else ("PTQ" if result.recipe.mode != "float32" else "")
    click.echo(f"\nconverted {model} for {result.target.name} ({' '.join(filter(None, (result.recipe.mode, method)))}, "
               f"{result.target.runtime})")
    _summary(result.report)
    _comparison(result.report)
    _search_table(result.report)
    _written(result)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", default="mcu", show_default=True,
              help="Target profile name (see `edgeq targets list`) or a path to your own .toml.")
@click.option("-c", "--calibration", required=True, metavar="SET",
              help="Calibration data: a bundled set (`edgeq calibration list`) or your .npz.")
@click.option("-e", "--eval", "eval_set", default=None, metavar="SET",
              help="Held-out data for accuracy. Default: the bundled set's eval split.")
@click.option("--objective", type=click.Choice(["ram", "flash", "latency"]), default="ram", show_default=True,
              help="What 'cheapest' means (latency: the target's estimate).")
@click.option("--train", "train_set", default=None, metavar="SET",
              help="Labelled training data for QAT, the last resort when no post-training recipe keeps the floor. "
                   "Default: the 'train' split of a bundled calibration set.")
@click.option("--max-accuracy-drop", default=DEFAULT_DROP, show_default=True, type=click.FloatRange(min=0),
              help="The floor for classifiers: top-1 points lost against the float model.")
@click.option("--max-snr-loss", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="The floor for other models: dB of SNR lost against the converter's default.")
@click.option("--min-snr", default=None, type=float, metavar="DB",
              help="For other models: an absolute floor instead, the least SNR (dB) a recipe must keep.")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=None,
              help="Output folder. Default: edgeq-out/<name>-<target>.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (otherwise edgeq refuses).")
@click.option("--trust-model", is_flag=True, help="Allow Lambda layers and custom code (runs the model's code).")
@click.option("--workers", default=None, show_default="the number of cores", type=click.IntRange(min=1),
              help="Measure the candidates in this many local processes.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Measure the candidates as tasks on this Ray cluster (pip install 'edgeq[ray]').")
def search(model: Path, target: str, calibration: str, eval_set: str | None, objective: str, train_set: str | None,
           max_accuracy_drop: float, max_snr_loss: float, min_snr: float | None, outdir: Path | None,
           overwrite: bool, trust_model: bool, workers: int | None, ray_address: str | None) -> None:
    """Measure every recipe of the search space for MODEL on a target, and write the cheapest that passes.

    \b
    `convert --search` bisects the space for few candidates; this measures all of it: per-tensor
    weights in the first 0, 1, ..., n layers of the order `--search` uses (most TFLM arena bytes
    saved per unit of weight error first). If none keeps the accuracy floor, it goes on as
    --search does: more calibration samples, int16 activations for the worst layers, QAT. The
    table of every candidate is in the terminal, report.md and report.png; the recipe written is
    in report.json (replay: convert --recipe).

    \b
    Example:
      edgeq search autoencoder.keras --target stm32f072rb --calibration sound.npz --eval sound_test.npz
    """
    from edgeq.pipeline import ConvertOptions, GateError, SearchOptions
    from edgeq.pipeline import convert as run_convert

    options = ConvertOptions(calibration=calibration, evaluation=eval_set or "auto", outdir=outdir,
                             overwrite=overwrite, trust_model=trust_model, max_accuracy_drop=max_accuracy_drop,
                             search=SearchOptions(objective, max_snr_loss, min_snr, exhaustive=True, workers=workers,
                                                  ray=ray_address, train=train_set or "auto"))
    try:
        result = run_convert(model, target, options, on_step=_step, progress=_progress_factory(quiet=False))
    except GateError as exc:
        click.echo(f"\nno recipe of the space fits {exc.result.target.name}:", err=True)
        _search_table(exc.result.report, err=True)
        raise
    click.echo(f"\nsearched {model} for {result.target.name}")
    _search_table(result.report)
    _written(result)


def _search_table(report: Any, err: bool = False) -> None:
    """--search: every candidate measured, the chosen one marked, and why the search stopped."""
    search = report.search
    if search is None:
        return
    click.echo(f"  search    {search.tried} candidates over {search.layers} layers; {search.stopped_because}", err=err)
    click.echo(f"            {'recipe':<56}{'RAM':>10}{'flash':>10}{'ms':>8}{'quality':>10}  checks", err=err)
    for c in search.candidates:
        quality = "-" if c.quality is None else f"{c.quality:.2f}"
        ms = "-" if c.latency_ms is None else f"{c.latency_ms:.2f}"
        mark = ">" if c.chosen else " "
        checks = "pass" if c.passed else "fails " + ", ".join(c.failed_checks)
        click.echo(f"          {mark} {c.label:<56}{c.ram_bytes or 0:>10,}{c.flash_bytes:>10,}{ms:>8}{quality:>10}"
                   f"  {checks}", err=err)
    click.echo(f"            quality: {search.quality_metric}; > marks the recipe written", err=err)


def _written(result: Any) -> None:
    """The files convert wrote, with their sizes; the harness tree as one line."""
    from edgeq.device.harness_manifest import CortexMSize

    click.echo(f"wrote to {result.outdir}/")
    harness = result.report.harness
    own = set(harness.files) - {f"{result.name}_model_data.cc", f"{result.name}_model_data.h",
                                f"{result.name}_op_resolver.h"} if harness else set()
    for path in result.files:
        if path.relative_to(result.outdir).as_posix() not in own:
            click.echo(f"  {path.name:<32} {path.stat().st_size:>10,} B")
    if harness:
        size = harness.cortex_m_size
        flash = (f"; Cortex-M4F: model {size.model.bytes:,} B + harness {size.harness.flash:,} B flash, "
                 f"harness RAM {size.harness.ram:,} B") if isinstance(size, CortexMSize) else ""
        click.echo(f"  + the device-check harness firmware: {len(own)} files, start with README.md{flash}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", default="mcu", show_default=True, help="Target profile name or a path to a .toml.")
@click.option("-d", "--data", default=None, metavar="SET",
              help="Held-out data: a bundled set (its 'eval' split by default), NAME:SPLIT, or your .npz/.npy.")
@click.option("-r", "--reference", type=click.Path(path_type=Path), default=None,
              help="The float Keras model MODEL came from: accuracy drop and output error against it.")
@click.option("--max-accuracy-drop", default=DEFAULT_DROP, show_default=True, type=click.FloatRange(min=0),
              help="Largest top-1 drop (percentage points) that passes.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Also write report.json, report.md and report.png to this folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
@click.option("--trust-model", is_flag=True, help="Allow Lambda layers in the reference model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress output).")
def emulate(model: Path, target: str, data: str | None, reference: Path | None, max_accuracy_drop: float,
            report_dir: Path | None, overwrite: bool, trust_model: bool, as_json: bool) -> None:
    """Check a .tflite against a target in the runtime the device uses, before flashing it.

    \b
    Memory: flash, and the exact TFLite Micro tensor arena (MCU targets; measured by running
    the model, each trial in a child process) or LiteRT's peak activations. Latency: MACs x
    the target's cycle costs, and LiteRT on this host. With --data: accuracy (and, with
    --reference, the drop from the float model, output SNR and cosine similarity).
    Exit code 3 when a check fails.

    \b
    Examples:
      edgeq emulate model.tflite --target mcu
      edgeq emulate model.tflite --target nrf52840 --data digits --reference model.keras --report out/
    """
    from edgeq.pipeline import GateError, emulate_file

    step = (lambda message: None) if as_json else _step
    try:
        result = emulate_file(model, target, data=data, reference=reference, max_accuracy_drop=max_accuracy_drop,
                              report_dir=report_dir, overwrite=overwrite, trust_model=trust_model, on_step=step,
                              progress=_progress_factory(quiet=as_json))
    except GateError as exc:
        _show_emulation(exc.result, as_json, err=True)
        raise
    _show_emulation(result, as_json)


def _comparison(report: Any) -> None:
    rows = report.comparison
    if not rows:
        return
    click.echo("\n  PTQ vs QAT on the same data (the outputs are QAT's):")
    click.echo(f"    {'':<5} {'top-1':>8} {'drop':>7} {'SNR dB*':>7} {'.tflite':>9} {'RAM':>9} {'est. ms':>8}  gate")
    for method, r in rows.items():
        top1 = "-" if r.quantized_top1 is None else f"{100 * r.quantized_top1:.2f}%"
        drop = "-" if r.drop_points is None else f"{r.drop_points:+.2f}"
        snr = "-" if r.snr_db is None else f"{r.snr_db:.1f}"
        ram = "-" if r.ram_bytes is None else f"{r.ram_bytes:,}"
        click.echo(f"    {method.upper():<5} {top1:>8} {drop:>7} {snr:>7} {r.tflite_bytes:>9,} {ram:>9} "
                   f"{r.latency_ms:>8.3g}  {'pass' if r.gate_passed else 'FAIL'}")
    click.echo("    * against the original float model; QAT's fine-tuning moves its weights away from it")


def _show_emulation(result: Any, as_json: bool, err: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(result.report.to_dict(), indent=2, sort_keys=True))
        return
    click.echo(f"\n{result.info.source} on {result.target.name} ({result.emulation.mode}, {result.target.runtime})",
               err=err)
    _summary(result.report, err=err)
    for path in result.files:
        click.echo(f"  wrote {path}")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(file: Path, as_json: bool) -> None:
    """Show what is inside a .tflite file: ops, tensors, quantization, sizes.

    The file is verified before use: a truncated, empty or non-TFLite file is a clear error.
    """
    from edgeq.tflite.inspect_format import format_inspect
    from edgeq.tflite.strip import read_tflite_named

    _, info = read_tflite_named(file)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(format_inspect(info))


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """--input-shape NAME=D1,D2,... (repeatable) as {name: shape}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name.strip() or not shape or min(shape) < 1:
            raise EdgeqError(f"--input-shape {value!r}: expected NAME=D1,D2,... with positive sizes",
                             hint="e.g. --input-shape audio=49,10 (the sample shape, without the batch dimension)")
        shapes[name.strip()] = shape
    return shapes
