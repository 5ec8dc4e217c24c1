"""Flash and RAM of a model on a target, as the gate checks them and report.json records them:
the model's bytes and the runtime's, the arena (TFLM, or the c runtime's static one) or LiteRT's
peak activations, the target's margin, reserve and budgets."""

from __future__ import annotations

from dataclasses import dataclass

from edgeq.emulator.activations import ActivationMemory
from edgeq.emulator.memory import ArenaMeasurement
from edgeq.records import Record


@dataclass(frozen=True)
class FlashPart(Record):
    """Flash: the model array, the runtime's code (from the target profile), their total, the budget."""

    model_bytes: int
    runtime_bytes: int
    total_bytes: int
    budget_bytes: int | None


@dataclass(frozen=True)
class RamPart(Record):
    """RAM: what the model needs (`kind`: the TFLM arena, or LiteRT's peak activations; null when it
    could not be measured, see `note`), the target's margin and reserve, the total, the budget, and
    the arena size written into the C files (smallest + margin)."""

    kind: str
    needed_bytes: int | None
    margin_bytes: int
    reserved_bytes: int
    total_bytes: int
    budget_bytes: int | None
    firmware_arena_bytes: int | None
    tflm_arena: ArenaMeasurement | None
    litert_activations: ActivationMemory | None
    note: str


@dataclass(frozen=True)
class MemoryPart(Record):
    """Flash and RAM of the model on the target."""

    flash: FlashPart
    ram: RamPart


@dataclass(frozen=True)
class MemoryReport:
    flash_model: int
    flash_runtime: int
    flash_budget: int | None
    ram_label: str                 # "arena" (TFLM) or "peak activations" (LiteRT)
    ram_needed: int | None         # None: could not be measured (see note)
    margin: int
    reserved: int
    ram_budget: int | None
    arena: ArenaMeasurement | None = None
    activations: ActivationMemory | None = None
    note: str = ""
    attempted: bool = True         # False: not measured because static checks already ruled TFLM out

    @property
    def flash_total(self) -> int:
        return self.flash_model + self.flash_runtime

    @property
    def ram_total(self) -> int:
        return (self.ram_needed or 0) + self.margin + self.reserved

    @property
    def firmware_arena(self) -> int | None:
        """The kTensorArenaSize written into the C files: measured smallest + the target's margin."""
        return None if self.arena is None else self.arena.smallest + self.margin

    def part(self) -> MemoryPart:
        return MemoryPart(
            FlashPart(self.flash_model, self.flash_runtime, self.flash_total, self.flash_budget),
            RamPart(self.ram_label, self.ram_needed, self.margin, self.reserved, self.ram_total, self.ram_budget,
                    self.firmware_arena, self.arena, self.activations, self.note))
