"""What the device-check harness firmware says about itself: edgeq_firmware.json, which report.json
repeats. The model it serves, its tensor arena, the tensors HELLO reports, the frame size, its files,
and the Cortex-M sizes of the parts that need no TFLM (or why there are none)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from edgeq.records import Record, optional


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
