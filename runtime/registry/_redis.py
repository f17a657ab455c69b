"""RedisBackend: the registry in a real Redis server, for agents on more than one machine.

Layout (every key of a partition carries the partition's hash tag, so that a Redis Cluster
puts each partition in one slot and spreads the four partitions over its nodes; a script
touches the keys of one partition only, which is what Cluster requires)::

    {agora:p0}:e:<key>         hash: d (the entry, encoded as in a shared-table slot),
                               v (version), o (owner id), c (capabilities, JSON)
    {agora:p0}:keys            set of the partition's keys (select without a capability)
    {agora:p0}:c:<capability>  set of the keys offering the capability (the index)
    {agora:p0}:o:<owner id>    set of the keys of one owner
    {agora:p0}:leases          sorted set: owner id -> lease deadline (ms, Redis's clock)
    {agora:p0}:layout          the number of partitions (set once, checked by every client)

A key's partition is ``crc32(key) % partitions`` (:mod:`runtime.registry.partitioning`, the same
stable hash as the partitioned backend); ``agora`` is the ``namespace`` option.

Decisions (the issue leaves them open):

* **Atomicity.** Every operation on a partition is one Lua script (one script, dispatched
  on its first argument, loaded once and run by EVALSHA), so a registration, its indexes
  and its lease change together or not at all.  Operations over several partitions
  (``select``, ``register_many``, ``clear``) send one script call per partition in one
  pipelined round trip; like the partitioned backend they are atomic per partition, not
  across partitions.
* **Owners and leases.** Pids are per machine, so an owner is ``<node>/<pid>``; ``node``
  defaults to the host name (``Entry.owner`` stays the pid).  Each owner holds a lease per
  partition it has entries in: its deadline, taken from the Redis server's clock (so client
  clocks may disagree), in the partition's ``leases`` sorted set.  A sorted set rather than
  a key with a TTL per owner: a TTL key vanishes alone and keyspace notifications are lost
  while nobody listens, whereas a script can take every expired lease by range and delete
  its entries in the same atomic step.  **Every script first removes the entries of the
  partition's expired leases**, so no read ever returns an entry past its lease.
* **Renewal.** From its first registration until ``close()``, a backend runs a keeper
  thread that every ``lease_ttl / 3`` calls :meth:`RedisBackend.renew`: the leases of this
  node's owners are extended to now + ``lease_ttl`` when the pid is running here, and the
  entries of this node's pids that are not running are removed (owner-liveness cleanup, as
  the partitions do for the partitioned backend).  Any keeper on a node keeps all of that
  node's live owners, so a restarted process takes over from the old one.
  ``lease_keeper=False`` runs no thread (call ``renew()`` yourself).  Do not let a process
  that forks run the keeper (fork in a threaded process is unsafe): the root supervisor
  does not.
* **Bound.** When an owner's machine dies (or every keeper of its node stops), its entries
  are gone from every read at most ``lease_ttl`` after its last renewal, hence within
  ``lease_ttl`` of the death; default 10 s, the option ``lease_ttl`` (seconds).  An owner
  process that dies while its machine lives goes at the next keeper pass, within
  ``lease_ttl / 3``, or at once when its supervisor calls ``remove_owner``.  An owner whose
  lease lapsed (a network partition longer than the TTL) has lost its entries and must
  register again, as a ZooKeeper session that expired.
* **Queries.** ``select(capability)`` reads the capability's set per partition and only
  the entries it names; no SCAN or KEYS anywhere.  Metadata predicates, ordering and the
  limit are applied here, on those candidates (JSON values compare as in
  :mod:`runtime.registry`; Lua would compare them differently).  ``count`` without
  predicates is SCARD.
* **update** reads the entry, merges the patch here and writes it back with a
  compare-and-set on (version, owner, capabilities): two round trips; a CAS lost to a
  concurrent writer without ``expected_version`` is retried (at most 256 times, with a jittered backoff).
* **Where Redis may be.** ``redis_url`` is ``unix:///path/redis.sock`` or
  ``redis://127.0.0.1:PORT/DB``; any other host is refused unless ``allow_remote=True``
  (a registry on another machine is asked for by name, never reached by a typo).
* **Cluster.** The client here is redis-py's single-server ``Redis``.  The layout and the
  scripts are ready for a Redis Cluster (each script call names a key of its partition's
  slot, and every key it derives from the tag lies in that slot, which Cluster accepts),
  but redis-py's ``RedisCluster`` client is neither wired nor tested yet.
* **Errors.** A refused connection or a timeout (``timeout``, default 1 s) is
  ``Unavailable`` (retryable); a script error is ``BrokenError``.
"""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from runtime.errors import (
    AgoraError,
    BrokenError,
    ClosedError,
    Conflict,
    InvalidInput,
    NotFound,
    Unavailable,
)
from runtime.registry._local import owner_not_running, validate_registration
from runtime.registry.model import (
    MAX_ENTRY_BYTES,
    Entry,
    EntryLike,
    Predicate,
    check_key,
    check_owner,
    check_query,
    check_size,
    decode_entry,
    merge_patch,
    order_and_limit,
    parse_filters,
    pid_alive,
)
from runtime.registry.partitioning import key_hash, partition_of_hash

