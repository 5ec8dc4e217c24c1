"""PyTorch models in (edgeq/frontends/torch.py): a torch CNN (BatchNorm, ReLU6, depthwise, residual
add, mean) and an MLP trained on the bundled digits, converted by `edgeq convert` through PT2E:
fully int8 for mcu, run in TFLM, agreeing with torch float; and the errors a torch user meets."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import device_check_on_sim, run_edgeq

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def trained(torch_trained: Path) -> Path:
    return torch_trained


def _convert(trained: Path, model: str, out: str, *extra: str):  # type: ignore[no-untyped-def]
    proc = run_edgeq("convert", model, *extra, "--target", "mcu", "--calibration", str(trained / "calibration.npz"),
                     "--eval", str(trained / "eval.npz"), "-o", str(trained / out), cwd=EXAMPLES)
    path = trained / out / "report.json"
    return proc, json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize("net", ["cnn", "mlp"])
def test_a_torch_model_comes_out_fully_int8_and_agrees_with_torch(trained: Path, net: str) -> None:
    proc, report = _convert(trained, f"torch_digits:{net}", net, "--weights", str(trained / f"{net}.pt"),
                            "--trust-model")
    assert proc.returncode == 0, proc.stderr
    model = report["model"]
    assert model["fully_integer"] and model["inputs"][0]["dtype"] == model["outputs"][0]["dtype"] == "int8"
    assert model["inputs"][0]["shape"] == [1, 1, 8, 8]  # NCHW, as torch has it
    ops = set(model["ops"])
    assert not ops & {"QUANTIZE", "DEQUANTIZE"}
    if net == "cnn":
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= ops
    accuracy = report["emulation"]["accuracy"]
    assert accuracy["runtime_used"] in ("tflm", "litert")  # LiteRT only where it is bit-exact with TFLM
    assert accuracy["top1_agreement"] >= 0.98 and accuracy["float_top1"] > 0.9  # against torch float
    assert report["input"]["format"] == "nn.Module" and report["input"]["saved_by"].startswith("torch ")
    assert report["gate"]["passed"] and report["emulation"]["memory"]["ram"]["tflm_arena"]["smallest"] > 0
    written = {p.name for p in (trained / net).iterdir()}
    assert {f"{net}.tflite", f"{net}_model_data.cc", f"{net}_op_resolver.h"} <= written


def test_a_torch_cnn_runs_as_plain_c_bit_exact_with_tflm(trained: Path) -> None:
    """--runtime c: the TRANSPOSE before the flatten and the MEAN over NCHW's [2, 3] have C kernels;
    the C runs on an emulated Cortex-M4 (QEMU) where installed, byte for byte TFLM's outputs."""
    proc, report = _convert(trained, "torch_digits:cnn", "cnn_c", "--weights", str(trained / "cnn.pt"),
                            "--trust-model", "--runtime", "c")
    assert proc.returncode == 0, proc.stderr
    assert {"TRANSPOSE", "MEAN"} <= set(report["model"]["ops"]) and report["gate"]["passed"]
    assert (trained / "cnn_c" / "cnn_model.c").is_file()
    board = report["emulation"]["latency"].get("emulated_board")
    if shutil.which("qemu-system-arm"):  # scripts/setup installs it
        assert board and board["samples"] > 0 and board["bit_exact"] == board["samples"], board


