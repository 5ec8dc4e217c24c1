"""Calibration and evaluation data: the bundled sets in edgeq/data/calibration_sets/ and the user's own .npz/.npy.

NumPy only (no TensorFlow). Files are read with allow_pickle=False. Every problem raises
CalibrationError naming the file, the array and the sample, with a hint on what to try.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from edgeq.bundled_sets import REBUILD_HINT, list_bundled
from edgeq.errors import CalibrationError
from edgeq.resources import calibration_root
from edgeq.specs import InputSpec

SUPPORTED_SUFFIXES = (".npz", ".npy")
SAVE_HINT = ("save your data with np.savez(path, x=inputs, y=labels) (several inputs: x0=..., x1=... in the model's "
             "input order, or x_<input name>=...)")
CORRUPT_HINT = "re-create or re-download the file; " + SAVE_HINT


class CalibrationWarning(UserWarning):
    """Data that converts, but probably not the way you want (e.g. a constant input)."""


@dataclass(frozen=True, eq=False)          # eq on arrays is ambiguous; compare fields explicitly
class Dataset:
    name: str                          # "digits:calibration" or the user's file path
    source: Path
    inputs: tuple[np.ndarray, ...]     # one array per model input, samples on axis 0
    labels: np.ndarray | None
    sha256: str
    # The model input each array feeds: from x_<name> keys, or after validate_for_model (which
    # puts the arrays in the model's order); None while the arrays are positional (x, x0, x1, ...).
    input_names: tuple[str, ...] | None = None
    # A file id per sample (anomaly detection: the per-file AUC of an autoencoder), from `groups`.
    groups: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return int(self.inputs[0].shape[0]) if self.inputs else 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _looks_like_path(spec: str, bundled_names: set[str]) -> bool:
    # Bundled names never contain a separator or a dot; a bundled name wins over a same-named folder in cwd.
    if any(c in spec for c in "/\\."):
        return True
    return spec.partition(":")[0] not in bundled_names and os.path.exists(spec)


def load_dataset(spec: str, *, default_split: str = "calibration") -> Dataset:
    """Load a bundled set ("digits", "digits:eval") or the user's .npz / .npy file."""
    spec = str(spec)
    sets = {b.name: b for b in list_bundled()}
    if _looks_like_path(spec, set(sets)):
        return _load_file(Path(spec), name=spec)
    name, _, split = spec.partition(":")
    split = split or default_split
    if name not in sets:
        known = ", ".join(sorted(sets)) or f"none found in {calibration_root()}"
        raise CalibrationError(f"'{spec}' is neither a file nor a bundled calibration set (bundled: {known})",
                               hint="pass a bundled name such as 'digits' or 'digits:eval', or a path to a "
                                    ".npz/.npy file")
    bundled = sets[name]
    if split not in bundled.splits:
        raise CalibrationError(f"bundled set '{name}' has no split '{split}' (splits: {', '.join(bundled.splits)})",
                               hint=f"use e.g. '{name}:{default_split if default_split in bundled.splits else next(iter(bundled.splits))}'")
    info = bundled.splits[split]
    path = bundled.directory / info.file
    if not path.is_file():
        raise CalibrationError(f"{path}: file of bundled set '{name}:{split}' is missing", hint=REBUILD_HINT)
    actual = _sha256(path)
    if actual != info.sha256:
        raise CalibrationError(f"{path}: checksum does not match {bundled.directory / 'manifest.toml'} "
                               f"(expected sha256 {info.sha256}, got {actual}); the file was modified or corrupted",
                               hint=REBUILD_HINT)
    return _load_file(path, name=f"{name}:{split}", sha256=actual)


