"""The plain-C model on an emulated Cortex-M: a firmware for QEMU's MPS2 boards, built and booted.

The firmware is the model as C (edgeq/aot), the device loop and protocol every edgeq harness
uses (edgeq/device/c), a small glue file (templates/aot_harness.c.j2) and the QEMU port
(c/ports/qemu-mps2: vector table, reset, CMSDK UART, SysTick). No TFLM: everything in it is
edgeq's own C, so CI can build it. QEMU runs it with `-icount shift=0`: one instruction per
virtual nanosecond, so the device's reported microseconds are instructions / 1000 on any host.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeq.emulator.latency import EmulatedBoardPart
from edgeq.errors import EdgeqError, TargetCheckError
from edgeq.tflite.reader import ModelInfo

BOARDS = {  # QEMU machine -> (the CPU, arm-none-eabi-gcc flags)
    "mps2-an386": ("Cortex-M4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")),
    "mps2-an500": ("Cortex-M7", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16")),
}
QEMU_HINT = "install qemu-system-arm and gcc-arm-none-eabi (scripts/setup does, with apt-get, when run as root)"
_SOURCES = ("edgeq_protocol.c", "edgeq_device.c", "edgeq_aot_harness.c", "ports/qemu-mps2/startup.c")


@dataclass(frozen=True)
class QemuFirmware:
    """A linked firmware image and what it is made of."""

    elf: Path
    board: str
    ident: str
    arena_bytes: int
    sizes: dict[str, int]  # arm-none-eabi-size -A of the image: text, rodata, data, bss (with the stack)

    @property
    def flash_bytes(self) -> int:
        return sum(self.sizes.get(k, 0) for k in ("text", "rodata", "data"))


def build_qemu_firmware(model_path: Path, workdir: Path, *, board: str = "mps2-an386",
                        name: str | None = None, plain_c: bool = False, profile_ops: bool = False) -> QemuFirmware:
    """The harness firmware for `model_path` (a .tflite the C backend can run) as an ELF for `board`;
    `plain_c`: without the Arm DSP inner loops (-DEDGEQ_PLAIN_C), as for a core without them;
    `profile_ops`: the first inference reports each op's instructions (see `op_profile`)."""
    from edgeq.aot.emit import emit_c
    from edgeq.device.firmware import _package_file, build_firmware
    from edgeq.export.c_arrays import ArenaSize, c_identifier
    from edgeq.templating import render
    from edgeq.tflite.strip import read_flashed

    if board not in BOARDS:
        raise EdgeqError(f"--board {board}: not an emulated board edgeq knows",
                         hint=f"choose one of: {', '.join(BOARDS)}")
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        raise EdgeqError("arm-none-eabi-gcc not found: the firmware cannot be built", hint=QEMU_HINT)
    data, info = read_flashed(Path(model_path))
    from edgeq.aot.lower import IO_DTYPES

    odd = [f"'{t.name or t.index}' ({t.dtype})" for t in (*info.input_tensors, *info.output_tensors)
           if t.dtype not in IO_DTYPES]
    if odd:
        raise TargetCheckError(f"{model_path}: the c runtime takes {', '.join(IO_DTYPES)} inputs and outputs; "
                               f"{', '.join(odd[:3])} is not", hint="convert with int8 I/O (edgeq convert --target "
                                                                    "mcu does)")
    ident = c_identifier(name or Path(model_path).stem)
    model = emit_c(ident, data, info)
    from edgeq.device.firmware import _frames
    from edgeq.device.protocol import DEFAULT_MAX_PAYLOAD, LENGTH_LIMIT

    # Frames as large as this model's tensors need (QEMU's RAM is plentiful), at least the default.
    payload = max(DEFAULT_MAX_PAYLOAD, _frames(info, ident, LENGTH_LIMIT).needed)
    tree = build_firmware(data, info, name=ident, arena=ArenaSize(model.arena_bytes, 0), target_name=board,
                          max_payload=payload)
    files = {rel: tree.files[rel] for rel in ("edgeq_config.h", "edgeq_harness_config.h")}
    for rel in ("edgeq_protocol.h", "edgeq_protocol.c", "edgeq_device.h", "edgeq_device.c", "edgeq_platform.h",
                "edgeq_harness.h", "ports/qemu-mps2/startup.c", "ports/qemu-mps2/mps2.ld",
                "ports/qemu-mps2/edgeq_qemu.h"):
        files[rel] = _package_file(f"c/{rel}")
    files.update(model.files)
    files["edgeq_aot_harness.c"] = render("aot_harness.c.j2", ident=ident, IDENT=ident.upper(),
                                          arguments=_arguments(info)).encode()
    workdir.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (workdir / rel).write_bytes(content)
    flags = [*(["-DEDGEQ_PLAIN_C"] if plain_c else []),
             *(["-DEDGEQ_OP_DONE(i)=edgeq_qemu_op_done(i)", "-include", "edgeq_qemu.h"] if profile_ops else [])]
    elf = _link(gcc, workdir, board, f"{ident}_model.c", flags)
    return QemuFirmware(elf, board, ident, model.arena_bytes, _size(elf))