def test_pt2e_qat_fine_tunes_a_torch_cnn_into_full_int8(trained: Path) -> None:
    """--qat on an nn.Module: prepare_qat_pt2e (BatchNorm folded first), trained on labelled NCHW
    data, converted at batch 1; the report records the training, and the model passes the gate."""
    import numpy as np
    import torch_digits

    from edgeq.calibration import load_dataset

    train = load_dataset("digits:train")
    np.savez(trained / "train.npz", x=torch_digits.nchw(train.inputs[0]), y=train.labels)
    proc, report = _convert(trained, "torch_digits:cnn", "cnn_qat", "--weights", str(trained / "cnn.pt"),
                            "--trust-model", "--qat", "--train", str(trained / "train.npz"), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert report["method"] == "qat" and report["qat"]["epochs_run"] in (1, 2)
    assert "cross-entropy" in report["qat"]["loss_source"] and len(report["qat"]["history"]["val_loss"]) >= 1
    assert report["model"]["fully_integer"] and not set(report["model"]["ops"]) & {"QUANTIZE", "DEQUANTIZE"}
    # Fine-tuning moves the weights, so the QAT model need not make the float model's mistakes: the
    # gate holds its accuracy within 1 point of the float model's (torch's CPU training differs
    # from run to run; top-1 agreement has been 0.945 to 1.0).
    accuracy = report["emulation"]["accuracy"]
    assert report["gate"]["passed"] and accuracy["quantized_top1"] >= accuracy["float_top1"] - 0.01
    assert accuracy["top1_agreement"] >= 0.9
    (trained / "fixed.pt2").write_bytes(b"refused before it is read")
    proc, _ = _convert(trained, str(trained / "fixed.pt2"), "pt2_qat", "--trust-model", "--qat", "--train",
                       str(trained / "train.npz"))
    assert proc.returncode == 2 and "factory" in proc.stderr and "Traceback" not in proc.stderr


def test_a_torch_export_program_converts_like_its_factory(trained: Path) -> None:
    import torch
    import torch_digits

    module = torch_digits.mlp()
    module.load_state_dict(torch.load(trained / "mlp.pt", weights_only=True))
    program = torch.export.export(module.eval(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, str(trained / "mlp.pt2"))
    proc, _ = _convert(trained, str(trained / "mlp.pt2"), "pt2_untrusted")
    assert proc.returncode == 2 and "--trust-model" in proc.stderr and "Traceback" not in proc.stderr
    proc, report = _convert(trained, str(trained / "mlp.pt2"), "pt2", "--trust-model")
    assert proc.returncode == 0, proc.stderr
    factory = json.loads((trained / "mlp" / "report.json").read_text())  # the factory's, from the test above
    assert report["input"]["format"] == "torch.export"
    assert report["outputs"]["mlp.tflite"] == factory["outputs"]["mlp.tflite"]  # the same bytes


def test_torch_errors_name_the_file_and_what_to_do(trained: Path, tmp_path: Path) -> None:
    import torch

    proc, _ = _convert(trained, "torch_digits:mlp", "a", "--weights", str(trained / "mlp.pt"))
    assert proc.returncode == 2 and "runs that Python code" in proc.stderr and "--trust-model" in proc.stderr
    proc, _ = _convert(trained, "torch_digits:mlp", "b", "--trust-model")
    assert proc.returncode == 2 and "--weights" in proc.stderr
    # What the loader says happens in the conversion's child; asked here directly (no process start-ups).
    from edgeq.errors import ModelLoadError
    from edgeq.frontends.torch import load_torch_model

    pickled = tmp_path / "pickled.pt"
    torch.save({"model": Path("not weights")}, pickled)  # an object, not tensors: weights_only refuses it
    sys.path.insert(0, str(EXAMPLES))
    with pytest.raises(ModelLoadError, match="safely"):
        load_torch_model("torch_digits:mlp", weights=pickled, example=[(1, 8, 8)], trust_model=True)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_torch_model("torch_digits:mlp", weights=trained / "cnn.pt", example=[(1, 8, 8)], trust_model=True)
    proc, _ = _convert(trained, "torch_digits:mlp", "e", "--weights", str(trained / "mlp.pt"), "--trust-model",
                       "--mode", "int16x8")
    assert proc.returncode == 2 and "int16x8" in proc.stderr
    # One pooling module called at two places: PT2E's own AssertionError becomes advice.
    (tmp_path / "reused.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)\n"
        "        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)\n        self.pool = nn.MaxPool2d(2)\n"
        "        self.fc = nn.Linear(4 * 2 * 2, 10)\n\n"
        "    def forward(self, x):\n        x = self.pool(torch.relu(self.conv1(x)))\n"
        "        x = self.pool(torch.relu(self.conv2(x)))\n        return self.fc(torch.flatten(x, 1))\n\n\n"
        "def build():\n    return Net()\n")
    sys.path.insert(0, str(tmp_path))
    import reused

    torch.save(reused.build().state_dict(), tmp_path / "reused.pt")
    from edgeq.calibration import load_dataset
    from edgeq.errors import ConversionError

    model = load_torch_model("reused:build", weights=tmp_path / "reused.pt", example=[(1, 8, 8)], trust_model=True)
    calibration = load_dataset(str(trained / "calibration.npz"))
    # Whether PT2E fails on it depends on the order it visits the partitions in, which follows
    # Python's string hashing (seen both ways): either it fails, and the message names the module,
    # or it succeeds, and the model must be fully int8 all the same.
    try:
        from edgeq.tflite.reader import read_tflite

        assert read_tflite(model.quantized([(1, 8, 8)], calibration, 8)).is_fully_integer
    except ConversionError as exc:
        assert "'pool' is called more than once" in exc.message and "own instance" in exc.hint
    # An op TFLM lacks (GELU): the ops check names the torch module it came from.
    (tmp_path / "gelu_net.py").write_text("import torch\nfrom torch import nn\n\n\ndef build():\n"
                                          "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.GELU(), "
                                          "nn.Linear(16, 10))\n")
    import gelu_net

    torch.save(gelu_net.build().state_dict(), tmp_path / "gelu.pt")
    proc = run_edgeq("convert", "gelu_net:build", "--weights", str(tmp_path / "gelu.pt"), "--trust-model",
                     "--calibration", str(trained / "calibration.npz"), "--no-eval", "-o", str(tmp_path / "g"),
                     cwd=tmp_path)
    assert proc.returncode == 3 and "GELU (from torch module '2', a GELU)" in proc.stderr, proc.stderr
    from edgeq.frontends.torch import _explained, _reused_modules

    reused_names = _reused_modules(reused.build(), (torch.zeros(1, 1, 8, 8),))
    assert reused_names == ["pool"]
    error = _explained("reused:build", AssertionError("'relu_1' not in ..."), reused_names)
    assert "'pool' is called more than once" in error.message and "self.pool1" in error.hint


def test_the_python_api_takes_a_module_in_memory(trained: Path) -> None:
    import torch
    import torch_digits

    import edgeq
    from edgeq.errors import ModelLoadError
    from edgeq.pipeline import ConvertOptions

    module = torch_digits.mlp()
    module.load_state_dict(torch.load(trained / "mlp.pt", weights_only=True))
    result = edgeq.convert(module, "mcu", ConvertOptions(calibration=str(trained / "calibration.npz"),
                                                         evaluation=str(trained / "eval.npz"),
                                                         outdir=trained / "api", name="mlp"),
                           example_input=torch.zeros(1, 1, 8, 8))
    assert result.gate.passed and result.report.input.format == "torch.export"
    factory = json.loads((trained / "mlp" / "report.json").read_text())
    assert result.report.outputs["mlp.tflite"] == factory["outputs"]["mlp.tflite"]
    with pytest.raises(ModelLoadError, match="example_input"):
        edgeq.convert(module, "mcu", ConvertOptions(calibration=str(trained / "calibration.npz")))


def test_precision_measures_every_format_on_a_torch_module(trained: Path, tmp_path: Path) -> None:
    proc = run_edgeq("precision", "torch_digits:cnn", "--weights", str(trained / "cnn.pt"), "--trust-model", "--data",
                     str(trained / "eval.npz"), "--target", "mcu", "-o", str(tmp_path / "p"), "--json", cwd=EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    formats = {f["name"]: f for f in report["formats"]}
    assert formats["fp32"]["max_logit_diff"] == 0 and formats["fp32"]["accuracy"] > 0.9
    # The errors grow as the formats narrow, and the int8 TFLite uses keeps the top-1.
    assert 0 < formats["fp16"]["mean_logit_diff"] < formats["int8_sym_channel"]["mean_logit_diff"] \
        < formats["int4_sym_channel"]["mean_logit_diff"]
    assert formats["int8_sym_channel"]["top1_agreement"] >= 0.98 and formats["int8_sym_channel"]["target_runs"]
    assert formats["bf16_act"]["mean_logit_diff"] is not None  # the module ran in bfloat16
    assert formats["int4_sym_channel"]["weight_bytes"] < formats["int8_sym_channel"]["weight_bytes"]
    gains = {g["layer"] for g in report["per_channel_vs_per_tensor"]}
    assert {"stem.0", "depthwise.0", "pointwise", "head"} <= gains
    assert {d["layer"] for d in report["dot_products"]} >= {"stem.0", "head"}
    proc = run_edgeq("precision", "torch_digits:cnn", "--weights", str(trained / "cnn.pt"), "--data",
                     str(trained / "eval.npz"), "-o", str(tmp_path / "q"), cwd=EXAMPLES)
    assert proc.returncode == 2 and "--trust-model" in proc.stderr and "Traceback" not in proc.stderr


def test_a_three_channel_input_goes_channels_last_when_that_saves_ops(tmp_path: Path) -> None:
    """An RGB model's NCHW input would put a TRANSPOSE in front of the first convolution: edgeq
    converts both layouts in float32, keeps NHWC (fewer ops), transposes the user's NCHW data for
    it, says so in the report and the header, and device-check transposes NCHW data for it too."""
    import numpy as np
    import torch

    (tmp_path / "rgb.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())\n"
        "        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())\n"
        "        self.head = nn.Linear(8, 4)\n\n"
        "    def forward(self, x):\n        return self.head(self.b(self.a(x)).mean(dim=(2, 3)))\n\n\n"
        "def build():\n    torch.manual_seed(0)\n    return Net()\n")
    sys.path.insert(0, str(tmp_path))
    import rgb

    torch.save(rgb.build().state_dict(), tmp_path / "rgb.pt")
    rng = np.random.default_rng(0)
    x = rng.random((160, 3, 12, 10), dtype=np.float32)
    np.savez(tmp_path / "calibration.npz", x=x[:100])
    np.savez(tmp_path / "eval.npz", x=x[100:])
    proc = run_edgeq("convert", "rgb:build", "--weights", str(tmp_path / "rgb.pt"), "--trust-model", "--target", "mcu",
                     "--calibration", str(tmp_path / "calibration.npz"), "--eval", str(tmp_path / "eval.npz"),
                     "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["inputs"][0]["shape"] == [1, 12, 10, 3]
    # The input's TRANSPOSE is gone; the one before the mean over NCHW's (2, 3) stays (litert-torch's).
    assert report["model"]["ops"].get("TRANSPOSE", 0) <= 1
    assert report["input"]["input_layout"].startswith("NHWC: edgeq moved the PyTorch model's channels last (1 op ")
    assert report["emulation"]["accuracy"]["top1_agreement"] >= 0.9  # against torch float on the NCHW data
    assert "int8 [1, 12, 10, 3] (NHWC" in (tmp_path / "out" / "build_model_data.h").read_text()
    check = device_check_on_sim(tmp_path / "out" / "build.tflite", tmp_path / "eval.npz", tmp_path / "dc")
    assert check.returncode == 0, check.stderr
    assert "bit-exact with the emulator: 60 of 60" in check.stdout and "transposed" in check.stderr + check.stdout