def _check_array(path: Path, key: str, value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise CalibrationError(f"{path}: member '{key}' is not a NumPy .npy array", hint=SAVE_HINT)
    return value


def _load_file(path: Path, *, name: str, sha256: str | None = None) -> Dataset:
    if not path.exists():
        raise CalibrationError(f"{path}: file not found",
                               hint=f"check the path, or use a bundled set: {', '.join(b.name for b in list_bundled()) or 'none'}")
    if path.is_dir():
        raise CalibrationError(f"{path}: is a directory, expected a .npz or .npy file",
                               hint="point to the file itself, e.g. <dir>/calibration.npz")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CalibrationError(f"{path}: unsupported file type '{path.suffix or '(none)'}' "
                               f"(supported: {', '.join(SUPPORTED_SUFFIXES)})", hint=SAVE_HINT)
    arrays = _read_arrays(path, suffix)
    inputs, names = _pick_inputs(path, arrays)
    labels = arrays.get("y")
    for i, arr in enumerate(inputs):
        if arr.ndim == 0:
            raise CalibrationError(f"{path}: array '{_input_key(len(inputs), i, names)}' is a scalar; samples must be on axis 0",
                                   hint="stack your samples: x = np.stack(samples)")
    counts = [int(a.shape[0]) for a in inputs]
    if len(set(counts)) > 1:
        desc = ", ".join(f"{_input_key(len(inputs), i, names)}: {c}" for i, c in enumerate(counts))
        raise CalibrationError(f"{path}: inputs have different sample counts ({desc})",
                               hint="every input array needs one row per sample, in the same order")
    if counts[0] == 0:
        raise CalibrationError(f"{path}: array '{_input_key(len(inputs), 0, names)}' has 0 samples (shape {inputs[0].shape})",
                               hint="calibration needs real samples; 100-500 representative ones are typical")
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != counts[0]):
        got = "a scalar" if labels.ndim == 0 else f"{labels.shape[0]} labels"
        raise CalibrationError(f"{path}: labels 'y' do not match the samples: {got} for {counts[0]} samples",
                               hint="y needs one label per sample (axis 0), in the same order as x")
    groups = arrays.get("groups")
    if groups is not None and (groups.ndim != 1 or groups.shape[0] != counts[0] or groups.dtype.kind not in "iuUS"):
        raise CalibrationError(f"{path}: 'groups' must hold one file id (integer or string) per sample: got "
                               f"{groups.dtype} {list(groups.shape)} for {counts[0]} samples",
                               hint="np.savez(path, x=samples, y=labels, groups=file_ids): y 1 for anomalous "
                                    "files, 0 for normal ones, the same for every sample of a file")
    return Dataset(name=name, source=path, inputs=inputs, labels=labels, sha256=sha256 or _sha256(path),
                   input_names=names, groups=groups)


def _read_arrays(path: Path, suffix: str) -> dict[str, np.ndarray]:
    """Every array of a .npy (as "x") or .npz, without pickles; damage of any kind is a CalibrationError."""
    arrays: dict[str, np.ndarray] = {}
    key = "(file)"
    try:
        if suffix == ".npy":
            with path.open("rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise CalibrationError(f"{path}: not a .npy file (no NumPy header); corrupt or another format",
                                           hint="np.save(path, x) writes a valid .npy file")
            key = "x"
            arrays["x"] = _check_array(path, key, np.load(path, allow_pickle=False))
        else:
            if not zipfile.is_zipfile(path):
                raise CalibrationError(f"{path}: not a valid .npz (zip) archive; the file is corrupt or truncated",
                                       hint=CORRUPT_HINT)
            with np.load(path, allow_pickle=False) as npz:
                for key in npz.files:
                    arrays[key] = _check_array(path, key, npz[key])
    except CalibrationError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CalibrationError(f"{path}: array '{key}' holds pickled Python objects (dtype object); pickled "
                                   "arrays are refused for safety (allow_pickle=False)",
                                   hint="convert to a numeric array first, e.g. np.asarray(x, dtype=np.float32)") from exc
        raise CalibrationError(f"{path}: array '{key}' cannot be read: {exc}", hint=CORRUPT_HINT) from exc
    except Exception as exc:
        # numpy reports a damaged header as SyntaxError or tokenize.TokenError, zip damage as BadZipFile,
        # zlib.error or EOFError, I/O as OSError: all mean "corrupt file" to the user.
        raise CalibrationError(f"{path}: array '{key}' cannot be read ({type(exc).__name__}: {exc}); "
                               "the file is corrupt or truncated", hint=CORRUPT_HINT) from exc
    return arrays


def _input_key(n: int, i: int, names: tuple[str, ...] | None = None) -> str:
    if names is not None:
        return f"x_{names[i]}"
    return "x" if n == 1 else f"x{i}"