__all__ = ["RedisBackend", "check_redis_url", "LUA", "DEFAULT_LEASE_TTL"]

DEFAULT_LEASE_TTL = 10.0  # seconds; see "Bound" above
_CAS_ATTEMPTS = 256  # with a jittered backoff after each lost race (<= 10 ms)
_NODE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LOOPBACK = ("127.0.0.1", "::1")

#: The one script.  ARGV[1] is the partition's tag prefix "{ns:pN}:", ARGV[2] the op;
#: KEYS[1] is the partition's key set (it routes the call to the partition's slot).
LUA = r"""
-- Redis < 7 refuses writes after TIME unless the script replicates its effects
if redis.replicate_commands then redis.replicate_commands() end
local tag, op = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local KEYSET, LEASES = tag .. 'keys', tag .. 'leases'

local function drop_entry(k)
  local ek = tag .. 'e:' .. k
  local f = redis.call('HMGET', ek, 'o', 'c')
  if not f[1] then return 0 end
  for _, c in ipairs(cjson.decode(f[2])) do redis.call('SREM', tag .. 'c:' .. c, k) end
  redis.call('SREM', KEYSET, k)
  redis.call('DEL', ek)
  -- an owner's last entry here takes its lease here with it (no lease outlives its entries)
  if redis.call('SREM', tag .. 'o:' .. f[1], k) == 1 and redis.call('EXISTS', tag .. 'o:' .. f[1]) == 0 then
    redis.call('ZREM', LEASES, f[1])
  end
  return 1
end

local function drop_owner(owner)
  local n = 0
  for _, k in ipairs(redis.call('SMEMBERS', tag .. 'o:' .. owner)) do n = n + drop_entry(k) end
  redis.call('DEL', tag .. 'o:' .. owner)
  redis.call('ZREM', LEASES, owner)
  return n
end

local function extend(owner, ttl)
  local deadline = now + ttl
  local cur = redis.call('ZSCORE', LEASES, owner)
  if (not cur) or tonumber(cur) < deadline then redis.call('ZADD', LEASES, deadline, owner) end
end

local function commit(v, prefix, suffix, limit)
  local d = prefix .. string.format('%d', v) .. suffix
  if #d > tonumber(limit) then return nil end
  return d
end

-- the entries of expired leases go before anything else is read or written
for _, owner in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now)) do drop_owner(owner) end

if op == 'register' then  -- key, owner, caps json, prefix, suffix, ttl ms, limit, caps...
  local k, owner = ARGV[3], ARGV[4]
  local ek = tag .. 'e:' .. k
  local old = redis.call('HMGET', ek, 'o', 'v')
  local v = 1
  if old[1] then
    if old[1] ~= owner then return {'conflict', old[1]} end
    v = tonumber(old[2]) + 1
  end
  local d = commit(v, ARGV[6], ARGV[7], ARGV[9])
  if not d then return {'size', ARGV[6] .. string.format('%d', v) .. ARGV[7]} end
  if old[1] then drop_entry(k) end
  redis.call('HSET', ek, 'd', d, 'v', string.format('%d', v), 'o', owner, 'c', ARGV[5])
  redis.call('SADD', KEYSET, k)
  redis.call('SADD', tag .. 'o:' .. owner, k)
  for i = 10, #ARGV do redis.call('SADD', tag .. 'c:' .. ARGV[i], k) end
  extend(owner, tonumber(ARGV[8]))
  return {'ok', d}
elseif op == 'update' then  -- key, version, owner, caps json (as read), prefix, suffix, limit
  local ek = tag .. 'e:' .. ARGV[3]
  local f = redis.call('HMGET', ek, 'v', 'o', 'c')
  if not f[1] then return {'missing'} end
  if f[1] ~= ARGV[4] or f[2] ~= ARGV[5] or f[3] ~= ARGV[6] then return {'moved'} end
  local v = tonumber(f[1]) + 1
  local d = commit(v, ARGV[7], ARGV[8], ARGV[9])
  if not d then return {'size', ARGV[7] .. string.format('%d', v) .. ARGV[8]} end
  redis.call('HSET', ek, 'd', d, 'v', string.format('%d', v))
  return {'ok', d}
elseif op == 'get' then  -- key
  return redis.call('HMGET', tag .. 'e:' .. ARGV[3], 'd', 'o', 'c')
elseif op == 'unregister' then  -- key
  return drop_entry(ARGV[3])
elseif op == 'select' then  -- '1' capability | '0'
  local ks
  if ARGV[3] == '1' then ks = redis.call('SMEMBERS', tag .. 'c:' .. ARGV[4])
  else ks = redis.call('SMEMBERS', KEYSET) end
  local out = {}
  for i, k in ipairs(ks) do out[i] = redis.call('HGET', tag .. 'e:' .. k, 'd') end
  return out
elseif op == 'count' then  -- '1' capability | '0'
  if ARGV[3] == '1' then return redis.call('SCARD', tag .. 'c:' .. ARGV[4]) end
  return redis.call('SCARD', KEYSET)
elseif op == 'remove_owner' then  -- owner
  return drop_owner(ARGV[3])
elseif op == 'clear' then
  local n = 0
  for _, k in ipairs(redis.call('SMEMBERS', KEYSET)) do n = n + drop_entry(k) end
  redis.call('DEL', LEASES)
  return n
elseif op == 'owners' then  -- node prefix "node/": this node's owners holding a lease here
  local out = {}
  for _, o in ipairs(redis.call('ZRANGE', LEASES, 0, -1)) do
    if string.sub(o, 1, #ARGV[3]) == ARGV[3] then out[#out + 1] = o end
  end
  return out
elseif op == 'extend' then  -- ttl ms, owners...: only leases that still exist
  for i = 4, #ARGV do
    if redis.call('ZSCORE', LEASES, ARGV[i]) then extend(ARGV[i], tonumber(ARGV[3])) end
  end
  return #ARGV - 3
elseif op == 'layout' then  -- partitions
  redis.call('SET', tag .. 'layout', ARGV[3], 'NX')
  return redis.call('GET', tag .. 'layout')
end
return redis.error_reply('agora registry: unknown op ' .. tostring(op))
"""


