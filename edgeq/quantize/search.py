"""Recipe search: the cheapest recipe that passes the gate, found with few candidates.

The space, from the cheapest lever to the dearest:
1. The weight granularity of each layer (per channel, or one scale per tensor), which decides most
   of what TFLite Micro keeps per layer in its persistent arena (a multiplier and a shift per output
   channel). This is the memory lever: more per-tensor layers, less RAM, (about) less accuracy.
2. When no recipe of (1) keeps the accuracy floor, the accuracy levers, each tried only if the ones
   before it did not pass:
   - more calibration samples (all the calibration set has, up to a cap) for the recipe that fits
     and comes closest to the floor;
   - int16 activations for the layers that lose most in int8 (the QuantizationDebugger's error of
     each layer's output, worst first), and the whole model in int16x8, where the target allows
     int16x8; each costs about twice those layers' activation RAM;
   - quantization-aware training, the last resort, where there is training data.

Each candidate is measured the way `convert` measures one model (`evaluate`): the real TFLM arena,
accuracy on the held-out data in the device's runtime, flash, every check of the gate.

How it orders (1), so that it needs few candidates:
- Layers are taken in order of bytes saved per unit of damage: a layer's channels over how much
  one scale for all its channels disturbs its weights (`WeightedLayer.weight_error`).
- The candidates are the prefixes of that order: the first k layers per tensor. The search first
  measures the two ends (k = 0, the converter's default, and k = n, per tensor everywhere) and,
  when neither passes but k = n fits the budgets, bisects for the largest k that still keeps the
  quality floor: log2(n) candidates more.
- If that prefix does not fit, the next layer in order costs too much accuracy: it tries the
  prefix with each later layer instead (at most n more, as one batch) and takes the first that
  passes. tests/unit/test_search.py compares this with every subset on a stand-in model.
The int16 layers are bisected the same way: the fewest of the worst layers that keep the floor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from edgeq.quantize.granularity import WeightedLayer
from edgeq.records import Record, optional


@dataclass(frozen=True)
class Choice:
    """One recipe of the space, as a change to the converter's default (int8, per channel)."""

    per_tensor: frozenset[str] = frozenset()  # layers with one weight scale
    int16: frozenset[str] = frozenset()       # layers with int16 activations (the rest int8)
    int16x8: bool = False                     # the whole model in int16x8 (int16 I/O too)
    calibration_samples: int = 0              # 0: the recipe's own number
    qat: bool = False                         # quantization-aware training, then the converter

    def order(self) -> tuple[object, ...]:
        return (self.qat, self.int16x8, len(self.int16), self.calibration_samples, len(self.per_tensor),
                sorted(self.per_tensor), sorted(self.int16))


@dataclass(frozen=True)
class Outcome:
    """What one candidate measured: whether every check passed, whether the memory checks and the
    accuracy check did, its RAM, flash and latency totals, its quality (higher is better: top-1 %,
    else the first output's SNR in dB) and the checks it failed."""

    passed: bool
    fits: bool       # the flash and RAM checks passed
    accurate: bool   # the accuracy check passed (or had nothing to check)
    ram_bytes: int | None
    flash_bytes: int
    quality: float | None
    failed: tuple[str, ...] = ()
    latency_ms: float | None = None
    metric: str = ""  # what `quality` measures (the report's quality_metric)


@dataclass(frozen=True)
class Levers:
    """What the search may try when no weight granularity keeps the floor (see the module's doc)."""

    calibration_samples: int = 0  # more samples than the recipe's to calibrate on (0: there are no more)
    # Steps of layers to give int16 activations, the worst in int8 first: each a layer with the layers
    # its output feeds (an int16 output is only kept if its readers take int16).
    int16: Sequence[Sequence[str]] = ()
    int16x8: bool = False         # the target allows the whole model in int16x8
    qat: bool = False             # there is training data for QAT


@dataclass(frozen=True)
class CandidatePart(Record):
    """One recipe the search measured: which layers had per-tensor weights (and int16 activations),
    its calibration and method, and what it measured."""

    label: str
    per_tensor_layers: list[str]
    passed: bool
    fits: bool
    ram_bytes: int | None
    flash_bytes: int
    quality: float | None
    failed_checks: list[str]
    chosen: bool
    int16_layers: list[str] | None = optional()
    mode: str | None = optional()                 # "int16x8" for the whole model so; left out for int8
    calibration_samples: int | None = optional()  # left out: the recipe's own number
    method: str | None = optional()               # "qat"; left out for post-training quantization
    latency_ms: float | None = optional()


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
    chosen: Choice | None  # None: nothing passed
    part: SearchPart


