"""The one place TensorFlow is imported, quietly, and the one way to silence its C++ chatter.

TensorFlow costs ~5 s to import: only code paths that need a model call `tf()`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from types import ModuleType


def tf() -> ModuleType:
    verbose = bool(os.environ.get("EDGEQ_VERBOSE"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-stable float reference outputs
    import sys

    # TFLite's converter imports jax at start-up when it is installed (litert-torch brings it), only
    # to convert jax functions, which edgeq never does: 0.8 s more per process. Hide it while
    # TensorFlow starts; litert-torch imports it later, as it needs it.
    hidden = "jax" not in sys.modules
    if hidden:
        sys.modules["jax"] = None  # type: ignore[assignment]  # `import jax` raises ImportError
    try:
        import tensorflow
    finally:
        if hidden and sys.modules.get("jax", 0) is None:
            del sys.modules["jax"]

    tensorflow.get_logger().setLevel("INFO" if verbose else "ERROR")
    return tensorflow


class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Redirect the process's stdout and stderr *file descriptors* into a buffer.

    The converter and Keras export print from C++ and Python alike; users should see edgeq's
    summary, not hundreds of lines of MLIR diagnostics. The text is kept so that a failure
    can quote the relevant lines. Set EDGEQ_VERBOSE=1 to let everything through.
    """
    result = Captured()
    if os.environ.get("EDGEQ_VERBOSE"):
        yield result
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield result
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            result.text = sink.read().decode(errors="replace")
