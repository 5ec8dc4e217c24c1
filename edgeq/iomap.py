"""Which data array feeds which input of a .tflite, and which output is which.

The converter may order a model's inputs and outputs differently from Keras (a model with
inputs `image, vector` came out `vector, image`), so nothing is matched by position. Data
arrays carry the model's input names (x0, x1 in Keras order, or x_<name>); the .tflite's
signature names its tensors; one mapping, used wherever inputs are fed or outputs read.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgeq.errors import CalibrationError
from edgeq.tflite.reader import ModelInfo


def graph_order(names: Sequence[str], graph_names: Sequence[str], *, what: str = "input") -> list[int]:
    """For each graph input (or output), in the graph's order, its position among `names`.

    `names`: the model's names, in the order the data (or the caller) holds them. `graph_names`:
    the .tflite signature's names, in the graph's order ("" where the file has none). Without
    a usable signature, the graph's order is taken as the model's.
    """
    identity = list(range(len(graph_names)))
    if len(names) != len(graph_names):
        raise CalibrationError(f"the model has {len(graph_names)} {what}(s) but {len(names)} were given",
                               hint=f"pass one array per model {what}")
    if len(names) < 2 or not all(graph_names) or sorted(names) != sorted(graph_names):
        return identity
    return [list(names).index(n) for n in graph_names]


def to_graph_inputs(arrays: Sequence, names: Sequence[str], info: ModelInfo) -> list:
    """The data arrays (held in the order of `names`) in the .tflite's input order."""
    return [arrays[i] for i in graph_order(names, info.input_names)]


def from_graph_outputs(outputs: Sequence, names: Sequence[str], info: ModelInfo) -> list:
    """The .tflite's outputs (in its order) in the order of `names` (the model's outputs)."""
    order = graph_order(names, info.output_names, what="output")
    result: list = [None] * len(order)
    for graph_position, model_position in enumerate(order):
        result[model_position] = outputs[graph_position]
    return result


def natural_output_names(info: ModelInfo) -> list[str]:
    """The model's output names in Keras order, as the exporter names them: output_0, output_1, ..."""
    import re

    key = lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]  # noqa: E731
    return sorted(info.output_names, key=key) if all(info.output_names) else list(info.output_names)
