"""device-check against the virtual device on a real pseudo-terminal: the flow, and every fault."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeq.calibration import load_dataset
from edgeq.device.check import device_check, render_markdown
from edgeq.device.session import WrongFirmwareError
from edgeq.device.link import DeviceError
from edgeq.errors import EdgeqError
from edgeq.device.sim import SimDevice, VirtualPort, parse_fault
from edgeq.tflite.reader import read_tflite
from edgeq.tflite.strip import read_flashed
from tests.conftest import plain_tflite, predict, run_edgeq

LIMIT = 60  # samples per in-process run: enough to place faults, quick on a pty


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory, keras3_model_path, digits) -> Path:
    """The trained digits CNN, full int8 through the plain converter."""
    from edgeq.loading import load_model

    model = load_model(keras3_model_path).keras_model
    path = tmp_path_factory.mktemp("device") / "digits_int8.tflite"
    path.write_bytes(plain_tflite(model, io="int8", data=digits["calibration"].inputs[0]))
    return path


class Sim:
    """SimDevice serving a pty in a thread of this process."""

    def __init__(self, model_path: Path, faults: list[str] = (), **kwargs) -> None:
        data = model_path.read_bytes()
        self.port = VirtualPort.open()
        self.log: list[str] = []
        self.device = SimDevice(data, read_tflite(data), arena_size=kwargs.pop("arena_size", 64 * 1024),
                                faults=[parse_fault(f) for f in faults], log=self.log.append, **kwargs)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.device.serve, args=(self.port.master, self.stop), daemon=True)
        self.thread.start()

    def __enter__(self) -> Sim:
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.port.close()


def check(sim: Sim, model: Path, out: Path, *, limit: int = LIMIT, timeout: float = 0.6, **kwargs):
    return device_check(sim.port.path, model, "digits", limit=limit, output_dir=out, timeout=timeout, **kwargs)


def test_sim_run_is_bit_exact_and_matches_the_emulator(digits_int8, tmp_path):
    with Sim(digits_int8) as sim:
        result = check(sim, digits_int8, tmp_path / "r", limit=None, timeout=None)
    report = result.report.to_dict()
    assert result.verdict == "pass"
    assert report["run"]["completed"] == report["run"]["requested"] == 400
    assert report["agreement"]["bit_exact"] == 400 and report["agreement"]["first_differing"] == []
    assert report["accuracy"]["device_top1"] == report["accuracy"]["emulator_top1"] > 90
    assert report["latency"]["unit"] == "us" and 0 < report["latency"]["median"] <= report["latency"]["p90"] \
        <= report["latency"]["max"]
    assert report["run"]["link"]["resends"] == 0
    on_disk = json.loads((tmp_path / "r" / "report.json").read_text())
    assert on_disk == report
    assert "PASS" in (tmp_path / "r" / "report.md").read_text()


def test_float_model_round_trips_float_bytes(tiny_cnn_tflite, tmp_path):
    model = tmp_path / "tiny_float.tflite"
    model.write_bytes(tiny_cnn_tflite["float32"])
    with Sim(model) as sim:
        result = check(sim, model, tmp_path / "r", limit=20)
    assert result.verdict == "pass" and result.report.to_dict()["agreement"]["bit_exact"] == 20
    assert result.report.to_dict()["device"]["inputs"][0]["dtype"] == "float32"


@pytest.mark.parametrize("fault, counter", [
    ("drop@5", "timeouts"),        # the reply never completes: the host times out and resends
    ("drop@5:40", "timeouts"),     # many bytes gone: the following frame must not be swallowed
    ("crc@7", "bad_frames"),       # a damaged reply: resent at once
    ("slow@3:1.0", "timeouts"),    # a late reply to the first attempt still counts (INFER is idempotent)
])
def test_line_faults_are_retried_and_the_run_completes(digits_int8, tmp_path, fault, counter):
    with Sim(digits_int8, [fault]) as sim:
        result = check(sim, digits_int8, tmp_path / "r")
    run = result.report.to_dict()["run"]
    assert result.verdict == "pass", run
    assert run["completed"] == LIMIT and result.report.to_dict()["agreement"]["bit_exact"] == LIMIT
    assert run["link"]["resends"] >= 1 and run["link"][counter] >= 1
    sample = int(fault.split("@")[1].split(":")[0])
    assert run["resent_samples"] == [sample]
    assert any(f"sample {sample}" in e for e in run["link"]["events"])
    assert any(line.startswith(f"fault {fault.split(':')[0]}") for line in sim.log)


def test_a_reset_is_detected_checked_with_hello_and_the_run_resumes(digits_int8, tmp_path):
    steps: list[str] = []
    with Sim(digits_int8, ["reset@10"]) as sim:
        result = check(sim, digits_int8, tmp_path / "r", on_step=steps.append)
        hellos = sim.device.served
    assert result.verdict == "pass"
    assert result.report.to_dict()["run"]["resets_before_samples"] == [10]
    assert result.report.to_dict()["agreement"]["bit_exact"] == LIMIT
    assert any("reset before answering sample 10" in s for s in steps)
    assert hellos == LIMIT  # the lost request was not counted as served


def test_repeated_resets_stop_the_run_with_what_is_missing(digits_int8, tmp_path):
    with Sim(digits_int8, ["reset@2", "reset@4", "reset@6", "reset@8"]) as sim:
        result = check(sim, digits_int8, tmp_path / "r")
    run, acc = result.report.to_dict()["run"], result.report.to_dict()["accuracy"]
    assert result.verdict == "incomplete"
    assert "reset 4 times" in run["stopped_because"]
    assert run["missing"] == LIMIT - run["completed"] > 0
    assert acc["samples"] == run["completed"] and f"{run['missing']} of {LIMIT} samples missing" in acc["note"]
    assert "INCOMPLETE" in render_markdown(result.report)


def test_a_hung_device_is_reported_with_the_sample_index(digits_int8, tmp_path):
    with Sim(digits_int8, ["mute@25"]) as sim:
        started = time.monotonic()
        result = check(sim, digits_int8, tmp_path / "r", timeout=0.3)
        elapsed = time.monotonic() - started
    run = result.report.to_dict()["run"]
    assert result.verdict == "incomplete"
    assert run["stopped_at"] == 25 and run["completed"] == 25 and run["missing"] == LIMIT - 25
    assert "sample 25" in run["stopped_because"] and "4 attempts" in run["stopped_because"]
    assert elapsed < 10  # bounded: 4 attempts x 0.3 s, plus pauses
    assert (tmp_path / "r" / "report.json").exists()  # the partial run is reported, not lost


def test_wrong_firmware_is_refused_before_any_sample(digits_int8, tmp_path):
    with Sim(digits_int8, ["wrong-hash"]) as sim:
        with pytest.raises(WrongFirmwareError, match="wrong firmware: the device runs a model with SHA-256"):
            check(sim, digits_int8, tmp_path / "r")
        assert sim.device.served == 0
    assert not (tmp_path / "r").exists()


def test_a_different_model_file_is_refused(digits_int8, tiny_cnn_tflite, tmp_path):
    other = tmp_path / "other.tflite"
    other.write_bytes(tiny_cnn_tflite["int8"])
    with Sim(digits_int8) as sim:
        with pytest.raises(WrongFirmwareError, match="other.tflite"):
            check(sim, other, tmp_path / "r")


def test_a_device_that_computes_wrong_answers_is_caught(digits_int8, tmp_path):
    with Sim(digits_int8, ["flip@4", "flip@9"]) as sim:
        result = check(sim, digits_int8, tmp_path / "r", limit=20)
    agree = result.report.to_dict()["agreement"]
    assert result.verdict == "mismatch"
    assert agree["differing"] == 2 and [d["sample"] for d in agree["first_differing"]] == [4, 9]
    assert all(d["elements"] == 1 and d["max_difference"] >= 1 for d in agree["first_differing"])


def test_not_ready_device_is_a_clear_error(digits_int8, tmp_path):
    with Sim(digits_int8, arena_size=256, arena_needed=3000) as sim:  # too small: AllocateTensors fails
        result = check(sim, digits_int8, tmp_path / "r", limit=5)
    run = result.report.to_dict()["run"]
    assert result.verdict == "incomplete" and run["stopped_at"] == 0
    assert "NOT_READY" in run["stopped_because"] and "this device has 256 bytes" in run["stopped_because"]


# -- the CLI, as a user runs it: device-sim in one process, device-check in another -------------


def _start_sim(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "edgeq", "device-sim", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    if not port.startswith("/dev/"):
        proc.kill()
        raise AssertionError(f"device-sim did not print a port: {port!r} {proc.stderr.read()}")
    return proc, port


def _check_against_sim(model: Path, sim_args: list[str], check_args: list[str]) -> subprocess.CompletedProcess:
    """`edgeq device-check` in one process against `edgeq device-sim` in another, stopped after."""
    proc, port = _start_sim(str(model), *sim_args)
    try:
        return run_edgeq("device-check", "-p", port, "-m", str(model), "-d", "digits", *check_args)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_cli_device_sim_and_device_check(digits_int8, tmp_path):
    link = tmp_path / "board"
    proc, port = _start_sim(str(digits_int8), "--link", str(link), "--fault", "crc@2")
    try:
        assert link.is_symlink() and os.readlink(link) == port
        result = run_edgeq("device-check", "--port", str(link), "--model", str(digits_int8), "--data", "digits",
                           "-o", str(tmp_path / "out"))
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    assert "bit-exact with the emulator: 400 of 400" in result.stdout
    assert "Traceback" not in result.stderr + err
    assert proc.returncode == 0 and "stopped after 401 inference(s)" in err  # 400 + the resent one
    assert not link.exists()  # the symlink goes with the device
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # The device runs TFLM: its top-1 is TFLM's, computed here independently (LiteRT's may differ
    # by a sample on CPUs where its kernels are not bit-exact with TFLM).
    data = load_dataset("digits:eval")
    tflm_top1 = np.mean(predict("tflm", digits_int8.read_bytes(), data.inputs[0]).argmax(1) == data.labels)
    assert report["accuracy"]["device_top1"] == pytest.approx(100 * tflm_top1)


@pytest.mark.parametrize("args, code, words", [
    # INFER number 5 is sample 4: the CRC fault made sample 2 go twice
    (["--fault", "crc@2", "--fault", "mute@5"], 4, "the run stopped at sample 4 with 396 of 400 samples missing"),
    (["--fault", "wrong-hash"], 2, "wrong firmware"),
    (["--fault", "flip@1"], 3, "differs from the emulator on 1 of 400 samples (first: 1)"),
])
def test_cli_exit_codes(digits_int8, tmp_path, args, code, words):
    result = _check_against_sim(digits_int8, args, ["--timeout", "0.3", "-o", str(tmp_path / "out")])
    assert result.returncode == code, result.stderr
    assert words in result.stderr and "hint:" in result.stderr and "Traceback" not in result.stderr


def test_cli_bad_port_and_bad_fault(digits_int8, tmp_path):
    result = run_edgeq("device-check", "-p", str(tmp_path / "no-such-tty"), "-m", str(digits_int8), "-d", "digits",
                       "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "cannot open serial port" in result.stderr and "device-sim" in result.stderr
    assert not (tmp_path / "out").exists()
    result = run_edgeq("device-sim", str(digits_int8), "--fault", "explode@3")
    assert result.returncode == 2 and "unknown fault 'explode@3'" in result.stderr
    assert "Traceback" not in result.stderr


def test_fault_specs_parse_or_explain():
    assert str(parse_fault("slow@5:1.5")) == "slow@5:1.5"
    assert parse_fault("drop@2").arg == 3 and parse_fault("WRONG-HASH").kind == "wrong-hash"
    for bad in ("crc", "crc@x", "drop@1:0", "drop@1:1.5", "crc@1:2", "wrong-hash@1", "slow@1:abc"):
        with pytest.raises(ValueError, match="faults: drop@N"):
            parse_fault(bad)


def test_device_error_exit_code_is_distinct():
    assert DeviceError("x").exit_code == 4


# -- the harness firmware, from the CLI ------------------------------------------------------------


def test_cli_firmware_writes_the_tree_with_cortex_m_sizes(digits_int8, tmp_path):
    out = tmp_path / "fw"
    result = run_edgeq("firmware", str(digits_int8), "-o", str(out), "--max-payload", "1024")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "edgeq_firmware.json").read_text())
    model = digits_int8.read_bytes()
    assert manifest["model_sha256"] == hashlib.sha256(model).hexdigest() and manifest["max_payload"] == 1024
    for rel in ("README.md", "edgeq_platform.h", "edgeq_harness.cc", "ports/zephyr/src/main.c",
                "ports/arduino/edgeq_harness/edgeq_harness.ino", "digits_int8_model_data.cc"):
        assert (out / rel).is_file(), rel
    size = manifest["cortex_m_size"]
    assert size["model"]["bytes"] == len(model) and size["model"]["section"].startswith(".rodata")
    assert 0 < size["harness"]["flash"] < 16 * 1024 and size["harness"]["ram"] < 3 * 1024  # 1 KiB frames
    assert f"model {len(model):,} B in .rodata" in result.stdout
    again = run_edgeq("firmware", str(digits_int8), "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    lite = run_edgeq("firmware", str(digits_int8), "--target", "iot", "-o", str(tmp_path / "x"))
    assert lite.returncode == 2 and "harness firmware is for TFLite Micro" in lite.stderr


def test_convert_harness_then_device_sim_then_device_check(tmp_path):
    """The whole user flow: convert with --harness, 'flash' it (the virtual device), check it."""
    out = tmp_path / "out"
    example = Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.keras"
    result = run_edgeq("convert", str(example), "--calibration", "digits", "--harness", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "the device-check harness firmware" in result.stdout
    model = out / "digits_cnn.tflite"
    report = json.loads((out / "report.json").read_text())
    flashed, _ = read_flashed(model)  # the lean form in the firmware, which the written file gives back
    assert report["harness"]["model_sha256"] == hashlib.sha256(flashed).hexdigest()
    assert report["harness"]["cortex_m_size"]["model"]["bytes"] == len(flashed) < model.stat().st_size
    markdown = (out / "report.md").read_text()
    assert "## Harness firmware" in markdown and f"| {len(flashed):,} B | 0 B |" in markdown
    assert (out / "ports" / "baremetal" / "main.c").is_file() and (out / "edgeq_firmware.json").is_file()
    check_result = _check_against_sim(model, [], ["-n", "50", "-o", str(tmp_path / "dc")])
    assert check_result.returncode == 0, check_result.stderr
    assert "bit-exact with the emulator: 50 of 50" in check_result.stdout
    iot = run_edgeq("convert", str(example), "--target", "iot", "--harness", "-o", str(tmp_path / "iot"))
    assert iot.returncode == 2 and "--harness builds TFLite Micro firmware" in iot.stderr


def test_serve_model_is_device_sim_as_a_library_call(digits_int8, tmp_path):
    """The serving loop without the CLI: ready with a port and a link, checked, stopped, link gone."""
    from edgeq.device.sim import serve_model

    stop, ready, served = threading.Event(), [], []
    link = tmp_path / "board"
    thread = threading.Thread(target=lambda: served.append(serve_model(
        digits_int8, stop, faults=["crc@1"], link_path=link, arena_margin=512, on_ready=ready.append)), daemon=True)
    thread.start()
    for _ in range(600):
        if ready:
            break
        time.sleep(0.05)
    (serving,) = ready
    assert link.is_symlink() and os.readlink(link) == serving.port and serving.faults[0].kind == "crc"
    try:
        result = device_check(str(link), digits_int8, "digits", limit=5, output_dir=tmp_path / "r", timeout=0.6)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result.verdict == "pass" and result.report.run.link.resends >= 1
    assert served[0] >= 5  # every sample, and the resent one again
    assert not os.path.lexists(link)
    with pytest.raises(EdgeqError, match="--fault"):
        serve_model(digits_int8, threading.Event(), faults=["explode@1"])
