"""Records: frozen dataclasses that are also JSON, one definition for both.

A report part is a `Record`. Its fields are the JSON object's keys, in the types JSON has
(int, float, str, bool, None, lists, string-keyed dicts, StrEnums, other records), so
`to_dict()` needs no code of its own and `json_schema()` derives the schema from the same
type hints. Two field markers cover what a plain field cannot say:

- `optional()`: the key is left out while the value is None (report.json has always done so
  for facts that exist only sometimes, such as the arena plan's measured arenas);
- `key("class")`: the JSON key when it is not a Python name.

This module imports nothing of edgeq's, so every layer can define its own parts.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

_OMIT = "edgeq.omit_if_none"
_KEY = "edgeq.json_key"


def optional(default: Any = None) -> Any:
    """A field whose key report.json leaves out while it is None."""
    return dataclasses.field(default=default, metadata={_OMIT: True})


def key(name: str, default: Any = dataclasses.MISSING) -> Any:
    """A field stored under `name` in JSON (a keyword such as "class", or a name with a dash)."""
    return dataclasses.field(default=default, metadata={_KEY: name})


class Record:
    """Mixin for frozen dataclasses that are written as JSON."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data: records and dataclasses become dicts, tuples lists, enums their value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get(_OMIT):
                continue
            out[f.metadata.get(_KEY, f.name)] = jsonable(item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k.value if isinstance(k, enum.Enum) else k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(jsonable(v) for v in value)
    return value


# -- JSON Schema from the type hints ---------------------------------------------------------------


def json_schema(roots: dict[str, type], *, title: str, description: str, schema_id: str) -> dict[str, Any]:
    """A draft 2020-12 schema whose document is one of `roots` (name -> record type); every record
    reachable from them is a `$defs` entry, closed to keys it does not declare."""
    defs: dict[str, Any] = {}
    builder = _Builder(defs)
    one_of = [builder.of(t) for t in roots.values()]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, "title": title,
            "description": description, "oneOf": one_of, "$defs": dict(sorted(defs.items()))}


class _Builder:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def of(self, hint: Any) -> dict[str, Any]:
        if hint is Any:
            return {}
        if hint is type(None):
            return {"type": "null"}
        if hint is bool:
            return {"type": "boolean"}
        if hint is int:
            return {"type": "integer"}
        if hint is float:
            return {"type": "number"}
        if hint is str:
            return {"type": "string"}
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return {"enum": [m.value for m in hint]}
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self._record(hint)
        origin, args = get_origin(hint), get_args(hint)
        if origin is Literal:
            return {"enum": list(args)}
        if origin in (typing.Union, types.UnionType):
            return {"anyOf": [self.of(a) for a in args]}
        if origin in (list, tuple, frozenset, set):
            item = args[0] if args else Any
            return {"type": "array", "items": self.of(item)}
        if origin is dict:
            return {"type": "object", "additionalProperties": self.of(args[1] if args else Any)}
        raise TypeError(f"no JSON Schema for {hint!r}")

    def _record(self, cls: type) -> dict[str, Any]:
        name = cls.__name__
        if name not in self.defs:
            self.defs[name] = {}  # placeholder: a record may refer to itself
            hints = get_type_hints(cls)
            properties, required = {}, []
            for f in dataclasses.fields(cls):
                json_key = f.metadata.get(_KEY, f.name)
                properties[json_key] = self.of(hints[f.name])
                if f.metadata.get("doc"):  # target profiles document their keys this way
                    properties[json_key] = {"description": f.metadata["doc"], **properties[json_key]}
                if not f.metadata.get(_OMIT):
                    required.append(json_key)
            entry: dict[str, Any] = {"type": "object"}
            doc = (cls.__doc__ or "").strip()
            if doc and not doc.startswith(f"{name}("):  # dataclasses write a signature when there is no docstring
                entry["description"] = " ".join(doc.split("\n\n")[0].split())
            entry |= {"properties": properties, "required": sorted(required), "additionalProperties": False}
            self.defs[name] = entry
        return {"$ref": f"#/$defs/{name}"}
