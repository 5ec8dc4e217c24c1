"""The bundled example as plain C on an emulated Cortex-M4 (QEMU mps2-an386), checked by
device-check over the board's serial line: every eval sample bit-exact with the emulator."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeq.device.check import device_check

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                                reason="needs qemu-system-arm and gcc-arm-none-eabi (scripts/setup installs both)")


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    from edgeq.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("aot") / "out"
    convert(REPO / "examples" / "digits_cnn.keras", "mcu", ConvertOptions(calibration="digits", outdir=out,
                                                                          per_layer=False))
    return out / "digits_cnn.tflite"


@pytest.mark.slow
def test_example_on_emulated_cortex_m4_is_bit_exact_on_every_eval_sample(example: Path, tmp_path: Path) -> None:
    from edgeq.device.qemu import running_board, stack_high_water

    with running_board(example, "mps2-an386") as board:
        result = device_check(board.url, example, "digits", output_dir=tmp_path / "check", timeout=10)
        sizes, stack = board.firmware.sizes, stack_high_water(board.firmware)
    report = result.report
    assert result.verdict == "pass" and report.run.completed == report.agreement.bit_exact == 400
    # The port counts instructions (-icount shift=0): fewer than TFLM's reference kernels take (~819k).
    assert report.latency is not None and report.latency.unit == "instructions"
    assert 50_000 < report.latency.median <= report.latency.max < 819_000
    assert 0 < sizes["text"] < 73_500  # the whole firmware, below TFLM's runtime alone
    # The painted stack: some was used (the protocol's frames, the kernels' locals), far from all 16 KiB.
    assert stack is not None and 64 < stack < 16 * 1024


def test_the_cortex_m7_board_serves_the_same_bytes(example: Path, tmp_path: Path) -> None:
    """mps2-an500 (Cortex-M7, double-precision FPU flags, the DSP path too): 50 samples bit-exact."""
    from edgeq.device.qemu import running_board

    with running_board(example, "mps2-an500") as board:
        result = device_check(board.url, example, "digits", limit=50, output_dir=tmp_path / "m7", timeout=10)
        assert board.firmware.board == "mps2-an500"
    assert result.verdict == "pass" and result.report.agreement.bit_exact == 50


def test_a_board_refuses_what_the_c_backend_cannot_run(tmp_path: Path) -> None:
    from edgeq.device.qemu import build_qemu_firmware
    from edgeq.errors import EdgeqError

    with pytest.raises(EdgeqError, match="--board"):
        build_qemu_firmware(tmp_path / "missing.tflite", tmp_path / "fw", board="stm32")


def test_device_sim_board_refuses_host_only_options(example: Path) -> None:
    from tests.conftest import run_edgeq

    proc = run_edgeq("device-sim", str(example), "--board", "mps2-an386", "--fault", "crc@1")
    assert proc.returncode == 2 and "--board" in proc.stderr and "Traceback" not in proc.stderr


def test_depthwise_and_odd_channel_counts_are_bit_exact_on_the_dsp_build(tmp_path: Path) -> None:
    """DEPTHWISE_CONV_2D's four-channel DSP loop (with a tail: 6 channels), strides, SAME padding,
    and a multiplier-2 depthwise on the general path, on the emulated Cortex-M4."""
    import numpy as np

    from edgeq._tf import tf
    from edgeq.device.qemu import running_board
    from tests.conftest import plain_tflite

    tf()
    import keras

    keras.utils.set_random_seed(21)
    L = keras.layers
    x = L.Input((9, 9, 3), batch_size=1)
    y = L.Conv2D(6, 1, activation="relu")(x)
    y = L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6")(y)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(y)
    y = L.Conv2D(8, 1)(y)
    y = L.DepthwiseConv2D(3, padding="valid")(y)
    model = keras.Model(x, L.Dense(5)(L.Flatten()(y)))
    data = np.random.default_rng(21).normal(0, 1.5, (40, 9, 9, 3)).astype(np.float32)
    tflite = tmp_path / "dw.tflite"
    tflite.write_bytes(plain_tflite(model, io="int8", data=data))
    np.savez(tmp_path / "dw.npz", x=data[:12])
    with running_board(tflite, "mps2-an386") as board:
        result = device_check(board.url, tflite, str(tmp_path / "dw.npz"), output_dir=tmp_path / "check", timeout=20)
    assert result.verdict == "pass" and result.report.agreement.bit_exact == 12


@pytest.mark.parametrize("io", ["int16", "float32"])
def test_int16_and_float32_models_are_bit_exact_on_the_board(io: str) -> None:
    """Models with int16 I/O (int16x8) or float32 throughout run on the emulated Cortex-M4F as
    the c runtime's firmware, each output byte for byte TFLM's on the host (no exp or tanh here:
    newlib's differ from glibc's in the last bit, docs/plain-c.md)."""
    from edgeq._tf import tf
    from edgeq.device.qemu import measure_on_board
    from tests.conftest import plain_tflite

    tf()
    import keras

    keras.utils.set_random_seed(21)
    model = keras.Sequential([keras.layers.Input((6, 6, 2), batch_size=1),
                              keras.layers.Conv2D(3, 3, activation="relu"), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    data = np.random.default_rng(21).normal(size=(16, 6, 6, 2)).astype(np.float32)
    tflite = plain_tflite(model, io=io, data=data)
    measured = measure_on_board(tflite, [data[:8] * 1.5])
    assert measured.samples == 8 and measured.bit_exact == 8 and measured.instructions_median > 0
