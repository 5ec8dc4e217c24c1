"""edgeq/aot: the model as plain C, compiled by gcc with -Werror, byte for byte TFLite Micro's outputs.

Each model comes from the real TFLite converter (full int8, random weights and calibration), the
C is built as a shared library and called through ctypes, and TFLM's Python interpreter runs the
same .tflite on the same int8 inputs. Bytes must match on every sample.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edgeq.errors import TargetCheckError
from tests.conftest import plain_tflite, tflm_outputs

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="needs gcc")


def _keras_model(kind: str, seed: int):  # type: ignore[no-untyped-def]
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    if kind == "cnn":
        layers = [L.Input((9, 9, 3), batch_size=1), L.Conv2D(6, 3, padding="same", activation="relu"),
                  L.DepthwiseConv2D(3, strides=2, padding="valid", depth_multiplier=2, activation="relu6"),
                  L.AveragePooling2D(2, padding="same"), L.Conv2D(5, 2, strides=2, padding="same", dilation_rate=1),
                  L.Flatten(), L.Dense(7)]
    elif kind == "pool":
        layers = [L.Input((7, 6, 4), batch_size=1), L.MaxPooling2D(3, strides=2, padding="same"), L.Flatten(), L.Dense(3)]
    elif kind == "softmax":
        layers = [L.Input((6, 5), batch_size=1), L.Dense(9), L.Softmax()]
    else:
        layers = [L.Input((5, 3), batch_size=1), L.Flatten(), L.Dense(8, activation="relu"), L.Dense(4)]
    model = keras.Sequential(layers)
    # Calibration on wider data than the test inputs: outputs exercise saturation as well.
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 1.5, size=(64, *model.inputs[0].shape[1:])).astype(np.float32)
    return model, data


def _build(tmp_path: Path, name: str, model: bytes):  # type: ignore[no-untyped-def]
    from edgeq.aot.emit import emit_c
    from edgeq.tflite.reader import read_tflite

    sources = emit_c(name, model, read_tflite(model))
    for file, text in sources.files.items():
        (tmp_path / file).write_bytes(text)
    lib = tmp_path / f"lib{name}.so"
    proc = subprocess.run([GCC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC",
                           str(tmp_path / f"{sources.ident}_model.c"), "-o", str(lib)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return ctypes.CDLL(str(lib)), sources


@pytest.mark.parametrize("kind", ["dense", "pool", "cnn", "softmax"])
def test_c_is_bit_exact_with_tflm(kind: str, tmp_path: Path) -> None:
    model, data = _keras_model(kind, seed={"dense": 1, "pool": 2, "cnn": 3, "softmax": 4}[kind])
    tflite = plain_tflite(model, io="int8", data=data)
    lib, sources = _build(tmp_path, kind, tflite)
    from edgeq.tflite.reader import read_tflite

    info = read_tflite(tflite)
    shape, out_shape = info.input_tensors[0].shape, info.output_tensors[0].shape
    rng = np.random.default_rng(7)
    inputs = rng.integers(-128, 128, size=(40, *shape[1:]), dtype=np.int8)
    expected = tflm_outputs(tflite, inputs)
    invoke = getattr(lib, f"{sources.ident}_invoke")
    got = np.zeros((len(inputs), *out_shape[1:]), dtype=np.int8)
    for i, x in enumerate(inputs):
        x = np.ascontiguousarray(x)
        out = np.zeros(out_shape[1:], dtype=np.int8)
        assert invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)) == 0
        got[i] = out
    assert got.reshape(expected.shape).tobytes() == expected.tobytes()
    from edgeq.emulator.memory import measure_tflm_arena

    assert 0 < sources.arena_bytes <= measure_tflm_arena(tflite).recorded_head  # never more than TFLM plans
    arm = shutil.which("arm-none-eabi-gcc")
    if arm:  # the same C, for a Cortex-M4F, with every warning an error
        build = subprocess.run([arm, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-mcpu=cortex-m4",
                                "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-c",
                                str(tmp_path / f"{sources.ident}_model.c"), "-o", str(tmp_path / "m.o")],
                               capture_output=True, text=True)
        assert build.returncode == 0, build.stderr


def test_convert_runtime_c_writes_the_bundled_example_as_c_bit_exact_on_every_eval_sample(tmp_path: Path) -> None:
    """examples/digits_cnn.keras through `edgeq convert --runtime c` (the lean, names-stripped form):
    the C files it writes, compiled here, give TFLM's bytes on all 400 eval samples."""
    from edgeq.calibration import load_dataset
    from edgeq.emulator.runtimes import quantize_inputs, run_tflm
    from edgeq.pipeline import ConvertOptions, convert

    root = Path(__file__).resolve().parents[2]
    result = convert(root / "examples" / "digits_cnn.keras", "mcu",
                     ConvertOptions(calibration="digits", outdir=tmp_path / "out", per_layer=False, runtime="c"))
    written = sorted(p.name for p in result.outdir.iterdir())
    assert "digits_cnn_model.c" in written and "digits_cnn_model.h" in written
    assert not [n for n in written if n.endswith((".cc", "_op_resolver.h"))], written
    readme = (result.outdir / "README.md").read_text()
    assert "digits_cnn_invoke(input0, output0)" in readme and "target_sources(app PRIVATE" in readme
    ram = result.report.emulation.memory.ram
    assert ram.kind == "static arena" and ram.needed_bytes <= ram.tflm_arena.smallest
    tflite = (result.outdir / "digits_cnn.tflite").read_bytes()
    lib = tmp_path / "libdigits.so"
    proc = subprocess.run([GCC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC",
                           str(result.outdir / "digits_cnn_model.c"), "-o", str(lib)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = load_dataset("digits", default_split="eval")
    t = result.info.input_tensors[0]
    inputs = quantize_inputs(data.inputs[0], np.dtype("int8"), t.scales[0], t.zero_points[0])
    expected = run_tflm(tflite, [data.inputs[0]]).raw_outputs[0]
    invoke, got = ctypes.CDLL(str(lib)).digits_cnn_invoke, np.zeros_like(expected)
    for i, x in enumerate(inputs):
        x, out = np.ascontiguousarray(x), np.zeros(expected.shape[1:], dtype=np.int8)
        invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p))
        got[i] = out
    assert len(inputs) == 400 and got.tobytes() == expected.tobytes()
    assert ram.needed_bytes <= result.emulation.memory.arena.recorded_head
    report = json.loads((result.outdir / "report.json").read_text())
    schema = json.loads((root / "docs" / "report.schema.json").read_text())
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(report))
    if shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc"):  # the C ran on an emulated Cortex-M4
        board = report["emulation"]["latency"]["emulated_board"]
        assert board["bit_exact"] == board["samples"] == 8 and 50_000 < board["instructions_median"] < 819_000
        assert "instructions** per inference" in (result.outdir / "report.md").read_text()


