"""The Cortex-M size check of a harness firmware tree, with the arm-none-eabi toolchain.

`cross_compile` compiles the parts that need no TFLM (model data, protocol, device loop, bare-metal
port) with arm-none-eabi-gcc and reports their flash and RAM, when that toolchain is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edgeq.device.harness_manifest import CortexMSize, HarnessCode, ModelSymbol, ObjectSize
from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD
from edgeq.errors import EdgeqError

DEFAULT_CPU_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")


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
