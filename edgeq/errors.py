"""One family of exceptions. Library code raises these; only the CLI turns them into exit codes.

Every message is written for the person at the terminal: it names the file, field or sample,
says what was expected, and what to try.
"""

from __future__ import annotations

from typing import Any

EXIT_BAD_INPUT = 2
EXIT_TARGET_CHECK = 3
EXIT_DEVICE = 4  # the device or the link to it failed (edgeq device-check)


class EdgeqError(Exception):
    """Base class: a problem the user can fix. Carries the process exit code."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors raised in edgeq's child processes (edgeq/isolation.py) cross a pipe pickled.
        return (_rebuild, (type(self), self.message, self.hint))


def _rebuild(cls: type[EdgeqError], message: str, hint: str | None) -> EdgeqError:
    error = cls.__new__(cls)
    EdgeqError.__init__(error, message, hint=hint)
    return error


class TargetProfileError(EdgeqError):
    """A target profile (edgeq/data/targets/*.toml, or a path) is malformed or unknown."""


class CalibrationError(EdgeqError):
    """Calibration or evaluation data is missing, malformed or does not fit the model."""


class ModelLoadError(EdgeqError):
    """A Keras model file cannot be loaded (missing, wrong format, unsafe, corrupt)."""


class TFLiteFormatError(EdgeqError):
    """A .tflite file is not a structurally valid TFLite flatbuffer."""


class RecipeError(EdgeqError):
    """The requested quantization mode is not possible for this target or data."""


class ConversionError(EdgeqError):
    """The TFLite converter refused the model (unsupported op, shape, ...)."""


class OutputError(EdgeqError):
    """An output cannot be written (exists without --overwrite, not a folder, read-only, disk full)."""


class TargetCheckError(EdgeqError):
    """The converted model does not fit the target (ops, dtypes, budgets). Exit code 3."""

    exit_code = EXIT_TARGET_CHECK
