"""Target profiles: hardware described as data (edgeq/data/targets/*.toml), loaded into frozen dataclasses.

A profile either describes a class of device (`kind = "class"`: phone, iot, mcu) or a
concrete board that `inherits` from one and overrides what differs. Tables merge key by
key down the inheritance chain. Validation is strict: an unknown key, a wrong type, a
negative budget, an unknown parent, an unknown op set or an inheritance cycle is an error
that names the file and the key. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.errors import TargetProfileError
from edgeq.modes import MODES, activation_dtype
from edgeq.resources import targets_root
from edgeq.vocab import Runtime, StrEnum

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IO_DTYPES = ("auto", "float32", "int8", "uint8", "int16")
PROFILE_HINT = ("compare with a bundled profile (`edgeq targets show mcu`, edgeq/data/targets/*.toml); a board usually "
                "needs only inherits = \"<class>\", kind = \"board\" and the keys that differ")


def _opt(**meta: Any) -> Any:
    return field(metadata=meta)


@dataclass(frozen=True)
class Quantization:
    modes: tuple[str, ...] = _opt(choices=tuple(MODES), doc="modes the target can run")
    default_mode: str = _opt(choices=tuple(MODES), doc="mode used when --mode is not given")
    per_channel: bool = _opt(doc="per-channel weight scales (Conv, DepthwiseConv, Dense)")
    input_dtype: str = _opt(choices=IO_DTYPES, doc="auto: the activation dtype of the mode")
    output_dtype: str = _opt(choices=IO_DTYPES, doc="auto: the activation dtype of the mode")


@dataclass(frozen=True)
class OpSupport:
    set: str = _opt(doc="op set in edgeq/data/targets/op_sets/ (generated from the runtime)")
    exclude: tuple[str, ...] = _opt(doc="ops of the set this target lacks")


@dataclass(frozen=True)
class Memory:
    flash_bytes: int | None = _opt(min=1, doc="storage for model + runtime code")
    ram_bytes: int | None = _opt(min=1, doc="RAM for tensor arena + application")
    reserved_ram_bytes: int = _opt(min=0, doc="RAM the application keeps for itself")
    runtime_flash_bytes: int = _opt(min=0, doc="flash taken by the runtime's code")
    tensor_alignment: int = _opt(min=1, doc="byte alignment of the model array and arena")
    arena_margin_bytes: int = _opt(min=0, doc="added to the measured tensor arena")


@dataclass(frozen=True)
class Latency:
    """Cycle costs for a first-order latency estimate (refined by on-device measurement)."""

    conv_2d: float = _opt(min=0, doc="cycles per multiply-accumulate")
    depthwise_conv_2d: float = _opt(min=0, doc="cycles per multiply-accumulate")
    fully_connected: float = _opt(min=0, doc="cycles per multiply-accumulate")
    pooling: float = _opt(min=0, doc="cycles per input element")
    elementwise: float = _opt(min=0, doc="cycles per output element")
    op_overhead: float = _opt(min=0, doc="fixed cycles per op invocation")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    kind: str = _opt(choices=("class", "board"))
    description: str = _opt()
    runtime: Runtime = _opt(choices=tuple(Runtime), doc="LiteRT (phone/Linux), TFLite Micro, or c (edgeq's plain C)")
    cpu: str = _opt()
    clock_mhz: float = _opt(min=1)
    quantization: Quantization = _opt()
    ops: OpSupport = _opt()
    memory: Memory = _opt()
    latency: Latency = _opt()
    inherits: str | None = _opt(doc="parent profile")
    source: Path = Path()
    chain: tuple[str, ...] = ()
    chain_files: tuple[Path, ...] = ()
    supported_ops: frozenset[str] = frozenset()
    op_set_source: str = ""

    def io_dtypes(self, mode: str) -> tuple[str, str]:
        """Input and output dtypes of a model converted for this target in `mode`."""
        act = activation_dtype(mode)
        resolve = lambda d: act if d == "auto" or not MODES[mode].integer_only else d  # noqa: E731
        return resolve(self.quantization.input_dtype), resolve(self.quantization.output_dtype)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["source"] = str(self.source)
        data["chain_files"] = [str(p) for p in self.chain_files]
        data["supported_ops"] = sorted(self.supported_ops)
        return data


# Keys a profile file may hold, by table; derived from the dataclasses so they cannot drift.
_TABLES: dict[str, type] = {"quantization": Quantization, "ops": OpSupport, "memory": Memory, "latency": Latency}
_TOP_KEYS = ("kind", "description", "runtime", "cpu", "clock_mhz", "inherits")


def available_targets(root: Path | None = None) -> list[str]:
    root = root or targets_root()
    return sorted(p.stem for p in root.glob("*.toml"))


def load_target(name_or_path: str, root: Path | None = None) -> TargetProfile:
    """Load a bundled profile by name, or a user's profile from a .toml path."""
    try:
        return _load_target(name_or_path, root or targets_root())
    except TargetProfileError as exc:
        if exc.hint is None:  # every profile error says what to try
            exc.hint = PROFILE_HINT
        raise