def _arguments(info: ModelInfo) -> str:
    """The invoke call's arguments: the INFER payload holds the inputs one after another, the reply
    the outputs, so each tensor is a pointer into one of the two."""
    from edgeq.aot.kernels import CTYPES, ELEMENT_BYTES

    arguments, at = [], 0
    for t in info.input_tensors:
        arguments.append(f"(const {CTYPES[t.dtype]} *)(const void *)((const int8_t *)input + {at})")
        at += math.prod(t.shape) * ELEMENT_BYTES[t.dtype]
    at = 0
    for t in info.output_tensors:
        arguments.append(f"({CTYPES[t.dtype]} *)(void *)((int8_t *)output + {at})")
        at += math.prod(t.shape) * ELEMENT_BYTES[t.dtype]
    return ", ".join(arguments)


def _link(gcc: str, workdir: Path, board: str, model_c: str, extra: list[str]) -> Path:
    elf = workdir / "edgeq_firmware.elf"
    flags = [*BOARDS[board][1], "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-ffunction-sections",
             "-fdata-sections", "-I.", "-Iports/qemu-mps2", *extra]
    cmd = [gcc, *flags, *_SOURCES, model_c, "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs",
           "-Wl,--gc-sections", "-T", "ports/qemu-mps2/mps2.ld", "-o", str(elf),
           "-lm"]  # expf/tanhf for float32 kernels inside a model (nothing when it has none)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgeqError(f"building the {board} firmware failed: {proc.stderr.strip()[:2000]}",
                         hint="report this model: the generated C should always build")
    return elf


def _size(elf: Path) -> dict[str, int]:
    tool = shutil.which("arm-none-eabi-size")
    if tool is None:
        return {}
    lines = subprocess.run([tool, "-A", str(elf)], capture_output=True, text=True, check=True).stdout.splitlines()
    sections = {f[0]: int(f[1]) for f in (line.split() for line in lines) if len(f) >= 3 and f[1].isdigit()}
    return {"text": sections.get(".text", 0), "rodata": sections.get(".rodata", 0), "data": sections.get(".data", 0),
            "bss": sections.get(".bss", 0) + sections.get(".stack", 0)}


def diagnostics_file(firmware: QemuFirmware) -> Path:
    """Where QEMU writes the board's UART1: the port's measurements ("edgeq-stack <bytes>")."""
    return firmware.elf.with_name("uart1.log")


def stack_high_water(firmware: QemuFirmware) -> int | None:
    """The most stack the firmware has used so far (bytes, from its painted stack), or None before
    its first inference."""
    try:
        lines = diagnostics_file(firmware).read_text(errors="replace").split()
    except FileNotFoundError:
        return None
    values = [int(v) for k, v in zip(lines, lines[1:]) if k == "edgeq-stack" and v.isdigit()]
    return max(values) if values else None


