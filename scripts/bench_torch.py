#!/usr/bin/env python3
"""Benchmark: PyTorch models through `edgeq convert` against the plain litert-torch PT2E script,
and their ONNX exports through `edgeq convert model.onnx` against plain onnx2tf + the TFLite converter.

For the CNN (BatchNorm, ReLU6, depthwise, a residual add into the global mean) and the MLP of
examples/torch_digits.py, trained on the bundled digits, it prints per path:
  - the plain way: torch.export -> litert-torch's PT2EQuantizer -> prepare_pt2e -> calibrate ->
    convert_pt2e -> litert_torch.convert, as its docs show it: .tflite size, whether it is fully
    int8 (what TFLM's int8 kernels need), top-1 agreement with torch float in LiteRT, and time;
  - `edgeq convert` (PT2E with edgeq's quantizer, then the emulator and every check): size, the
    TFLM arena it measured, top-1 agreement in the device's runtime, and wall time (a fresh
    process, torch and TensorFlow start-up included), and the time ratio;
  - for the ONNX export of each (torch.onnx.export): the plain way, onnx2tf to a SavedModel and the
    TFLite converter with a representative dataset (full int8, int8 I/O), against `edgeq convert
    model.onnx` (the same translation, kept NCHW, with onnxruntime as the float reference).

    .venv/bin/python scripts/bench_torch.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SAMPLES = 200  # calibration samples, as edgeq's default


def plain(module: object, calibration: np.ndarray) -> tuple[bytes, float]:
    """The litert-torch PT2E recipe as its documentation gives it; (model, seconds)."""
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    start = time.perf_counter()
    args = (torch.zeros(1, *calibration.shape[1:]),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(module, args).module(), quantizer)
    with torch.no_grad():
        for i in range(min(SAMPLES, len(calibration))):
            prepared(torch.from_numpy(calibration[i:i + 1]))
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    model = bytes(litert_torch.convert(converted, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))
                  .model_content())
    return model, time.perf_counter() - start


def plain_onnx(path: Path, calibration: np.ndarray) -> tuple[bytes, float]:
    """onnx2tf -> SavedModel -> TFLiteConverter with a representative dataset, as a user glues them
    by hand (the layout kept NCHW, as edgeq keeps it); (model, seconds)."""
    import onnx2tf
    import tensorflow as tf

    from edgeq._tf import captured_output

    start = time.perf_counter()
    folder = path.with_suffix(".saved_model")
    with captured_output():  # both print pages of progress
        model = _plain_onnx(onnx2tf, tf, path, folder, calibration)
    return model, time.perf_counter() - start


def _plain_onnx(onnx2tf: object, tf: object, path: Path, folder: Path, calibration: np.ndarray) -> bytes:
    onnx2tf.convert(input_onnx_file_path=str(path), output_folder_path=str(folder), output_signaturedefs=True,
                    keep_ncw_or_nchw_or_ncdhw_input_names=["x"], not_use_onnxsim=True, non_verbose=True)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(min(SAMPLES, len(calibration))))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def agreement(model: bytes, x: np.ndarray, reference: np.ndarray) -> float:
    """Top-1 agreement of `model` in LiteRT with the float outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    picks = []
    for sample in x:
        if inp["dtype"] == np.int8:
            sample = np.clip(np.round(sample / scale) + zero, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], sample[None].astype(inp["dtype"]))
        interp.invoke()
        picks.append(int(np.argmax(interp.get_tensor(out["index"]))))
    return float(np.mean(np.array(picks) == reference.argmax(1)))