def test_runtime_c_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    from tests.conftest import run_edgeq

    root = Path(__file__).resolve().parents[2]
    model = str(root / "examples" / "digits_cnn.keras")
    phone = run_edgeq("convert", model, "--target", "phone", "--runtime", "c", "-o", str(tmp_path / "p"))
    assert phone.returncode == 2 and "TFLite Micro target" in phone.stderr and "Traceback" not in phone.stderr
    harness = run_edgeq("convert", model, "--runtime", "c", "--harness", "-o", str(tmp_path / "h"))
    assert harness.returncode == 2 and "device-sim --board" in harness.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "h").exists()


def test_an_op_without_a_c_kernel_is_refused_by_name() -> None:
    from edgeq._tf import tf
    from edgeq.aot.emit import emit_c
    from edgeq.tflite.reader import read_tflite

    tf()
    import keras

    from edgeq.aot.lower import KERNELS

    assert "EXP" not in KERNELS, "EXP has a kernel now: give this test an op the c runtime lacks"
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.layers.Input((6,), batch_size=1), keras.layers.Dense(4),
                              keras.layers.Lambda(keras.ops.exp)])
    tflite = plain_tflite(model, io="int8")
    assert "EXP" in read_tflite(tflite).all_op_names  # the converter keeps it, quantized (TFLM has an int8 EXP)
    with pytest.raises(TargetCheckError, match="no kernel for EXP") as caught:
        emit_c("m", tflite, read_tflite(tflite))
    assert "tflm" in caught.value.hint


