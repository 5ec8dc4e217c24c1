"""The recurrent kernels: UNIDIRECTIONAL_SEQUENCE_LSTM and SVDF, whose state persists between calls.

Both ops read and write variable tensors (the LSTM's hidden and cell state, SVDF's activation
memory). TFLM keeps them in persistent memory, sets them at AllocateTensors() and at Reset() (an
int8 one to its zero point, any other to 0) and leaves them alone between invokes, so a sequence
fed one call at a time continues where the previous call stopped. The arena planner skips them (no
op writes them before one reads them), and the C keeps each in a `static` array of its own outside
the arena, named `edgeq_state<tensor>`: a lowering lists them in its Step's `values["state"]`, and
the model file declares them and fills them in `<name>_reset()`.

The LSTM is TFLM's integer one (int8 activations and weights, int32 biases, int16 gates in Q3.12
and an int16 cell state); SVDF is its int8 one (int8 input and output, int8 feature weights, int8
or int16 time weights and memory).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeq.aot.kernels.base import HINT, Constants, Step, act, lowers, tensor_bytes, weights
from edgeq.aot.qmath import quantize_multiplier, sigmoid_table
from edgeq.errors import TargetCheckError
from edgeq.tflite.model_info import ModelInfo, TensorInfo

SIGMOID_TABLE_NAME = "edgeq_sigmoid16"  # activation.SIGMOID_TABLE: one array when both are in a model
"""The C array of TFLite's sigmoid table (qmath.sigmoid_table), shared by every LSTM of the model."""

GATES = ("input", "forget", "cell", "output")
"""The LSTM's gates in the order of its weight, bias and constant arrays (TFLM's tensor order)."""

_GATE_SCALE = 2.0 ** -12  # a gate's pre-activation: Q3.12
_ACTIVATION_SCALE = 2.0 ** -15  # a gate's sigmoid or tanh: Q0.15
_TANH, _SIGMOID = 4, 6  # TfLiteFusedActivation's codes of the two cell-gate activations TFLM runs


def _refuse(op: Any, info: ModelInfo, why: str) -> TargetCheckError:
    return TargetCheckError(f"{info.source}: {op.name} #{op.index} {why}", hint=HINT)


def _named(t: TensorInfo) -> str:
    return f"'{t.name}' (#{t.index})" if t.name else f"#{t.index}"


def _state(op: Any, info: ModelInfo, graph: Any, index: int, what: str, dtypes: tuple[str, ...]) -> dict[str, Any]:
    """The variable tensor `index` as a static C array: its name, C type, length and the value
    TFLM fills it with at start and reset (the zero point of an int8 tensor, else 0)."""
    if index < 0 or not graph.tensors[index].isVariable:
        where = f"has no {what}" if index < 0 else f"keeps its {what} in tensor #{index}, which is not variable"
        raise _refuse(op, info, f"{where}; the c runtime keeps state in the model's variable tensors, as TFLM does")
    t = act(info, index, what, op.name, dtypes)
    fill = t.zero_points[0] if t.dtype == "int8" else 0
    return {"name": f"edgeq_state{index}", "ctype": f"{t.dtype}_t", "size": math.prod(t.shape), "fill": fill,
            "bytes": tensor_bytes(t)}


def _constant(op: Any, info: ModelInfo, index: int, what: str, dtypes: tuple[str, ...],
              symmetric: bool = True) -> TensorInfo:
    """A constant input: present, of one of `dtypes`, per-tensor, with zero point 0 if `symmetric`."""
    if index < 0:
        raise _refuse(op, info, f"has no {what}; the c runtime's {op.name}, like TFLM's, needs it")
    t = info.tensors[index]
    if not t.is_constant or t.dtype not in dtypes or len(t.scales) > 1 or (symmetric and any(t.zero_points)):
        kind = "per-channel " if len(t.scales) > 1 else ""
        zero = f" with zero point {t.zero_points[0]}" if symmetric and any(t.zero_points) else ""
        raise _refuse(op, info, f"has {'' if t.is_constant else 'a non-constant '}{kind}{t.dtype} {what} {_named(t)}"
                                f"{zero}; the c runtime's {op.name} takes constant per-tensor {' or '.join(dtypes)}"
                                f"{' with zero point 0' if symmetric else ''}, as TFLM's integer kernel does")
    return t