def main() -> int:
    import torch
    import torch_digits

    from edgeq.tflite.reader import read_tflite

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch_digits.main(folder)
        calibration = np.load(folder / "calibration.npz")["x"]
        held_out = np.load(folder / "eval.npz")["x"]
        print(f"\n{'model':<6}{'path':<16}{'.tflite':>10}{'fully int8':>12}{'TFLM arena':>12}{'agreement':>11}"
              f"{'time':>9}")
        for net in ("cnn", "mlp"):
            module = getattr(torch_digits, net)()
            module.load_state_dict(torch.load(folder / f"{net}.pt", weights_only=True))
            module.eval()
            with torch.no_grad():
                reference = module(torch.from_numpy(held_out)).numpy()
            model, plain_s = plain(module, calibration)
            info = read_tflite(model)
            print(f"{net:<6}{'litert-torch':<16}{len(model):>10,}{'yes' if info.is_fully_integer else 'no':>12}"
                  f"{'-':>12}{agreement(model, held_out, reference):>11.3f}{plain_s:>8.1f}s")
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "edgeq", "convert", f"torch_digits:{net}", "--weights",
                                   str(folder / f"{net}.pt"), "--trust-model", "--target", "mcu", "--calibration",
                                   str(folder / "calibration.npz"), "--eval", str(folder / "eval.npz"), "-o",
                                   str(folder / net)], cwd=ROOT / "examples", capture_output=True, text=True)
            edgeq_s = time.perf_counter() - start
            if proc.returncode not in (0, 3):
                print(f"{net:<6}{'edgeq convert':<16} failed: {proc.stderr.strip()[-300:]}")
                continue
            report = json.loads((folder / net / "report.json").read_text())
            ram, accuracy = report["emulation"]["memory"]["ram"], report["emulation"]["accuracy"]
            print(f"{net:<6}{'edgeq convert':<16}{report['sizes']['quantized_tflite_bytes']:>10,}"
                  f"{'yes' if report['model']['fully_integer'] else 'no':>12}{ram['tflm_arena']['smallest']:>11,}B"
                  f"{accuracy['top1_agreement']:>11.3f}{edgeq_s:>8.1f}s  ({edgeq_s / plain_s:.1f}x the plain "
                  f"conversion: a fresh process, plus the emulator and the checks; {accuracy['runtime_used']})")
            onnx_rows(net, module, folder, calibration, held_out, reference)
    return 0


def onnx_rows(net: str, module: object, folder: Path, calibration: np.ndarray, held_out: np.ndarray,
              reference: np.ndarray) -> None:
    """The ONNX export of `module`: plain onnx2tf + converter, then `edgeq convert model.onnx`."""
    import torch

    from edgeq.tflite.reader import read_tflite

    try:
        import onnx2tf  # noqa: F401
    except ImportError:
        print(f"{net:<6}{'onnx2tf':<16} not installed (scripts/setup installs it)")
        return
    path = folder / f"{net}.onnx"
    torch.onnx.export(module, (torch.zeros(1, *held_out.shape[1:]),), str(path), input_names=["x"])
    model, plain_s = plain_onnx(path, calibration)
    info = read_tflite(model)
    print(f"{net:<6}{'onnx2tf+conv.':<16}{len(model):>10,}{'yes' if info.is_fully_integer else 'no':>12}"
          f"{'-':>12}{agreement(model, held_out, reference):>11.3f}{plain_s:>8.1f}s")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeq", "convert", str(path), "--target", "mcu", "--calibration",
                           str(folder / "calibration.npz"), "--eval", str(folder / "eval.npz"), "-o",
                           str(folder / f"{net}_onnx")], capture_output=True, text=True)
    edgeq_s = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        print(f"{net:<6}{'edgeq (onnx)':<16} failed: {proc.stderr.strip()[-300:]}")
        return
    report = json.loads((folder / f"{net}_onnx" / "report.json").read_text())
    ram, accuracy = report["emulation"]["memory"]["ram"], report["emulation"]["accuracy"]
    print(f"{net:<6}{'edgeq (onnx)':<16}{report['sizes']['quantized_tflite_bytes']:>10,}"
          f"{'yes' if report['model']['fully_integer'] else 'no':>12}{ram['tflm_arena']['smallest']:>11,}B"
          f"{accuracy['top1_agreement']:>11.3f}{edgeq_s:>8.1f}s  ({edgeq_s / plain_s:.1f}x; agreement with "
          f"onnxruntime, {accuracy['runtime_used']})")


if __name__ == "__main__":
    raise SystemExit(main())
