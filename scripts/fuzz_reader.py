"""Long-running fuzz of the .tflite reader and of what runs on whatever it accepts.

Feeds `edgeq.tflite.reader.read_tflite` real models mutated in several ways (bit flips, byte
replacement, truncation, splices of two models, int fields overwritten with boundary values,
several of these stacked) and random bytes. Every input that parses also goes through
`edgeq.emulator.latency.estimate_latency` (for every target profile) and
`edgeq.emulator.memory.peak_activation_memory`, and is turned into JSON (`ModelInfo.to_dict`).
Only `edgeq.errors.TFLiteFormatError` may escape; anything else, or an input that takes longer
than --hang-seconds, is a crash: its seed is printed and the input saved under /tmp.

The brief CI version is the hypothesis fuzz in tests/unit/test_reader.py; this one is for
minutes or hours:

    .venv/bin/python scripts/fuzz_reader.py --seconds 300 --seed 1
    .venv/bin/python scripts/fuzz_reader.py --reproduce /tmp/edgeq-fuzz-crashes/crash-....tflite

Seed models are small Keras models converted once with TensorFlow (float32, float16, dynamic
range, full int8, int16x8) and cached in /tmp/edgeq-fuzz-seeds; pass --corpus to add your own.
Input number i of a run is a pure function of (--seed, i), so `--seed S --only I` replays it.

--differential runs the reader against TensorFlow Lite Micro instead, on structured mutants (fields
edited through the flatbuffer object API), with the mutations and the verdicts of
tests/unit/test_reader_differential.py: it reports every mutant the reader refuses for no safety
reason while TFLM runs it, or accepts while TFLM crashes (and, with --c-checks N, the first N
accepted mutants' C under gcc's sanitizers):

    .venv/bin/python scripts/fuzz_reader.py --differential --seconds 300 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgeq.emulator.latency import estimate_latency  # noqa: E402
from edgeq.emulator.activations import peak_activation_memory  # noqa: E402
from edgeq.errors import TFLiteFormatError  # noqa: E402
from edgeq.targets import load_all  # noqa: E402
from edgeq.tflite.reader import read_tflite  # noqa: E402

SEED_DIR = Path("/tmp/edgeq-fuzz-seeds")
CRASH_DIR = Path("/tmp/edgeq-fuzz-crashes")
TARGETS = load_all()

BOUNDARY = [0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF]


# -- seed models ------------------------------------------------------------------------------------


def build_seeds() -> list[bytes]:
    """Convert a few small Keras models with the real TFLite converter (cached across runs)."""
    cached = sorted(SEED_DIR.glob("*.tflite")) if SEED_DIR.is_dir() else []
    if cached:
        return [p.read_bytes() for p in cached]
    print("building seed models with TensorFlow (once; cached in /tmp/edgeq-fuzz-seeds)", file=sys.stderr)
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    models = {}
    models["digits_cnn"] = keras.models.load_model(ROOT / "examples" / "digits_cnn.keras", compile=False)
    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(a)
    y = keras.layers.DepthwiseConv2D(3, padding="same")(b)
    y = keras.layers.Conv2D(4, 1)(y)
    z = keras.layers.Add()([x, y])
    z = keras.layers.Concatenate()([z, keras.layers.AveragePooling2D(1)(x)])
    z = keras.layers.MaxPooling2D()(z)
    z = keras.layers.Reshape((-1,))(z)
    z = keras.layers.Dense(6, activation="tanh")(z)
    z = keras.layers.Dense(3, activation="softmax")(z)
    models["two_inputs"] = keras.Model([a, b], z)

    rng = np.random.default_rng(0)
    SEED_DIR.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        shapes = [tuple(i.shape[1:]) for i in model.inputs]

        def representative():  # type: ignore[no-untyped-def]
            for _ in range(8):
                yield [rng.random((1, *s), dtype=np.float32) for s in shapes]

        for mode in ("float32", "float16", "dynamic", "int8", "int16x8"):
            conv = tf.lite.TFLiteConverter.from_keras_model(model)
            if mode != "float32":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            if mode == "float16":
                conv.target_spec.supported_types = [tf.float16]
            if mode in ("int8", "int16x8"):
                conv.representative_dataset = representative
                conv.target_spec.supported_ops = [
                    tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                    if mode == "int16x8" else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                conv.inference_input_type = tf.int16 if mode == "int16x8" else tf.int8
                conv.inference_output_type = conv.inference_input_type
            data = bytes(conv.convert())
            (SEED_DIR / f"{name}-{mode}.tflite").write_bytes(data)
    return [p.read_bytes() for p in sorted(SEED_DIR.glob("*.tflite"))]  # same order as a cached run


# -- mutations --------------------------------------------------------------------------------------


def _flip(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
    return data


def _replace(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    for _ in range(rng.choice([1, 1, 2, 8])):
        at = rng.randrange(len(data))
        data[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return data


def _truncate(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    cut = rng.choice([rng.randrange(len(data)), rng.randrange(min(len(data), 64)),
                      len(data) - rng.randrange(1, min(len(data), 64) + 1)])
    return data[:cut]


def _splice(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    other = rng.choice(seeds)
    at = rng.randrange(len(data))
    start = rng.randrange(len(other))
    piece = other[start:start + rng.choice([4, 16, 256, len(other)])]
    if rng.random() < 0.5:  # overwrite in place: offsets keep pointing at plausible structures
        data[at:at + len(piece)] = piece
        return data
    return data[:at] + piece  # a model whose tail is another model's


def _int_field(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    """Overwrite a (mostly aligned) 1/2/4/8-byte field with a boundary value, or an offset nearby."""
    for _ in range(rng.choice([1, 1, 2, 3])):
        width = rng.choice([1, 2, 4, 4, 4, 8])
        if len(data) < width:
            break
        at = rng.randrange(len(data) - width + 1)
        if rng.random() < 0.8:
            at -= at % width
        value = rng.choice(BOUNDARY + [len(data), len(data) - 1, len(data) + 1, at, -at,
                                       int.from_bytes(data[at:at + width], "little", signed=True) + rng.choice([-1, 1, 4])])
        data[at:at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return data


def _stacked(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    for _ in range(rng.randrange(2, 6)):
        if not data:
            break
        data = rng.choice([_flip, _replace, _truncate, _splice, _int_field])(rng, data, seeds)
    return data


def _random(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    body = bytearray(rng.randbytes(rng.choice([0, 1, 7, 8, 64, 512, 4096])))
    if rng.random() < 0.6:  # get past the identifier check
        head = rng.choice([rng.randrange(1 << 32), rng.randrange(64), 8, 12, 16])
        body = bytearray(head.to_bytes(4, "little") + b"TFL3") + body
    return body


STRATEGIES: dict[str, Callable[[random.Random, bytearray, list[bytes]], bytearray]] = {
    "bit_flip": _flip, "byte_replace": _replace, "truncate": _truncate, "splice": _splice,
    "int_field": _int_field, "stacked": _stacked, "random_bytes": _random,
}


def make_input(seed: int, index: int, seeds: list[bytes]) -> tuple[str, bytes]:
    rng = random.Random(f"{seed}:{index}")
    strategy = rng.choice(list(STRATEGIES))
    data = bytearray(rng.choice(seeds))
    return strategy, bytes(STRATEGIES[strategy](rng, data, seeds))


# -- the property -----------------------------------------------------------------------------------


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang("input took longer than the --hang-seconds limit")


def check(data: bytes) -> bool:
    """True if it parsed. Raises anything that is a crash (not TFLiteFormatError)."""
    try:
        info = read_tflite(data, source="fuzz.tflite")
    except TFLiteFormatError as exc:
        if not exc.message.startswith("fuzz.tflite"):
            raise AssertionError(f"error message does not name the file: {exc.message!r}") from exc
        return False
    json.dumps(info.to_dict())
    peak_activation_memory(info)
    for target in TARGETS:
        estimate_latency(info, target)
    return True


def differential(seconds: float, seed: int, only: int | None, c_checks: int) -> int:
    """Reader against TFLM on structured mutants until `seconds` have passed; 1 if any disagree."""
    import tempfile

    from tests.unit import test_reader_differential as diff

    seeds = diff.build_seeds()
    print(f"fuzz_reader --differential: seed {seed}, seed models {', '.join(seeds)}, {seconds:g} s", flush=True)
    tflm = diff.Tflm()
    verdicts: Counter[tuple[bool, str]] = Counter()
    failures, c_done, index = 0, 0, only if only is not None else 0
    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="edgeq-differential-"))
    try:
        while True:
            outcome = diff.judge(diff.make_mutant(seed, index, seeds), tflm)
            if outcome.reader_ok and outcome.tflm == "ok" and c_done < c_checks:
                outcome.c = diff.c_check(outcome.mutant.data, workdir / f"c{index}")
                c_done += not outcome.c.startswith("not for")
            verdicts[(outcome.reader_ok, outcome.tflm)] += 1
            if outcome.failure or only is not None:
                failures += bool(outcome.failure)
                print(outcome.report() + f"\n  replay: scripts/fuzz_reader.py --differential --seed {seed} "
                      f"--only {index}", flush=True)
            index += 1
            if only is not None or time.monotonic() - start >= seconds:
                break
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        tflm.close()
    total = sum(verdicts.values())
    print(f"\nmutants: {total:,} in {time.monotonic() - start:.0f} s, seed {seed}; C checked: {c_done}")
    for (ok, tflm_verdict), count in sorted(verdicts.items()):
        print(f"  reader {'accepts' if ok else 'refuses'}, TFLM {tflm_verdict}: {count:,}")
    print(f"disagreements: {failures}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300, help="how long to run (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="run seed (default: random, printed)")
    parser.add_argument("--only", type=int, default=None, help="replay input number ONLY of --seed and stop")
    parser.add_argument("--hang-seconds", type=int, default=10, help="an input slower than this is a crash")
    parser.add_argument("--corpus", type=Path, nargs="*", default=[], help="extra .tflite files or folders")
    parser.add_argument("--reproduce", type=Path, default=None, help="run one saved input and show what happens")
    parser.add_argument("--differential", action="store_true",
                        help="structured mutants through the reader and TFLM; report where they disagree")
    parser.add_argument("--c-checks", type=int, default=0,
                        help="with --differential: build and run this many accepted mutants' C with sanitizers")
    args = parser.parse_args()
    if args.differential:
        return differential(args.seconds, args.seed if args.seed is not None else random.randrange(1 << 31),
                            args.only, args.c_checks)

    signal.signal(signal.SIGALRM, _alarm)
    if args.reproduce is not None:
        data = args.reproduce.read_bytes()
        print(f"{args.reproduce}: {len(data)} bytes; parsed: {check(data)}")
        return 0

    seeds = build_seeds()
    for extra in args.corpus:
        files = sorted(extra.rglob("*.tflite")) if extra.is_dir() else [extra]
        seeds += [p.read_bytes() for p in files]
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    for i, s in enumerate(seeds):  # the seeds themselves must parse
        assert check(s), f"seed model {i} does not parse"
    print(f"fuzz_reader: seed {seed}, {len(seeds)} seed models ({min(map(len, seeds))}-{max(map(len, seeds))} B), "
          f"{args.seconds:g} s", flush=True)

    tried, parsed, crashes = Counter(), Counter(), []
    slowest = (0.0, -1)
    start = time.monotonic()
    index = args.only if args.only is not None else 0
    while True:
        strategy, data = make_input(seed, index, seeds)
        tried[strategy] += 1
        t0 = time.perf_counter()
        signal.alarm(args.hang_seconds)
        try:
            parsed[strategy] += check(data)
        except BaseException as exc:  # noqa: BLE001 (everything but TFLiteFormatError is a finding)
            signal.alarm(0)
            if isinstance(exc, KeyboardInterrupt):
                tried[strategy] -= 1
                print("interrupted", file=sys.stderr)
                break
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            signature = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno} ({frame.name})"
            crashes.append((index, strategy, signature))
            if sum(1 for c in crashes if c[2] == signature) <= 3:  # a known bug again: only counted
                digest = hashlib.sha256(data).hexdigest()[:16]
                CRASH_DIR.mkdir(parents=True, exist_ok=True)
                path = CRASH_DIR / f"crash-{digest}.tflite"
                path.write_bytes(data)
                print(f"CRASH input {index} ({strategy}, {len(data)} B): {signature}: {str(exc)[:200]}\n"
                      f"  saved {path}\n  replay: scripts/fuzz_reader.py --seed {seed} --only {index}  "
                      f"or --reproduce {path}", flush=True)
                traceback.print_exc(limit=6)
        finally:
            signal.alarm(0)
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, (elapsed, index))
        index += 1
        if args.only is not None or time.monotonic() - start >= args.seconds:
            break

    total = sum(tried.values())
    duration = time.monotonic() - start
    print(f"\ninputs tried: {total:,} in {duration:.0f} s ({total / max(duration, 1e-9):,.0f}/s), seed {seed}")
    print(f"parsed OK (then latency, memory, JSON): {sum(parsed.values()):,}")
    width = max(map(len, STRATEGIES))
    for name in STRATEGIES:
        print(f"  {name:<{width}} {tried[name]:>9,} tried {parsed[name]:>8,} parsed")
    print(f"slowest input: {slowest[0] * 1000:.1f} ms (input {slowest[1]})")
    print(f"crashes: {len(crashes)}")
    for signature, count in Counter(c[2] for c in crashes).most_common():
        examples = ", ".join([str(c[0]) for c in crashes if c[2] == signature][:3])
        print(f"  {count:>6} x {signature}  (inputs {examples}; saved under {CRASH_DIR})")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
