"""ONNX models in (edgeq/frontends/onnx.py): the torch CNN and MLP of examples/torch_digits.py,
exported with torch.onnx.export, converted by `edgeq convert model.onnx` through onnx2tf: fully
int8 for mcu, run in TFLM, agreeing with onnxruntime, bit-exact through device-sim on the same
NCHW data; onnx2tf never reaches the network; bad files are refused with their names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import device_check_on_sim, run_edgeq

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(torch_trained: Path) -> Path:
    """cnn.onnx and mlp.onnx, exported from the trained torch models as a user would."""
    pytest.importorskip("onnx2tf")  # the onnx extra and requirements-nodeps.lock; scripts/setup installs both
    import torch
    import torch_digits

    for name in ("cnn", "mlp"):
        module = getattr(torch_digits, name)()
        module.load_state_dict(torch.load(torch_trained / f"{name}.pt", weights_only=True))
        torch.onnx.export(module.eval(), (torch.zeros(1, 1, 8, 8),), str(torch_trained / f"{name}.onnx"),
                          input_names=["x"], output_names=["logits"])
    return torch_trained


def _convert(folder: Path, model: Path, out: str, *extra: str):  # type: ignore[no-untyped-def]
    proc = run_edgeq("convert", str(model), "--target", "mcu", "--calibration", str(folder / "calibration.npz"),
                     "--eval", str(folder / "eval.npz"), "-o", str(folder / out), *extra)
    path = folder / out / "report.json"
    return proc, json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize("net", ["cnn", "mlp"])
def test_an_onnx_export_comes_out_fully_int8_and_agrees_with_onnxruntime(exported: Path, net: str) -> None:
    proc, report = _convert(exported, exported / f"{net}.onnx", f"onnx_{net}")
    assert proc.returncode == 0, proc.stderr
    model = report["model"]
    assert model["fully_integer"] and model["inputs"][0]["dtype"] == model["outputs"][0]["dtype"] == "int8"
    assert model["inputs"][0]["shape"] == [1, 1, 8, 8]  # the ONNX model's NCHW, kept on the device
    ops = set(model["ops"])
    assert not ops & {"QUANTIZE", "DEQUANTIZE"}
    if net == "cnn":
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= ops
    accuracy = report["emulation"]["accuracy"]
    assert accuracy["top1_agreement"] >= 0.98 and accuracy["float_top1"] > 0.9  # against onnxruntime
    source = report["input"]
    assert source["format"] == "onnx" and source["input_layout"] == "NCHW, as the ONNX model takes it"
    assert source["converted_by"].startswith("onnx2tf 1.29") and "onnxruntime" in source["converted_by"]
    assert source["parameters"] > 0 and report["gate"]["passed"]
    header = (exported / f"onnx_{net}" / f"{net}_model_data.h").read_text()
    assert "input 0: int8 [1, 1, 8, 8] (NCHW, as the ONNX model takes it)" in header
    assert "Device input layout: NCHW" in (exported / f"onnx_{net}" / "report.md").read_text()
    # onnxruntime's float top-1 is the torch model's: the same network, exported.
    import torch
    import torch_digits

    module = getattr(torch_digits, net)()
    module.load_state_dict(torch.load(exported / f"{net}.pt", weights_only=True))
    data = np.load(exported / "eval.npz")
    with torch.no_grad():
        top1 = float((module.eval()(torch.from_numpy(data["x"])).argmax(1).numpy() == data["y"]).mean())
    assert accuracy["float_top1"] == pytest.approx(top1)


def test_device_check_takes_the_same_nchw_data_bit_exact(exported: Path) -> None:
    model = exported / "onnx_cnn" / "cnn.tflite"
    if not model.exists():
        _convert(exported, exported / "cnn.onnx", "onnx_cnn")
    proc = device_check_on_sim(model, exported / "eval.npz", exported / "dc")
    assert proc.returncode == 0, proc.stderr
    assert "bit-exact with the emulator: 400 of 400" in proc.stdout


def test_onnx2tf_never_downloads_its_sample_images(exported: Path, tmp_path: Path) -> None:
    """onnx2tf fetches 20 RGB images from the internet to check a 4-D input whose last dimension
    is 3. edgeq runs it with the network off and hands it the calibration samples instead: the
    conversion must work offline. The RGB input feeds a convolution only, so it goes channels last
    on the device (no TRANSPOSE in front of the convolution), and the NCHW data are transposed for it."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 3, 2)).eval()
    torch.onnx.export(module, (torch.zeros(1, 3, 4, 3),), str(tmp_path / "rgb.onnx"), input_names=["x"])
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calibration.npz", x=rng.random((32, 3, 4, 3), dtype=np.float32))
    proc = run_edgeq("convert", str(tmp_path / "rgb.onnx"), "--target", "mcu", "--calibration",
                     str(tmp_path / "calibration.npz"), "--no-eval", "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["fully_integer"] and "onnxruntime" in report["input"]["converted_by"]
    assert report["model"]["inputs"][0]["shape"] == [1, 4, 3, 3]  # NHWC on the device
    assert report["input"]["input_layout"].startswith("NHWC: onnx2tf moved the ONNX model's channels last")
    sidecar = json.loads((tmp_path / "out" / "rgb_names.json").read_text())
    assert sidecar["source_layout"] == "NCHW"  # device-check transposes NCHW data for it
    # And the guard is real: where onnx2tf runs, a connection fails before it leaves the process.
    code = ("from edgeq.frontends.onnx import _network_off; _network_off(); import socket, urllib.request\n"
            "for attempt in (lambda: socket.create_connection(('127.0.0.1', 9)),\n"
            "                lambda: urllib.request.urlopen('https://github.com', timeout=5)):\n"
            "    try:\n        attempt()\n    except OSError as exc:\n        print('refused:', exc)\n")
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert refused.count("refused:") == 2 and "network off" in refused, refused


def test_bad_onnx_files_are_refused_with_their_names(exported: Path, tmp_path: Path) -> None:
    import onnx

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    proc, _ = _convert(exported, junk, "j")
    assert proc.returncode == 2 and "junk.onnx: not an ONNX model" in proc.stderr and "Traceback" not in proc.stderr
    model = onnx.load(str(exported / "mlp.onnx"))
    escaping = onnx.ModelProto()
    escaping.CopyFrom(model)
    weight = escaping.graph.initializer[0]
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="../../etc/passwd")
    onnx.save(escaping, str(tmp_path / "escaping.onnx"))
    proc, _ = _convert(exported, tmp_path / "escaping.onnx", "e")
    assert proc.returncode == 2 and "outside the model's folder" in proc.stderr and weight.name in proc.stderr
    proc, _ = _convert(exported, exported / "mlp.onnx", "q", "--qat", "--train", str(exported / "calibration.npz"))
    assert proc.returncode == 2 and "quantization-aware training" in proc.stderr
    integer = onnx.ModelProto()
    integer.CopyFrom(model)
    integer.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    onnx.save(integer, str(tmp_path / "integer.onnx"))
    proc, _ = _convert(exported, tmp_path / "integer.onnx", "i")
    assert proc.returncode == 2 and "input 'x' is INT64" in proc.stderr and "Traceback" not in proc.stderr


