"""How long work tells its caller where it is: one line per stage, and bars for counted work.

The library reports through these callbacks and never prints; the CLI turns them into lines on
stderr and progress bars (only when a person is watching).
"""

from __future__ import annotations

from collections.abc import Callable

Step = Callable[[str], None]  # one line per stage: "measuring the exact tensor arena in TFLite Micro"
Advance = Callable[[int], None]  # called with how many items are done so far
Progress = Callable[[str, int], Advance]  # (label, total) -> the bar's advance


def no_step(message: str) -> None:
    """A Step that says nothing."""


def no_progress(label: str, total: int) -> Advance:
    """A Progress that shows nothing."""
    return lambda done: None
