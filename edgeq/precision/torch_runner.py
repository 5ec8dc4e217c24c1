"""`edgeq precision` on a PyTorch model: the same formats, on the nn.Module's own weights.

Kernels are the `weight` of every Conv and Linear module; their output channel is axis 0 (axis 1
for a transposed convolution), which is where TFLite (and PT2E) quantize per channel, and a
depthwise convolution's kernel is [C x multiplier, 1, kh, kw], so axis 0 again. BatchNorm
parameters and running statistics, biases and the rest stay FP32 in the integer formats, as in
the Keras path. The BF16 / FP16 activation variants run the whole module in that dtype (inputs
cast, outputs read back as float32).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from edgeq.precision.results import DotProduct
from edgeq.precision.runner import Runner, WeightInfo, dot_errors

_CONV = ("Conv1d", "Conv2d", "Conv3d")
_TRANSPOSED = ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


def torch_runner(module: Any) -> Runner:
    """A Runner over `module` (eval mode): state_dict floats in, out; forward in float32, or with
    the module and inputs cast to a float dtype."""
    import torch

    module.eval()
    owners = {f"{name}.{p}" if name else p: sub for name, sub in module.named_modules()
              for p, _ in sub.named_parameters(recurse=False)}
    state = module.state_dict()
    names = [k for k, v in state.items() if torch.is_floating_point(v)]
    meta = []
    for i, key in enumerate(names):
        owner = owners.get(key)
        kind = type(owner).__name__ if owner is not None else ""
        leaf = key.rsplit(".", 1)[-1]
        kernel = leaf == "weight" and kind in (*_CONV, *_TRANSPOSED, "Linear") and state[key].dim() >= 2
        axis = 1 if kind in _TRANSPOSED else 0
        meta.append(WeightInfo(i, key.rsplit(".", 1)[0] or key, leaf, kernel, False, axis))
    weights = [state[k].detach().cpu().numpy().astype(np.float32) for k in names]
    dtypes = {k: state[k].dtype for k in names}

    def set_weights(values: list[np.ndarray]) -> None:
        with torch.no_grad():
            module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)).to(dtypes[k])
                                    for k, v in zip(names, values)}, strict=False)

    def run(xs: Sequence[np.ndarray], dtype: Any = None, batch: int = 256) -> np.ndarray:
        runner = module if dtype is None else _cast(module, dtype)
        outs = []
        with torch.no_grad():
            for start in range(0, len(xs[0]), batch):
                chunk = [torch.from_numpy(np.ascontiguousarray(x[start:start + batch], dtype=np.float32)) for x in xs]
                if dtype is not None:
                    chunk = [c.to(dtype) for c in chunk]
                out = runner(*chunk)
                out = out[0] if isinstance(out, (tuple, list)) else out
                outs.append(out.float().numpy())
        return np.concatenate(outs)

    def run_in(dtype_name: str, xs: Sequence[np.ndarray]) -> np.ndarray:
        return run(xs, {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype_name])

    return Runner(weights, meta, set_weights, run, run_in, lambda xs, on_step: _dot_products(module, xs, on_step))


def _cast(module: Any, dtype: Any) -> Any:
    import copy

    return copy.deepcopy(module).to(dtype)


def _dot_products(module: Any, inputs: Sequence[np.ndarray], on_step: Callable[[str], None]) -> list[DotProduct]:
    """For each Linear and plain Conv2d (no groups, no dilation): one output element from the
    module's real input on the first sample (a forward pre-hook catches it), as the Keras path."""
    import torch

    on_step("dot products per layer")
    seen: dict[str, np.ndarray] = {}
    wanted = {name: sub for name, sub in module.named_modules()
              if type(sub).__name__ == "Linear" or (type(sub).__name__ == "Conv2d" and sub.groups == 1
                                                    and tuple(sub.dilation) == (1, 1))}
    def catch(name: str) -> Callable[..., None]:
        def hook(sub: Any, args: tuple[Any, ...]) -> None:  # returns None: the input goes on unchanged
            seen.setdefault(name, args[0].detach().float().numpy()[0].copy())

        return hook

    hooks = [sub.register_forward_pre_hook(catch(name)) for name, sub in wanted.items()]
    try:
        with torch.no_grad():
            module(*[torch.from_numpy(np.ascontiguousarray(x[:1], dtype=np.float32)) for x in inputs])
    finally:
        for hook in hooks:
            hook.remove()
    out = []
    for name, sub in wanted.items():
        if name not in seen:
            continue
        x = seen[name]
        kernel = sub.weight.detach().float().numpy()
        if type(sub).__name__ == "Linear":
            vector, weights = x.reshape(-1, x.shape[-1])[0], kernel.T
        else:
            patch = _center_patch(x, sub)
            if patch is None:
                continue
            vector, weights = patch, kernel.reshape(kernel.shape[0], -1).T
        products = vector[:, None] * weights
        j = int(np.argmax(np.abs(products.sum(axis=0))))
        w = weights[:, j]
        out.append(DotProduct(name, int(w.size), float(np.dot(vector.astype(np.float64), w.astype(np.float64))),
                              dot_errors(vector.astype(np.float32), w.astype(np.float32))))
    return out


def _center_patch(x: np.ndarray, conv: Any) -> np.ndarray | None:
    """The [C, kh, kw] input patch behind the centre output pixel of a Conv2d, flattened as its
    kernel is ([out, C, kh, kw] -> C, kh, kw)."""
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            ph = pw = 0
        else:  # "same" (stride 1 only in torch)
            ph, pw = (kh - 1) // 2, (kw - 1) // 2
    else:
        ph, pw = conv.padding
    if conv.padding_mode != "zeros":
        return None
    padded = np.pad(x, ((0, 0), (ph, ph + kh), (pw, pw + kw)))
    _, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        return None
    r, c = (oh // 2) * sh, (ow // 2) * sw
    patch = padded[:, r:r + kh, c:c + kw]
    return patch.reshape(-1) if math.prod(patch.shape) == x.shape[0] * kh * kw else None
