"""The c runtime's kernels: for each op it runs, the function that lowers one such op to a Step.

A family module holds the lowerings of related ops, each registered for its op names with
`@lowers(...)` (kernels/base.py): conv (FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D), pool
(MAX_POOL_2D, AVERAGE_POOL_2D, MEAN), elementwise (ADD, MUL), activation (RELU, RELU6, SOFTMAX,
LOGISTIC, TANH, HARD_SWISH), shape (RESHAPE, PAD, PADV2, TRANSPOSE, CONCATENATION, PACK, SPLIT,
SPLIT_V, UNPACK) and quantize (QUANTIZE, DEQUANTIZE). An op whose activations are all float32 has
a lowering of its own, registered with `@lowers(..., float32=True)`. A lowering works out what TFLM's Prepare()
would and returns a Step whose `kernel` names its template, edgeq/templates/aot_<kernel>.j2, or
raises TargetCheckError naming what it does not take. Adding a kernel is one such function in
the family it belongs to (or a new family module imported below) plus its template.
"""

from __future__ import annotations

from edgeq.aot.kernels import (  # noqa: F401 (they register)
    activation,
    conv,
    elementwise,
    float32,
    pool,
    quantize,
    recurrent,
    shape,
)
from edgeq.aot.kernels.base import (
    CTYPES,
    ELEMENT_BYTES,
    FLOAT_LOWERINGS,
    HINT,
    LOWERINGS,
    Constants,
    Lowering,
    Step,
    is_float_op,
    lowering_for,
    lowers,
    tensor_bytes,
)

KERNELS = tuple(sorted(LOWERINGS))
"""The op names the c runtime has a quantized kernel for (edgeq/data/targets/op_sets/c.toml is made from it)."""

FLOAT_KERNELS = tuple(sorted(FLOAT_LOWERINGS))
"""The op names the c runtime has a float32 kernel for."""

__all__ = ["CTYPES", "ELEMENT_BYTES", "FLOAT_KERNELS", "FLOAT_LOWERINGS", "HINT", "KERNELS", "LOWERINGS", "Constants",
           "Lowering", "Step", "is_float_op", "lowering_for", "lowers", "tensor_bytes"]
