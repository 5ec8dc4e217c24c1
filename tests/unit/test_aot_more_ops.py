"""edgeq/aot's LEAKY_RELU, MAXIMUM, MINIMUM, STRIDED_SLICE, SLICE and TRANSPOSE_CONV, int8 and int16x8:
random small models holding all of them, through the real TFLite converter, as C compiled with
-Werror, byte for byte TFLM's outputs; and what the c runtime refuses of them, by name.

One model holds every op (one conversion, one compile per example): a LEAKY_RELU, a MAXIMUM of two
tensors and one with a constant, a MINIMUM broadcasting a row, strided slices (a step of 2, a
reversed axis, a shrunk axis), a SLICE, and two TRANSPOSE_CONVs with a bias (stride 2 and stride 1,
one SAME and one VALID), all flattened into one output.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edgeq.errors import TargetCheckError
from tests.conftest import c_outputs, plain_tflite, tflm_outputs

pytestmark = [pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"), pytest.mark.slow]

NEW_OPS = {"LEAKY_RELU", "MAXIMUM", "MINIMUM", "STRIDED_SLICE", "SLICE", "TRANSPOSE_CONV"}


@st.composite
def models(draw: st.DrawFn) -> dict[str, Any]:
    return {"h": draw(st.integers(3, 6)), "w": draw(st.integers(3, 6)), "c": draw(st.integers(1, 3)),
            "filters": draw(st.integers(1, 4)), "alpha": draw(st.sampled_from([0.01, 0.2, 0.3, 0.9])),
            "k": draw(st.integers(1, 3)), "same": draw(st.booleans()), "out": draw(st.integers(1, 3)),
            "act": draw(st.sampled_from([None, "relu"])), "seed": draw(st.integers(0, 10_000)),
            "spread": draw(st.sampled_from([0.5, 2.0]))}


def _build(p: dict[str, Any]):  # type: ignore[no-untyped-def]
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(p["seed"])
    L, ops = keras.layers, keras.ops
    h, w, f = p["h"], p["w"], p["filters"]
    x = L.Input((h, w, p["c"]), batch_size=1)
    a, b = L.Conv2D(f, 1)(x), L.Conv2D(f, 1)(x)
    leaky = L.LeakyReLU(negative_slope=p["alpha"])(a)
    larger = ops.maximum(leaky, b)
    smaller = ops.minimum(a, b[:, :1])            # MINIMUM broadcasting one row
    floor = ops.maximum(b, 0.25)                  # MAXIMUM with a constant
    strided = larger[:, 1:h:2, ::-1, :]           # a step of 2 and a reversed axis
    shrunk = smaller[:, -1]                       # shrink_axis_mask
    sliced = ops.slice(floor, (0, 1, 0, 0), (1, h - 1, w - 1, f))
    first, second = ("same", "valid") if p["same"] else ("valid", "same")
    bias = keras.initializers.RandomNormal(stddev=0.5)
    up = L.Conv2DTranspose(p["out"], p["k"], strides=2, padding=first, bias_initializer=bias,
                           activation=p["act"])(sliced)
    flat = L.Conv2DTranspose(p["out"] + 1, p["k"] + 1, strides=1, padding=second, bias_initializer=bias)(strided)
    parts = [L.Flatten()(t) for t in (leaky, larger, smaller, floor, strided, shrunk, sliced, up, flat)]
    data = np.random.default_rng(p["seed"]).normal(0, p["spread"], (32, h, w, p["c"])).astype(np.float32)
    return keras.Model(x, L.Concatenate()(parts)), data


@pytest.mark.parametrize("io", ["int8", "int16"])
@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])  # a failure is reported as drawn: shrinking takes minutes
@given(drawn=models())
def test_new_ops_are_bit_exact_with_tflm(tmp_path_factory, io: str, drawn: dict[str, Any]) -> None:
    from edgeq.aot.lower import KERNELS
    from edgeq.tflite.reader import read_tflite

    model, data = _build(drawn)
    tflite = plain_tflite(model, io=io, data=data)
    info = read_tflite(tflite)
    ops = set(info.all_op_names)
    assert NEW_OPS <= ops <= set(KERNELS), (drawn, sorted(ops))  # every op under test is really in the model
    assert {info.tensors[op.inputs[2 if op.name == "TRANSPOSE_CONV" else 0]].dtype
            for op in info.ops if op.name in NEW_OPS} == {io}
    assert all(len(op.inputs) == 4 for op in info.ops if op.name == "TRANSPOSE_CONV")  # with its bias
    limits = np.iinfo(io)
    rng = np.random.default_rng(drawn["seed"])
    inputs = rng.integers(limits.min, limits.max + 1, size=(8, *info.input_tensors[0].shape[1:])).astype(io)
    expected = tflm_outputs(tflite, inputs)
    out = info.output_tensors[0]
    got = c_outputs(tmp_path_factory.mktemp("more"), tflite, inputs, tuple(out.shape[1:]), out.dtype)
    assert got.tobytes() == expected.tobytes(), drawn


def test_what_tflm_ignores_or_lacks_is_refused_by_name() -> None:
    """STRIDED_SLICE's ellipsis and new-axis masks, which TFLM ignores, and an int16 TRANSPOSE_CONV
    with an int32 bias, which TFLM would read as int64: refused, naming the op and what it has."""
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeq.aot.emit import emit_c
    from edgeq.tflite.reader import read_tflite

    p = {"h": 4, "w": 4, "c": 2, "filters": 2, "alpha": 0.2, "k": 2, "same": True, "out": 2, "act": None, "seed": 1,
         "spread": 1.0}
    model, data = _build(p)
    tflite = plain_tflite(model, io="int16", data=data)
    emit_c("m", tflite, read_tflite(tflite))  # as converted: taken

    def edited(op_name: str, edit) -> bytes:  # type: ignore[no-untyped-def]
        obj = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
        graph = obj.subgraphs[0]
        names = {i: c.builtinCode for i, c in enumerate(obj.operatorCodes)}
        op = next(o for o in graph.operators if names[o.opcodeIndex] == {"STRIDED_SLICE": 45,
                                                                        "TRANSPOSE_CONV": 67}[op_name])
        edit(graph, op, obj)
        return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))

    def ellipsis(graph, op, obj) -> None:  # type: ignore[no-untyped-def]
        op.builtinOptions.ellipsisMask = 1

    def int32_bias(graph, op, obj) -> None:  # type: ignore[no-untyped-def]
        bias = graph.tensors[op.inputs[3]]
        values = np.frombuffer(bytes(obj.buffers[bias.buffer].data), "<i8").astype("<i4")
        obj.buffers[bias.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
        bias.type = 2  # INT32

    for op_name, edit, message in (("STRIDED_SLICE", ellipsis, r"STRIDED_SLICE #\d+ sets ellipsisMask, which TFLM "
                                                                r"ignores"),
                                   ("TRANSPOSE_CONV", int32_bias, r"TRANSPOSE_CONV #\d+'s bias .* is int32; TFLM's "
                                                                  r"int16 TRANSPOSE_CONV takes int64 or int16")):
        bad = edited(op_name, edit)
        with pytest.raises(TargetCheckError, match=message) as caught:
            emit_c("m", bad, read_tflite(bad))
        assert "tflm" in caught.value.hint