def op_profile(firmware: QemuFirmware) -> dict[int, int]:
    """Instructions each op took in the first inference (op index -> count), from a firmware built
    with `profile_ops`; empty otherwise. Each count includes the ~30 instructions of reading the timer."""
    try:
        words = diagnostics_file(firmware).read_text(errors="replace").split()
    except FileNotFoundError:
        return {}
    return {int(words[k + 1]): int(words[k + 2]) for k in range(len(words) - 2)
            if words[k] == "edgeq-op" and words[k + 1].isdigit() and words[k + 2].isdigit()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def boot(firmware: QemuFirmware, port: int) -> subprocess.Popen:
    """QEMU running `firmware`, its UART on 127.0.0.1:`port` (socket://127.0.0.1:port for pyserial)."""
    qemu = shutil.which("qemu-system-arm")
    if qemu is None:
        raise EdgeqError("qemu-system-arm not found: the emulated board cannot start", hint=QEMU_HINT)
    proc = subprocess.Popen([qemu, "-M", firmware.board, "-display", "none", "-monitor", "none", "-icount", "shift=0,sleep=off",
                             "-serial", f"tcp:127.0.0.1:{port},server=on,wait=off",
                             "-serial", f"file:{diagnostics_file(firmware)}", "-kernel", str(firmware.elf)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the port accepts once QEMU listens
        if proc.poll() is not None:
            raise EdgeqError(f"QEMU stopped at once: {proc.stderr.read().decode(errors='replace')[:500]}",
                             hint=QEMU_HINT)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise EdgeqError(f"QEMU did not open its serial port {port} within 10 s", hint=QEMU_HINT)


def temporary_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgeq-qemu-"))


@dataclass(frozen=True)
class BoardServing:
    """An emulated board that is up: its serial port as a pyserial URL, and its firmware."""

    url: str
    firmware: QemuFirmware


def serve_board(model_path: Path, stop: threading.Event, *, board: str = "mps2-an386", plain_c: bool = False,
                profile_ops: bool = False,
                on_ready: Callable[[BoardServing], None] = lambda serving: None,
                on_stop: Callable[[BoardServing], None] = lambda serving: None) -> int:
    """Build the plain-C firmware for `model_path`, boot it on `board` in QEMU and keep it up until
    `stop` is set (or QEMU exits); QEMU's exit code (0 when stopped). `on_stop` sees the board
    once QEMU has stopped, before its files go (the stack high-water mark is read from them)."""
    workdir = temporary_workdir()
    try:
        firmware = build_qemu_firmware(Path(model_path), workdir, board=board, plain_c=plain_c,
                                       profile_ops=profile_ops)
        port = free_port()
        proc = boot(firmware, port)
        serving = BoardServing(f"socket://127.0.0.1:{port}", firmware)
        try:
            on_ready(serving)
            while not stop.is_set() and proc.poll() is None:
                stop.wait(0.2)
            return 0 if proc.poll() is None else int(proc.returncode)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
            on_stop(serving)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def running_board(model_path: Path, board: str = "mps2-an386", *, start_timeout: float = 60.0,
                  plain_c: bool = False, profile_ops: bool = False) -> Iterator[BoardServing]:
    """`serve_board` in a background thread for the length of a `with` block: the board once it
    is up (its serial port URL and firmware), stopped and cleaned up afterwards."""
    stop, ready, failed = threading.Event(), [], []

    def serve() -> None:
        try:
            serve_board(Path(model_path), stop, board=board, plain_c=plain_c, profile_ops=profile_ops,
                        on_ready=ready.append)
        except Exception as exc:  # noqa: BLE001 (handed to the caller's thread below)
            failed.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not ready and thread.is_alive() and time.monotonic() < deadline:
        stop.wait(0.05)
    try:
        if failed:
            raise failed[0]
        if not ready:
            raise EdgeqError(f"the emulated {board} did not come up within {start_timeout:.0f} s", hint=QEMU_HINT)
        yield ready[0]
    finally:
        stop.set()
        thread.join(timeout=30)


BOARD_SAMPLES = 8
"""Samples `measure_on_board` runs: instruction counts barely vary with the data, and each sample is
also checked byte for byte against TFLM."""


def board_tools_missing() -> list[str]:
    return [t for t in ("qemu-system-arm", "arm-none-eabi-gcc") if shutil.which(t) is None]


def on_emulated_board(model: bytes, graph_inputs: list, on_step: Callable[[str], None]) -> EmulatedBoardPart | None:
    """The c runtime's firmware measured on an emulated Cortex-M4, when QEMU and the Arm compiler are
    here; otherwise (or when the board fails) None, with the reason said through `on_step`. What the
    emulator and convert take as their `on_board`."""
    missing = board_tools_missing()
    if missing:
        on_step(f"not run on an emulated board: {' and '.join(missing)} missing (scripts/setup installs them)")
        return None
    try:
        return measure_on_board(model, graph_inputs, on_step=on_step)
    except EdgeqError as exc:
        on_step(f"not run on an emulated board: {exc.message}")
        return None


def measure_on_board(model: bytes, graph_inputs: list, *, board: str = "mps2-an386",
                     samples: int = BOARD_SAMPLES, on_step: Callable[[str], None] = lambda message: None
                     ) -> EmulatedBoardPart:
    """`model` as the c runtime's firmware on the emulated `board`: the first `samples` of
    `graph_inputs` (float arrays in the graph's input order) through device-check, the instructions
    per inference, the stack high-water mark and the firmware's sections."""
    import numpy as np

    from edgeq.device.session import run_session
    from edgeq.tflite.reader import read_tflite

    workdir = temporary_workdir()
    try:
        tflite = workdir / "model.tflite"
        tflite.write_bytes(model)
        arrays = [np.asarray(x)[:samples] for x in graph_inputs]
        on_step(f"running the C on an emulated {BOARDS[board][0]} (QEMU {board}): building the firmware, "
                f"{len(arrays[0])} samples through device-check")
        with running_board(tflite, board) as serving:
            session = run_session(serving.url, model, read_tflite(model, source=str(tflite)), tflite, arrays,
                                  f"{len(arrays[0])} samples", timeout=60)
            stack, sizes = stack_high_water(serving.firmware), serving.firmware.sizes
        lat = session.latency()
        bit_exact = len(session.run.outputs) - len(session.differences())
        return EmulatedBoardPart(board, BOARDS[board][0], session.requested, bit_exact,
                                 int(lat.median) if lat else 0, int(lat.max) if lat else 0, stack,
                                 sizes.get("text", 0), sizes.get("rodata", 0), sizes.get("data", 0),
                                 sizes.get("bss", 0))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
