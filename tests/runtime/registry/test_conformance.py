"""The registry contract: every backend must pass this file.

Parametrized over ``local`` (in-process), ``partitioned`` (three partition processes
forked with the multiprocess package's fork context), the latter twice: reading through
the shared tables, and reading by round trips (``fast_reads=False``), and ``redis`` (a
real redis-server per test on a unix socket, ``tests/support/redis_server.py``; skipped without
redis-server or the redis module unless AGORA_REQUIRE_REDIS=1).
A new backend adds one branch to the ``backend`` fixture and must pass the same tests
unchanged.  The pure parts (filter parser, stable hashing) are tested at the end.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from runtime.errors import Conflict, InvalidInput, NotFound
from runtime.registry.backends import make_backend
from runtime.registry.model import (
    MAX_ENTRY_BYTES,
    Backend,
    Entry,
    Predicate,
    encode_entry,
    parse_filter,
)
from runtime.registry.partitioning import key_hash, partition_of, slot_of_hash
from tests.support.redis_server import RedisServer, require_redis
from tests.support.registry import ME, Owner, Partitions, dead_pid, spec


@pytest.fixture
def owner():
    o = Owner()
    yield o
    o.stop()


@pytest.fixture(params=["local", "partitioned", "partitioned-rpc", "redis"])
def backend(request):
    """``partitioned`` reads the shared tables; ``partitioned-rpc`` asks the partitions."""
    if request.param == "local":
        b = make_backend("local")
        yield b
        b.close()
        return
    if request.param == "redis":
        require_redis()
        server = RedisServer()
        try:
            b = make_backend("redis", redis_url=server.url)
            yield b
            b.close()
        finally:
            server.stop()
        return
    parts = Partitions(3)
    b = parts.backend(fast_reads=request.param == "partitioned")
    try:
        yield b
    finally:
        b.close()
        parts.stop()



# ---------------------------------------------------------------------------- basics

def test_backend_satisfies_the_protocol(backend):
    assert isinstance(backend, Backend)


def test_register_then_lookup(backend):
    e = backend.register("summarize.1", spec("summarize", pool="summarize", load=0.25), ME)
    assert e == Entry("summarize.1", ["summarize"], {"pool": "summarize", "load": 0.25}, 1, ME)
    assert backend.lookup("summarize.1") == e
    assert backend.lookup("nobody") is None


def test_register_accepts_an_entry_object_and_unicode_keys(backend):
    e = backend.register("résumé.ü", Entry("ignored", ["x", "x", "y"], {"k": [1, {"a": None}]}), ME)
    assert e.key == "résumé.ü" and e.capabilities == ["x", "y"] and e.version == 1
    assert backend.lookup("résumé.ü").metadata == {"k": [1, {"a": None}]}


def test_reregister_by_same_owner_replaces_and_bumps_version(backend):
    backend.register("a", spec("old", load=1), ME)
    e = backend.register("a", spec("new", health="ok"), ME)
    assert (e.version, e.capabilities, e.metadata) == (2, ["new"], {"health": "ok"})
    assert backend.list("old") == [] and backend.list("new") == ["a"]


def test_register_of_a_key_owned_by_another_pid_conflicts(backend, owner):
    backend.register("a", spec("x"), owner.pid)
    with pytest.raises(Conflict, match=f"registered by pid {owner.pid}"):
        backend.register("a", spec("x"), ME)
    assert backend.lookup("a").owner == owner.pid


def test_register_for_an_owner_that_is_not_running_is_refused(backend):
    pid = dead_pid()
    with pytest.raises(InvalidInput, match=f"owner pid {pid} is not a running process"):
        backend.register("a", spec("x"), pid)
    assert backend.lookup("a") is None


@pytest.mark.parametrize("key, entry, owner, words", [
    ("", spec("x"), ME, "non-empty string"),
    (7, spec("x"), ME, "non-empty string"),
    ("k" * 129, spec("x"), ME, "over the limit of 128"),
    ("k", spec(*[f"c{i}" for i in range(17)]), ME, "17 capabilities"),
    ("k", spec("c" * 64), ME, "1..63"),
    ("k", {"capabilities": "x"}, ME, "list of strings"),
    ("k", {"capabilities": ["x"], "metadata": {1: 2}}, ME, "string keys"),
    ("k", {"capabilities": ["x"], "bogus": 1}, ME, "unknown fields"),
    ("k", spec("x", big=2 ** 70), ME, "not JSON-able"),
    ("k", spec("x"), 0, "positive integer"),
    ("k", spec("x"), True, "positive integer"),
])
def test_bad_registrations_are_invalid_input_naming_the_part(backend, key, entry, owner, words):
    with pytest.raises(InvalidInput, match=words):
        backend.register(key, entry, owner)
    assert backend.count() == 0


def test_entry_size_limit_is_exact(backend):
    base = len(encode_entry(Entry("k", ["x"], {"pad": ""}, 1, ME)))
    fits = spec("x", pad="p" * (MAX_ENTRY_BYTES - base))
    assert len(encode_entry(Entry("k", ["x"], fits["metadata"], 1, ME))) == MAX_ENTRY_BYTES
    backend.register("k", fits, ME)  # exactly at the limit
    with pytest.raises(InvalidInput, match=f"over the limit of {MAX_ENTRY_BYTES}"):
        backend.register("k2", spec("x", pad="p" * (MAX_ENTRY_BYTES - base + 1)), ME)
    with pytest.raises(InvalidInput, match="over the limit"):
        backend.update("k", {"more": "x" * 100})
    assert backend.lookup("k").metadata == fits["metadata"] and backend.lookup("k").version == 1


def test_unregister(backend):
    backend.register("a", spec("x"), ME)
    assert backend.unregister("a") is True
    assert backend.unregister("a") is False
    assert backend.lookup("a") is None and backend.select("x") == []


def test_update_merges_deletes_and_bumps_version(backend):
    backend.register("a", spec("x", load=0.5, health="ok"), ME)
    e = backend.update("a", {"load": 0.7, "health": None, "note": "hi"})
    assert (e.version, e.metadata) == (2, {"load": 0.7, "note": "hi"})
    assert backend.lookup("a") == e


def test_update_compare_and_set(backend):
    backend.register("a", spec("x", load=0), ME)
    assert backend.update("a", {"load": 1}, expected_version=1).version == 2
    with pytest.raises(Conflict, match="at version 2, not 1"):
        backend.update("a", {"load": 2}, expected_version=1)
    assert backend.lookup("a").metadata == {"load": 1}


def test_update_of_a_missing_key_is_not_found(backend):
    with pytest.raises(NotFound, match="'ghost'"):
        backend.update("ghost", {"load": 1})


def test_returned_entries_are_copies(backend):
    backend.register("a", spec("x", tags=["t"]), ME)
    got = backend.lookup("a")
    got.metadata["tags"].append("mutated")
    got.capabilities.append("y")
    assert backend.lookup("a") == Entry("a", ["x"], {"tags": ["t"]}, 1, ME)


def test_remove_owner_removes_only_that_owners_entries(backend, owner):
    for i in range(10):
        backend.register(f"mine.{i}", spec("x"), owner.pid)
    backend.register("other", spec("x"), ME)
    assert backend.remove_owner(owner.pid) == 10
    assert backend.list() == ["other"]
    assert backend.remove_owner(owner.pid) == 0


def test_register_many_gives_one_result_per_item(backend):
    items = [(f"k{i}", spec("x", i=i), ME) for i in range(50)]
    items[7] = ("", spec("x"), ME)
    items[20] = ("k20", spec("x", big=2 ** 70), ME)
    results = backend.register_many(items)
    assert len(results) == 50
    assert isinstance(results[7], InvalidInput) and isinstance(results[20], InvalidInput)
    good = [r for r in results if isinstance(r, Entry)]
    assert len(good) == 48 and backend.count("x") == 48
    assert all(backend.lookup(e.key) == e for e in good)


def test_register_many_fails_each_bad_item_alone_whoever_checks_it(backend):
    """Oversized, not JSON-able, misspelt or all-bad partitions: only the bad items fail;
    entries that merely need normalising (a set or tuple of capabilities) are stored."""
    items = [(f"k{i}", spec("x", i=i), ME) for i in range(40)]
    items[3] = ("k3", spec("x", pad="p" * 2000), ME)                  # over a slot, among small ones
    items[9] = ("k9", spec("x", pad="p" * 200_000), ME)               # far over: checked before sending
    items[12] = ("k12", {"capabilities": {"x"}, "metadata": {}}, ME)  # a set: normalised
    items[15] = ("k15", {"capabilities": ("x", "y"), "metadata": None}, ME)
    items[21] = ("k21", {"capabilities": ["x"], "metdata": {}}, ME)    # a misspelt field
    items[30] = ("k30", spec("x", when={1, 2}), ME)                   # not JSON
    results = backend.register_many(items)
    bad = {3, 9, 21, 30}
    assert [i for i, r in enumerate(results) if isinstance(r, InvalidInput)] == sorted(bad)
    assert all(isinstance(r, Entry) for i, r in enumerate(results) if i not in bad)
    assert backend.lookup("k12").capabilities == ["x"] and backend.lookup("k15").capabilities == ["x", "y"]
    assert backend.count("x") == 36
    only_bad = [(k, spec("x", pad="p" * 5000), ME) for k in ("b1", "b2", "b3", "b4", "b5")]
    assert all(isinstance(r, InvalidInput) for r in backend.register_many(only_bad))
    assert backend.count("x") == 36


def test_clear(backend):
    backend.register_many([(f"k{i}", spec("x"), ME) for i in range(20)])
    assert backend.clear() == 20
    assert backend.count() == 0 and backend.lookup("k1") is None


# ---------------------------------------------------------------------------- queries

@pytest.fixture
def fleet(backend):
    rows = [
        ("s.1", ["summarize"], {"pool": "summarize", "load": 0.9, "health": "ok", "reputation": 0.5}),
        ("s.2", ["summarize"], {"pool": "summarize", "load": 0.1, "health": "degraded"}),
        ("s.3", ["summarize", "score"], {"pool": "summarize", "load": 0.4, "health": "ok",
                                         "reputation": 0.9}),
        ("r.1", ["retrieve"], {"pool": "retrieve", "load": "high", "health": "down"}),
        ("r.2", ["retrieve"], {"pool": "retrieve", "health": "ok", "flag": True}),
        ("x.1", ["score"], {"pool": "misc", "load": 1, "flag": 1}),
    ]
    for key, caps, meta in rows:
        backend.register(key, {"capabilities": caps, "metadata": meta}, ME)
    return backend


def keys(entries):
    return [e.key for e in entries]


def test_select_by_capability(fleet):
    assert keys(fleet.select("summarize")) == ["s.1", "s.2", "s.3"]
    assert keys(fleet.select("score")) == ["s.3", "x.1"]
    assert fleet.select("nobody-offers-this") == []
    assert keys(fleet.select()) == ["r.1", "r.2", "s.1", "s.2", "s.3", "x.1"]


@pytest.mark.parametrize("where, expected", [
    (["load<0.5"], ["s.2", "s.3"]),
    (["load<=0.4"], ["s.2", "s.3"]),
    (["load>0.4"], ["s.1", "x.1"]),
    (["load>=0.9"], ["s.1", "x.1"]),
    (["pool=summarize"], ["s.1", "s.2", "s.3"]),
    (["pool!=summarize"], ["r.1", "r.2", "x.1"]),
    (["health in ok,degraded"], ["r.2", "s.1", "s.2", "s.3"]),
    (["health in ok,degraded", "load<0.5"], ["s.2", "s.3"]),
    (["flag=true"], ["r.2"]),  # true is not 1
    (["flag=1"], ["x.1"]),
    (["load=high"], ["r.1"]),
    (["reputation!=0.5"], ["s.3"]),  # a missing field matches no predicate
    ([Predicate("load", "lt", 0.5)], ["s.2", "s.3"]),
    ([["load", "ge", 1]], ["x.1"]),
])
def test_select_predicates(fleet, where, expected):
    assert keys(fleet.select(where=where)) == expected
    assert fleet.count(where=where) == len(expected)
    assert fleet.list(where=where) == expected


def test_select_least_loaded_first_with_capability_and_filter(fleet):
    got = fleet.select("summarize", where=["health in ok,degraded"], order_by="load", limit=2)
    assert keys(got) == ["s.2", "s.3"]


def test_order_by_descending_missing_last_numbers_before_strings(fleet):
    assert keys(fleet.select(order_by="load")) == ["s.2", "s.3", "s.1", "x.1", "r.1", "r.2"]
    assert keys(fleet.select(order_by="-load")) == ["x.1", "s.1", "s.3", "s.2", "r.1", "r.2"]
    assert keys(fleet.select(order_by="-reputation", limit=1)) == ["s.3"]


def test_limit(fleet):
    assert keys(fleet.select(limit=2)) == ["r.1", "r.2"]
    assert fleet.select(limit=0) == []
    assert fleet.list("summarize", limit=1) == ["s.1"]


@pytest.mark.parametrize("kwargs, words", [
    ({"where": ["load<<0.5"]}, "starts with an operator"),
    ({"where": ["nonsense"]}, "is not FIELD OP VALUE"),
    ({"where": [["load", "like", 1]]}, "unknown predicate operator 'like'"),
    ({"limit": -1}, "non-negative"),
    ({"order_by": "-"}, "order_by"),
])
def test_bad_queries_are_invalid_input(fleet, kwargs, words):
    with pytest.raises(InvalidInput, match=words):
        fleet.select(**kwargs)


# ---------------------------------------------------------------------------- model-based

KEYS = [f"k{i}" for i in range(6)]
CAPS = ["a", "b", "c"]


class RegistryMachine(RuleBasedStateMachine):
    """Random operation sequences against a model dict."""

    backend: Backend
    owners: list[int]

    def __init__(self) -> None:
        super().__init__()
        self.backend.clear()
        self.model: dict[str, Entry] = {}

    @rule(key=st.sampled_from(KEYS), caps=st.lists(st.sampled_from(CAPS), unique=True),
          load=st.integers(0, 9), who=st.integers(0, 1))
    def register(self, key, caps, load, who):
        owner, old = self.owners[who], self.model.get(key)
        if old is not None and old.owner != owner:
            with pytest.raises(Conflict):
                self.backend.register(key, spec(*caps, load=load), owner)
            return
        e = self.backend.register(key, spec(*caps, load=load), owner)
        self.model[key] = Entry(key, caps, {"load": load}, old.version + 1 if old else 1, owner)
        assert e == self.model[key]

    @rule(key=st.sampled_from(KEYS))
    def unregister(self, key):
        assert self.backend.unregister(key) is (self.model.pop(key, None) is not None)

    @rule(key=st.sampled_from(KEYS), load=st.integers(0, 9), cas=st.sampled_from([None, 0, -1]))
    def update(self, key, load, cas):
        old = self.model.get(key)
        expected = None if cas is None or old is None else old.version + cas
        if old is None or (expected is not None and expected != old.version):
            with pytest.raises(NotFound if old is None else Conflict):
                self.backend.update(key, {"load": load}, expected_version=expected)
            return
        e = self.backend.update(key, {"load": load}, expected_version=expected)
        self.model[key] = Entry(key, old.capabilities, {"load": load}, old.version + 1, old.owner)
        assert e == self.model[key]

    @rule(who=st.integers(0, 1))
    def remove_owner(self, who):
        gone = [k for k, e in self.model.items() if e.owner == self.owners[who]]
        assert self.backend.remove_owner(self.owners[who]) == len(gone)
        for k in gone:
            del self.model[k]

    @invariant()
    def lookups_agree(self):
        for k in KEYS:
            assert self.backend.lookup(k) == self.model.get(k)

    @invariant()
    def selects_agree(self):
        for cap in CAPS:
            want = sorted((e for e in self.model.values() if cap in e.capabilities),
                          key=lambda e: (e.metadata["load"], e.key))
            assert self.backend.select(cap, order_by="load") == want
        assert self.backend.count(where=["load<5"]) == sum(
            e.metadata["load"] < 5 for e in self.model.values())


def test_random_operations_agree_with_a_model(backend, owner):
    RegistryMachine.backend = backend
    RegistryMachine.owners = [ME, owner.pid]
    run_state_machine_as_test(RegistryMachine, settings=settings(
        max_examples=25, stateful_step_count=15, deadline=None,
        suppress_health_check=list(HealthCheck)))


# ---------------------------------------------------------------------------- pure parts

@pytest.mark.parametrize("text, pred", [
    ("load<0.5", Predicate("load", "lt", 0.5)),
    (" load <= 1 ", Predicate("load", "le", 1)),
    ("pool=summarize", Predicate("pool", "eq", "summarize")),
    ("pool==summarize", Predicate("pool", "eq", "summarize")),
    ("health != down", Predicate("health", "ne", "down")),
    ("rep>=-0.5", Predicate("rep", "ge", -0.5)),
    ("x>3", Predicate("x", "gt", 3)),
    ("health in ok,degraded", Predicate("health", "in", ["ok", "degraded"])),
    ("n in 1, 2 ,3", Predicate("n", "in", [1, 2, 3])),
    ('name="a b"', Predicate("name", "eq", "a b")),
    ("flag=true", Predicate("flag", "eq", True)),
    ("gpu.kind=a100", Predicate("gpu.kind", "eq", "a100")),
    ("ver=1.2.3", Predicate("ver", "eq", "1.2.3")),
])
def test_parse_filter(text, pred):
    assert parse_filter(text) == pred


@pytest.mark.parametrize("text, part", [
    ("load<", "no value after the operator"),
    ("<0.5", "is not FIELD OP VALUE"),
    ("load<<0.5", "'<0.5' starts with an operator"),
    ("health in ok,,down", "empty value"),
    ('name="unterminated', "not a valid JSON string"),
    ("9lives=1", "is not FIELD OP VALUE"),
])
def test_parse_filter_errors_name_the_bad_part(text, part):
    with pytest.raises(InvalidInput, match=part):
        parse_filter(text)


def test_partitioning_is_stable_and_balanced():
    assert key_hash("summarize.1") == zlib.crc32(b"summarize.1")  # same in every process
    counts = [0] * 4
    for i in range(10_000):
        counts[partition_of(f"agent-{i}", 4)] += 1
    assert min(counts) > 2_300, counts
    slots = {slot_of_hash(key_hash(f"agent-{i}"), 10) for i in range(10_000)
             if partition_of(f"agent-{i}", 4) == 0}
    assert len(slots) > 900  # a partition's keys spread over its whole table
    with pytest.raises(ValueError, match="positive integer, got: 0"):
        partition_of("k", 0)
