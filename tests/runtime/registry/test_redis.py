"""What the Redis backend promises beyond the conformance suite: leases that run out within
their bound, a capability index that spares a scan, partitions as hash tags, typed errors.

Every test runs its own redis-server (``tests/support/redis_server.py``) on a unix socket.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import multiprocess
import pytest

from runtime.errors import ClosedError, Conflict, InvalidInput, Unavailable
from runtime.registry import make_backend
from runtime.registry._redis import RedisBackend, check_redis_url
from runtime.registry.partitioning import partition_of
from tests.support.redis_server import redis_server, require_redis  # noqa: F401  (a fixture)

FORK = multiprocess.get_context("fork")
BOUND = 10.0  # seconds; reached only on a deadlock
ME = os.getpid()


def spec(*caps, **meta):
    return {"capabilities": list(caps), "metadata": meta}


def _wait_for_signals() -> None:
    while True:
        signal.pause()


@pytest.fixture
def owner():
    proc = FORK.Process(target=_wait_for_signals, daemon=True)
    proc.start()
    yield proc
    if proc.exitcode is None:
        proc.kill()
        proc.join(BOUND)


@pytest.fixture
def backends(redis_server):  # noqa: F811
    """make(**kw) -> a RedisBackend on the test's server, closed at teardown."""
    made = []

    def make(**kw):
        kw.setdefault("lease_keeper", False)
        b = RedisBackend(redis_server.url, **kw)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def wait_until(predicate, bound=BOUND, what="condition"):
    """Poll with backoff until ``predicate()`` is true; fail after ``bound`` seconds."""
    deadline, delay = time.monotonic() + bound, 0.002
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {bound} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return time.monotonic()


def data_keys(server):
    """The registry's keys in Redis, without the layout marker."""
    return sorted(k.decode() for k in server.client.keys() if not k.endswith(b":layout"))


# ---------------------------------------------------------------------------- leases

def test_entries_of_an_owner_that_stops_renewing_expire_within_the_ttl(backends, redis_server):  # noqa: F811
    ttl = 0.3
    writer, reader = backends(lease_ttl=ttl), backends()
    started = time.monotonic()
    writer.register_many([(f"k{i}", spec("x", "y", i=i), ME) for i in range(20)])
    assert reader.count("x") == 20
    gone = wait_until(lambda: reader.count() == 0, bound=ttl + 5.0, what="lease expiry")
    # never before the lease's deadline (set on the server during the register call)
    assert gone - started >= ttl - 0.005
    assert reader.lookup("k1") is None and reader.select("y") == []
    assert data_keys(redis_server) == []  # entries, indexes and leases all went


def test_renewal_keeps_entries_past_the_ttl(backends):
    ttl = 0.5
    writer, reader = backends(lease_ttl=ttl), backends()
    writer.register("a", spec("x"), ME)
    end = time.monotonic() + 3 * ttl
    while time.monotonic() < end:
        assert writer.renew() == (1, 0)
        assert reader.lookup("a") is not None
        time.sleep(ttl / 5)  # lets time pass; the order comes from renew() returning


def test_the_keeper_thread_renews_until_close(redis_server):  # noqa: F811
    ttl = 0.3
    writer = RedisBackend(redis_server.url, lease_ttl=ttl)  # lease_keeper defaults to True
    reader = RedisBackend(redis_server.url, lease_keeper=False)
    try:
        assert not _keeper_threads()  # none until the first registration
        writer.register("a", spec("x"), ME)
        assert len(_keeper_threads()) == 1
        lease_key = f"{{agora:p{partition_of('a', 4)}}}:leases"
        first = redis_server.client.zscore(lease_key, f"{writer.node}/{ME}")
        wait_until(lambda: redis_server.client.zscore(lease_key, f"{writer.node}/{ME}") > first,
                   what="a renewal by the keeper")
        writer.close()
        assert not _keeper_threads()
        wait_until(lambda: reader.lookup("a") is None, bound=ttl + 5.0, what="lease expiry")
    finally:
        writer.close()
        reader.close()


def _keeper_threads():
    return [t for t in threading.enumerate() if t.name == "agora:redis-lease-keeper"]


def test_renew_removes_this_nodes_dead_owners_at_once(backends, owner):
    b = backends(lease_ttl=60.0)
    b.register_many([(f"dead.{i}", spec("x"), owner.pid) for i in range(8)])
    b.register("alive", spec("x"), ME)
    owner.kill()
    owner.join(BOUND)
    assert b.renew() == (1, 8)
    assert b.list("x") == ["alive"]


def test_nothing_is_left_in_redis_once_the_entries_are_gone(backends, redis_server):  # noqa: F811
    b = backends()
    b.register_many([(f"k{i}", spec("x", "y"), ME) for i in range(12)])
    b.register("k0", spec("z"), ME)  # re-registered with other capabilities
    for i in range(12):
        assert b.unregister(f"k{i}")
    assert data_keys(redis_server) == []  # no index set, owner set or lease left over


def test_owners_are_per_node(backends):
    a, b = backends(node="host-a"), backends(node="host-b")
    a.register("k", spec("x"), ME)
    with pytest.raises(Conflict, match=f"registered by pid {ME} on node 'host-a', not by pid {ME}"):
        b.register("k", spec("x"), ME)
    assert b.renew() == (0, 0)  # host-b renews and judges only its own pids
    assert b.remove_owner(ME) == 0 and a.lookup("k").owner == ME
    assert a.remove_owner(ME) == 1 and b.lookup("k") is None