def check_redis_url(url: Any, allow_remote: bool = False) -> str:
    """``url`` if it names a unix socket or (unless ``allow_remote``) 127.0.0.1 / ::1."""
    if url is None:
        raise InvalidInput("the redis registry backend needs redis_url",
                           hint="e.g. redis_url='unix:///run/redis/redis.sock'")
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"redis_url must be a string such as 'unix:///run/redis.sock' or "
                           f"'redis://127.0.0.1:6379/0', got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise InvalidInput(f"redis_url {url!r} names no socket path",
                               hint="write unix:///absolute/path/redis.sock")
        return url
    if parts.scheme not in ("redis", "rediss"):
        raise InvalidInput(f"redis_url {url!r} has scheme {parts.scheme!r}",
                           hint="use unix://, redis:// or rediss://")
    if parts.hostname not in _LOOPBACK and not allow_remote:
        raise InvalidInput(f"redis_url {url!r} points at host {parts.hostname!r}, not at this "
                           "machine", hint="use a unix socket or 127.0.0.1, or pass "
                           "allow_remote=True for a registry on another machine")
    return url


def _default_node() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64]
    return name or "node"


def _halves(key: str, caps: list[str], meta: dict[str, Any], pid: int) -> tuple[bytes, bytes]:
    """The encoded entry around its version: the script puts the version in between, so
    the stored bytes are exactly :func:`runtime.registry.encode_entry`'s."""
    return orjson.dumps([key, caps, meta])[:-1] + b",", b",%d]" % pid


