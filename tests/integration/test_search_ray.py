"""The recipe search on a Ray cluster: a local head (127.0.0.1, 2 CPUs) started here and stopped
after; `edgeq search --ray` measures the candidates as Ray tasks and finds what the local search
finds, candidate for candidate."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_edgeq, saved_dense_autoencoder

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def head():  # type: ignore[no-untyped-def]
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep the head and its clients on 127.0.0.1
    port, temp = _free_port(), tempfile.mkdtemp(prefix="eqray")  # short: Ray's socket paths have a limit
    start = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--object-store-memory=200000000", f"--temp-dir={temp}",
                            "--disable-usage-stats"], capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def small_autoencoder(tmp_path_factory) -> tuple[Path, Path]:
    from edgeq._tf import tf

    tf()
    import keras

    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    x = (rng.normal(size=(200, 4)) @ rng.normal(size=(4, 32))).astype(np.float32)
    folder = tmp_path_factory.mktemp("ray")
    np.savez(folder / "ae.npz", x=x[:100])
    return saved_dense_autoencoder(folder, x, [(24, "relu"), (4, None), (32, None)], epochs=5), folder / "ae.npz"


def test_search_on_a_ray_cluster_measures_what_the_local_search_measures(head: str, small_autoencoder,
                                                                          tmp_path: Path) -> None:
    model, data = small_autoencoder
    common = ["search", str(model), "--target", "mcu", "--calibration", str(data), "--eval", str(data)]
    local = run_edgeq(*common, "-o", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    remote = run_edgeq(*common, "-o", str(tmp_path / "ray"), "--ray", head)
    assert remote.returncode == 0, remote.stderr
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("local", "ray"))
    assert a["search"]["tried"] == b["search"]["tried"] == 4  # 3 Dense layers: 0..3 per tensor
    assert a["search"]["candidates"] == b["search"]["candidates"]
    assert {k: v for k, v in a["outputs"].items() if not k.startswith("report")} == \
        {k: v for k, v in b["outputs"].items() if not k.startswith("report")}


def test_an_address_without_a_cluster_is_a_clear_error(small_autoencoder, tmp_path: Path) -> None:
    model, data = small_autoencoder
    proc = run_edgeq("search", str(model), "--target", "mcu", "--calibration", str(data), "-o", str(tmp_path / "x"),
                     "--ray", f"127.0.0.1:{_free_port()}")
    assert proc.returncode == 2 and "no Ray cluster answers there" in proc.stderr and "Traceback" not in proc.stderr