def saving(layer: WeightedLayer, objective: str) -> int:
    """Bytes one scale for the layer saves. RAM: TFLite Micro's FULLY_CONNECTED keeps a multiplier and
    a shift (8 bytes) per output channel in its persistent arena only when its weights have more than
    one scale; CONV_2D and DEPTHWISE_CONV_2D size those arrays by their output channels either way, so
    for them it saves nothing. Flash: the per-channel scales (4 bytes each) in the .tflite. Latency:
    nothing (the kernels do the same work either way)."""
    if objective == "ram":
        return 8 * layer.channels if layer.op == "FULLY_CONNECTED" else 0
    if objective == "latency":
        return 0
    return 4 * (layer.channels - 1)


def ordered(layers: Sequence[WeightedLayer], objective: str = "ram") -> list[WeightedLayer]:
    """The layers worth switching, most bytes saved per unit of weight damage first; ties by graph
    order (deterministic)."""
    useful = [l for l in layers if saving(l, objective) > 0]
    return sorted(useful, key=lambda l: (-saving(l, objective) / max(l.weight_error, 1e-9), l.op_index))


class _Measured:
    """The candidates measured so far, in batches through `evaluate`."""

    def __init__(self, evaluate: Callable[[list[Choice]], list[Outcome]], on_step: Callable[[str], None],
                 width: int = 1) -> None:
        self.evaluate, self.on_step, self.width = evaluate, on_step, max(1, width)
        self.outcomes: dict[Choice, Outcome] = {}
        self.rounds = 0  # batches measured (each a round of the executor)

    def batch(self, choices: list[Choice], what: str) -> None:
        todo = [c for k, c in enumerate(choices) if c not in self.outcomes and c not in choices[:k]]
        if todo:
            done = len(self.outcomes)
            self.on_step(f"search: candidate{'s' if len(todo) > 1 else ''} {done + 1}"
                         + (f"-{done + len(todo)}" if len(todo) > 1 else "") + f", {what}")
            self.outcomes.update(zip(todo, self.evaluate(todo)))
            self.rounds += 1

    def boundary(self, low: int, high: int, holds: Callable[[int], bool], choice: Callable[[int], Choice],
                 what: Callable[[int], str]) -> tuple[int, int]:
        """Narrow [low, high] (`holds(low)`, not `holds(high)`, monotone between) until high = low + 1.
        Each round measures up to `width` points spread over the interval as one batch: a k-ary
        bisection, log_(width+1) rounds instead of log_2 when an executor has `width` workers."""
        while high - low > 1:
            points = sorted({low + max(1, min(high - low - 1, round((high - low) * (i + 1) / (self.width + 1))))
                             for i in range(self.width)})
            self.batch([choice(p) for p in points], what(points[0]) if len(points) == 1 else
                       what(", ".join(str(p) for p in points)))  # type: ignore[arg-type]
            for p in points:
                if holds(p):
                    low = p
                else:
                    high = p
                    break
        return low, high

    def of(self, choice: Choice, what: str) -> Outcome:
        self.batch([choice], what)
        return self.outcomes[choice]