def _pick_inputs(path: Path, arrays: dict[str, np.ndarray]) -> tuple[tuple[np.ndarray, ...], tuple[str, ...] | None]:
    """The input arrays and, for x_<name> keys, the input names (sorted by name)."""
    numbered = sorted((int(k[1:]), k) for k in arrays if k[:1] == "x" and k[1:].isdigit())
    named = sorted(k for k in arrays if k.startswith("x_") and len(k) > 2)
    kinds = [what for what, present in (("'x'", "x" in arrays), ("x0, x1, ...", numbered), ("x_<name>", named))
             if present]
    if len(kinds) > 1:
        raise CalibrationError(f"{path}: has input arrays named both {' and '.join(kinds)}; ambiguous inputs",
                               hint="use 'x' for a single-input model, and x0, x1, ... (model order) or "
                                    "x_<input name> for several inputs: one way only")
    if "x" in arrays:
        return (arrays["x"],), None
    if named:
        return tuple(arrays[k] for k in named), tuple(k[2:] for k in named)
    if numbered:
        if [i for i, _ in numbered] != list(range(len(numbered))):
            raise CalibrationError(f"{path}: input arrays must be numbered x0, x1, ... without gaps "
                                   f"(found {', '.join(k for _, k in numbered)})", hint=SAVE_HINT)
        return tuple(arrays[k] for _, k in numbered), None
    found = ", ".join(sorted(arrays)) or "none"
    raise CalibrationError(f"{path}: no input array 'x' (arrays found: {found})", hint=SAVE_HINT)


_NON_NUMERIC = {"b": "boolean", "c": "complex", "U": "string", "S": "bytes", "O": "object", "V": "structured",
                "M": "datetime", "m": "timedelta"}


def validate_for_model(data: Dataset, specs: Sequence[InputSpec], *, purpose: str = "calibration") -> Dataset:
    """Check the data fits the model's inputs; return it with arrays cast to the model's dtypes."""
    where = f"{purpose} data '{data.name}'"
    n_in = len(data.inputs)
    if data.input_names is not None and len(specs) > 1:
        data = _by_name(where, data, specs)
    if len(specs) != n_in:
        names = ", ".join(s.name for s in specs)
        keys = ", ".join(_input_key(n_in, i) for i in range(n_in))
        raise CalibrationError(f"{where}: the model has {len(specs)} input(s) ({names}) but the file has "
                               f"{n_in} input array(s) ({keys})",
                               hint=f"save one array per model input, in model order: "
                                    f"np.savez(path, {', '.join(f'x{i}=...' for i in range(len(specs)))})"
                               if len(specs) > 1 else "save a single array named 'x'")
    cast = []
    for i, (arr, spec) in enumerate(zip(data.inputs, specs)):
        cast.append(_validate_input(where, _input_key(n_in, i, data.input_names), arr, spec))
    return replace(data, inputs=tuple(cast), input_names=tuple(s.name for s in specs))


def _by_name(where: str, data: Dataset, specs: Sequence[InputSpec]) -> Dataset:
    """x_<name> arrays put in the model's input order (names compared as written, then without ':0')."""
    assert data.input_names is not None
    wanted = [s.name for s in specs]
    short = [n.split(":")[0] for n in wanted]
    given = dict(zip(data.input_names, data.inputs))
    missing = [n for n, k in zip(wanted, short) if n not in given and k not in given]
    extra = [n for n in given if n not in wanted and n not in short]
    if missing or extra:
        raise CalibrationError(
            f"{where}: the arrays are named for inputs {', '.join(sorted(given))}, but the model's inputs are "
            f"{', '.join(short)}" + (f" (no array for {', '.join(missing)})" if missing else ""),
            hint="name each array x_<model input name>: np.savez(path, "
                 + ", ".join(f"x_{k}=..." for k in short) + ")")
    arrays = tuple(given[n] if n in given else given[k] for n, k in zip(wanted, short))
    return replace(data, inputs=arrays, input_names=tuple(wanted))