def test_each_op_has_one_lowering_and_kernels_lists_them() -> None:
    from edgeq.aot import kernels
    from edgeq.aot.lower import KERNELS

    assert KERNELS == tuple(sorted(kernels.LOWERINGS)) and len(KERNELS) >= 25
    with pytest.raises(RuntimeError, match="CONV_2D has two lowerings"):
        kernels.lowers("CONV_2D")(lambda *args: None)  # type: ignore[arg-type,return-value]
    assert kernels.LOWERINGS["CONV_2D"].__name__ == "_conv"


def test_requantize_matches_the_c_helper_on_edge_values(tmp_path: Path) -> None:
    """qmath.requantize and the C helper the generated code uses agree, at the edges and at random."""
    from edgeq.aot.qmath import INT32_MAX, INT32_MIN, quantize_multiplier, requantize
    from edgeq.templating import render

    rng = np.random.default_rng(3)
    cases = [(x, *quantize_multiplier(m)) for x, m in
             [(INT32_MIN, 0.5), (INT32_MAX, 0.999), (-1, 1e-6), (123456, 3.75), (-98765, 0.0123), (7, 2.0 ** -31)]]
    cases += [(int(x), *quantize_multiplier(float(m))) for x, m in
              zip(rng.integers(-(1 << 24), 1 << 24, 300), 10 ** rng.uniform(-7, 0.5, 300))]
    program = render("aot_runtime.j2", kernels=[]) + (
        "\n#include <stdio.h>\nint main(void) {\n  long x, q, s;\n"
        "  while (scanf(\"%ld %ld %ld\", &x, &q, &s) == 3)\n"
        "    printf(\"%ld\\n\", (long)edgeq_requantize((int32_t)x, (int32_t)q, (int32_t)s));\n"
        "  return (int)edgeq_clamp(0, 0, 0);\n}\n")
    (tmp_path / "rq.c").write_text("#include <stdint.h>\n#include <string.h>\n" + program)
    build = subprocess.run([GCC, "-std=c99", "-Wall", "-Wextra", "-Werror", str(tmp_path / "rq.c"), "-o",
                            str(tmp_path / "rq")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp_path / "rq")], input="".join(f"{x} {q} {s}\n" for x, q, s in cases),
                         capture_output=True, text=True, check=True)
    assert [int(v) for v in run.stdout.split()] == [requantize(x, q, s) for x, q, s in cases]

    assert quantize_multiplier(0.0) == (0, 0) and quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1) and quantize_multiplier(2.0 ** -40) == (0, 0)
    q, shift = quantize_multiplier(0.0123)
    assert abs(q * 2.0 ** (shift - 31) - 0.0123) < 1e-9
    assert requantize(1000, q, shift) == 12 and requantize(-1000, q, shift) == -12  # 12.3 -> 12
    # An exact half rounds up in the doubling high multiply (gemmlowp's nudge): 1.5 -> 2, -1.5 -> -1;
    half = quantize_multiplier(0.5)
    assert requantize(3, *half) == 2 and requantize(-3, *half) == -1 and requantize(1, *half) == 1
    quarter = quantize_multiplier(0.25)  # shift -1: the division by 2 rounds half away from zero
    assert requantize(6, *quarter) == 2 and requantize(-6, *quarter) == -2 and requantize(-2, *quarter) == -1


