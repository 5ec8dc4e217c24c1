"""Defaults that `--help` shows and the library's signatures use, each defined once.

No imports: the CLI reads them at start-up, before any heavy module loads.
"""

DEFAULT_MAX_ACCURACY_DROP = 1.0  # percentage points of top-1, float Keras vs quantized on the device runtime
