"""How many samples to run through a model at once: as many as its activations let fit in a memory
budget, never more than the usual batch.

A float reference, a LiteRT run or a debugger pass over 100 MobileNetV2 images in one batch holds
every intermediate of every image: gigabytes where the converter itself needs one. So wherever edgeq
runs a model on many samples it asks `batch_for(bytes_per_sample)`, with the model's activation
bytes per sample (its intermediate tensors, summed: what one sample can hold alive at worst), and
runs that many at a time. The budget is 512 MiB unless `EDGEQ_MEMORY_BUDGET` says otherwise
(bytes, or with a K, M or G suffix: `EDGEQ_MEMORY_BUDGET=2G`).
"""

from __future__ import annotations

import os
import re

from edgeq.errors import EdgeqError

DEFAULT_BUDGET_BYTES = 512 << 20
"""What one batch's activations may take: enough for the bundled models in one batch, MobileNetV2 at
224x224 in batches of a few images."""

DEFAULT_BATCH = 256
"""The batch when memory is no limit (it was the only one before the budget)."""

ENV = "EDGEQ_MEMORY_BUDGET"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def memory_budget() -> int:
    """The budget in bytes: EDGEQ_MEMORY_BUDGET if set (EdgeqError, exit 2, if it does not read as a
    size), else DEFAULT_BUDGET_BYTES."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_BYTES
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?", text, flags=re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise EdgeqError(f"{ENV}={text!r} is not a memory size",
                         hint=f"give bytes, or a number with K, M or G: {ENV}=512M, {ENV}=2G")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def batch_for(bytes_per_sample: int | None, cap: int = DEFAULT_BATCH) -> int:
    """Samples per batch: as many as fit the budget at `bytes_per_sample`, between 1 and `cap`
    (`cap` itself when the size is not known)."""
    if not bytes_per_sample or bytes_per_sample <= 0:
        return cap
    return max(1, min(cap, memory_budget() // int(bytes_per_sample)))


def layer_output_bytes(keras_model: object) -> int | None:
    """Bytes of a Keras model's layer outputs for one float32 sample (its symbolic output shapes,
    batch left out); None when there are none to read."""
    total = 0
    for layer in getattr(keras_model, "layers", ()):
        try:
            outputs = layer.output
        except (AttributeError, ValueError):  # a layer never called on a symbolic input
            continue
        for t in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            count = 1
            for d in tuple(getattr(t, "shape", ()))[1:]:
                count *= int(d) if d is not None else 1
            total += 4 * count
    return total or None


def module_output_bytes(module: object, call: object) -> int:
    """Bytes of every submodule's tensor outputs while `call()` runs `module` once (a torch module,
    through forward hooks; 0 when the call fails: the real run says why)."""
    sizes: list[int] = []

    def count(_module: object, _args: object, output: object) -> None:
        for t in output if isinstance(output, (tuple, list)) else [output]:
            if hasattr(t, "numel") and hasattr(t, "element_size"):
                sizes.append(int(t.numel()) * int(t.element_size()))

    hooks = [m.register_forward_hook(count) for m in module.modules() if m is not module]  # type: ignore[attr-defined]
    try:
        call()  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - predict() reports what is wrong with the data
        return 0
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes)


def batch_note(batch: int) -> str:
    """' in batches of N (...)' when the budget made the batch smaller than the default, else ''."""
    if batch >= DEFAULT_BATCH:
        return ""
    return f" in batches of {batch} (memory budget {memory_budget() >> 20} MiB; {ENV} changes it)"