def test_a_two_input_onnx_model_takes_its_arrays_by_name_or_in_its_input_order(exported: Path, tmp_path: Path) -> None:
    """The SavedModel orders its inputs by name ('alpha' before 'zeta'); the user's arrays follow the
    ONNX model's order (x0, x1) or its names (x_zeta, x_alpha): either way each reaches its input."""
    import torch
    from torch import nn

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 8), nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, zeta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.a(zeta) + self.b(alpha)))

    torch.manual_seed(0)
    torch.onnx.export(Two().eval(), (torch.zeros(1, 4), torch.zeros(1, 6)), str(tmp_path / "two.onnx"),
                      input_names=["zeta", "alpha"])
    rng = np.random.default_rng(0)
    zeta, alpha = rng.random((120, 4), dtype=np.float32), rng.random((120, 6), dtype=np.float32)
    np.savez(tmp_path / "positional.npz", x0=zeta, x1=alpha)
    proc = run_edgeq("convert", str(tmp_path / "two.onnx"), "--target", "mcu", "--calibration",
                     str(tmp_path / "positional.npz"), "--eval", str(tmp_path / "positional.npz"), "-o",
                     str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {i["name"]: i["shape"] for i in report["input"]["inputs"]} == {"zeta": [None, 4], "alpha": [None, 6]}
    assert report["emulation"]["accuracy"]["errors"][0]["snr_db"] > 30  # against onnxruntime on the same arrays