def search(layers: Sequence[WeightedLayer], evaluate: Callable[[list[Choice]], list[Outcome]], *,
           quality_metric: str = "", objective: str = "ram", exhaustive: bool = False,
           levers: Callable[[], Levers] = Levers, width: int = 1,
           on_step: Callable[[str], None] = lambda message: None) -> SearchResult:
    """Measure prefixes of `ordered(layers)` with `evaluate` (then, where the bisection's boundary
    fails, the boundary prefix plus one more layer, each in turn), then what `levers()` offers if
    nothing passed, and choose the cheapest that passes. `evaluate` takes a batch of independent
    candidates and returns their outcomes in order: an executor may measure a batch at once, and
    with `width` > 1 (its workers) each bisection round measures that many points together."""
    order = ordered(layers, objective)
    n = len(order)
    seen = _Measured(evaluate, on_step, width)

    def prefix(k: int) -> Choice:
        return Choice(per_tensor=frozenset(l.name for l in order[:k]))

    def what(k: int | str) -> str:
        return f"per-tensor weights in {k} of {n} layers"

    if exhaustive:  # `edgeq search`: the whole table, every prefix of the order
        seen.batch([prefix(k) for k in range(n + 1)], what(f"0-{n}"))
        why = f"measured every prefix of the order, 0 to {n} per-tensor layers (edgeq search)"
    else:
        seen.batch([prefix(0), prefix(n)], what(f"0 and {n}"))  # the two ends are independent
        why = _explore(n, seen, prefix, what)
    if not any(o.passed for o in seen.outcomes.values()) and why.startswith("bisected"):
        low = max((len(c.per_tensor) for c, o in seen.outcomes.items() if o.accurate), default=0)
        base = prefix(low).per_tensor
        swaps = [Choice(per_tensor=base | {layer.name}) for layer in order[low + 1:]]
        seen.batch(swaps, f"the first {low} per-tensor layers and one other")  # independent: one batch
        passing = next((c for c in swaps if seen.outcomes[c].passed), None)
        why += (f"; then the first {low} with '{sorted(passing.per_tensor - base)[0]}' instead of the next in "
                "order passed" if passing else f"; nor does the first {low} with any one other layer")
    resolved: list[Levers] = []
    if not any(o.passed for o in seen.outcomes.values()):
        why += _accuracy_levers(seen, levers, resolved)
    cost = {"flash": lambda c: seen.outcomes[c].flash_bytes,
            "latency": lambda c: seen.outcomes[c].latency_ms or 0.0}.get(objective,
                                                                       lambda c: seen.outcomes[c].ram_bytes or 0)
    passing_choices = [c for c, o in seen.outcomes.items() if o.passed]
    best = min(passing_choices, key=lambda c: (cost(c), -(seen.outcomes[c].quality or 0.0), c.order())) \
        if passing_choices else None
    quality_metric = quality_metric or next((o.metric for o in seen.outcomes.values()), "")
    part = SearchPart(space=_space(objective, resolved[0] if resolved else None), quality_metric=quality_metric,
                      objective=objective, layers=n,
                      tried=len(seen.outcomes), stopped_because=why,
                      candidates=[_candidate(c, o, order, c == best)
                                  for c, o in sorted(seen.outcomes.items(), key=lambda item: item[0].order())])
    return SearchResult(best, part)


def _accuracy_levers(seen: _Measured, offered: Callable[[], Levers], resolved: list[Levers]) -> str:
    """When no granularity passed: more calibration, int16 activations, QAT, in that order, for the
    recipe that fits and comes closest to the floor; returns what they did, for `stopped_because`.
    `offered()` is asked (into `resolved`) only if some recipe fits: it takes a conversion and a
    debugger run to find the int16 layers."""
    fitting = [(c, o) for c, o in seen.outcomes.items() if o.fits]
    if not fitting:
        return ""  # the accuracy levers cost memory or nothing: none of them makes a recipe fit
    resolved.append(offered())
    levers = resolved[0]
    base = max(fitting, key=lambda item: (item[1].quality if item[1].quality is not None else float("-inf"),
                                          -len(item[0].per_tensor)))[0]
    notes = []
    if levers.calibration_samples:
        more = replace(base, calibration_samples=levers.calibration_samples)
        if seen.of(more, f"calibrated on {levers.calibration_samples} samples").passed:
            return (f"; calibrating the fitting recipe closest to the floor on {levers.calibration_samples} samples "
                    "made it pass")
        notes.append(f"calibrating on {levers.calibration_samples} samples did not pass")
    default = seen.outcomes.get(Choice())
    if (levers.int16 or levers.int16x8) and default is not None and default.fits and not default.accurate:
        note = _int16(seen, levers, Choice())  # on the converter's default: int16 layers take its weights
        if note.startswith("passed:"):
            return "; " + "; ".join(notes + [note.removeprefix("passed: ")])
        notes.append(note)
    elif (levers.int16 or levers.int16x8) and (default is None or not default.fits):
        notes.append("int16 activations were not tried: they add RAM, and the converter's default does not fit")
    if levers.qat:
        if seen.of(Choice(qat=True), "quantization-aware training (the last resort)").passed:
            return "; " + "; ".join(notes + ["quantization-aware training passes"])
        notes.append("quantization-aware training did not pass either")
    else:
        notes.append("QAT was not tried: it needs training data (--train)")
    return "; " + "; ".join(notes) if notes else ""


