"""The test-harness firmware source tree for one model, and a Cortex-M size check of it.

`build_firmware` returns every file of a folder that builds into a firmware answering the edgeq
device protocol (docs/protocol.md) with the model in TensorFlow Lite Micro: the model's C arrays and
op resolver (edgeq.export.c_arrays), the generated TFLM glue (edgeq_harness.cc and its config
header), the portable C device loop (edgeq/device/c) and example ports (Arduino, Zephyr, bare-metal
Cortex-M, POSIX) in ports/. Write it with edgeq.export.atomic.write_files_atomically.

`cross_compile` compiles the parts that need no TFLM (model data, protocol, device loop, bare-metal
port) with arm-none-eabi-gcc and reports their flash and RAM, when that toolchain is installed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeq._version import __version__
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD, FRAME_OVERHEAD, INFER_REPLY_HEADER, MAX_RANK, MIN_PAYLOAD
from edgeq.device.protocol import LENGTH_LIMIT as PAYLOAD_LIMIT
from edgeq.device.tensors import WIRE_DTYPES, nbytes, wire_tensor
from edgeq.errors import EdgeqError, TargetCheckError
from edgeq.export.c_arrays import ArenaSize, c_identifier, tflm_sources
from edgeq.records import Record, optional
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
DEFAULT_CPU_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")


@dataclass(frozen=True)
class ManifestArena(Record):
    """The tensor arena the firmware declares: measured smallest + margin = total, and its C symbol."""

    total: int
    measured: int
    margin: int
    symbol: str


@dataclass(frozen=True)
class ManifestTensor(Record):
    """One model input or output as the device reports it in HELLO (dtype_code: the schema's TensorType)."""

    name: str
    dtype: str
    dtype_code: int
    shape: list[int]
    scale: float
    zero_point: int
    bytes: int


@dataclass(frozen=True)
class ObjectSize(Record):
    """arm-none-eabi-size (Berkeley) of one object file: text (code + rodata), data, bss."""

    text: int
    data: int
    bss: int

    @property
    def flash(self) -> int:
        return self.text + self.data  # initialised data is stored in flash and copied to RAM

    @property
    def ram(self) -> int:
        return self.data + self.bss


@dataclass(frozen=True)
class CrossSize:
    """What the Cortex-M cross compiler says about the firmware parts that need no TFLM."""

    compiler: str  # `arm-none-eabi-gcc --version`, first line
    cpu_flags: tuple[str, ...]
    objects: dict[str, ObjectSize]  # source path in the tree -> its object's size
    model_symbol: str  # g_<id>_model_data
    model_section: str  # the ELF section holding it, e.g. ".rodata.g_<id>_model_data"
    model_size: int  # its symbol size, == len(model)
    harness_flash: int  # protocol + device loop + bare-metal port: text + data
    harness_ram: int  # their data + bss, plus sizeof(edgeq_device) that edgeq_harness.cc declares
    device_struct: int  # sizeof(edgeq_device) on the target (parser + tx frame + read chunk)
    note: str = ("edgeq_harness.cc (the TFLM glue) and TFLM itself are not compiled: TFLM's headers and "
                 "library are not part of edgeq; the figures cover the model data and the edgeq C code only")
    max_payload: int = DEFAULT_MAX_PAYLOAD

    def part(self) -> CortexMSize:
        return CortexMSize(self.compiler, list(self.cpu_flags), dict(self.objects),
                           ModelSymbol(self.model_symbol, self.model_section, self.model_size),
                           HarnessCode(self.harness_flash, self.harness_ram, self.device_struct), self.max_payload,
                           self.note)

    def to_dict(self) -> dict[str, Any]:
        return self.part().to_dict()


@dataclass(frozen=True)
class ModelSymbol(Record):
    """The model array in the cross-compiled object: its symbol, ELF section and size."""

    symbol: str
    section: str
    bytes: int


@dataclass(frozen=True)
class HarnessCode(Record):
    """The protocol, device loop and bare-metal port together: flash (text + data) and RAM (data + bss
    + the edgeq_device struct)."""

    flash: int
    ram: int
    device_struct: int


@dataclass(frozen=True)
class CortexMSize(Record):
    """arm-none-eabi-gcc's sizes of the firmware parts that need no TFLM, per object and together."""

    compiler: str
    cpu_flags: list[str]
    objects: dict[str, ObjectSize]
    model: ModelSymbol
    harness: HarnessCode
    max_payload: int
    note: str


@dataclass(frozen=True)
class NoCrossCompiler(Record):
    """Why there are no Cortex-M sizes (the arm-none-eabi toolchain is missing)."""

    note: str


@dataclass(frozen=True)
class HarnessManifest(Record):
    """The device-check harness firmware (edgeq_firmware.json): the model it serves, its arena, the
    tensors HELLO will report, the frame size, the files; the Cortex-M sizes when they were taken."""

    edgeq_version: str
    protocol_version: int
    model_id: str
    target: str
    model_sha256: str
    model_bytes: int
    arena: ManifestArena
    inputs: list[ManifestTensor]
    outputs: list[ManifestTensor]
    input_bytes: int
    output_bytes: int
    max_payload: int
    device_buffers_bytes: int
    model_symbol: str
    files: list[str]
    cortex_m_size: CortexMSize | NoCrossCompiler | None = optional()

    def render(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Firmware:
    """A firmware source tree: relative path ("/" separated) -> contents, and what it holds."""

    files: dict[str, bytes]
    manifest: HarnessManifest

    @property
    def ident(self) -> str:
        return self.manifest.model_id

# --- the tree -----------------------------------------------------------------------------------

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


# --- Cortex-M size check --------------------------------------------------------------------------

class CrossCompileError(EdgeqError):
    """The Cortex-M cross compiler refused a file of the firmware tree."""


def _run(cmd: list[str], what: str, cwd: Path) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise CrossCompileError(f"{what} failed (exit {proc.returncode}):\n{tail}",
                                hint="this is a bug in the generated firmware sources; please report it with the "
                                     "compiler output above")
    return proc.stdout


_DEVICE_PROBE = "#include \"edgeq_device.h\"\nedgeq_device edgeq_size_probe_device;\n"


def cross_compile(files: Mapping[str, bytes] | Path, *, cpu_flags: tuple[str, ...] = DEFAULT_CPU_FLAGS,
                  cpu_hz: int = 64_000_000) -> CrossSize | None:
    """Compile the model data, protocol, device loop and bare-metal port for Cortex-M and size them.

    `files`: a Firmware's files or a folder holding such a tree. Returns None when arm-none-eabi-gcc,
    -g++, -size or -nm is not on PATH. The C files are compiled with -Wall -Wextra -Werror; a failure
    raises CrossCompileError with the compiler's last lines. edgeq_harness.cc is not compiled (no TFLM).
    """
    tools = {t: shutil.which(f"arm-none-eabi-{t}") for t in ("gcc", "g++", "size", "nm")}
    if not all(tools.values()):
        return None
    gcc, gxx, size, nm = (str(tools[t]) for t in ("gcc", "g++", "size", "nm"))
    with tempfile.TemporaryDirectory(prefix="edgeq-cross-") as tmp:
        root = Path(tmp) / "tree"
        if isinstance(files, Path):
            shutil.copytree(files, root)
        else:
            for rel, data in files.items():
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        model_cc = sorted(p.name for p in root.glob("*_model_data.cc"))
        if len(model_cc) != 1:
            raise CrossCompileError(f"expected one *_model_data.cc in the firmware tree, found {len(model_cc)}")
        ident = model_cc[0][: -len("_model_data.cc")]
        (root / "edgeq_size_probe.c").write_text(_DEVICE_PROBE)
        common = [*cpu_flags, "-Os", "-ffunction-sections", "-fdata-sections", "-I.", "-c"]
        c_flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", f"-DEDGEQ_CPU_HZ={cpu_hz}"]
        sources = {
            model_cc[0]: [gxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fno-exceptions", "-fno-rtti"],
            "edgeq_protocol.c": [gcc, *c_flags], "edgeq_device.c": [gcc, *c_flags],
            "ports/baremetal/main.c": [gcc, *c_flags], "edgeq_size_probe.c": [gcc, *c_flags],
        }
        objects: dict[str, Path] = {}
        for rel, cmd in sources.items():
            obj = root / "obj" / (rel.replace("/", "__") + ".o")
            obj.parent.mkdir(exist_ok=True)
            _run([*cmd, *common, rel, "-o", str(obj)], f"arm-none-eabi compile of {rel}", root)
            objects[rel] = obj
        sizes: dict[str, ObjectSize] = {}
        for rel, obj in objects.items():
            lines = _run([size, "-B", str(obj)], f"arm-none-eabi-size of {rel}", root).splitlines()
            text, data, bss = (int(v) for v in lines[1].split()[:3])
            sizes[rel] = ObjectSize(text, data, bss)
        symbol = f"g_{ident}_model_data"
        section, model_size = _symbol_section(size, nm, objects[model_cc[0]], symbol, root)
        _, device_struct = _symbol_section(size, nm, objects["edgeq_size_probe.c"], "edgeq_size_probe_device", root)
        version = _run([gcc, "--version"], "arm-none-eabi-gcc --version", root).splitlines()[0].strip()
    del sizes["edgeq_size_probe.c"]
    harness = [sizes[k] for k in ("edgeq_protocol.c", "edgeq_device.c", "ports/baremetal/main.c")]
    max_payload = _max_payload(files)
    return CrossSize(
        compiler=version, cpu_flags=tuple(cpu_flags), objects=sizes, model_symbol=symbol, model_section=section,
        model_size=model_size, harness_flash=sum(s.flash for s in harness),
        harness_ram=sum(s.ram for s in harness) + device_struct, device_struct=device_struct, max_payload=max_payload,
    )


def _symbol_section(size: str, nm: str, obj: Path, symbol: str, cwd: Path) -> tuple[str, int]:
    """(section name, size) of a defined symbol in an object: nm -S for the size, size -A for the section."""
    symbols = _run([nm, "-S", "--defined-only", str(obj)], f"arm-none-eabi-nm of {obj.name}", cwd)
    found = None
    for line in symbols.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == symbol:
            found = int(parts[1], 16)
    if found is None:
        raise CrossCompileError(f"symbol {symbol} not found in {obj.name}")
    sections = _run([size, "-A", str(obj)], f"arm-none-eabi-size -A of {obj.name}", cwd)
    for line in sections.splitlines():
        parts = line.split()
        if parts and parts[0].endswith(f".{symbol}"):  # -fdata-sections: one section per object
            return parts[0], found
    raise CrossCompileError(f"no section named after {symbol} in {obj.name} (compiled without -fdata-sections?)")


def _max_payload(files: Mapping[str, bytes] | Path) -> int:
    """The tree's EDGEQ_MAX_PAYLOAD, from its edgeq_config.h."""
    if isinstance(files, Path):
        config = files / "edgeq_config.h"
        text = config.read_bytes() if config.is_file() else b""
    else:
        text = files.get("edgeq_config.h", b"")
    match = re.search(rb"#define EDGEQ_MAX_PAYLOAD (\d+)u", text)
    return int(match.group(1)) if match else DEFAULT_MAX_PAYLOAD


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
