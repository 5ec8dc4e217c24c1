"""The test-harness firmware source tree for one model.

`build_firmware` returns every file of a folder that builds into a firmware answering the edgeq
device protocol (docs/protocol.md) with the model in TensorFlow Lite Micro: the model's C arrays and
op resolver (edgeq.export.c_arrays), the generated TFLM glue (edgeq_harness.cc and its config
header), the portable C device loop (edgeq/device/c) and example ports (Arduino, Zephyr, bare-metal
Cortex-M, POSIX) in ports/. Write it with edgeq.export.atomic.write_files_atomically.

`firmware_with_sizes` adds the Cortex-M size check (edgeq.device.cross_size) to the manifest
(edgeq.device.harness_manifest).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np

from edgeq._version import __version__
from edgeq.device.cross_size import CrossSize, cross_compile
from edgeq.device.harness_manifest import HarnessManifest, ManifestArena, ManifestTensor, NoCrossCompiler
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD, FRAME_OVERHEAD, INFER_REPLY_HEADER, MAX_RANK, MIN_PAYLOAD
from edgeq.device.protocol import LENGTH_LIMIT as PAYLOAD_LIMIT
from edgeq.device.tensors import WIRE_DTYPES, nbytes, wire_tensor
from edgeq.errors import EdgeqError, TargetCheckError
from edgeq.export.c_arrays import ArenaSize, c_identifier, tflm_sources
from edgeq.templating import render
from edgeq.tflite.reader import ModelInfo, TensorInfo

DEVICE_OVERHEAD = 64  # edgeq_device beyond its two buffers (parser fields, pointers, read chunk), rounded up

# Copied verbatim from edgeq/device/c into the tree (same relative path, "/" separated).
STATIC_FILES = (
    "edgeq_protocol.h", "edgeq_protocol.c", "edgeq_device.h", "edgeq_device.c", "edgeq_platform.h",
    "edgeq_harness.h",
    "ports/arduino/edgeq_harness/edgeq_harness.ino",
    "ports/zephyr/CMakeLists.txt", "ports/zephyr/prj.conf", "ports/zephyr/src/main.c",
    "ports/baremetal/main.c",
    "ports/posix/edgeq_platform_posix.c",
)


@dataclass(frozen=True)
class Firmware:
    """A firmware source tree: relative path ("/" separated) -> contents, and what it holds."""

    files: dict[str, bytes]
    manifest: HarnessManifest

    @property
    def ident(self) -> str:
        return self.manifest.model_id


def _package_file(relative: str) -> bytes:
    return resources.files("edgeq.device").joinpath(relative).read_bytes()


def _tensor_bytes(t: TensorInfo, which: str, source: str) -> int:
    if t.dtype not in WIRE_DTYPES:
        raise TargetCheckError(f"{which} '{t.name}' of {source} is {t.dtype}, which the device protocol cannot carry",
                               hint="use int8, uint8, int16, int32, int64, float16 or float32 model inputs and outputs")
    if len(t.shape) > MAX_RANK:
        raise TargetCheckError(f"{which} '{t.name}' of {source} has rank {len(t.shape)}, above {MAX_RANK}",
                               hint="reshape the model's inputs/outputs to at most 8 dimensions")
    return nbytes(wire_tensor(t))


def _c_float(x: float) -> str:
    return f"{float(np.float32(x)):.9e}f"  # 9 significant digits: the float32 round-trips exactly


def _tensor_json(t: TensorInfo, size: int) -> ManifestTensor:
    wire = wire_tensor(t)  # what the device reports in HELLO: the host checks it against the same function
    return ManifestTensor(t.name, t.dtype, wire.dtype, list(wire.shape), wire.scale, wire.zero_point, size)


def _c_tensor(t: TensorInfo) -> str:
    wire = wire_tensor(t)
    dims = ", ".join(str(d) for d in wire.shape) or "0"
    return f"{{{wire.dtype}, {len(wire.shape)}, {{{dims}}}, {_c_float(wire.scale)}, {wire.zero_point}}}"


def _shape_text(tensors: list[ManifestTensor]) -> str:
    return ", ".join(f"{t.dtype} {t.shape}" + (f" (scale {t.scale:.6g}, zero point {t.zero_point})" if t.scale else "")
                     for t in tensors)


@dataclass(frozen=True)
class _Frames:
    """The protocol frames a model needs: bytes per input and output, the INFER reply, the largest."""

    input_sizes: list[int]
    output_sizes: list[int]
    reply: int
    needed: int

    @property
    def input_bytes(self) -> int:
        return sum(self.input_sizes)

    @property
    def output_bytes(self) -> int:
        return sum(self.output_sizes)


def _frames(info: ModelInfo, ident: str, max_payload: int) -> _Frames:
    """The frame sizes of `info`; TargetCheckError when protocol version 1 cannot serve it (no
    inputs or outputs, over 255 of them, a dtype or rank the wire lacks, a frame above `max_payload`)."""
    source = info.source
    if not info.inputs or not info.outputs:
        raise TargetCheckError(f"{source} has no inputs or no outputs", hint="re-export the model")
    if len(info.inputs) > 255 or len(info.outputs) > 255:
        raise TargetCheckError(f"{source} has more than 255 inputs or outputs",
                               hint="the device protocol counts them in one byte")
    in_sizes = [_tensor_bytes(t, "input", source) for t in info.input_tensors]
    out_sizes = [_tensor_bytes(t, "output", source) for t in info.output_tensors]
    input_bytes, output_bytes = sum(in_sizes), sum(out_sizes)
    reply_bytes = output_bytes + INFER_REPLY_HEADER
    # HELLO_REPLY: version, max payload, sha256, arena size/used, two counts, 10 + 4 x rank per tensor
    hello_bytes = 1 + 2 + 32 + 8 + 2 + sum(10 + 4 * len(t.shape) for t in (*info.input_tensors, *info.output_tensors))
    needed = max(input_bytes, reply_bytes, hello_bytes)
    if needed > max_payload:
        if input_bytes > max_payload:
            what = f"its inputs take {input_bytes} bytes"
        elif reply_bytes > max_payload:
            what = f"its outputs take {output_bytes} bytes (+{INFER_REPLY_HEADER} reply header = {reply_bytes})"
        else:
            what = f"the HELLO reply describing its tensors takes {hello_bytes} bytes"
        if needed > PAYLOAD_LIMIT:
            raise TargetCheckError(
                f"model '{ident}' cannot be checked on a device: {what}, above the protocol's "
                f"{PAYLOAD_LIMIT}-byte frame limit (version 1 has no chunking)",
                hint="check a model with smaller inputs/outputs, or compare outputs with `edgeq emulate` instead")
        raise TargetCheckError(
            f"model '{ident}' does not fit one protocol frame: {what}, above the maximum payload of "
            f"{max_payload} bytes (version 1 of the device protocol has no chunking)",
            hint=f"rebuild the firmware with a larger --max-payload (at least {needed}, at most {PAYLOAD_LIMIT}); "
                 "the device needs about twice that in RAM")
    return _Frames(in_sizes, out_sizes, reply_bytes, needed)


def build_firmware(model: bytes, info: ModelInfo, *, name: str, arena: ArenaSize, target_name: str,
                   max_payload: int = DEFAULT_MAX_PAYLOAD, alignment: int = 16) -> Firmware:
    """The firmware folder for `model` (its .tflite bytes, read into `info`): files and manifest.

    Raises TargetCheckError when the model cannot be served by protocol version 1 (inputs or outputs
    above `max_payload`, dynamic shapes, an op TFLM lacks), EdgeqError for a bad max_payload.
    """
    if not MIN_PAYLOAD <= max_payload <= PAYLOAD_LIMIT:
        raise EdgeqError(f"--max-payload {max_payload} is out of range",
                         hint=f"choose a value from {MIN_PAYLOAD} to {PAYLOAD_LIMIT} (default {DEFAULT_MAX_PAYLOAD})")
    ident = c_identifier(name)
    frames = _frames(info, ident, max_payload)
    in_sizes, out_sizes = frames.input_sizes, frames.output_sizes
    input_bytes, output_bytes, reply_bytes, needed = frames.input_bytes, frames.output_bytes, frames.reply, frames.needed

    c_sources = tflm_sources(ident, model, info.all_op_names, arena=arena, alignment=alignment)
    digest = hashlib.sha256(model).hexdigest()
    inputs = [_tensor_json(t, n) for t, n in zip(info.input_tensors, in_sizes)]
    outputs = [_tensor_json(t, n) for t, n in zip(info.output_tensors, out_sizes)]
    device_ram = 2 * max_payload + FRAME_OVERHEAD + DEVICE_OVERHEAD
    subs = {
        "ident": ident, "version": __version__, "target": target_name, "sha256": digest, "model_bytes": len(model),
        "arena_total": arena.total, "arena_measured": arena.measured, "arena_margin": arena.margin,
        "inputs_desc": _shape_text(inputs), "outputs_desc": _shape_text(outputs), "input_bytes": input_bytes,
        "reply_bytes": reply_bytes, "max_payload": max_payload, "min_payload": max(MIN_PAYLOAD, needed),
        "device_ram": device_ram,
    }

    files: dict[str, bytes] = {rel: _package_file(f"c/{rel}") for rel in STATIC_FILES}
    files.update(c_sources.files)
    files["edgeq_config.h"] = render("edgeq_config.h.j2", max_payload=max_payload).encode()
    sha = bytes.fromhex(digest)
    files["edgeq_harness_config.h"] = render(
        "edgeq_harness_config.h.j2", ident=ident, target=c_identifier(target_name), model_bytes=len(model),
        sha256=digest, sha_rows=[", ".join(f"0x{b:02x}" for b in sha[i:i + 8]) for i in range(0, 32, 8)],
        inputs=[_c_tensor(t) for t in info.input_tensors], outputs=[_c_tensor(t) for t in info.output_tensors],
        input_bytes=input_bytes, output_bytes=output_bytes).encode()
    files["edgeq_harness.cc"] = render("edgeq_harness.cc.j2", **subs).encode()
    files["README.md"] = render("harness_README.md.j2", **subs).encode()
    manifest = HarnessManifest(
        edgeq_version=__version__, protocol_version=1, model_id=ident, target=target_name, model_sha256=digest,
        model_bytes=len(model), arena=ManifestArena(arena.total, arena.measured, arena.margin,
                                                    f"k_{ident}_tensor_arena_size"),
        inputs=inputs, outputs=outputs, input_bytes=input_bytes, output_bytes=output_bytes, max_payload=max_payload,
        device_buffers_bytes=device_ram, model_symbol=f"g_{ident}_model_data",
        files=sorted([*files, "edgeq_firmware.json"]))
    files["edgeq_firmware.json"] = manifest.render()
    return Firmware(dict(sorted(files.items())), manifest)


def harness_file_names(name: str) -> list[str]:
    """Every file build_firmware writes for a model called `name` (to check an output folder early)."""
    ident = c_identifier(name)
    return sorted([*STATIC_FILES, "edgeq_config.h", "edgeq_harness_config.h", "edgeq_harness.cc", "README.md",
                   "edgeq_firmware.json", f"{ident}_model_data.h", f"{ident}_model_data.cc",
                   f"{ident}_op_resolver.h"])


def firmware_with_sizes(model: bytes, info: ModelInfo, *, name: str, arena: ArenaSize, target_name: str,
                        max_payload: int = DEFAULT_MAX_PAYLOAD, alignment: int = 16
                        ) -> tuple[Firmware, CrossSize | None]:
    """build_firmware, then the Cortex-M size check; the sizes go into edgeq_firmware.json too.

    Without the arm-none-eabi toolchain the manifest says so instead of giving sizes.
    """
    firmware = build_firmware(model, info, name=name, arena=arena, target_name=target_name, max_payload=max_payload,
                              alignment=alignment)
    size = cross_compile(firmware.files)
    manifest = replace(firmware.manifest, cortex_m_size=size.part() if size else NoCrossCompiler(
        "arm-none-eabi-gcc not found: install gcc-arm-none-eabi for flash and RAM figures"))
    return Firmware(firmware.files | {"edgeq_firmware.json": manifest.render()}, manifest), size
