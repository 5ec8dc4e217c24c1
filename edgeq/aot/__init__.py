"""Ahead-of-time C: a quantized .tflite as plain C99 with no interpreter.

`lower()` (lower.py) turns a model the checked reader accepted into one step per op, each with the
constants its kernel needs (multipliers and shifts, offsets, activation ranges, padding) worked out
by that op's lowering in kernels/, the way TFLite Micro's Prepare() works them out on the device.
`emit_c()` (emit.py) writes the steps as `<name>_model.c/.h` from the Jinja templates: the weights
as const arrays, one function per op, a static activation arena planned by
edgeq/tflite/arena_plan.py, and `<name>_invoke()`.

The arithmetic is integer-only and bit-exact with TFLM's reference kernels (the tests compare
bytes with the TFLM Python interpreter on converter-made models). An op, dtype or option the
backend lacks is refused by name.
"""
