"""The registry: who is alive and what they can do.

An :class:`Entry` is one registered name: its capabilities, its metadata (``pool``,
``load``, ``health``, ``reputation`` and whatever the agent adds) and the pid of the live
process that owns it.  A :class:`Backend` stores entries; ``runtime.registry.backends.make_backend`` builds one:

``local``        :class:`runtime.registry._local.LocalBackend`, an in-process dict with a
                 capability index (tests, embedding).
``partitioned``  :class:`runtime.registry._client.PartitionedBackend`, the default in the
                 daemon: N partition processes own the writes of their shard
                 (``runtime.registry._partition``) and publish every committed write into a
                 shared-memory table (``runtime.registry.table``) that every process reads
                 without a round trip.
``redis``        :class:`runtime.registry._redis.RedisBackend`, a real Redis server
                 (several machines): partitions as hash tags, owner leases that expire.

``tests/runtime/registry/test_conformance.py`` is the contract: a new backend is done when it
passes that suite.

Semantics (decided here, the spec is silent):

* ``register`` of a new key gives version 1.  Registering an existing key again *by the
  same owner* replaces capabilities and metadata and bumps the version; by another owner
  it raises :class:`~runtime.errors.Conflict` (one live owner per key, as in Elixir's
  unique Registry).  The owner must be a running process (else ``InvalidInput``).
* Every committed write of a key bumps its version by one; ``update(...,
  expected_version=v)`` is a compare-and-set that raises ``Conflict`` when the version
  moved on.  A key that is unregistered and registered again starts at version 1 again
  (an ABA a CAS holder across an unregister cannot see; keep CAS windows short).
* ``update`` merges the patch into the metadata one level deep; a ``None`` value deletes
  that field (JSON merge-patch style).
* Predicates compare one metadata field.  A missing field matches no predicate (not even
  ``ne``); values of different JSON types are never equal and never ordered (``load<0.5``
  does not match ``load="high"``; ``true`` is not ``1``).
* ``select`` orders by key unless ``order_by`` names a metadata field (``"load"``,
  ascending) or ``"-field"`` (descending); ties are broken by key; entries without the
  field come last; numbers sort before strings before other values.
* Limits, so that one entry fits one 1 KiB shared-table slot: a key is 1..128 UTF-8
  bytes; at most 16 capabilities per entry, each 1..63 UTF-8 bytes; the whole entry
  encoded as compact JSON ``[key, capabilities, metadata, version, owner]`` is at most
  1024 bytes.  Larger entries are refused with ``InvalidInput`` at register/update time,
  by every backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from runtime.errors import AgoraError, InvalidInput

__all__ = [
    "Entry", "Predicate", "Backend", "parse_filter", "parse_filters", "BACKENDS",
    "MAX_KEY_BYTES", "MAX_CAPABILITIES", "MAX_CAPABILITY_BYTES", "MAX_ENTRY_BYTES",
    "OPS", "EntryLike", "ENTRY_FIELDS",
]

#: Registry backends by name (built by ``runtime.registry.backends.make_backend``).
BACKENDS = ("local", "partitioned", "redis")

MAX_KEY_BYTES = 128
MAX_CAPABILITIES = 16
MAX_CAPABILITY_BYTES = 63
MAX_ENTRY_BYTES = 1024
OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in")


@dataclass(slots=True)
class Entry:
    """One registered name.  JSON-able through :meth:`to_wire` / :meth:`from_wire`."""

    key: str
    capabilities: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    owner: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"key": self.key, "capabilities": list(self.capabilities),
                "metadata": self.metadata, "version": self.version, "owner": self.owner}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Entry:
        return cls(d["key"], list(d["capabilities"]), dict(d["metadata"]),
                   int(d["version"]), int(d["owner"]))


#: What ``register`` accepts as the entry: an Entry (its key/version/owner are ignored)
#: or a mapping with ``capabilities`` and optional ``metadata``.
EntryLike = Entry | Mapping[str, Any]


def encode_entry(e: Entry) -> bytes:
    """The compact form stored in a table slot and sent between processes."""
    return orjson.dumps([e.key, e.capabilities, e.metadata, e.version, e.owner])


def decode_entry(b: bytes | memoryview) -> Entry:
    k, caps, meta, version, owner = orjson.loads(b)
    return Entry(k, caps, meta, version, owner)


def copy_entry(e: Entry) -> Entry:
    """A deep copy, so that a caller mutating a returned entry cannot touch the store."""
    return decode_entry(encode_entry(e))


# ---------------------------------------------------------------------------- validation

def check_key(key: Any) -> str:
    if type(key) is str and 0 < len(key) <= MAX_KEY_BYTES // 4:  # <= 4 UTF-8 bytes a char
        return key
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"registry key must be a non-empty string, got {key!r}",
                           hint="use a name such as 'summarize.3'")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidInput(f"registry key {key[:40]!r}... is {len(key.encode())} bytes long, "
                           f"over the limit of {MAX_KEY_BYTES}", hint="use a shorter key")
    return key


def check_owner(pid: Any) -> int:
    if type(pid) is int and pid > 0:
        return pid
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidInput(f"owner pid must be a positive integer, got {pid!r}",
                           hint="pass the pid of the live process the entry belongs to")
    return pid


def _check_capabilities(caps: Any) -> list[str]:
    if type(caps) is list and len(caps) <= MAX_CAPABILITIES and all(
            type(c) is str and 0 < len(c) <= MAX_CAPABILITY_BYTES and c.isascii() for c in caps):
        return list(dict.fromkeys(caps))  # the usual case, checked without the loop below
    if isinstance(caps, (str, bytes)) or not isinstance(caps, Iterable):
        raise InvalidInput(f"capabilities must be a list of strings, got {caps!r}")
    out = list(dict.fromkeys(caps))  # de-duplicated, first-seen order kept
    if len(out) > MAX_CAPABILITIES:
        raise InvalidInput(f"{len(out)} capabilities given, over the limit of {MAX_CAPABILITIES}",
                           hint="split the agent into several registered names")
    for c in out:
        if not isinstance(c, str) or not c or len(c.encode()) > MAX_CAPABILITY_BYTES:
            raise InvalidInput(f"capability {c!r} must be a string of 1..{MAX_CAPABILITY_BYTES} "
                               "UTF-8 bytes")
    return out


def _check_metadata(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if type(meta) is dict and all(type(k) is str for k in meta):
        return dict(meta)
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
        raise InvalidInput(f"metadata must be a JSON object with string keys, got {meta!r}")
    return dict(meta)


#: The fields an entry mapping may have (``capabilities`` and ``metadata`` are used).
ENTRY_FIELDS = frozenset({"capabilities", "metadata", "key", "version", "owner"})


def entry_fields(entry: EntryLike) -> tuple[list[str], dict[str, Any]]:
    """(capabilities, metadata) of what a caller passed to ``register``, validated."""
    if type(entry) is dict and entry.keys() <= ENTRY_FIELDS:
        return (_check_capabilities(entry.get("capabilities", [])),
                _check_metadata(entry.get("metadata")))
    if isinstance(entry, Entry):
        return _check_capabilities(entry.capabilities), _check_metadata(entry.metadata)
    if not isinstance(entry, Mapping):
        raise InvalidInput(f"entry must be an Entry or a mapping, got {type(entry).__name__}",
                           hint="pass {'capabilities': [...], 'metadata': {...}}")
    unknown = set(entry) - ENTRY_FIELDS
    if unknown:
        raise InvalidInput(f"entry has unknown fields {sorted(unknown)}",
                           hint="an entry has 'capabilities' and 'metadata'")
    return (_check_capabilities(entry.get("capabilities", [])),
            _check_metadata(entry.get("metadata")))


def check_size(e: Entry) -> bytes:
    """The encoded entry; ``InvalidInput`` if it is not JSON-able or too large for a slot."""
    try:
        data = encode_entry(e)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidInput(f"entry {e.key!r} is not JSON-able: {exc}",
                           hint="metadata values must be JSON (str, int < 2**64, float, "
                                "bool, None, lists, objects)") from None
    if len(data) > MAX_ENTRY_BYTES:
        raise InvalidInput(f"entry {e.key!r} is {len(data)} bytes encoded, over the limit of "
                           f"{MAX_ENTRY_BYTES}", hint="keep large data out of the registry "
                           "(put it in shared context and store its name)")
    return data


def merge_patch(meta: dict[str, Any], patch: Any) -> dict[str, Any]:
    """``meta`` with ``patch`` applied one level deep (``None`` deletes a field)."""
    patch = _check_metadata(patch)
    out = dict(meta)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------------------- predicates

def _kind(v: Any) -> int:
    """JSON type class: values of different classes never compare."""
    if isinstance(v, bool):
        return 0
    if isinstance(v, (int, float)):
        return 1
    if isinstance(v, str):
        return 2
    return 3


def _eq(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _ordered(a: Any, b: Any) -> bool:
    k = _kind(a)
    return k in (1, 2) and k == _kind(b)


_TESTS = {
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": lambda a, b: _ordered(a, b) and a < b,
    "le": lambda a, b: _ordered(a, b) and a <= b,
    "gt": lambda a, b: _ordered(a, b) and a > b,
    "ge": lambda a, b: _ordered(a, b) and a >= b,
    "in": lambda a, b: any(_eq(a, x) for x in b),
}


@dataclass(frozen=True, slots=True)
class Predicate:
    """``metadata[field] <op> value``; ``op`` is one of :data:`OPS`."""

    field: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in _TESTS:
            raise InvalidInput(f"unknown predicate operator {self.op!r}",
                               hint=f"use one of {', '.join(OPS)}")
        if self.op == "in" and not isinstance(self.value, (list, tuple)):
            raise InvalidInput(f"operator 'in' on {self.field!r} needs a list of values, "
                               f"got {self.value!r}")

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        if self.field not in metadata:
            return False
        return bool(_TESTS[self.op](metadata[self.field], self.value))

    def to_wire(self) -> list[Any]:
        return [self.field, self.op, list(self.value) if self.op == "in" else self.value]

    @classmethod
    def from_wire(cls, w: Any) -> Predicate:
        if not isinstance(w, (list, tuple)) or len(w) != 3 or not isinstance(w[0], str):
            raise InvalidInput(f"a predicate is [field, op, value], got {w!r}")
        return cls(w[0], w[1], w[2])


_SYMBOLS = {"<=": "le", ">=": "ge", "!=": "ne", "==": "eq", "=": "eq", "<": "lt", ">": "gt"}
_FIELD = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_CMP_RE = re.compile(rf"^\s*({_FIELD})\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$", re.S)
_IN_RE = re.compile(rf"^\s*({_FIELD})\s+in\s+(.*?)\s*$", re.S)
_FILTER_HINT = "write FIELD OP VALUE with OP one of = != < <= > >=, or 'FIELD in A,B,C'"


def _parse_value(text: str, spec: str) -> Any:
    if not text:
        raise InvalidInput(f"filter {spec!r} has no value after the operator", hint=_FILTER_HINT)
    if text[0] in "<>=!":
        raise InvalidInput(f"in filter {spec!r} the value {text!r} starts with an operator",
                           hint=_FILTER_HINT)
    if text[0] in '"-0123456789' or text in ("true", "false", "null"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            if text[0] == '"':
                raise InvalidInput(f"in filter {spec!r} the quoted value {text!r} is not a "
                                   "valid JSON string", hint=_FILTER_HINT) from None
    return text  # a bare word: a string


def parse_filter(spec: str) -> Predicate:
    """'load<0.5', 'pool=summarize', 'health in ok,degraded' -> Predicate.

    Values are JSON when they look like JSON (numbers, true/false/null, "quoted"), bare
    words otherwise.  Errors are ``InvalidInput`` naming the part that is wrong.
    """
    if not isinstance(spec, str):
        raise InvalidInput(f"a filter is a string such as 'load<0.5', got {spec!r}")
    m = _IN_RE.match(spec)
    if m:
        parts = [p.strip() for p in m.group(2).split(",")]
        if any(not p for p in parts):
            raise InvalidInput(f"filter {spec!r} has an empty value in its 'in' list",
                               hint="write 'health in ok,degraded' (no empty items)")
        return Predicate(m.group(1), "in", [_parse_value(p, spec) for p in parts])
    m = _CMP_RE.match(spec)
    if not m:
        raise InvalidInput(f"filter {spec!r} is not FIELD OP VALUE "
                           f"(the field must match {_FIELD})", hint=_FILTER_HINT)
    return Predicate(m.group(1), _SYMBOLS[m.group(2)], _parse_value(m.group(3), spec))


def parse_filters(where: Iterable[Predicate | str | Sequence[Any]] | None) -> list[Predicate]:
    """Predicates from a mix of Predicate objects, filter strings and wire triples."""
    out = []
    for w in where or ():
        if isinstance(w, Predicate):
            out.append(w)
        elif isinstance(w, str):
            out.append(parse_filter(w))
        else:
            out.append(Predicate.from_wire(w))
    return out


# ---------------------------------------------------------------------------- querying

def check_query(order_by: Any, limit: Any) -> None:
    if order_by is not None and (not isinstance(order_by, str) or not order_by.lstrip("-")):
        raise InvalidInput(f"order_by must be a metadata field name, optionally prefixed by "
                           f"'-' for descending, got {order_by!r}", hint="e.g. 'load' or '-reputation'")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInput(f"limit must be a non-negative integer or None, got {limit!r}")


def matches(e: Entry, capability: str | None, where: Sequence[Predicate]) -> bool:
    if capability is not None and capability not in e.capabilities:
        return False
    return all(p.matches(e.metadata) for p in where)


def order_and_limit(entries: list[Entry], order_by: str | None, limit: int | None) -> list[Entry]:
    """Entries sorted as documented in the module docstring, cut to ``limit``."""
    entries = sorted(entries, key=lambda e: e.key)
    if order_by:
        desc, name = order_by.startswith("-"), order_by.lstrip("-")
        groups: dict[int, list[Entry]] = {1: [], 2: [], 3: [], 4: []}
        for e in entries:
            groups[_group(e.metadata, name)].append(e)
        groups[1].sort(key=lambda e: e.metadata[name], reverse=desc)
        groups[2].sort(key=lambda e: e.metadata[name], reverse=desc)
        entries = groups[1] + groups[2] + groups[3] + groups[4]
    return entries if limit is None else entries[:limit]


def _group(meta: Mapping[str, Any], name: str) -> int:
    if name not in meta:
        return 4
    k = _kind(meta[name])
    return 3 if k in (0, 3) else k


# ---------------------------------------------------------------------------- the protocol

@runtime_checkable
class Backend(Protocol):
    """What every registry backend offers.  Errors: ``InvalidInput`` (bad key/entry/filter,
    owner not running), ``Conflict`` (key owned by another pid; CAS lost), ``NotFound``
    (update of a missing key), ``Unavailable`` (retryable: a partition is down)."""

    def register(self, key: str, entry: EntryLike, owner_pid: int) -> Entry: ...

    def register_many(self, items: Iterable[tuple[str, EntryLike, int]]
                      ) -> list[Entry | AgoraError]: ...

    def unregister(self, key: str) -> bool: ...

    def lookup(self, key: str) -> Entry | None: ...

    def update(self, key: str, metadata_patch: Mapping[str, Any],
               expected_version: int | None = None) -> Entry: ...

    def select(self, capability: str | None = None,
               where: Iterable[Predicate | str] = (), order_by: str | None = None,
               limit: int | None = None) -> list[Entry]: ...

    def count(self, capability: str | None = None, where: Iterable[Predicate | str] = ()) -> int: ...

    def list(self, capability: str | None = None, where: Iterable[Predicate | str] = (),
             limit: int | None = None) -> list[str]: ...

    def remove_owner(self, pid: int) -> int: ...

    def clear(self) -> int: ...

    def close(self) -> None: ...
