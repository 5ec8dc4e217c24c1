"""A .tflite converted elsewhere, made ready for a microcontroller: the library side of
`edgeq export-c` (TFLM's C arrays, or the c runtime's plain C) and `edgeq firmware`.

Each starts the same way: read the file through the checked reader, refuse what the runtime has no
kernel for (exit 3, before anything runs), and measure the exact tensor arena in TFLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeq.emulator.memory import ArenaMeasurement, measure_tflm_arena
from edgeq.errors import TargetCheckError
from edgeq.export.atomic import check_output_dir, write_files_atomically
from edgeq.export.c_arrays import ArenaSize, c_identifier, tflm_sources
from edgeq.progress import Step, no_step
from edgeq.checks import require_tflm_kernels
from edgeq.targets import TargetProfile
from edgeq.tflite.reader import ModelInfo

if TYPE_CHECKING:
    from edgeq.device.firmware import CrossSize, HarnessManifest


@dataclass(frozen=True)
class TflmModel:
    """A .tflite TFLM can run: its bytes, the checked reader's view of it, and its arena."""

    path: Path
    data: bytes
    info: ModelInfo
    arena: ArenaMeasurement


def measured(path: Path, data: bytes, info: ModelInfo, on_step: Step = no_step) -> TflmModel:
    """The model with its smallest TFLM arena, found by bisection in TFLM (edgeq.emulator.memory)."""
    on_step("measuring the tensor arena in TFLite Micro")
    return TflmModel(Path(path), data, info, measure_tflm_arena(data, source=str(path)))


def export_c(path: Path, outdir: Path, *, name: str | None = None, alignment: int = 16, arena_margin: int = 1024,
             overwrite: bool = False) -> tuple[list[Path], TflmModel]:
    """`<name>_model_data.cc/.h` (with the measured arena plus `arena_margin`) and `<name>_op_resolver.h`
    for a .tflite, written atomically into `outdir`. Returns the files written and the model."""
    from edgeq.tflite.strip import read_flashed

    data, info = read_flashed(Path(path))
    ident = c_identifier(name or Path(path).stem)
    check_output_dir(outdir, [f"{ident}_model_data.cc", f"{ident}_model_data.h", f"{ident}_op_resolver.h"],
                     overwrite=overwrite)
    tflm_sources(ident, data, info.all_op_names, alignment=alignment)  # fails fast on ops TFLM lacks
    require_tflm_kernels(info)
    model = measured(path, data, info)
    sources = tflm_sources(ident, model.data, model.info.all_op_names, alignment=alignment,
                           arena=ArenaSize(model.arena.smallest, arena_margin))
    return write_files_atomically(outdir, sources.files, overwrite=overwrite), model


@dataclass(frozen=True)
class FirmwareResult:
    model: TflmModel
    outdir: Path
    files: list[Path]
    manifest: HarnessManifest
    size: CrossSize | None  # None without arm-none-eabi-gcc
    margin: int
    ident: str


def build_firmware(path: Path, profile: TargetProfile, *, outdir: Path | None = None, name: str | None = None,
                   arena_margin: int | None = None, max_payload: int | None = None, overwrite: bool = False,
                   on_step: Step = no_step) -> FirmwareResult:
    """The device-check harness firmware for a .tflite, written atomically (default folder
    edgeq-out/<name>-firmware), with its Cortex-M sizes when arm-none-eabi-gcc is installed."""
    from edgeq.device.firmware import firmware_with_sizes
    from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD
    from edgeq.vocab import Runtime

    if profile.runtime != Runtime.TFLM:
        from edgeq.errors import EdgeqError

        raise EdgeqError(f"target '{profile.name}' runs {profile.runtime}, and the harness firmware is for TFLite Micro",
                         hint="pick a microcontroller target (edgeq targets list), e.g. --target mcu")
    from edgeq.tflite.strip import read_flashed

    data, info = read_flashed(path)
    ident = c_identifier(name or Path(path).stem)
    out = outdir if outdir is not None else Path("edgeq-out") / f"{ident}-firmware"
    check_output_dir(out, ["README.md", "edgeq_firmware.json"], overwrite=overwrite)
    tflm_sources(ident, data, info.all_op_names)  # fails fast on ops TFLM lacks
    require_tflm_kernels(info, profile)
    model = measured(path, data, info, on_step)
    margin = profile.memory.arena_margin_bytes if arena_margin is None else arena_margin
    on_step("writing the harness and compiling its C parts for Cortex-M4F")
    built, size = firmware_with_sizes(model.data, model.info, name=ident, arena=ArenaSize(model.arena.smallest, margin),
                                      target_name=profile.name, max_payload=max_payload or DEFAULT_MAX_PAYLOAD,
                                      alignment=profile.memory.tensor_alignment)
    written = write_files_atomically(out, built.files, overwrite=overwrite)
    return FirmwareResult(model, out, written, built.manifest, size, margin, ident)


@dataclass(frozen=True)
class AotExport:
    """`edgeq export-c --runtime c`: what was written, the planned arena, and TFLM's for comparison."""

    files: list[Path]
    arena_bytes: int
    tflm_planned_bytes: int | None  # TFLM's own plan of the same activations (its arena's head), if it runs


def export_aot(path: Path, outdir: Path, *, name: str | None = None, overwrite: bool = False) -> AotExport:
    """`<name>_model.c/.h` for a .tflite, written atomically into `outdir`; TargetCheckError (exit 3)
    naming the first op the C backend lacks, before anything is written."""
    from edgeq.aot.emit import emit_c
    from edgeq.emulator.memory import recorded_arena
    from edgeq.tflite.strip import read_flashed

    data, info = read_flashed(Path(path))
    ident = c_identifier(name or Path(path).stem)
    check_output_dir(Path(outdir), [f"{ident}_model.c", f"{ident}_model.h"], overwrite=overwrite)
    sources = emit_c(ident, data, info)
    try:
        tflm = recorded_arena(data, source=str(path))[1]
    except TargetCheckError:
        tflm = None
    written = write_files_atomically(Path(outdir), sources.files, overwrite=overwrite)
    return AotExport(written, sources.arena_bytes, tflm)
