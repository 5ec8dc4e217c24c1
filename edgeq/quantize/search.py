"""Recipe search: the cheapest recipe that passes the gate, found with few candidates.

The space searched today is the weight granularity of each layer (per channel, or one scale per
tensor), which decides most of what TFLite Micro keeps per layer in its persistent arena (a
multiplier and a shift per output channel). Each candidate is measured the way `convert`
measures one model (`evaluate`): the real TFLM arena, accuracy on the held-out data in the
device's runtime, flash, every check of the gate.

How it orders the space, so that it needs few candidates:
- Layers are taken in order of bytes saved per unit of damage: a layer's channels over how much
  one scale for all its channels disturbs its weights (`WeightedLayer.weight_error`).
- The candidates are the prefixes of that order: the first k layers per tensor. More layers per
  tensor means less RAM and (about) less accuracy, so the search first measures the two ends
  (k = 0, the converter's default, and k = n, per tensor everywhere) and, when neither passes
  but k = n fits the budgets, bisects for the largest k that still keeps the quality floor:
  log2(n) candidates more.
- If that prefix does not fit, the next layer in order costs too much accuracy: it tries the
  prefix with each later layer instead, one at a time (at most n more), and stops at the first
  that passes. tests/unit/test_search.py compares this with every subset on a stand-in model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgeq.quantize.granularity import WeightedLayer
from edgeq.records import Record


@dataclass(frozen=True)
class Outcome:
    """What one candidate measured: whether every check passed, whether the memory checks and the
    accuracy check did, its RAM and flash totals, its quality (higher is better: top-1 %, else the first output's SNR
    in dB) and the checks it failed."""

    passed: bool
    fits: bool       # the flash and RAM checks passed
    accurate: bool   # the accuracy check passed (or had nothing to check)
    ram_bytes: int | None
    flash_bytes: int
    quality: float | None
    failed: tuple[str, ...] = ()


@dataclass(frozen=True)
class CandidatePart(Record):
    """One recipe the search measured: how many layers (and which) had per-tensor weights, and what
    it measured."""

    label: str
    per_tensor_layers: list[str]
    passed: bool
    fits: bool
    ram_bytes: int | None
    flash_bytes: int
    quality: float | None
    failed_checks: list[str]
    chosen: bool


@dataclass(frozen=True)
class SearchPart(Record):
    """report.json's `search`: what was searched, each candidate, which one was chosen and why the
    search stopped."""

    space: str
    quality_metric: str
    objective: str
    layers: int
    tried: int
    stopped_because: str
    candidates: list[CandidatePart]


@dataclass(frozen=True)
class SearchResult:
    chosen: frozenset[str] | None  # the per-tensor layers of the chosen recipe; None: nothing passed
    part: SearchPart


def saving(layer: WeightedLayer, objective: str) -> int:
    """Bytes one scale for the layer saves. RAM: TFLite Micro's FULLY_CONNECTED keeps a multiplier and
    a shift (8 bytes) per output channel in its persistent arena only when its weights have more than
    one scale; CONV_2D and DEPTHWISE_CONV_2D size those arrays by their output channels either way, so
    for them it saves nothing. Flash: the per-channel scales (4 bytes each) in the .tflite."""
    if objective == "ram":
        return 8 * layer.channels if layer.op == "FULLY_CONNECTED" else 0
    return 4 * (layer.channels - 1)


def ordered(layers: Sequence[WeightedLayer], objective: str = "ram") -> list[WeightedLayer]:
    """The layers worth switching, most bytes saved per unit of weight damage first; ties by graph
    order (deterministic)."""
    useful = [l for l in layers if saving(l, objective) > 0]
    return sorted(useful, key=lambda l: (-saving(l, objective) / max(l.weight_error, 1e-9), l.op_index))


def search(layers: Sequence[WeightedLayer], evaluate: Callable[[list[frozenset[str]]], list[Outcome]], *,
           quality_metric: str, objective: str = "ram", exhaustive: bool = False,
           on_step: Callable[[str], None] = lambda message: None) -> SearchResult:
    """Measure prefixes of `ordered(layers)` with `evaluate` (then, where the bisection's boundary
    fails, the boundary prefix plus one more layer, each in turn) and choose the cheapest that
    passes. `evaluate` takes a batch of independent candidates (each a set of per-tensor layers) and
    returns their outcomes in order: an executor may measure a batch at once."""
    order = ordered(layers, objective)
    n = len(order)
    measured: dict[frozenset[str], Outcome] = {}

    def batch(sets: list[frozenset[str]]) -> None:
        todo = [names for k, names in enumerate(sets) if names not in measured and names not in sets[:k]]
        if todo:
            on_step(f"search: candidate{'s' if len(todo) > 1 else ''} {len(measured) + 1}"
                    + (f"-{len(measured) + len(todo)}" if len(todo) > 1 else "")
                    + f", per-tensor weights in {', '.join(str(len(t)) for t in todo)} of {n} layers")
            measured.update(zip(todo, evaluate(todo)))

    def of(names: frozenset[str]) -> Outcome:
        batch([names])
        return measured[names]

    def prefix(k: int) -> frozenset[str]:
        return frozenset(l.name for l in order[:k])

    if exhaustive:  # `edgeq search`: the whole table, every prefix of the order
        batch([prefix(k) for k in range(n + 1)])
        why = f"measured every prefix of the order, 0 to {n} per-tensor layers (edgeq search)"
    else:
        batch([prefix(0), prefix(n)])  # the two ends are independent
        why = _explore(n, lambda k: of(prefix(k)))
    if not any(o.passed for o in measured.values()) and why.startswith("bisected"):
        low = max((len(s) for s, o in measured.items() if o.accurate), default=0)
        base = frozenset(l.name for l in order[:low])
        batch([base | {layer.name} for layer in order[low + 1:]])  # independent: measured as one batch
        for layer in order[low + 1:]:  # the boundary prefix and one layer more: each one in turn
            if of(base | {layer.name}).passed:
                why += f"; then the first {low} with '{layer.name}' instead of the next in order passed"
                break
        else:
            why += f"; nor does the first {low} with any one other layer"
    passing = [names for names, o in measured.items() if o.passed]
    cost = ((lambda k: measured[k].flash_bytes) if objective == "flash"
            else (lambda k: measured[k].ram_bytes or 0))
    best = min(passing, key=lambda k: (cost(k), -(measured[k].quality or 0.0), len(k), sorted(k))) \
        if passing else None
    prefixes = {frozenset(l.name for l in order[:k]): k for k in range(n + 1)}
    short = {l.name: l.name.split("/")[-2] if l.name.count("/") >= 1 else l.name for l in order}
    candidates = [CandidatePart(_label(len(names), n) if names in prefixes else
                                f"per tensor in {len(names)} of {n} layers: the first {len(names) - 1} and "
                                f"{short[next(x.name for x in reversed(order) if x.name in names)]}",
                                sorted(names), o.passed, o.fits, o.ram_bytes, o.flash_bytes,
                                o.quality, list(o.failed), names == best)
                  for names, o in sorted(measured.items(), key=lambda item: (len(item[0]), sorted(item[0])))]
    part = SearchPart(space="weight granularity per layer (per channel, or one scale per tensor), layers ordered "
                            f"by {objective} bytes saved over weight error", quality_metric=quality_metric,
                      objective=objective, layers=n, tried=len(measured), stopped_because=why, candidates=candidates)
    return SearchResult(best, part)


def _explore(n: int, at: Callable[[int], Outcome]) -> str:
    """Which prefixes to measure; returns why the search stopped. Memory fits from some k on (each
    per-tensor layer frees bytes); the floor holds up to some k (each costs accuracy): the cheapest
    passing prefix is the largest k that holds the floor, if it also fits."""
    first = at(0)
    if n == 0:
        return "no layer has per-channel weights: the converter's recipe is the only one"
    last = at(n)
    if last.passed:
        return "per-tensor weights everywhere pass the gate: the cheapest recipe of this space"
    if not last.fits:
        return "even per-tensor weights everywhere do not fit the budgets: no recipe of this space fits"
    if not first.accurate:
        return "the converter's recipe already misses the accuracy floor; more per-tensor layers only lose more"
    low, high = 0, n  # accurate at low, not at high
    while high - low > 1:
        mid = (low + high) // 2
        if at(mid).accurate:
            low = mid
        else:
            high = mid
    if at(low).passed:
        return (f"bisected between 0 and {n} per-tensor layers: {low} is the most that keep the accuracy floor, "
                "and it fits")
    return (f"bisected between 0 and {n} per-tensor layers: {low} keep the floor but do not fit, {high} "
            f"{'fit but ' if at(high).fits else ''}miss the floor")


def _label(k: int, n: int) -> str:
    if k == 0:
        return "per channel everywhere (the converter's default)"
    if k == n:
        return "per tensor everywhere"
    return f"per tensor in {k} of {n} layers"