def _load_target(name_or_path: str, root: Path) -> TargetProfile:
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise TargetProfileError(f"target profile {path} does not exist or is not a file",
                                     hint=f"check the path, or use a bundled target: "
                                          f"{', '.join(available_targets(root))}")
        search = [path.parent, root]
    else:
        path = root / f"{name_or_path}.toml"
        if not path.is_file():
            names = available_targets(root)
            close = difflib.get_close_matches(name_or_path, names, n=1)
            raise TargetProfileError(
                f"unknown target '{name_or_path}'; valid targets: {', '.join(names)}",
                hint=f"did you mean '{close[0]}'?" if close else "see `edgeq targets list`",
            )
        search = [root]
    merged, chain, sources = _resolve_chain(path, search)
    profile = _build_profile(path, merged, tuple(p.stem for p in chain), sources, root)
    return dataclasses.replace(profile, chain_files=tuple(chain))


def load_all(root: Path | None = None) -> list[TargetProfile]:
    return [load_target(name, root) for name in available_targets(root)]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise TargetProfileError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise TargetProfileError(f"{path}: cannot read: {exc.strerror}") from exc


def _resolve_chain(path: Path, search: list[Path]) -> tuple[dict[str, Any], list[Path], dict[str, Path]]:
    """Merge a profile with its ancestors (child wins, tables merge key by key)."""
    chain: list[Path] = []
    current: Path | None = path
    while current is not None:
        if current.resolve() in [p.resolve() for p in chain]:
            cycle = " -> ".join(p.stem for p in [*chain, current])
            raise TargetProfileError(f"{path}: inheritance cycle: {cycle}",
                                     hint="the chain must end in a profile without 'inherits' (a class "
                                          "profile such as mcu, iot or phone)")
        chain.append(current)
        raw = _read_toml(current)
        parent = raw.get("inherits")
        if parent is None:
            current = None
        elif not isinstance(parent, str):
            raise TargetProfileError(f"{current}: key 'inherits' must be a string (a profile name)")
        else:
            candidates = [c for c in (d / f"{parent}.toml" for d in search) if c.is_file()]
            # A user's file may share its parent's name (./mcu.toml inheriting the bundled mcu):
            # prefer another file of that name; only the file itself is a self-inheritance cycle.
            found = next((c for c in candidates if c.resolve() != current.resolve()),
                         candidates[0] if candidates else None)
            if found is None:
                raise TargetProfileError(
                    f"{current}: key 'inherits' names '{parent}', which is not a known profile",
                    hint=f"profiles here: {', '.join(available_targets(search[-1]))}",
                )
            current = found
    merged: dict[str, Any] = {}
    sources: dict[str, Path] = {}  # which file set each key: for error messages
    for file in reversed(chain):
        raw = _read_toml(file)
        _check_keys(file, raw)
        for key, value in raw.items():
            if key in _TABLES and isinstance(value, dict):
                table = merged.setdefault(key, {})
                table.update(value)
                for sub in value:
                    sources[f"{key}.{sub}"] = file
            else:
                merged[key] = value
                sources[key] = file
    return merged, chain, sources


def _check_keys(file: Path, raw: dict[str, Any]) -> None:
    known_top = (*_TOP_KEYS, *_TABLES)
    for key, value in raw.items():
        if key not in known_top:
            raise TargetProfileError(_unknown(file, key, known_top, None))
        if key in _TABLES:
            if not isinstance(value, dict):
                raise TargetProfileError(f"{file}: '{key}' must be a table ([{key}])")
            fields = [f.name for f in dataclasses.fields(_TABLES[key])]
            for sub in value:
                if sub not in fields:
                    raise TargetProfileError(_unknown(file, sub, fields, key))


