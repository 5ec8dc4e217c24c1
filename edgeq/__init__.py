"""edgeq: take a trained Keras model to a microcontroller, an IoT board or a phone.

Importing the package is cheap: nothing here imports TensorFlow. Heavy modules
(`edgeq.pipeline`, `edgeq.loading`, `edgeq.quantize`) import it when first used.
"""

from edgeq._version import __version__  # noqa: F401 (edgeq.__version__)


def convert(model, target="mcu", options=None, *, example_input=None, **kwargs):  # type: ignore[no-untyped-def]
    """`edgeq.pipeline.convert`, which also takes a PyTorch `nn.Module` in memory: give
    `example_input` (a tensor of one sample's shape, batch 1, NCHW as the module takes it, or a
    tuple of them). The module is exported with torch.export next to nothing else (a temporary
    .pt2) and converted as `edgeq convert MODEL.pt2 --trust-model` would: it is your own object,
    so it is trusted. Keyword arguments go to `edgeq.pipeline.convert` (on_step, progress, worker).
    """
    from edgeq.pipeline import convert as run

    from edgeq.frontends import in_memory_model, saved_model_file

    if in_memory_model(model):
        import tempfile
        from dataclasses import replace
        from pathlib import Path

        from edgeq.pipeline import ConvertOptions

        options = options or ConvertOptions()
        name = options.name or type(model).__name__.lower()
        with tempfile.TemporaryDirectory(prefix="edgeq-torch-") as folder:
            path = saved_model_file(model, example_input, Path(folder) / name)
            return run(path, target, replace(options, trust_model=True, name=name), **kwargs)
    return run(model, target, options, **kwargs)