def _int16(seen: _Measured, levers: Levers, base: Choice) -> str:
    """The fewest of the worst layers in int16 that keep the floor (bisected), with the whole model in
    int16x8 measured next to all of them; "passed: ..." when one passes."""
    steps = list(levers.int16)
    m = len(steps)

    def first(j: int) -> Choice:
        return replace(base, int16=frozenset(name for step in steps[:j] for name in step))

    ends = ([first(m)] if m else []) + ([Choice(int16x8=True)] if levers.int16x8 else [])
    seen.batch(ends, "int16 activations in every layer that takes them" + (" and the whole model" if m else ""))
    if m and seen.outcomes[first(m)].accurate:  # not accurate with none, accurate with all m
        _, high = seen.boundary(0, m, lambda j: not seen.of(first(j), f"int16 activations for the {j} worst").accurate,
                                first, lambda j: f"int16 activations for the {j} worst of {m} layers")
        if seen.outcomes[first(high)].passed:
            note = (f"passed: int16 activations for the {high} worst of {m} layers (and the layers they feed) keep the "
                    "floor, and it fits")
            whole = seen.outcomes.get(Choice(int16x8=True))
            return note + ("; so does the whole model in int16x8" if whole is not None and whole.passed else "")
        note = f"int16 activations for the {high} worst of {m} layers keep the floor but do not fit"
    else:
        note = f"int16 activations in all {m} layers that take them do not keep the floor" if m else \
            "no layer takes int16 activations alone"
    whole = seen.outcomes.get(Choice(int16x8=True))
    if whole is not None and whole.passed:
        return f"passed: {note}; the whole model in int16x8 passes"
    return note + ("; nor does the whole model in int16x8" if whole is not None else "")


def _space(objective: str, levers: Levers | None) -> str:
    text = f"weight granularity per layer (per channel, or one scale per tensor), layers ordered by {objective} " \
           "bytes saved over weight error" if objective != "latency" else \
        "weight granularity per layer (per channel, or one scale per tensor)"
    if levers is None:
        return text + "; the accuracy levers (more calibration, int16 activations, QAT) were not needed"
    extra = (["more calibration samples"] if levers.calibration_samples else []) \
        + (["int16 activations per layer, worst in int8 first"] if levers.int16 else []) \
        + (["int16x8"] if levers.int16x8 else []) + (["QAT"] if levers.qat else [])
    return text + ("; as none kept the floor: " + ", ".join(extra) if extra else "; no accuracy lever applies")


def _candidate(c: Choice, o: Outcome, order: list[WeightedLayer], chosen: bool) -> CandidatePart:
    return CandidatePart(_label(c, order), sorted(c.per_tensor), o.passed, o.fits, o.ram_bytes, o.flash_bytes,
                         o.quality, list(o.failed), chosen, int16_layers=sorted(c.int16) or None,
                         mode="int16x8" if c.int16x8 else None, calibration_samples=c.calibration_samples or None,
                         method="qat" if c.qat else None, latency_ms=o.latency_ms)


def _label(c: Choice, order: list[WeightedLayer]) -> str:
    n, k = len(order), len(c.per_tensor)
    if c.qat:
        return "quantization-aware training, per channel"
    if c.int16x8:
        return "int16x8 everywhere"
    names = [l.name for l in order]
    if k == 0:
        text = "per channel everywhere (the converter's default)" if not c.int16 else "per channel"
    elif k == n:
        text = "per tensor everywhere"
    elif c.per_tensor == frozenset(names[:k]):
        text = f"per tensor in {k} of {n} layers"
    else:
        last = next(x for x in reversed(names) if x in c.per_tensor)
        text = f"per tensor in {k} of {n} layers: the first {k - 1} and {last.split('/')[-2] if '/' in last else last}"
    if c.int16:
        text += f", int16 activations in {len(c.int16)} layer{'s' if len(c.int16) > 1 else ''}"
    if c.calibration_samples:
        text += f", calibrated on {c.calibration_samples} samples"
    return text


def _explore(n: int, seen: _Measured, prefix: Callable[[int], Choice], what: Callable[[int | str], str]) -> str:
    """Which prefixes to measure; returns why the search stopped. Memory fits from some k on (each
    per-tensor layer frees bytes); the floor holds up to some k (each costs accuracy): the cheapest
    passing prefix is the largest k that holds the floor, if it also fits."""
    def at(k: int) -> Outcome:
        return seen.of(prefix(k), what(k))

    first = at(0)
    if n == 0:
        return "no layer has per-channel weights worth switching: the converter's granularity is the only one"
    last = at(n)
    if last.passed:
        return "per-tensor weights everywhere pass the gate: the cheapest recipe of this space"
    if not last.fits:
        return "even per-tensor weights everywhere do not fit the budgets: no recipe of this space fits"
    if not first.accurate:
        return "the converter's recipe already misses the accuracy floor; more per-tensor layers only lose more"
    low, high = seen.boundary(0, n, lambda k: at(k).accurate, prefix, what)  # accurate at low, not at high
    if at(low).passed:
        return (f"bisected between 0 and {n} per-tensor layers: {low} is the most that keep the accuracy floor, "
                "and it fits")
    return (f"bisected between 0 and {n} per-tensor layers: {low} keep the floor but do not fit, {high} "
            f"{'fit but ' if at(high).fits else ''}miss the floor")