def _unknown(file: Path, key: str, known: typing.Iterable[str], table: str | None) -> str:
    where = f"[{table}] " if table else ""
    close = difflib.get_close_matches(key, list(known), n=1)
    guess = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{file}: {where}unknown key '{key}'{guess}; known keys: {', '.join(known)}"


def _build_profile(path: Path, merged: dict[str, Any], chain: tuple[str, ...],
                   sources: dict[str, Path], root: Path) -> TargetProfile:
    values: dict[str, Any] = {"name": path.stem, "source": path, "chain": chain}
    hints = typing.get_type_hints(TargetProfile)
    for f in dataclasses.fields(TargetProfile):
        if f.name in ("name", "source", "chain", "chain_files", "supported_ops", "op_set_source"):
            continue
        if f.name in _TABLES:
            values[f.name] = _build_table(_TABLES[f.name], merged.get(f.name, {}), f.name, sources, path)
        else:
            values[f.name] = _convert(merged.get(f.name, _MISSING), hints[f.name], f, f.name,
                                      sources.get(f.name, path))
    profile = TargetProfile(**values)
    _check_semantics(profile, sources, path)
    ops, op_source = _load_op_set(root, profile, sources.get("ops.set", path))
    unknown_excl = sorted(set(profile.ops.exclude) - ops)
    if unknown_excl:
        raise TargetProfileError(
            f"{sources.get('ops.exclude', path)}: [ops] exclude lists ops not in op set "
            f"'{profile.ops.set}': {', '.join(unknown_excl)}"
        )
    return dataclasses.replace(profile, supported_ops=frozenset(ops - set(profile.ops.exclude)),
                               op_set_source=op_source)


_MISSING = object()


def _build_table(cls: type, table: dict[str, Any], name: str, sources: dict[str, Path], path: Path) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{name}.{f.name}"
        kwargs[f.name] = _convert(table.get(f.name, _MISSING), hints[f.name], f, key, sources.get(key, path))
    return cls(**kwargs)


