"""The order the C runs the ops in: the topological order with the fewest activation bytes alive at
once, for graphs with branches, where the converter's order is only one of many.

Every topological order computes the same outputs (the ops have no side effects), but not with
the same memory: finishing one branch before starting the next frees its intermediates early.
The search walks topological orders depth first, counting the bytes alive during each op (its
inputs that are still needed, its outputs, everything waiting for a later op), and cuts every
partial order that already needs more than the best complete one. It stops after `budget` steps
and keeps the best order found; the converter's order is always a candidate.
"""

from __future__ import annotations

from dataclasses import replace

from edgeq.tflite.arena_plan import activation_buffers
from edgeq.tflite.model_info import ModelInfo


def _sizes(info: ModelInfo) -> dict[int, int]:
    buffers = activation_buffers(info) or []
    return {b.tensor: b.size for b in buffers}


def peak_bytes(info: ModelInfo, order: tuple[int, ...], sizes: dict[int, int] | None = None) -> int:
    """The most activation bytes alive during any op when the ops run in `order` (positions in info.ops)."""
    sizes = _sizes(info) if sizes is None else sizes
    readers: dict[int, int] = {}
    for op in info.ops:
        for i in op.inputs:
            if i in sizes:
                readers[i] = readers.get(i, 0) + 1
    keep = set(info.outputs)
    live = {i for i in info.inputs if i in sizes}
    current = sum(sizes[i] for i in live)
    peak = current
    for position in order:
        op = info.ops[position]
        new = [i for i in op.outputs if i in sizes and i not in live]
        current += sum(sizes[i] for i in new)
        live.update(new)
        peak = max(peak, current)
        for i in op.inputs:
            if i in readers:
                readers[i] -= 1
                if readers[i] == 0 and i not in keep and i in live:
                    live.discard(i)
                    current -= sizes[i]
    return peak


def best_order(info: ModelInfo, budget: int = 20_000) -> tuple[int, ...]:
    """A topological order of info.ops (as positions) with the lowest peak found within `budget` steps."""
    sizes = _sizes(info)
    n = len(info.ops)
    producer = {t: k for k, op in enumerate(info.ops) for t in op.outputs}
    needs = [{producer[i] for i in op.inputs if i in producer and producer[i] != k} for k, op in enumerate(info.ops)]
    best = tuple(range(n))
    best_peak = peak_bytes(info, best, sizes)
    steps = 0

    def walk(order: list[int], done: set[int]) -> None:
        nonlocal best, best_peak, steps
        steps += 1
        if steps > budget:
            return
        if len(order) == n:
            peak = peak_bytes(info, tuple(order), sizes)
            if peak < best_peak:
                best, best_peak = tuple(order), peak
            return
        if peak_bytes_prefix(info, order, sizes) >= best_peak:
            return  # this prefix already needs as much as the best complete order
        for k in range(n):
            if k not in done and needs[k] <= done:
                order.append(k)
                done.add(k)
                walk(order, done)
                done.discard(k)
                order.pop()

    walk([], set())
    return best


def peak_bytes_prefix(info: ModelInfo, order: list[int], sizes: dict[int, int]) -> int:
    """The peak of a partial order: a lower bound of any order that starts with it."""
    return peak_bytes(info, tuple(order), sizes) if order else 0


def scheduled(info: ModelInfo) -> ModelInfo:
    """`info` with its ops in the best order found (unchanged when the converter's is as good)."""
    order = best_order(info)
    if order == tuple(range(len(info.ops))):
        return info
    return replace(info, ops=tuple(info.ops[k] for k in order))

