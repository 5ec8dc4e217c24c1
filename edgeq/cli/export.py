"""The commands that write firmware sources for a .tflite made elsewhere: export-c, firmware."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeq.cli import main, _step
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD, LENGTH_LIMIT, MIN_PAYLOAD
from edgeq.text import kib


@main.command("export-c")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Output folder.")
@click.option("--name", default=None, help="Base name of files and C identifiers. Default: the file name.")
@click.option("--alignment", default=16, show_default=True, type=click.IntRange(min=16),
              help="Byte alignment of the model array (CMSIS-NN needs 16).")
@click.option("--arena-margin", default=1024, show_default=True, type=click.IntRange(min=0),
              help="Bytes added to the measured tensor arena in k_<name>_tensor_arena_size.")
@click.option("--runtime", type=click.Choice(["tflm", "c"]), default="tflm", show_default=True,
              help="tflm: the model as a flatbuffer array for TFLite Micro; c: the model as plain C, no interpreter.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def export_c(file: Path, outdir: Path, name: str | None, alignment: int, arena_margin: int, runtime: str,
             overwrite: bool) -> None:
    """Write C sources for a .tflite converted elsewhere.

    \b
    --runtime tflm (default): <name>_model_data.cc/.h (with the exact tensor arena, measured by
    running the model in TFLite Micro) and <name>_op_resolver.h; fails (exit 3) if the model uses
    an op TensorFlow Lite Micro has no kernel for.
    --runtime c: <name>_model.c/.h, the model as C99 with no interpreter and no heap, bit-exact
    with TFLite Micro: call <name>_invoke(inputs..., outputs...). int8 models, int16x8 ones (int16
    activations, int8 weights), float32 ones (for cores with an FPU) and mixes of them, of the ops
    the c runtime has kernels for (the mcu-c column of docs/supported_ops.md; integer models use
    no floating point); any other op fails (exit 3) and names it. A model with state (LSTM, SVDF)
    keeps it between calls; <name>_reset() clears it.
    """
    if runtime == "c":
        from edgeq.pipeline.exports import export_aot

        done = export_aot(file, outdir, name=name, overwrite=overwrite)
        tflm = f" (TFLite Micro plans {done.tflm_planned_bytes:,} B for the same tensors)" if done.tflm_planned_bytes \
            else ""
        click.echo(f"activation arena: {done.arena_bytes:,} B, static, planned by edgeq{tflm}")
        for path in done.files:
            click.echo(f"wrote {path}")
        return
    from edgeq.pipeline.exports import export_c as run_export_c

    written, model = run_export_c(file, outdir, name=name, alignment=alignment, arena_margin=arena_margin,
                                  overwrite=overwrite)
    arena = model.arena
    click.echo(f"tensor arena: {arena.smallest:,} B measured in TFLite Micro + {arena_margin:,} B margin")
    for path in written:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", default="mcu", show_default=True,
              help="A TFLM target profile (its arena margin and flash budget are used).")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=None,
              help="Output folder. Default: edgeq-out/<name>-firmware.")
@click.option("--name", default=None, help="Base name of the C identifiers. Default: the file name.")
@click.option("--arena-margin", default=None, type=click.IntRange(min=0),
              help="Bytes added to the measured tensor arena. Default: the target's margin.")
@click.option("--max-payload", default=DEFAULT_MAX_PAYLOAD, show_default=True,
              type=click.IntRange(min=MIN_PAYLOAD, max=LENGTH_LIMIT),
              help="EDGEQ_MAX_PAYLOAD: the largest frame payload; the device holds two such buffers in RAM.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def firmware(model: Path, target: str, outdir: Path | None, name: str | None, arena_margin: int | None,
             max_payload: int, overwrite: bool) -> None:
    """Write a test-harness firmware source tree for MODEL.tflite (TFLite Micro).

    \b
    Flashed on a board, it answers `edgeq device-check` over a serial port: HELLO (model
    SHA-256, arena, tensors) and INFER (input bytes in; output bytes and the Invoke() time
    out). The folder holds the model's C arrays and op resolver, the TFLM glue, the protocol
    in plain C99 (no malloc, no TFLM), the three hooks a port supplies (edgeq_platform.h:
    read bytes, write bytes, a microsecond timer), example ports (Arduino, Zephyr, bare-metal
    Cortex-M, POSIX) and a README on building and flashing.

    \b
    With arm-none-eabi-gcc installed, the model data and the protocol code are compiled for a
    Cortex-M4F, and their flash and RAM go into edgeq_firmware.json.

    \b
    Examples:
      edgeq firmware edgeq-out/digits_cnn-mcu/digits_cnn.tflite -o harness/
      edgeq convert model.keras --target mcu --calibration digits --harness   # the same, in one go
    """
    from edgeq.pipeline.exports import build_firmware
    from edgeq.targets import load_target

    profile = load_target(target)
    built = build_firmware(model, profile, outdir=outdir, name=name, arena_margin=arena_margin,
                           max_payload=max_payload, overwrite=overwrite, on_step=_step)
    arena, out = built.model.arena.smallest, built.outdir
    click.echo(f"\nharness firmware for {model.name} ({built.manifest.model_sha256[:16]}…), target {profile.name}")
    click.echo(f"  arena     {arena:,} B measured in TFLM + {built.margin:,} B margin = "
               f"k_{built.ident}_tensor_arena_size {arena + built.margin:,} B")
    _firmware_sizes(built.size, len(built.model.data), profile)
    click.echo(f"wrote {len(built.files)} files to {out}/ (start with {out / 'README.md'})")
    click.echo(f"then: edgeq device-check --port PORT --model {model} --data SET")


def _firmware_sizes(size: Any, model_bytes: int, profile: Any) -> None:
    if size is None:
        click.echo("  flash     (install gcc-arm-none-eabi for Cortex-M flash and RAM figures)")
        return
    runtime = profile.memory.runtime_flash_bytes
    total = size.model_size + size.harness_flash + runtime
    click.echo(f"  flash     model {size.model_size:,} B in {size.model_section} + harness {size.harness_flash:,} B "
               f"+ TFLM ~{kib(runtime)} (target profile) = {kib(total)} of {kib(profile.memory.flash_bytes)}")
    click.echo(f"  RAM       harness {size.harness_ram:,} B (protocol buffers for {size.max_payload:,}-byte frames) "
               f"+ the arena")
    click.echo(f"  compiled  with {size.compiler} {' '.join(size.cpu_flags)}")