def _convert(value: Any, hint: Any, f: dataclasses.Field, key: str, file: Path) -> Any:
    """Check one value against its declared type and metadata; return it in canonical form."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    if value is _MISSING:
        if optional:
            return None
        raise TargetProfileError(f"{file}: required key '{key}' is missing (in the profile or its parents)")
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    where = f"{file}: key '{key}'"
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif base is str or (isinstance(base, type) and issubclass(base, StrEnum)):
        ok = isinstance(value, str)
    elif typing.get_origin(base) is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported field type {base!r}")
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
            base, "a list of strings")
        raise TargetProfileError(f"{where} must be {expected}, got {value!r}")
    minimum = f.metadata.get("min")
    if minimum is not None and value < minimum:
        what = "a budget" if key.startswith("memory.") else "a value"
        raise TargetProfileError(f"{where} is {value}; {what} must be >= {minimum}")
    choices = f.metadata.get("choices")
    if choices is not None:
        items = value if isinstance(value, tuple) else (value,)
        bad = [v for v in items if v not in choices]
        if bad:
            raise TargetProfileError(f"{where}: {', '.join(map(repr, bad))} is not one of: {', '.join(choices)}")
    return base(value) if isinstance(base, type) and issubclass(base, StrEnum) else value


def _check_semantics(p: TargetProfile, sources: dict[str, Path], path: Path) -> None:
    q = p.quantization
    if not q.modes:
        raise TargetProfileError(f"{sources.get('quantization.modes', path)}: [quantization] modes is empty")
    if len(set(q.modes)) != len(q.modes):
        raise TargetProfileError(f"{sources.get('quantization.modes', path)}: [quantization] modes lists a mode twice")
    if not p.ops.set.replace("_", "").isalnum():
        raise TargetProfileError(f"{sources.get('ops.set', path)}: [ops] set '{p.ops.set}' must be a plain name "
                                 "(a file in edgeq/data/targets/op_sets/)")
    if q.default_mode not in q.modes:
        raise TargetProfileError(
            f"{sources.get('quantization.default_mode', path)}: default_mode '{q.default_mode}' "
            f"is not among the allowed modes ({', '.join(q.modes)})")
    if p.runtime == Runtime.C and any(m not in C_MODES for m in q.modes):
        raise TargetProfileError(
            f"{sources.get('quantization.modes', path)}: the c runtime (edgeq's plain C) has {', '.join(C_MODES)} "
            f"kernels; remove {', '.join(m for m in q.modes if m not in C_MODES)} from [quantization] modes")
    if p.runtime == Runtime.TFLM:
        float_only = [m for m in q.modes if not MODES[m].integer_only and m != "float32"]
        if float_only:
            raise TargetProfileError(
                f"{sources.get('quantization.modes', path)}: TFLite Micro has no float16 or hybrid "
                f"kernels; remove {', '.join(float_only)} from [quantization] modes")
    a = p.memory.tensor_alignment
    if a & (a - 1):
        raise TargetProfileError(f"{sources.get('memory.tensor_alignment', path)}: tensor_alignment {a} must be a power of two")


C_MODES = ("int8", "int16x8", "float32")
"""The modes the c runtime has kernels for: int8, int16 activations with int8 weights, and float32
(for cores with an FPU); float16 and hybrid ("dynamic") models it does not run, like TFLM."""

C_PROFILE = "mcu-c"
"""The bundled profile whose c-runtime figures (the C's code in flash, cycles per unit of work,
calibrated by scripts/bench_aot.py on an emulated Cortex-M4) `for_runtime` gives a TFLM target."""


def for_runtime(profile: TargetProfile, runtime: Runtime | str | None) -> TargetProfile:
    """`profile` run by another runtime: `c` turns a TFLite Micro profile into edgeq's plain C (op set
    `c`, the target's modes the c runtime has, the C's own code instead of the interpreter's in
    flash, the C's cycles per unit of work: the figures of the mcu-c profile); the same runtime,
    or None, leaves it as it is.
    TargetProfileError (exit 2) for what cannot be swapped."""
    if runtime is None or Runtime(runtime) == profile.runtime:
        return profile
    if Runtime(runtime) != Runtime.C or profile.runtime != Runtime.TFLM:
        raise TargetProfileError(
            f"target '{profile.name}' runs {profile.runtime}; --runtime {runtime} swaps a TFLite Micro target "
            "for edgeq's plain C only", hint="drop --runtime, or use a microcontroller target such as --target mcu")
    modes = tuple(m for m in profile.quantization.modes if m in C_MODES)
    if "int8" not in modes:
        raise TargetProfileError(f"target '{profile.name}' has no int8 mode, the c runtime's default",
                                 hint="use a target that allows int8")
    c = load_target(C_PROFILE)
    default = profile.quantization.default_mode if profile.quantization.default_mode in modes else "int8"
    return dataclasses.replace(
        profile, runtime=Runtime.C, ops=c.ops, supported_ops=c.supported_ops, op_set_source=c.op_set_source,
        quantization=dataclasses.replace(profile.quantization, modes=modes, default_mode=default),
        memory=dataclasses.replace(profile.memory, runtime_flash_bytes=c.memory.runtime_flash_bytes,
                                   arena_margin_bytes=c.memory.arena_margin_bytes),
        latency=c.latency)


def _load_op_set(root: Path, p: TargetProfile, file: Path) -> tuple[set[str], str]:
    op_file = root / "op_sets" / f"{p.ops.set}.toml"
    if not op_file.is_file():
        sets = sorted(x.stem for x in (root / "op_sets").glob("*.toml"))
        raise TargetProfileError(f"{file}: [ops] set '{p.ops.set}' is unknown; op sets: {', '.join(sets)}")
    data = _read_toml(op_file)
    return set(data.get("ops", [])), str(data.get("source", ""))


def fitting_targets(flash: int, ram: int, runtime: str | None = None) -> list[str]:
    """Bundled targets (of `runtime`, if given) whose budgets hold `flash` model bytes and `ram`
    arena/activation bytes."""
    names = []
    for t in load_all():
        if runtime and t.runtime != runtime:
            continue
        m = t.memory
        if (m.flash_bytes is None or flash + m.runtime_flash_bytes <= m.flash_bytes) and (
                m.ram_bytes is None or ram + m.arena_margin_bytes + m.reserved_ram_bytes <= m.ram_bytes):
            names.append(t.name)
    return names