def test_a_forked_child_uses_the_backend_on_its_own_connection(backends):
    b = backends()
    b.register("parent", spec("x"), ME)

    def child():
        if b.lookup("parent") is None:
            os._exit(2)
        b.register("child", spec("x"), os.getpid())
        os._exit(0)
    proc = FORK.Process(target=child)
    proc.start()
    proc.join(BOUND)
    assert proc.exitcode == 0
    assert b.lookup("child").owner == proc.pid
    assert b.renew() == (1, 1)  # the child has exited: its entry goes with it
    assert b.list() == ["parent"]


def test_concurrent_updates_lose_nothing(backends):
    """update is read, merge, compare-and-set: a writer never writes back a stale field."""
    b = backends()
    b.register("k", spec("x"), ME)
    start, errors = threading.Barrier(2, timeout=BOUND), []

    def writer(field):
        try:
            start.wait()
            for i in range(100):
                b.update("k", {field: i})
        except Exception as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)
    threads = [threading.Thread(target=writer, args=(f,)) for f in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
    assert not errors and not any(t.is_alive() for t in threads)
    got = b.lookup("k")
    assert (got.version, got.metadata) == (201, {"a": 99, "b": 99})


# ---------------------------------------------------------------------------- index, layout

def test_select_by_capability_reads_only_the_index_and_its_candidates(backends, redis_server):  # noqa: F811
    b = backends()
    b.register_many([(f"common.{i}", spec("common", load=i), ME) for i in range(300)])
    b.register_many([(f"rare.{i}", spec("rare", "common", load=i), ME) for i in range(3)])
    redis_server.reset_stats()
    got = b.select("rare", where=["load>=1"], order_by="-load")
    assert [e.key for e in got] == ["rare.2", "rare.1"]
    calls = redis_server.command_calls()
    assert not {"scan", "keys", "sscan", "hscan"} & calls.keys(), calls
    assert calls["smembers"] == 4  # one capability set per partition
    assert calls["hget"] == 3      # only the candidates' entries were read
    redis_server.reset_stats()
    assert b.count("rare") == 3 and b.count() == 303
    calls = redis_server.command_calls()
    assert calls["scard"] == 8 and "hget" not in calls and "smembers" not in calls, calls


def test_keys_live_in_their_partitions_hash_tag(backends, redis_server):  # noqa: F811
    from redis.crc import key_slot
    b = backends()
    names = [f"agent-{i}" for i in range(40)]
    b.register_many([(k, spec("x"), ME) for k in names])
    for k in names:
        assert redis_server.client.exists(f"{{agora:p{partition_of(k, 4)}}}:e:{k}")
    tags = {key.split(b"}")[0] + b"}" for key in redis_server.client.keys()}
    assert tags == {b"{agora:p0}", b"{agora:p1}", b"{agora:p2}", b"{agora:p3}"}
    # a Redis Cluster places each tag in its own slot, so the partitions can spread
    assert len({key_slot(t) for t in tags}) == 4


def test_namespaces_are_apart_and_the_partition_count_is_checked(backends, redis_server):  # noqa: F811
    a, b = backends(), backends(namespace="other", partitions=2)
    a.register("k", spec("x"), ME)
    assert b.lookup("k") is None and b.count() == 0
    with pytest.raises(InvalidInput, match="laid out in 4 partitions, not 3"):
        RedisBackend(redis_server.url, partitions=3, lease_keeper=False)


def test_a_flushed_script_cache_is_reloaded(backends, redis_server):  # noqa: F811
    b = backends()
    b.register("a", spec("x"), ME)
    redis_server.client.script_flush()
    assert b.lookup("a").key == "a"
    assert b.register("b", spec("x"), ME).version == 1


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("url, words", [
    ("redis://10.1.2.3:6379/0", "not at this machine"),
    ("redis://example.org/0", "not at this machine"),
    ("http://127.0.0.1/", "scheme 'http'"),
    ("unix://", "names no socket path"),
    ("", "must be a string"),
    (None, "needs redis_url"),
])
def test_urls_off_this_machine_are_refused_before_any_connection(url, words):
    with pytest.raises(InvalidInput, match=words):
        check_redis_url(url)


def test_remote_urls_need_allow_remote():
    assert check_redis_url("rediss://10.1.2.3:6380/0", allow_remote=True)
    assert check_redis_url("redis://127.0.0.1:6379/0") and check_redis_url("unix:///x.sock")


@pytest.mark.parametrize("kw, words", [
    ({"lease_ttl": 0}, "lease_ttl"),
    ({"partitions": 0}, "positive integer, got: 0"),
    ({"node": "a/b"}, "node must be"),
    ({"namespace": "{x}"}, "namespace must be"),
    ({"timeout": 0}, "timeout must be"),
])
def test_bad_options_are_invalid_input(tmp_path, kw, words):
    require_redis(server=False)
    with pytest.raises(InvalidInput, match=words):
        RedisBackend(f"unix://{tmp_path}/none.sock", **kw)


def test_without_the_redis_module_the_backend_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    with pytest.raises(InvalidInput, match="needs the redis package") as info:
        make_backend("redis", redis_url="unix:///nowhere.sock")
    assert "agora[redis]" in info.value.hint


def test_a_server_that_is_not_there_is_unavailable(tmp_path):
    require_redis(server=False)
    with pytest.raises(Unavailable, match="retryable"):
        make_backend("redis", redis_url=f"unix://{tmp_path}/none.sock", timeout=0.5)


def test_a_server_that_goes_away_is_unavailable_then_closed(backends, redis_server):  # noqa: F811
    b = backends(timeout=0.5)
    b.register("a", spec("x"), ME)
    redis_server.stop()
    with pytest.raises(Unavailable, match="is unavailable"):
        b.lookup("a")
    b.close()
    with pytest.raises(ClosedError):
        b.lookup("a")