def _validate_input(where: str, key: str, arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    label = f"{where}, array '{key}' (model input '{spec.name}')"
    _check_shape(label, arr, spec)
    target = np.dtype(spec.dtype)
    kind = arr.dtype.kind
    if kind in _NON_NUMERIC:
        raise CalibrationError(f"{label}: {_NON_NUMERIC[kind]} data (dtype {arr.dtype}) but the model expects {target}",
                               hint=f"convert to numbers first: x.astype(np.{target})")
    if target.kind == "f":
        if kind in "iu":
            raise CalibrationError(f"{label}: integer data (dtype {arr.dtype}, values {arr.min()}..{arr.max()}) "
                                   f"but the model expects {target}",
                                   hint=f"scale to float the way the model was trained, e.g. "
                                        f"x.astype(np.{target}) / 255.0 for 8-bit images")
        with np.errstate(over="ignore"):           # float64 beyond float32 range: reported as Inf below
            out = arr.astype(target, copy=False)
    elif target.kind in "iu":
        if kind == "f":
            raise CalibrationError(f"{label}: floating-point data (dtype {arr.dtype}) but the model expects {target}",
                                   hint=f"if the values are ids or counts, cast them: x.astype(np.{target})")
        info = np.iinfo(target)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise CalibrationError(f"{label}: values {lo}..{hi} do not fit the model dtype {target} "
                                   f"({info.min}..{info.max})", hint="check the preprocessing of this input")
        out = arr.astype(target, copy=False)
    else:
        raise CalibrationError(f"{label}: the model input dtype {target} is not supported",
                               hint="edgeq feeds float and integer model inputs only")
    if out.dtype.kind == "f":
        _check_finite(label, arr, out)
        lo, hi = float(out.min()), float(out.max())
        if lo == hi:
            warnings.warn(f"{label}: every value is {lo:g}; the converter will get a zero range for this input and "
                          "its quantization scale will be meaningless; use real, varied samples",
                          CalibrationWarning, stacklevel=3)
    return out


def _check_shape(label: str, arr: np.ndarray, spec: InputSpec) -> None:
    expected = tuple(spec.shape[1:])
    got = tuple(arr.shape[1:])
    if len(expected) == len(got) and all(e is None or e == g for e, g in zip(expected, got)):
        return
    exp_txt = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "") + ")"
    hint = f"each sample must have shape {exp_txt}; the array needs shape (N, {exp_txt[1:]}"
    if None not in expected and int(np.prod(expected, dtype=np.int64)) == int(np.prod(got, dtype=np.int64)):
        dims = ", ".join(str(d) for d in expected)
        hint = f"same number of values per sample: try x.reshape(-1, {dims})"
    raise CalibrationError(f"{label}: per-sample shape {got} does not match the model: expected {exp_txt} "
                           f"(array shape {arr.shape})", hint=hint)


def _check_finite(label: str, original: np.ndarray, out: np.ndarray) -> None:
    finite = np.isfinite(out)
    if finite.all():
        return
    bad_per_sample = ~finite.reshape(out.shape[0], -1).all(axis=1)
    bad = np.flatnonzero(bad_per_sample)
    n_nan = int(np.isnan(out).sum())
    n_inf = int(np.isinf(out).sum())
    overflow = " (values too large for float32 after the cast)" if np.isfinite(original).all() else ""
    raise CalibrationError(f"{label}: sample {int(bad[0])} contains NaN or Inf{overflow}; {len(bad)} of "
                           f"{out.shape[0]} samples are affected ({n_nan} NaN values, {n_inf} Inf values)",
                           hint="drop or fix those samples, e.g. keep = np.isfinite(x).reshape(len(x), -1).all(axis=1); "
                                "x, y = x[keep], y[keep]")


def to_representative_dataset(data: Dataset, *, limit: int | None = None,
                              on_progress: Callable[[int], None] | None = None,
                              names: Sequence[str] | None = None,
                              ) -> Callable[[], Iterator[list[np.ndarray] | dict[str, np.ndarray]]]:
    """A generator factory for TFLiteConverter.representative_dataset: one [x0[i:i+1], ...] per
    sample, or with `names` (the signature's input keys, in the data's order) one {name: x[i:i+1]}
    dict, which the converter matches to its inputs by name, whatever order it gave them.

    `on_progress(n)` is called after the converter has taken n samples (for a progress bar).
    """
    if limit is not None and limit < 1:
        raise CalibrationError(f"sample limit must be at least 1 (got {limit})",
                               hint="leave the limit out to use every sample")
    count = data.num_samples if limit is None else min(limit, data.num_samples)
    inputs = tuple(a.astype(np.float32) if a.dtype == np.float64 else a for a in data.inputs)

    def generator() -> Iterator[list[np.ndarray] | dict[str, np.ndarray]]:
        for i in range(count):
            sample = [a[i:i + 1] for a in inputs]
            yield dict(zip(names, sample)) if names is not None else sample
            if on_progress:
                on_progress(i + 1)

    return generator
