"""Memory follows the model, not the number of samples: a run over many samples goes in batches
sized by the model's activations and the memory budget (edgeq.budget), and a convert's peak RSS
(children included) stays under a ceiling that the old one-batch-of-256 way exceeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# A wrapper process: the peak RSS of the largest process below it (the CLI and its worker child).
_PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
         "sys.stderr.write(p.stdout + p.stderr)")


def test_budget_reads_sizes_and_refuses_what_is_not_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeq.budget import DEFAULT_BATCH, ENV, batch_for, batch_note, memory_budget
    from edgeq.errors import EdgeqError

    monkeypatch.delenv(ENV, raising=False)
    assert memory_budget() == 512 << 20 and batch_for(None) == DEFAULT_BATCH and batch_note(DEFAULT_BATCH) == ""
    for text, size in (("2G", 2 << 30), ("64M", 64 << 20), ("1.5g", int(1.5 * (1 << 30))), ("4096", 4096),
                       ("300 MiB", 300 << 20)):
        monkeypatch.setenv(ENV, text)
        assert memory_budget() == size, text
    monkeypatch.setenv(ENV, "64M")
    assert batch_for(10 << 20) == 6 and batch_for(1 << 40) == 1 and batch_for(1) == DEFAULT_BATCH
    assert "in batches of 6" in batch_note(6) and ENV in batch_note(6)
    for bad in ("lots", "-1G", "0"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(EdgeqError, match=ENV):
            memory_budget()


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Three 32-channel convolutions at 128x128 (6.5 MB of activations a sample, 30 k parameters),
    32 calibration and 300 eval samples: 2 GB of activations in one batch of 256."""
    from edgeq._tf import tf

    tf()
    import keras

    folder = tmp_path_factory.mktemp("wide")
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((128, 128, 3)), *[L.Conv2D(32, 3, padding="same", activation="relu")
                                                           for _ in range(3)],
                              L.GlobalAveragePooling2D(), L.Dense(10)])
    model.save(folder / "wide.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "cal.npz", x=rng.normal(size=(32, 128, 128, 3)).astype(np.float32))
    np.savez(folder / "eval.npz", x=rng.normal(size=(300, 128, 128, 3)).astype(np.float32))
    return folder / "wide.keras", folder / "cal.npz", folder / "eval.npz"


def test_a_convert_over_many_eval_samples_stays_under_a_memory_ceiling(wide_model, tmp_path: Path) -> None:
    """With a 64 MiB budget the float reference runs 10 samples at a time and the whole convert peaks
    well under 1.8 GB (measured 1.1 GB); one batch of 256, as before the budget, peaked at 2.9 GB."""
    import os

    model, cal, held = wide_model
    env = {**os.environ, "EDGEQ_MEMORY_BUDGET": "64M"}
    command = [sys.executable, "-m", "edgeq", "convert", str(model), "--target", "iot", "--calibration", str(cal),
               "--eval", str(held), "-o", str(tmp_path / "out")]
    done = subprocess.run([sys.executable, "-c", _PEAK, *command], capture_output=True, text=True, env=env)
    code, peak_kb = (int(v) for v in done.stdout.split()[:2])
    assert code == 0, done.stderr
    assert "in batches of 10 (memory budget 64 MiB" in done.stderr, done.stderr
    assert peak_kb < 1_800_000, f"peak RSS {peak_kb / 1e6:.2f} GB"


def test_a_bad_budget_is_a_clear_error(wide_model, tmp_path: Path) -> None:
    import os

    model, cal, held = wide_model
    proc = subprocess.run([sys.executable, "-m", "edgeq", "convert", str(model), "--target", "iot", "--calibration",
                           str(cal), "--eval", str(held), "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "EDGEQ_MEMORY_BUDGET": "lots"}, timeout=600)
    assert proc.returncode == 2 and "EDGEQ_MEMORY_BUDGET='lots' is not a memory size" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