class _Keeper:
    """The thread that renews this node's leases; stopped and joined by ``stop()``."""

    def __init__(self, backend: RedisBackend, interval: float) -> None:
        self.backend, self.interval = backend, interval
        self.stopping = threading.Event()
        self.last_error: AgoraError | None = None
        self.thread = threading.Thread(target=self._run, name="agora:redis-lease-keeper",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.backend.renew()
                self.last_error = None
            except AgoraError as exc:  # Redis down: keep trying; the leases say how long
                self.last_error = exc

    def stop(self, bound: float) -> None:
        self.stopping.set()
        self.thread.join(bound)


class RedisBackend:
    """The registry in Redis; see the module docstring for the layout and the decisions."""

    def __init__(self, redis_url: str | None = None, *, namespace: str = "agora", partitions: int = 4,
                 lease_ttl: float = DEFAULT_LEASE_TTL, node: str | None = None,
                 lease_keeper: bool = True, timeout: float = 1.0,
                 allow_remote: bool = False) -> None:
        try:
            import redis
        except ImportError as exc:
            raise InvalidInput("the redis registry backend needs the redis package",
                               hint="pip install 'agora[redis]'") from exc
        self._errors = redis.exceptions
        self._url = check_redis_url(redis_url, allow_remote)
        self._ns = _check_name("namespace", namespace)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise InvalidInput(f"expected partitions to be a positive integer, got: {partitions!r}")
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float)) or not (
                0.01 <= lease_ttl <= 86400):
            raise InvalidInput(f"lease_ttl must be a number of seconds in 0.01..86400, got "
                               f"{lease_ttl!r}", hint="the default is 10 s")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._n, self._ttl_ms = partitions, int(lease_ttl * 1000)
        self._node = _check_name("node", node if node is not None else _default_node())
        self._tags = [f"{{{self._ns}:p{i}}}:".encode() for i in range(partitions)]
        self._keeper_wanted, self._keeper = lease_keeper, None
        self._lock = threading.Lock()
        self._pid, self._closed = os.getpid(), False
        self._redis = redis.Redis.from_url(self._url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout)
        self._sha = ""
        self._check_layout()

    @property
    def node(self) -> str:
        return self._node

    @property
    def lease_ttl(self) -> float:
        return self._ttl_ms / 1000

    # ------------------------------------------------------------------ writes
    def register(self, key: str, entry: EntryLike, owner_pid: int) -> Entry:
        result = self.register_many([(key, entry, owner_pid)])[0]
        if isinstance(result, AgoraError):
            raise result
        return result

    def register_many(self, items: Iterable[tuple[str, EntryLike, int]]
                      ) -> list[Entry | AgoraError]:
        out: list[Entry | AgoraError | None] = []
        calls, where = [], []
        for key, entry, owner in items:
            try:
                calls.append(self._register_call(key, entry, owner))
                where.append(len(out))
                out.append(None)
            except AgoraError as exc:
                out.append(exc)
        if calls:
            self._start_keeper()
            for pos, call, reply in zip(where, calls, self._eval(calls)):
                out[pos] = self._registered(call, reply)
        return out  # type: ignore[return-value]

    def unregister(self, key: str) -> bool:
        return bool(self._eval([self._call(check_key(key), b"unregister", key)])[0])

    def update(self, key: str, metadata_patch: Mapping[str, Any],
               expected_version: int | None = None) -> Entry:
        check_key(key)
        if not isinstance(metadata_patch, Mapping):
            raise InvalidInput(f"metadata patch must be a mapping, got {metadata_patch!r}")
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:  # lost a race: back off a little, jittered, so two writers interleave
                time.sleep(random.uniform(0, min(0.01, 0.0005 * 2 ** min(attempt, 5))))
            found = self._get(key)
            if found is None:
                raise _not_found(key)
            old, owner_id, caps_json = found
            if expected_version is not None and expected_version != old.version:
                raise Conflict(f"key {key!r} is at version {old.version}, not {expected_version}")
            new = Entry(key, old.capabilities, merge_patch(old.metadata, metadata_patch),
                        old.version + 1, old.owner)
            check_size(new)
            head, tail = _halves(key, new.capabilities, new.metadata, new.owner)
            reply = self._eval([self._call(key, b"update", key, old.version, owner_id,
                                           caps_json, head, tail, MAX_ENTRY_BYTES)])[0]
            status = reply[0]
            if status == b"ok":
                return decode_entry(reply[1])
            if status == b"missing":
                raise _not_found(key)
            if status == b"size":
                raise _too_large(key, reply[1])
        raise Conflict(f"key {key!r} changed under {_CAS_ATTEMPTS} attempts to update it",
                       hint="many writers update this key at once; retry, or pass "
                            "expected_version and handle Conflict")

    def remove_owner(self, pid: int) -> int:
        return self._remove_owner_ids([f"{self._node}/{check_owner(pid)}"])

    def clear(self) -> int:
        return sum(self._eval([self._call_p(p, b"clear") for p in range(self._n)]))

    # ------------------------------------------------------------------ reads
    def lookup(self, key: str) -> Entry | None:
        found = self._get(check_key(key))
        return None if found is None else found[0]

    def select(self, capability: str | None = None, where: Iterable[Predicate | str] = (),
               order_by: str | None = None, limit: int | None = None) -> list[Entry]:
        preds = parse_filters(where)
        check_query(order_by, limit)
        args = (b"1", capability) if capability is not None else (b"0",)
        replies = self._eval([self._call_p(p, b"select", *args) for p in range(self._n)])
        found = [e for part in replies for d in part if d is not None
                 for e in (decode_entry(d),) if all(p.matches(e.metadata) for p in preds)]
        return order_and_limit(found, order_by, limit)

    def count(self, capability: str | None = None, where: Iterable[Predicate | str] = ()) -> int:
        preds = parse_filters(where)
        if preds:
            return len(self.select(capability, preds))
        args = (b"1", capability) if capability is not None else (b"0",)
        return sum(self._eval([self._call_p(p, b"count", *args) for p in range(self._n)]))

    def list(self, capability: str | None = None, where: Iterable[Predicate | str] = (),
             limit: int | None = None) -> list[str]:
        return [e.key for e in self.select(capability, where, None, limit)]

    # ------------------------------------------------------------------ leases
    def renew(self) -> tuple[int, int]:
        """One keeper pass over this node's owners: extend the leases of the running ones,
        remove the entries of the others.  Returns (owners renewed, entries removed)."""
        prefix = f"{self._node}/".encode()
        held = self._eval([self._call_p(p, b"owners", prefix) for p in range(self._n)])
        alive: dict[bytes, bool] = {}
        for ids in held:
            for oid in ids:
                if oid not in alive:
                    alive[oid] = pid_alive(int(oid.rsplit(b"/", 1)[1]))
        calls = []
        for p, ids in enumerate(held):
            live = [o for o in ids if alive[o]]
            if live:
                calls.append(self._call_p(p, b"extend", self._ttl_ms, *live))
        if calls:
            self._eval(calls)
        dead = [o.decode() for o, ok in alive.items() if not ok]
        removed = self._remove_owner_ids(dead) if dead else 0
        return sum(alive.values()), removed

    def close(self) -> None:
        """Stop renewing (the leases then run out within ``lease_ttl``) and disconnect."""
        with self._lock:
            keeper, self._keeper, self._closed = self._keeper_here(), None, True
        if keeper is not None:
            keeper.stop(self._ttl_ms / 1000 + 5.0)
        self._redis.close()

    def __enter__(self) -> RedisBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _register_call(self, key: Any, entry: EntryLike, owner_pid: Any) -> list[Any]:
        key, caps, meta, owner = validate_registration(key, entry, owner_pid)
        check_size(Entry(key, caps, meta, 1, owner))
        if not pid_alive(owner):
            raise owner_not_running(owner)
        head, tail = _halves(key, caps, meta, owner)
        return self._call(key, b"register", key, f"{self._node}/{owner}", orjson.dumps(caps),
                          head, tail, self._ttl_ms, MAX_ENTRY_BYTES, *caps)

    def _registered(self, call: list[Any], reply: list[bytes]) -> Entry | AgoraError:
        key, pid = call[3], call[4].rsplit("/", 1)[1]  # [tag key, tag, op, key, owner, ...]
        if reply[0] == b"ok":
            return decode_entry(reply[1])
        if reply[0] == b"size":
            return _too_large(key, reply[1])
        node, _, holder = reply[1].decode().rpartition("/")
        where = "" if node == self._node else f" on node {node!r}"
        return Conflict(f"key {key!r} is registered by pid {holder}{where}, not by pid {pid}",
                        hint="unregister it first, or register under another key")

    def _get(self, key: str) -> tuple[Entry, bytes, bytes] | None:
        d, owner_id, caps_json = self._eval([self._call(key, b"get", key)])[0]
        return None if d is None else (decode_entry(d), owner_id, caps_json)

    def _remove_owner_ids(self, owner_ids: list[str]) -> int:
        calls = [self._call_p(p, b"remove_owner", o) for o in owner_ids for p in range(self._n)]
        return sum(self._eval(calls))

    def _check_layout(self) -> None:
        got = int(self._eval([self._call_p(0, b"layout", self._n)])[0])
        if got != self._n:
            raise InvalidInput(f"namespace {self._ns!r} in {self._url} is laid out in {got} "
                               f"partitions, not {self._n}", hint=f"pass partitions={got}, or "
                               "use another namespace")

    def _call(self, key: str, op: bytes, *args: Any) -> list[Any]:
        return self._call_p(partition_of_hash(key_hash(key), self._n), op, *args)

    def _call_p(self, p: int, op: bytes, *args: Any) -> list[Any]:
        tag = self._tags[p]
        return [tag + b"keys", tag, op, *args]

    def _eval(self, calls: list[list[Any]]) -> list[Any]:
        """The replies of the script calls, in one pipelined round trip (NOSCRIPT, after a
        server restart or SCRIPT FLUSH, reloads the script and resends the calls it failed,
        which therefore did not run)."""
        if self._closed:
            raise ClosedError("this redis registry backend was closed", hint="make a new one")
        if not self._sha:
            self._sha = self._guarded(lambda: self._redis.script_load(LUA))
        replies = self._guarded(lambda: self._pipeline(calls))
        missing = [i for i, r in enumerate(replies) if isinstance(r, self._errors.NoScriptError)]
        if missing:
            self._sha = self._guarded(lambda: self._redis.script_load(LUA))
            again = self._guarded(lambda: self._pipeline([calls[i] for i in missing]))
            for i, r in zip(missing, again):
                replies[i] = r
        for r in replies:
            if isinstance(r, Exception):
                raise BrokenError(f"the redis registry script failed: {r}",
                                  hint="a bug in agora's redis backend, or a Redis server "
                                       "older than 5.0") from r
        return replies

    def _pipeline(self, calls: list[list[Any]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for key, *args in calls:
            pipe.evalsha(self._sha, 1, key, *args)
        return pipe.execute(raise_on_error=False)

    def _guarded(self, fn: Any) -> Any:
        try:
            return fn()
        except (self._errors.ConnectionError, self._errors.TimeoutError) as exc:
            raise Unavailable(f"the redis registry at {self._url} is unavailable: {exc}",
                              hint="retryable: check that redis-server is running and that "
                                   "redis_url points at it") from exc
        except self._errors.RedisError as exc:
            raise BrokenError(f"the redis registry at {self._url} refused a command: {exc}",
                              hint="check the server's version (>= 5.0) and its ACL") from exc

    def _start_keeper(self) -> None:
        if not self._keeper_wanted:
            return
        with self._lock:
            if self._keeper_here() is None and not self._closed:
                self._keeper = _Keeper(self, self._ttl_ms / 3000)

    def _keeper_here(self) -> _Keeper | None:
        """This process's keeper: a forked child inherits the object, not the thread."""
        if os.getpid() != self._pid:
            self._pid, self._keeper = os.getpid(), None
        return self._keeper


def _check_name(what: str, value: Any) -> str:
    """A namespace or node name: it becomes part of Redis keys and of owner ids."""
    if not isinstance(value, str) or not _NODE_RE.match(value):
        raise InvalidInput(f"{what} must be 1..64 characters of letters, digits, '.', '_' or "
                           f"'-', got {value!r}", hint="e.g. 'agora' or the host name")
    return value


def _not_found(key: str) -> NotFound:
    return NotFound(f"no registry entry for key {key!r}",
                    hint="it was never registered, was unregistered, or its owner died")


def _too_large(key: str, data: bytes) -> InvalidInput:
    return InvalidInput(f"entry {key!r} is {len(data)} bytes encoded, over the limit of "
                        f"{MAX_ENTRY_BYTES}", hint="keep large data out of the registry "
                        "(put it in shared context and store its name)")
