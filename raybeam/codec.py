"""JSON for stored state (journal entries, snapshots, archived records): orjson, which
writes dataclasses and enums itself at about a tenth of the standard library's cost, and the
standard library for what orjson refuses (integers beyond 64 bits)."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # {1: "a"} is stored as {"1": "a"}, as json does


def dumps(value: Any) -> str:
    """Compact JSON of `value`; dataclasses as their fields, enums as their values."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:
        try:
            return json.dumps(value, separators=(",", ":"), default=_plain, allow_nan=False)
        except ValueError:  # NaN or an infinity: null, as orjson writes them (JSON has none)
            plain = json.loads(json.dumps(value, default=_plain))
            return json.dumps(_finite(plain), separators=(",", ":"), allow_nan=False)


def dumps_bytes(value: Any) -> bytes:
    """`dumps` as UTF-8 bytes, with no copy through `str` (orjson writes bytes)."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        return dumps(value).encode()


def canonical(value: Any) -> str:
    """JSON of `value` with sorted keys: equal values give equal texts (a lookup key)."""
    try:
        return orjson.dumps(value, option=_OPTIONS | orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def batch_line(entries: list[tuple[str, str, Any]]) -> bytes:
    """One journal line for a batch: `[[kind, key, data], ...]` and a newline. One encoder
    call for the whole batch: a call per entry costs three to five times as much a record.
    Where orjson refuses an entry, the standard library writes that entry only."""
    try:
        return orjson.dumps(entries, option=_OPTIONS | orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return b"[" + b",".join(dumps_bytes(entry) for entry in entries) + b"]\n"


def frozen_json(value: Any) -> orjson.Fragment:
    """The JSON of `value`, an object never changed once made (a task's spec), worked out
    once per object and embedded as it is wherever `value` is encoded again."""
    cached = _FROZEN.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    if len(_FROZEN) >= FROZEN_CACHE:
        _FROZEN.clear()
        # the fragments handed out lately stay known a while (a snapshot chunk of records
        # is built, then written)
        _EARLIER_FRAGMENTS.clear()
        _EARLIER_FRAGMENTS.update(_FRAGMENTS)
        _FRAGMENTS.clear()
    raw = dumps_bytes(value)
    fragment = orjson.Fragment(raw)
    _FROZEN[id(value)] = (value, fragment)
    _FRAGMENTS[id(fragment)] = (fragment, raw)
    return fragment


#: objects whose JSON `frozen_json` worked out, by identity, and each fragment's JSON (for
#: the standard library's encoder, which cannot write a fragment itself)
_FROZEN: dict[int, tuple[Any, orjson.Fragment]] = {}
_FRAGMENTS: dict[int, tuple[orjson.Fragment, bytes]] = {}
_EARLIER_FRAGMENTS: dict[int, tuple[orjson.Fragment, bytes]] = {}
FROZEN_CACHE = 4096


def loads(text: str | bytes) -> Any:
    """The value of a JSON text; ValueError when it is not JSON."""
    return orjson.loads(text)


def dumps_each(values: list[Any]) -> bytes:
    """The comma-separated JSON of `values` (a JSON array's body): orjson for them all, or,
    where it refuses one, the standard library for that one only."""
    try:
        return orjson.dumps(values, option=_OPTIONS)[1:-1]
    except TypeError:
        return b",".join(dumps_bytes(value) for value in values)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    known = _FRAGMENTS.get(id(value)) or _EARLIER_FRAGMENTS.get(id(value))
    if known is not None and known[0] is value:
        return json.loads(known[1])
    raise TypeError(f"{type(value).__name__} is not JSON")