def test_export_c_runtime_c_writes_two_files_or_refuses_and_writes_none(tmp_path: Path) -> None:
    from tests.conftest import run_edgeq

    model, data = _keras_model("softmax", seed=4)
    good = tmp_path / "good.tflite"
    good.write_bytes(plain_tflite(model, io="int8", data=data))
    proc = run_edgeq("export-c", str(good), "--runtime", "c", "-o", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["good_model.c", "good_model.h"]
    assert "activation arena:" in proc.stdout and "GOOD_ARENA_BYTES" in (tmp_path / "c" / "good_model.h").read_text()
    # A model left in float32 runs on the float kernels: the files written, built here, give TFLM's bytes.
    float_tflite = plain_tflite(model, io="float32")
    (tmp_path / "plain.tflite").write_bytes(float_tflite)
    proc = run_edgeq("export-c", str(tmp_path / "plain.tflite"), "--runtime", "c", "-o", str(tmp_path / "f"))
    assert proc.returncode == 0, proc.stderr
    assert "int plain_invoke(const float *input0, float *output0);" in (tmp_path / "f" / "plain_model.h").read_text()
    lib = tmp_path / "libplain.so"
    subprocess.run([GCC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC",
                    str(tmp_path / "f" / "plain_model.c"), "-o", str(lib), "-lm"], check=True)
    invoke = ctypes.CDLL(str(lib)).plain_invoke
    inputs = np.random.default_rng(4).normal(0, 3, size=(8, 6, 5)).astype(np.float32)
    expected = tflm_outputs(float_tflite, inputs)
    got = np.zeros_like(expected)
    for x, out in zip(inputs, got):
        assert invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)) == 0
    assert got.tobytes() == expected.tobytes()
    # An op the c runtime has no kernel for, in float32 or int8: refused by name, and nothing written.
    from edgeq._tf import tf

    tf()
    import keras

    from edgeq.aot.lower import FLOAT_KERNELS, KERNELS

    assert "EXP" not in KERNELS + FLOAT_KERNELS, "EXP has a kernel now: give this test an op the c runtime lacks"
    x = keras.layers.Input((6, 5), batch_size=1)
    (tmp_path / "exp.tflite").write_bytes(plain_tflite(keras.Model(x, keras.ops.exp(x)), io="float32"))
    proc = run_edgeq("export-c", str(tmp_path / "exp.tflite"), "--runtime", "c", "-o", str(tmp_path / "e"))
    assert proc.returncode == 3 and "no kernel for EXP" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "e").exists()


def test_branches_are_scheduled_to_free_their_intermediates_early(tmp_path: Path) -> None:
    """Two branches with large intermediates: run one branch to its small end before the other.
    The converter's order is one topological order; from a breadth-first one, the scheduler finds
    the depth-first one, the C stays bit-exact, and no two live buffers share bytes."""
    from dataclasses import replace

    from edgeq._tf import tf
    from edgeq.aot.emit import emit_c
    from edgeq.aot.schedule import best_order, peak_bytes, scheduled
    from edgeq.tflite.arena_plan import activation_buffers, overlaps, plan_arena
    from edgeq.tflite.reader import read_tflite

    tf()
    import keras

    keras.utils.set_random_seed(9)
    L = keras.layers
    x = L.Input((8, 8, 4), batch_size=1)
    a = L.Conv2D(2, 1)(L.Conv2D(24, 3, padding="same", activation="relu")(x))
    b = L.Conv2D(2, 1)(L.Conv2D(24, 3, padding="same", activation="relu")(x))
    model = keras.Model(x, L.Concatenate()([a, b]))
    data = np.random.default_rng(9).normal(0, 1, (32, 8, 8, 4)).astype(np.float32)
    tflite = plain_tflite(model, io="int8", data=data)
    info = read_tflite(tflite)
    big = [k for k, op in enumerate(info.ops) if op.name == "CONV_2D" and info.tensors[op.outputs[0]].shape[-1] == 24]
    rest = [k for k in range(len(info.ops)) if k not in big]
    breadth = replace(info, ops=tuple(info.ops[k] for k in [*big, *rest]))  # both big tensors alive at once
    bad = peak_bytes(breadth, tuple(range(len(breadth.ops))))
    good = peak_bytes(breadth, best_order(breadth))
    assert len(big) == 2 and good <= 0.9 * bad  # at least 10% fewer bytes alive at once
    planned = scheduled(breadth)
    plan = plan_arena(planned)
    assert plan is not None and plan.peak < plan_arena(breadth).peak
    buffers = activation_buffers(planned)
    assert overlaps(buffers, plan.offsets) == []
    sources = emit_c("branchy", tflite, breadth)  # lowered from the bad order: the scheduler fixes it
    assert sources.arena_bytes == plan.peak
    for name, text in sources.files.items():
        (tmp_path / name).write_bytes(text)
    lib = tmp_path / "libbranchy.so"
    subprocess.run([GCC, "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    str(tmp_path / "branchy_model.c"), "-o", str(lib)], check=True)
    invoke = ctypes.CDLL(str(lib)).branchy_invoke
    inputs = np.random.default_rng(1).integers(-128, 128, size=(8, 8, 8, 4), dtype=np.int8)
    expected = tflm_outputs(tflite, inputs)
    for x_i, want in zip(inputs, expected):
        x_i, out = np.ascontiguousarray(x_i), np.zeros(want.shape[1:], dtype=np.int8)
        invoke(x_i.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p))
        assert out.tobytes() == want[0].tobytes()
