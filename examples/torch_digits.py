"""PyTorch models for the bundled 8x8 digits, as a torch user writes them (NCHW), and a trainer.

    .venv/bin/python examples/torch_digits.py OUT_DIR
writes OUT_DIR/cnn.pt and OUT_DIR/mlp.pt (state_dicts) and the digits splits as NCHW .npz files
(calibration.npz, eval.npz with labels), for

    cd examples && ../.venv/bin/edgeq convert torch_digits:cnn --weights OUT_DIR/cnn.pt --trust-model \\
        --target mcu --calibration OUT_DIR/calibration.npz --eval OUT_DIR/eval.npz

The CNN has what small vision models have: BatchNorm, ReLU6, a strided convolution, a depthwise
block with a residual add, and a global mean of that sum.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


class DigitsCnn(nn.Module):
    """A residual block whose sum goes straight into the global mean, as the last block of a
    ResNet or MobileNetV2 does."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6())
        self.pointwise = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(self.stem(x))
        y = y + self.pointwise(self.depthwise(y))
        return self.head(y.mean(dim=(2, 3)))


def cnn() -> nn.Module:
    return DigitsCnn()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def nchw(x: np.ndarray) -> np.ndarray:
    """The bundled sets are NHWC (Keras); torch takes NCHW."""
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)), dtype=np.float32)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 40, seed: int = 0) -> nn.Module:
    """Adam, batch 64, cross-entropy; returns the model in eval mode."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for i in range(0, len(inputs), 64):
            batch = order[i:i + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def main(out: Path, epochs: int = 40) -> None:
    from edgeq.calibration import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    splits = {s: load_dataset(f"digits:{s}") for s in ("train", "calibration", "eval")}
    np.savez(out / "calibration.npz", x=nchw(splits["calibration"].inputs[0]))
    np.savez(out / "eval.npz", x=nchw(splits["eval"].inputs[0]), y=splits["eval"].labels)
    for name, factory in (("cnn", cnn), ("mlp", mlp)):
        model = train(factory(), nchw(splits["train"].inputs[0]), splits["train"].labels, epochs=epochs)
        torch.save(model.state_dict(), out / f"{name}.pt")
        with torch.no_grad():
            accuracy = (model(torch.from_numpy(nchw(splits["eval"].inputs[0]))).argmax(1).numpy()
                        == splits["eval"].labels).mean()
        print(f"{name}: eval top-1 {accuracy:.2%}, state_dict {out / (name + '.pt')}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "edgeq-out/torch"))