def _f32(x: float) -> np.float32:
    return np.float32(x)


def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _cell_scale_power(scale: float) -> int:
    """log2 of the cell state's scale, rounded as TFLM's CheckedLog2 does it (in float32)."""
    log2 = _f32(np.log(_f32(scale))) * (_f32(1.0) / _f32(np.log(_f32(2.0))))
    return _round_half_away(float(np.float32(log2)))


def _tanh_input(power: int, op: Any, info: ModelInfo) -> tuple[int, int]:
    """(multiplier, right shift) that take an int16 of scale 2^power to the input TFLM's int16 tanh
    interpolates on: the value times 3 (its table covers the range scaled by 3/4), at 2^-12."""
    left = 15 + power - 3
    if not -30 <= left <= 14:
        raise _refuse(op, info, f"has a cell state scale of 2^{power}; TFLM's int16 tanh of the cell state works "
                                "between 2^-42 and 2^2 (beyond, its int32 arithmetic overflows)")
    return (3 << left, 0) if left >= 0 else (3, -left)


@lowers("UNIDIRECTIONAL_SEQUENCE_LSTM")
def _lstm(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """TFLM's integer LSTM, one time step after another: for each gate, the int8 input's and the
    int8 hidden state's products each requantized to int16 Q3.12 and added with saturation, then
    the int16 sigmoid (tanh for the cell gate) in Q0.15; the int16 cell state becomes forget * cell
    + input * cell gate (each product requantized, the sum saturated, then clipped), and the hidden
    state tanh(cell) * output, requantized to int8, which is also the step's output row."""
    if len(op.inputs) != 24:
        raise _refuse(op, info, f"has {len(op.inputs)} inputs; TFLM's kernel takes the 24 of the full LSTM")
    inputs = list(op.inputs)
    inp = act(info, inputs[0], "input", op.name)
    out = act(info, op.outputs[0], "output", op.name)
    for what, ids in (("peephole weights", (9, 10, 11)), ("projection", (16, 17)),
                      ("layer normalization", (20, 21, 22, 23))):
        if any(inputs[i] >= 0 for i in ids):
            raise _refuse(op, info, f"has {what}; the c runtime, like TFLM, runs the plain LSTM (no peephole, "
                                    "projection or layer normalization)")
    if options is None or options.fusedActivationFunction not in (_TANH, _SIGMOID):
        code = None if options is None else options.fusedActivationFunction
        raise _refuse(op, info, f"has cell activation {code}; TFLM's LSTM runs tanh (4) or sigmoid (6)")
    if getattr(options, "diagonalRecurrentTensors", False):
        raise _refuse(op, info, "has diagonal recurrent weights; TFLM's LSTM takes full matrices")
    hidden = _state(op, info, graph, inputs[18], "hidden state", ("int8",))
    cell = _state(op, info, graph, inputs[19], "cell state", ("int16",))
    h_info, c_info = info.tensors[inputs[18]], info.tensors[inputs[19]]
    time_major = bool(options.timeMajor)
    if len(inp.shape) != 3 or len(out.shape) != 3:
        raise _refuse(op, info, f"takes {list(inp.shape)} to {list(out.shape)}; the c runtime's LSTM takes a 3-D "
                                "sequence, as TFLM's does")
    steps, batch = (inp.shape[0], inp.shape[1]) if time_major else (inp.shape[1], inp.shape[0])
    features = inp.shape[2]
    wx = [_constant(op, info, inputs[1 + g], f"input-to-{gate} weights", ("int8",)) for g, gate in enumerate(GATES)]
    wh = [_constant(op, info, inputs[5 + g], f"recurrent-to-{gate} weights", ("int8",))
          for g, gate in enumerate(GATES)]
    bias = [_constant(op, info, inputs[12 + g], f"{gate} gate bias", ("int32",)) for g, gate in enumerate(GATES)]
    units = wx[0].shape[0]
    if (any(tuple(w.shape) != (units, features) for w in wx) or any(tuple(w.shape) != (units, units) for w in wh)
            or any(tuple(b.shape) != (units,) for b in bias) or hidden["size"] != batch * units
            or cell["size"] != batch * units or tuple(out.shape[:2]) != tuple(inp.shape[:2]) or out.shape[2] != units):
        raise _refuse(op, info, f"has weights, state or output whose shapes do not match {units} units over "
                                f"{features} features and a batch of {batch}, which TFLM refuses too")
    name = f"op{op.index}"
    constants[f"{name}_wx"] = ("int8_t", np.concatenate([weights(obj, graph, w.index, "int8").reshape(-1) for w in wx]))
    constants[f"{name}_wh"] = ("int8_t", np.concatenate([weights(obj, graph, w.index, "int8").reshape(-1) for w in wh]))
    constants[f"{name}_b"] = ("int32_t", np.concatenate([weights(obj, graph, b.index, "<i4").reshape(-1)
                                                         for b in bias]))
    # The gates' products go to Q3.12 (TFLM multiplies the two float scales in float32 first).
    pairs = [quantize_multiplier(float(_f32(source.scales[0]) * _f32(w.scales[0])) / _GATE_SCALE)
             for source, ws in ((inp, wx), (h_info, wh)) for w in ws]
    constants[f"{name}_mult"] = ("int32_t", np.asarray([q for q, _ in pairs], dtype=np.int64))
    constants[f"{name}_shift"] = ("int8_t", np.asarray([s for _, s in pairs], dtype=np.int64))
    constants[SIGMOID_TABLE_NAME] = ("uint16_t", sigmoid_table())
    cell_scale = float(_f32(c_info.scales[0]))
    hidden_scale = float(_f32(h_info.scales[0]))
    forget_mult, forget_shift = quantize_multiplier(_ACTIVATION_SCALE * cell_scale / cell_scale)
    input_mult, input_shift = quantize_multiplier(_ACTIVATION_SCALE * _ACTIVATION_SCALE / cell_scale)
    out_mult, out_shift = quantize_multiplier(_ACTIVATION_SCALE * _ACTIVATION_SCALE / hidden_scale)
    tanh_mult, tanh_shift = _tanh_input(_cell_scale_power(cell_scale), op, info)
    clip = float(options.cellClip)
    cell_clip = int(min(max(clip / cell_scale, -32768.0), 32767.0)) if clip > 0 else 0
    values = {"name": name, "batch": batch, "steps": steps, "features": features, "units": units,
              "time_major": time_major, "hidden": hidden["name"], "cell": cell["name"],
              "input_offset": -inp.zero_points[0], "hidden_offset": -h_info.zero_points[0],
              "hidden_zero_point": h_info.zero_points[0], "cell_gate_tanh": options.fusedActivationFunction == _TANH,
              "forget_mult": forget_mult, "forget_shift": forget_shift, "input_mult": input_mult,
              "input_shift": input_shift, "out_mult": out_mult, "out_shift": out_shift, "tanh_mult": tanh_mult,
              "tanh_shift": tanh_shift, "clip": cell_clip, "table": SIGMOID_TABLE_NAME, "state": [hidden, cell]}
    return Step(op.index, op.name, "lstm", inputs[0], op.outputs[0], values)


@lowers("SVDF")
def _svdf(op: Any, info: ModelInfo, obj: Any, graph: Any, options: Any, constants: Constants) -> Step:
    """TFLM's int8 SVDF: the memory (per batch row, filters x memory_size) moves one place to the
    left; each filter's feature product, requantized to the memory's type, lands in its row's last
    place; each unit sums its `rank` filters' products of memory and time weights, with its bias,
    and that sum is requantized to int8. TFLM's integer kernel applies no fused activation (the
    output's clamp stands in for RELU where its zero point is the lowest code), and neither does this."""
    if len(op.inputs) != 5:
        raise _refuse(op, info, f"has {len(op.inputs)} inputs; TFLM's SVDF takes 5")
    inp = act(info, op.inputs[0], "input", op.name)
    out = act(info, op.outputs[0], "output", op.name)
    feature = _constant(op, info, op.inputs[1], "feature weights", ("int8",))
    time = _constant(op, info, op.inputs[2], "time weights", ("int8", "int16"))
    bias = _constant(op, info, op.inputs[3], "bias", ("int32",))
    state = _state(op, info, graph, op.inputs[4], "activation state", (time.dtype,))
    s_info = info.tensors[op.inputs[4]]
    rank = options.rank if options is not None else 0
    if len(inp.shape) != 2 or len(out.shape) != 2:
        raise _refuse(op, info, f"takes {list(inp.shape)} to {list(out.shape)}; TFLM's SVDF takes [batch, features] "
                                "to [batch, units]")
    batch, features = inp.shape
    filters, memory = time.shape if len(time.shape) == 2 else (0, 0)
    if (rank <= 0 or filters % rank or tuple(feature.shape) != (filters, features)
            or tuple(out.shape) != (batch, filters // rank) or tuple(bias.shape) != (filters // rank,)
            or tuple(s_info.shape) != (batch, filters * memory)):
        raise _refuse(op, info, f"has rank {rank} and shapes (input {list(inp.shape)}, feature weights "
                                f"{list(feature.shape)}, time weights {list(time.shape)}, bias {list(bias.shape)}, "
                                f"state {list(s_info.shape)}, output {list(out.shape)}) that TFLM's SVDF refuses")
    product = _f32(s_info.scales[0]) * _f32(time.scales[0])
    if abs(float(_f32(bias.scales[0])) - float(product)) >= 1e-5:
        raise _refuse(op, info, f"has a bias scale ({bias.scales[0]}) other than the memory's times the time "
                                f"weights' ({float(product)}); TFLM's SVDF refuses it")
    name = f"op{op.index}"
    ctype = f"{time.dtype}_t"
    constants[f"{name}_wf"] = ("int8_t", weights(obj, graph, feature.index, "int8").reshape(-1))
    constants[f"{name}_wt"] = (ctype, weights(obj, graph, time.index, "<i2" if time.dtype == "int16" else "int8")
                               .reshape(-1))
    constants[f"{name}_b"] = ("int32_t", weights(obj, graph, bias.index, "<i4").reshape(-1))
    # TFLM forms both scales in float32 (multiply, then divide) before it widens them.
    feature_mult, feature_shift = quantize_multiplier(float(_f32(inp.scales[0]) * _f32(feature.scales[0])
                                                            / _f32(s_info.scales[0])))
    out_mult, out_shift = quantize_multiplier(float(product / _f32(out.scales[0])))
    limit = 32767 if time.dtype == "int16" else 127
    values = {"name": name, "batch": batch, "features": features, "filters": filters, "memory": memory, "rank": rank,
              "units": filters // rank, "ctype": ctype, "memory_state": state["name"],
              "input_offset": -inp.zero_points[0], "state_zero_point": s_info.zero_points[0],
              "output_zero_point": out.zero_points[0], "state_min": -limit - 1, "state_max": limit,
              "feature_mult": feature_mult, "feature_shift": feature_shift, "out_mult": out_mult,
              "out_shift": out_shift, "state": [state]}
    return Step(op.index, op.name, "svdf", op.inputs[0], op.outputs[0], values)
