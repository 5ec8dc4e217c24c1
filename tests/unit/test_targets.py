"""Tests for edgeq.targets: the bundled profiles, the generated op sets, strict validation,
inheritance, the generated supported-ops document and the `edgeq targets` commands.

No mocks: broken profiles are real files written into tmp_path (with a copy of the op sets),
the op sets are compared with the installed tflite-micro and ai-edge-litert, and the CLI runs
in a child process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from edgeq.errors import TargetProfileError
from edgeq.opsdoc import render_supported_ops_markdown
from edgeq.targets import TargetProfile, available_targets, load_all, load_target
from edgeq.tflite.tflm_ops import RESOLVER_METHODS

REPO = Path(__file__).resolve().parents[2]
TARGETS = REPO / "edgeq" / "data" / "targets"
MCU_TOML = (TARGETS / "mcu.toml").read_text()

# Builtin ops TensorFlow Lite Micro has no kernel for (LiteRT has them all).
TFLM_LESS_OPS = ["GELU", "TILE", "RANGE", "POW", "TOPK_V2", "ONE_HOT",
                 "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "SELECT"]
CORE_MCU_OPS = ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "MAX_POOL_2D",
                "AVERAGE_POOL_2D", "QUANTIZE", "DEQUANTIZE", "ADD", "MUL", "MEAN"]


# -- helpers --------------------------------------------------------------------------------------


def _load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py by path (scripts/ is not a package)."""
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_edgeq_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A targets folder of our own: the real op sets and a copy of the bundled mcu class."""
    shutil.copytree(TARGETS / "op_sets", tmp_path / "op_sets")
    (tmp_path / "mcu.toml").write_text(MCU_TOML)
    return tmp_path


def _write(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(text)
    return path


def _board(body: str = "") -> str:
    """A board inheriting the mcu class, plus `body`."""
    return 'inherits = "mcu"\nkind = "board"\n' + body


def _expect_error(root: Path, name: str, *words: str) -> str:
    with pytest.raises(TargetProfileError) as info:
        load_target(name, root=root)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    return message


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EDGEQ_TARGETS_DIR", None)
    return env


def _edgeq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeq", *args], capture_output=True, text=True,
                          cwd=REPO, env=_cli_env(), timeout=120)


# -- bundled profiles -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def profiles() -> dict[str, TargetProfile]:
    return {p.name: p for p in load_all()}


def test_every_bundled_profile_loads(profiles: dict[str, TargetProfile]) -> None:
    names = available_targets()
    assert sorted(profiles) == names
    classes = {n for n, p in profiles.items() if p.kind == "class"}
    boards = {n for n, p in profiles.items() if p.kind == "board"}
    assert {"phone", "iot", "mcu"} <= classes and len(classes) >= 3
    assert {"nrf52840", "stm32h743", "esp32s3", "rpi-zero-2w"} <= boards and len(boards) >= 3
    for name, p in profiles.items():
        assert p.name == name and p.chain[0] == name
        assert p.source == TARGETS / f"{name}.toml"
        assert p.supported_ops, name
        assert p.op_set_source, name
        assert p.quantization.default_mode in p.quantization.modes
        if p.kind == "board":
            assert p.inherits in classes, f"{name} inherits {p.inherits}"
            assert p.chain == (name, p.inherits)
        elif p.inherits is not None:  # a class that runs another class's hardware on another runtime (mcu-c)
            assert p.inherits in classes and profiles[p.inherits].runtime != p.runtime, name
            assert p.chain == (name, p.inherits)
        else:
            assert p.chain == (name,)


def test_mcu_c_is_the_mcu_class_as_plain_c(profiles: dict[str, TargetProfile]) -> None:
    from edgeq.aot.lower import KERNELS
    from edgeq.targets import for_runtime

    mcu_c, swapped = profiles["mcu-c"], for_runtime(profiles["mcu"], "c")
    assert mcu_c.runtime == swapped.runtime == "c" and mcu_c.supported_ops == swapped.supported_ops == set(KERNELS)
    assert mcu_c.quantization.modes == swapped.quantization.modes == ("int8", "int16x8")
    assert mcu_c.memory.ram_bytes == swapped.memory.ram_bytes == profiles["mcu"].memory.ram_bytes
    assert mcu_c.memory.runtime_flash_bytes == swapped.memory.runtime_flash_bytes < profiles["mcu"].memory.runtime_flash_bytes
    assert mcu_c.latency == swapped.latency
    with pytest.raises(TargetProfileError, match="TFLite Micro target"):
        for_runtime(profiles["phone"], "c")


def test_mcu_class(profiles: dict[str, TargetProfile]) -> None:
    mcu = profiles["mcu"]
    q = mcu.quantization
    assert mcu.runtime == "tflm"
    assert q.modes == ("int8", "int16x8")
    assert "float16" not in q.modes and "dynamic" not in q.modes
    assert q.default_mode == "int8"
    assert q.per_channel is True
    assert mcu.io_dtypes("int8") == ("int8", "int8")
    assert mcu.io_dtypes("int16x8") == ("int16", "int16")
    assert mcu.memory.flash_bytes == 1 << 20
    assert mcu.memory.ram_bytes == 256 * 1024
    assert mcu.memory.tensor_alignment % 16 == 0
    assert mcu.ops.set == "tflm"


def test_phone_and_iot_classes(profiles: dict[str, TargetProfile]) -> None:
    phone, iot = profiles["phone"], profiles["iot"]
    assert {"float32", "float16", "dynamic", "int8"} <= set(phone.quantization.modes)
    assert phone.runtime == "litert"
    assert phone.memory.flash_bytes is None and phone.memory.ram_bytes is None
    assert iot.runtime == "litert"
    assert iot.quantization.default_mode == "int8"
    # LiteRT quantizes at the model's edges: applications feed floats.
    assert iot.io_dtypes("int8") == ("float32", "float32")
    assert phone.io_dtypes("float16") == ("float32", "float32")


def test_boards_override_only_what_differs(profiles: dict[str, TargetProfile]) -> None:
    mcu, nrf, stm, esp = profiles["mcu"], profiles["nrf52840"], profiles["stm32h743"], profiles["esp32s3"]
    # nrf52840 overrides one key of [memory]; the others come from mcu.
    assert nrf.memory.reserved_ram_bytes == 49_152 != mcu.memory.reserved_ram_bytes
    assert nrf.memory.flash_bytes == mcu.memory.flash_bytes
    assert nrf.memory.ram_bytes == mcu.memory.ram_bytes
    assert nrf.memory.tensor_alignment == mcu.memory.tensor_alignment
    assert nrf.latency == mcu.latency and nrf.quantization == mcu.quantization
    assert stm.memory.flash_bytes == 2 << 20 and stm.clock_mhz == 480 and stm.cpu == "Arm Cortex-M7"
    assert stm.memory.runtime_flash_bytes == mcu.memory.runtime_flash_bytes
    for board in (nrf, stm, esp):
        assert board.runtime == "tflm" and board.supported_ops == mcu.supported_ops
    rpi = profiles["rpi-zero-2w"]
    assert rpi.runtime == "litert" and rpi.clock_mhz == 1000 and rpi.chain == ("rpi-zero-2w", "iot")


# -- op sets --------------------------------------------------------------------------------------


def _op_set(name: str) -> dict:
    from edgeq.targets import tomllib  # tomllib, or tomli on Python 3.10

    return tomllib.loads((TARGETS / "op_sets" / f"{name}.toml").read_text())


def test_tflm_op_set_is_what_tflm_really_has() -> None:
    gen = _load_script("gen_op_sets")
    kernels = gen.tflm_kernel_registrations()
    assert len(kernels) > 50, "no kernel registrations found in the tflite-micro wheel"
    ops = _op_set("tflm")["ops"]
    assert ops == sorted(set(ops)), "op set not sorted or has duplicates"
    no_kernel = [op for op in ops if op not in kernels]
    no_method = [op for op in ops if op not in RESOLVER_METHODS]
    assert not no_kernel, f"no TFLM kernel for {no_kernel}"
    assert not no_method, f"no MicroMutableOpResolver method for {no_method}"
    # And nothing with both a kernel and a method is left out.
    assert set(ops) == {op for op in RESOLVER_METHODS if op in kernels}
    mcu_ops = load_target("mcu").supported_ops
    assert mcu_ops == set(ops)
    for op in TFLM_LESS_OPS:
        assert op not in mcu_ops, op
    for op in CORE_MCU_OPS:
        assert op in mcu_ops, op
    assert _op_set("tflm")["source"].startswith("tflite-micro ")


def test_litert_op_set_is_the_builtin_operator_enum() -> None:
    from ai_edge_litert import schema_py_generated as schema

    enum = {n for n in vars(schema.BuiltinOperator) if n.isupper() and not n.startswith("_")}
    expected = enum - {"CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"}
    data = _op_set("litert_builtins")
    assert set(data["ops"]) == expected
    assert data["source"].startswith("ai-edge-litert ")
    phone = load_target("phone").supported_ops
    assert set(TFLM_LESS_OPS) <= phone and set(CORE_MCU_OPS) <= phone


def test_resolver_method_names() -> None:
    pattern = re.compile(r"^Add[A-Z][A-Za-z0-9]*$")
    bad = {op: m for op, m in RESOLVER_METHODS.items() if not pattern.match(m)}
    assert not bad
    assert len(set(RESOLVER_METHODS.values())) == len(RESOLVER_METHODS), "two ops share a method"


@pytest.mark.parametrize(("op", "method"), [
    ("CUMSUM", "AddCumSum"),
    ("BATCH_MATMUL", "AddBatchMatMul"),
    ("UNIDIRECTIONAL_SEQUENCE_LSTM", "AddUnidirectionalSequenceLSTM"),
    ("PADV2", "AddPadV2"),
    ("CONV_2D", "AddConv2D"),
    ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"),
    ("MAX_POOL_2D", "AddMaxPool2D"),
])
def test_irregular_resolver_methods(op: str, method: str) -> None:
    assert RESOLVER_METHODS[op] == method


# -- strict validation ----------------------------------------------------------------------------


def test_valid_board_in_tmp_root_loads(root: Path) -> None:
    _write(root, "myboard", _board('clock_mhz = 100\n[ops]\nexclude = ["CONV_2D"]\n'))
    p = load_target("myboard", root=root)
    assert p.chain == ("myboard", "mcu") and p.clock_mhz == 100.0
    assert "CONV_2D" not in p.supported_ops and "DEPTHWISE_CONV_2D" in p.supported_ops


def test_unknown_top_level_key(root: Path) -> None:
    _write(root, "b", _board('colour = "red"\n'))
    _expect_error(root, "b", "b.toml", "unknown key 'colour'")


def test_unknown_key_in_table_suggests_close_match(root: Path) -> None:
    _write(root, "b", _board("[memory]\nflash_kib = 1024\n"))
    _expect_error(root, "b", "b.toml", "[memory]", "unknown key 'flash_kib'", "did you mean 'flash_bytes'")


def test_unknown_key_in_parent_names_the_parent(root: Path) -> None:
    _write(root, "base", MCU_TOML.replace("[latency]", "[latency]\nconv2d = 1.0"))
    _write(root, "b", 'inherits = "base"\nkind = "board"\n')
    msg = _expect_error(root, "b", "base.toml", "unknown key 'conv2d'", "did you mean 'conv_2d'")
    assert "b.toml" not in msg.replace("base.toml", "")


def test_string_where_int_expected(root: Path) -> None:
    _write(root, "b", _board('[memory]\nram_bytes = "256k"\n'))
    _expect_error(root, "b", "b.toml", "memory.ram_bytes", "must be an integer", "256k")


def test_bool_where_int_expected(root: Path) -> None:
    _write(root, "b", _board("[memory]\ntensor_alignment = true\n"))
    _expect_error(root, "b", "b.toml", "memory.tensor_alignment", "must be an integer")


def test_float_where_int_expected(root: Path) -> None:
    _write(root, "b", _board("[memory]\nflash_bytes = 1.5e6\n"))
    _expect_error(root, "b", "b.toml", "memory.flash_bytes", "must be an integer")


def test_list_of_non_strings(root: Path) -> None:
    _write(root, "b", _board('[quantization]\nmodes = ["int8", 8]\n'))
    _expect_error(root, "b", "b.toml", "quantization.modes", "list of strings")


def test_string_where_list_expected(root: Path) -> None:
    _write(root, "b", _board('[ops]\nexclude = "GELU"\n'))
    _expect_error(root, "b", "b.toml", "ops.exclude", "list of strings")


def test_table_given_as_value(root: Path) -> None:
    _write(root, "b", _board('memory = 5\n'))
    _expect_error(root, "b", "b.toml", "'memory' must be a table")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_number_refused(root: Path, value: str) -> None:
    _write(root, "b", _board(f"clock_mhz = {value}\n"))
    _expect_error(root, "b", "b.toml", "clock_mhz", "finite number")


def test_negative_budget(root: Path) -> None:
    _write(root, "b", _board("[memory]\nflash_bytes = -1\n"))
    _expect_error(root, "b", "b.toml", "memory.flash_bytes", "-1", "budget")


def test_zero_ram_budget(root: Path) -> None:
    _write(root, "b", _board("[memory]\nram_bytes = 0\n"))
    _expect_error(root, "b", "b.toml", "memory.ram_bytes", ">= 1")


def test_negative_latency(root: Path) -> None:
    _write(root, "b", _board("[latency]\nconv_2d = -0.5\n"))
    _expect_error(root, "b", "b.toml", "latency.conv_2d", ">= 0")


def test_bad_choice(root: Path) -> None:
    _write(root, "b", _board('runtime = "onnx"\n'))
    _expect_error(root, "b", "b.toml", "runtime", "'onnx'", "litert", "tflm")
    _write(root, "c", _board('[quantization]\nmodes = ["int8", "int4"]\n'))
    _expect_error(root, "c", "c.toml", "'int4'", "int16x8")


def test_missing_required_key(root: Path) -> None:
    _write(root, "lonely", 'kind = "class"\n')
    _expect_error(root, "lonely", "lonely.toml", "required key", "missing")


def test_unknown_parent(root: Path) -> None:
    _write(root, "b", 'inherits = "mcuu"\nkind = "board"\n')
    _expect_error(root, "b", "b.toml", "inherits", "'mcuu'", "not a known profile", "mcu")


def test_inherits_not_a_string(root: Path) -> None:
    _write(root, "b", 'inherits = ["mcu"]\nkind = "board"\n')
    _expect_error(root, "b", "b.toml", "inherits", "must be a string")


def test_inheritance_cycle(root: Path) -> None:
    _write(root, "a", 'inherits = "b"\nkind = "board"\n')
    _write(root, "b", 'inherits = "a"\nkind = "board"\n')
    _expect_error(root, "a", "a.toml", "inheritance cycle", "a -> b -> a")
    _expect_error(root, "b", "b.toml", "inheritance cycle", "b -> a -> b")


def test_longer_inheritance_cycle(root: Path) -> None:
    _write(root, "a", 'inherits = "b"\n')
    _write(root, "b", 'inherits = "c"\n')
    _write(root, "c", 'inherits = "a"\n')
    _expect_error(root, "a", "a.toml", "inheritance cycle", "a -> b -> c -> a")


def test_self_inheritance(root: Path) -> None:
    _write(root, "selfish", 'inherits = "selfish"\nkind = "board"\n')
    _expect_error(root, "selfish", "selfish.toml", "inheritance cycle", "selfish -> selfish")


def test_unknown_target_name_lists_valid_names(root: Path) -> None:
    _write(root, "nrf52840", _board())
    msg = _expect_error(root, "mcv", "unknown target 'mcv'", "mcu", "nrf52840", "did you mean 'mcu'")
    assert "valid targets" in msg


def test_unknown_bundled_target_name() -> None:
    with pytest.raises(TargetProfileError) as info:
        load_target("stm32h74")
    msg = str(info.value)
    for name in available_targets():
        assert name in msg
    assert "did you mean 'stm32h743'" in msg


def test_invalid_toml(root: Path) -> None:
    _write(root, "b", 'inherits = "mcu"\nkind = board\n')
    _expect_error(root, "b", "b.toml", "not valid TOML")


def test_invalid_toml_in_parent(root: Path) -> None:
    _write(root, "base", "[memory\n")
    _write(root, "b", 'inherits = "base"\n')
    _expect_error(root, "b", "base.toml", "not valid TOML")


def test_default_mode_not_among_modes(root: Path) -> None:
    _write(root, "b", _board('[quantization]\nmodes = ["int8"]\ndefault_mode = "int16x8"\n'))
    _expect_error(root, "b", "b.toml", "default_mode 'int16x8'", "not among", "int8")


def test_empty_modes(root: Path) -> None:
    _write(root, "b", _board("[quantization]\nmodes = []\n"))
    _expect_error(root, "b", "b.toml", "modes is empty")


@pytest.mark.parametrize("mode", ["float16", "dynamic"])
def test_tflm_profile_with_float_kernels_refused(root: Path, mode: str) -> None:
    _write(root, "b", _board(f'[quantization]\nmodes = ["int8", "{mode}"]\n'))
    _expect_error(root, "b", "b.toml", "TFLite Micro", mode, "[quantization] modes")


def test_litert_profile_may_allow_float16(root: Path) -> None:
    _write(root, "b", _board('runtime = "litert"\n[quantization]\nmodes = ["int8", "float16"]\n'
                             '[ops]\nset = "litert_builtins"\n'))
    p = load_target("b", root=root)
    assert p.quantization.modes == ("int8", "float16") and "GELU" in p.supported_ops


@pytest.mark.parametrize("alignment", [3, 12, 24, 100])
def test_tensor_alignment_not_power_of_two(root: Path, alignment: int) -> None:
    _write(root, "b", _board(f"[memory]\ntensor_alignment = {alignment}\n"))
    _expect_error(root, "b", "b.toml", "tensor_alignment", str(alignment), "power of two")


@pytest.mark.parametrize("alignment", [1, 4, 32, 64])
def test_tensor_alignment_power_of_two(root: Path, alignment: int) -> None:
    _write(root, "b", _board(f"[memory]\ntensor_alignment = {alignment}\n"))
    assert load_target("b", root=root).memory.tensor_alignment == alignment


def test_exclude_op_not_in_set(root: Path) -> None:
    _write(root, "b", _board('[ops]\nexclude = ["CONV_2D", "GELU"]\n'))
    msg = _expect_error(root, "b", "b.toml", "exclude", "GELU", "not in op set", "'tflm'")
    assert "CONV_2D" not in msg


def test_unknown_op_set(root: Path) -> None:
    _write(root, "b", _board('[ops]\nset = "tflm_nightly"\n'))
    _expect_error(root, "b", "b.toml", "'tflm_nightly'", "unknown", "litert_builtins", "tflm")


# -- inheritance ----------------------------------------------------------------------------------


def test_child_overrides_one_key_and_keeps_the_rest(root: Path) -> None:
    _write(root, "mid", 'inherits = "mcu"\nkind = "board"\nclock_mhz = 128\n[memory]\nram_bytes = 131_072\n')
    _write(root, "leaf", 'inherits = "mid"\n[memory]\nflash_bytes = 524_288\n'
                         '[quantization]\ndefault_mode = "int16x8"\n')
    parent = load_target("mcu", root=root)
    leaf = load_target("leaf", root=root)
    assert leaf.chain == ("leaf", "mid", "mcu")
    assert leaf.inherits == "mid"
    assert leaf.memory.flash_bytes == 524_288                 # leaf
    assert leaf.memory.ram_bytes == 131_072                   # mid
    assert leaf.memory.reserved_ram_bytes == parent.memory.reserved_ram_bytes  # mcu
    assert leaf.memory.tensor_alignment == parent.memory.tensor_alignment
    assert leaf.memory.arena_margin_bytes == parent.memory.arena_margin_bytes
    assert leaf.quantization.default_mode == "int16x8"
    assert leaf.quantization.modes == parent.quantization.modes
    assert leaf.quantization.per_channel == parent.quantization.per_channel
    assert leaf.clock_mhz == 128 and leaf.kind == "board" and leaf.runtime == "tflm"
    assert leaf.latency == parent.latency
    assert leaf.supported_ops == parent.supported_ops


def test_error_in_inherited_value_names_the_file_that_set_it(root: Path) -> None:
    _write(root, "base", MCU_TOML.replace("tensor_alignment = 16", "tensor_alignment = 24"))
    _write(root, "child", 'inherits = "base"\nkind = "board"\n')
    _expect_error(root, "child", "base.toml", "power of two")
    # A child that fixes the value is fine.
    _write(root, "fixed", 'inherits = "base"\n[memory]\ntensor_alignment = 32\n')
    assert load_target("fixed", root=root).memory.tensor_alignment == 32


def test_user_profile_by_path_inherits_bundled_class(tmp_path: Path) -> None:
    path = tmp_path / "myboard.toml"
    path.write_text('inherits = "mcu"\nkind = "board"\ndescription = "my board"\nclock_mhz = 80\n'
                    "[memory]\nram_bytes = 131_072\n")
    p = load_target(str(path))
    mcu = load_target("mcu")
    assert p.name == "myboard" and p.source == path
    assert p.chain == ("myboard", "mcu")
    assert p.memory.ram_bytes == 131_072 and p.memory.flash_bytes == mcu.memory.flash_bytes
    assert p.runtime == "tflm" and p.supported_ops == mcu.supported_ops
    assert p.description == "my board" and p.clock_mhz == 80


def test_user_profile_by_path_may_share_its_parents_name(tmp_path: Path) -> None:
    """./nrf52840.toml tweaking the bundled nrf52840 is not an inheritance cycle."""
    path = tmp_path / "nrf52840.toml"
    path.write_text('inherits = "nrf52840"\n[memory]\nreserved_ram_bytes = 65_536\n')
    p = load_target(str(path))
    assert p.chain == ("nrf52840", "nrf52840", "mcu")
    assert p.memory.reserved_ram_bytes == 65_536
    assert p.memory.flash_bytes == load_target("nrf52840").memory.flash_bytes


def test_user_profile_by_path_next_to_its_parent(tmp_path: Path) -> None:
    (tmp_path / "family.toml").write_text(MCU_TOML.replace("clock_mhz = 64", "clock_mhz = 48"))
    (tmp_path / "member.toml").write_text('inherits = "family"\nkind = "board"\n')
    p = load_target(str(tmp_path / "member.toml"))
    assert p.chain == ("member", "family") and p.clock_mhz == 48


def test_user_profile_path_missing(tmp_path: Path) -> None:
    with pytest.raises(TargetProfileError, match="does not exist"):
        load_target(str(tmp_path / "nothere.toml"))


def test_profiles_are_frozen(profiles: dict[str, TargetProfile]) -> None:
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        profiles["mcu"].runtime = "litert"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profiles["mcu"].memory.ram_bytes = 1  # type: ignore[misc]


def test_to_dict_is_json(profiles: dict[str, TargetProfile]) -> None:
    data = json.loads(json.dumps(profiles["stm32h743"].to_dict()))
    assert data["chain"] == ["stm32h743", "mcu"]
    assert data["supported_ops"] == sorted(profiles["stm32h743"].supported_ops)
    assert data["memory"]["flash_bytes"] == 2 << 20


# -- generated documentation ----------------------------------------------------------------------


def test_supported_ops_doc_is_up_to_date() -> None:
    doc = REPO / "docs" / "supported_ops.md"
    assert doc.is_file(), "run: python scripts/gen_docs.py"
    assert doc.read_text(encoding="utf-8") == render_supported_ops_markdown(load_all()), \
        "docs/supported_ops.md is out of date; run: python scripts/gen_docs.py"


def test_gen_docs_check_passes() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"],
                          capture_output=True, text=True, env=_cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_supported_ops_doc_content(profiles: dict[str, TargetProfile]) -> None:
    all_profiles = list(profiles.values())
    text = render_supported_ops_markdown(all_profiles)
    # Deterministic, whatever the order of the profiles.
    assert text == render_supported_ops_markdown(list(reversed(all_profiles)))
    assert "scripts/gen_docs.py" in text and "edgeq/data/targets/*.toml" in text
    assert profiles["mcu"].op_set_source in text and profiles["phone"].op_set_source in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Op |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    mcu_col = columns.index("mcu (tflm)")
    phone_col = columns.index("phone (litert)")

    def row(op: str) -> list[str]:
        line = next(line for line in lines if line.startswith(f"| `{op}` |"))
        return [c.strip() for c in line.strip("|").split("|")]

    conv = row("CONV_2D")
    assert conv[mcu_col] == "✓" and conv[phone_col] == "✓" and conv[-1] == "`AddConv2D`"
    gelu = row("GELU")
    assert gelu[mcu_col] == "" and gelu[phone_col] == "✓" and gelu[-1] == ""
    union = set().union(*(p.supported_ops for p in all_profiles))
    op_rows = [line for line in lines if re.match(r"^\| `[A-Z0-9_]+` \|", line)]
    assert len(op_rows) == len(union)
    ops_in_order = [line.split("`")[1] for line in op_rows]
    assert ops_in_order == sorted(union)
    for name, p in profiles.items():
        assert re.search(rf"^\| `{re.escape(name)}` \| {p.kind} \| {p.runtime} \|.*\| {len(p.supported_ops)} \|$",
                         text, re.MULTILINE), name


# -- command line ---------------------------------------------------------------------------------


def test_cli_targets_list() -> None:
    proc = _edgeq("targets", "list")
    assert proc.returncode == 0, proc.stderr
    for name in available_targets():
        assert re.search(rf"^{re.escape(name)}\s", proc.stdout, re.MULTILINE), name
    assert "Traceback" not in proc.stderr


def test_cli_targets_show_mcu() -> None:
    proc = _edgeq("targets", "show", "mcu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "int8" in out and "int16x8" in out and "(default)" in out
    assert "float16" not in out and "dynamic" not in out
    assert "1,048,576" in out and "262,144" in out
    assert "tflm" in out


def test_cli_targets_show_unknown() -> None:
    proc = _edgeq("targets", "show", "nope")
    assert proc.returncode == 2
    assert "unknown target" in proc.stderr
    for name in available_targets():
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_targets_show_bad_user_profile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('inherits = "mcu"\n[memory]\nflash_kib = 3\n')
    proc = _edgeq("targets", "show", str(bad))
    assert proc.returncode == 2
    assert "flash_kib" in proc.stderr and "bad.toml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_targets_show_json() -> None:
    proc = _edgeq("targets", "show", "mcu", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["name"] == "mcu" and data["runtime"] == "tflm"
    assert data["quantization"]["modes"] == ["int8", "int16x8"]
    assert data["supported_ops"] == sorted(load_target("mcu").supported_ops)
    assert data["memory"]["ram_bytes"] == 262_144


_NO_TF_PROBE = """
import sys, runpy
sys.argv = ["edgeq", *{args!r}]
code = 0
try:
    runpy.run_module("edgeq", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("EXIT=" + repr(code))
print("TF_IMPORTED=" + repr(any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)))
"""


@pytest.mark.parametrize("args", [["--help"], ["targets", "list"], ["targets", "show", "mcu"]])
def test_cli_light_commands_do_not_import_tensorflow(args: list[str]) -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _NO_TF_PROBE.format(args=args)], capture_output=True,
                          text=True, cwd=REPO, env=_cli_env(), timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] in ("EXIT=0", "EXIT=None"), proc.stdout + proc.stderr
    assert lines[-1] == "TF_IMPORTED=False"
    assert elapsed < 2.0, f"edgeq {' '.join(args)} took {elapsed:.2f} s"


@pytest.mark.parametrize("args", [["--help"], ["targets", "list"]])
def test_cli_light_commands_answer_quickly(args: list[str]) -> None:
    start = time.perf_counter()
    proc = _edgeq(*args)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 2.0, f"edgeq {' '.join(args)} took {elapsed:.2f} s"


def test_rendering_the_doc_does_not_import_tensorflow() -> None:
    code = ("import sys\nfrom edgeq.opsdoc import render_supported_ops_markdown\n"
            "from edgeq.targets import load_all\nrender_supported_ops_markdown(load_all())\n"
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=_cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
