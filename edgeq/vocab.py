"""edgeq's named vocabularies: each word the code compares or writes into a report, defined once.

Members are strings (`Runtime.TFLM == "tflm"`), so report.json, report.md and the terminal show the
same words as before, and a value read from a TOML file or a report compares equal to its member.
No imports beyond the standard library: the CLI reads these at start-up.
"""

from __future__ import annotations

import enum

if hasattr(enum, "StrEnum"):  # Python 3.11+
    StrEnum = enum.StrEnum
else:  # pragma: no cover - Python 3.10
    class StrEnum(str, enum.Enum):  # type: ignore[no-redef]
        """A str whose value is its text, in str(), format() and f-strings alike."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


class Runtime(StrEnum):
    """What runs the model on the device (a target profile's `runtime`)."""

    LITERT = "litert"  # phones and Linux boards: dynamic allocation, XNNPACK on CPUs
    TFLM = "tflm"  # microcontrollers: TensorFlow Lite Micro, one fixed tensor arena
    C = "c"  # microcontrollers: edgeq's plain C (edgeq/aot), no interpreter, bit-exact with TFLM

    @property
    def micro(self) -> bool:
        """A microcontroller runtime: TFLM emulates it exactly (the c runtime's bytes are TFLM's)."""
        return self in (Runtime.TFLM, Runtime.C)


class CheckName(StrEnum):
    """The checks of the gate, in the order they run and are reported."""

    MODE = "mode"
    OPS = "ops"
    KERNELS = "kernels"
    INTEGER_ONLY = "integer_only"
    IO_DTYPES = "io_dtypes"
    FLASH = "flash"
    RAM = "ram"
    ACCURACY = "accuracy"


class DeviceVerdict(StrEnum):
    """How a device-check ended."""

    PASS = "pass"  # every answer bit-exact with TFLM on the host
    MISMATCH = "mismatch"  # some sample differs from the emulator
    INCOMPLETE = "incomplete"  # the device stopped answering before the end


class Scheme(StrEnum):
    """Linear quantization: with a zero point, or symmetric around 0."""

    ASYMMETRIC = "asymmetric"
    SYMMETRIC = "symmetric"


class Granularity(StrEnum):
    """How many quantization scales a weight tensor has: one, or one per output channel."""

    PER_TENSOR = "per-tensor"
    PER_CHANNEL = "per-channel"


class Layout(StrEnum):
    """How a 4-D input is ordered: as PyTorch and ONNX models take it, or as TFLite computes."""

    NCHW = "NCHW"  # channels first: PyTorch, ONNX
    NHWC = "NHWC"  # channels last: Keras, TFLite's kernels


class SourceFormat(StrEnum):
    """What kind of model `convert` read (report.json's input.format) beyond the Keras ones."""

    TORCH_MODULE = "nn.Module"      # package.module:factory with a state_dict
    TORCH_EXPORT = "torch.export"   # a .pt2 program
    ONNX = "onnx"

    @classmethod
    def pytorch(cls, fmt: object) -> bool:
        return fmt in (cls.TORCH_MODULE, cls.TORCH_EXPORT)
