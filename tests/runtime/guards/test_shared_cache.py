"""The machine-wide result cache (runtime.guards.shared_cache) on a fake clock, then through
two Services standing for two agent processes over one directory (the run across real agent
processes is tests/system/test_services_daemon.py)."""

from __future__ import annotations

import os

from runtime.guards.flights import SharedFlights
from runtime.guards.service import Service
from runtime.guards.shared_cache import SharedResults
from runtime.guards.state import LocalStateStore
from tests.support.helpers import FakeClock

REPLAY = (200, [(b"content-type", b"application/json")], b'{"answer": 42}')


def _cache(tmp_path, ttl_s=60.0, size=64):
    clock = FakeClock(1_000_000.0)
    return SharedResults("api", str(tmp_path / "f"), ttl_s, size, clock=clock), clock


def test_an_answer_put_by_one_is_a_hit_for_another_until_it_expires(tmp_path):
    a, clock = _cache(tmp_path)
    b = SharedResults("api", a.directory, 60.0, 64, clock=clock)  # another process, same directory
    d = SharedFlights.digest(b"question")
    assert b.get(d) == (False, None)
    assert a.put(d, REPLAY)
    assert b.get(d) == (True, REPLAY)
    clock.t += 59.9
    assert b.get(d) == (True, REPLAY)
    clock.t += 0.2
    assert b.get(d) == (False, None)
    assert os.listdir(a.directory) == []  # the reader that found it expired removed it


def test_unencodable_answers_stay_local_and_a_foreign_file_is_a_miss(tmp_path):
    a, _ = _cache(tmp_path)
    d = SharedFlights.digest(b"q")
    assert not a.put(d, object()) and a.get(d) == (False, None)
    with open(a._path(d), "wb") as f:
        f.write(b"\x00\x01")  # too short for the expiry
    assert a.get(d) == (False, None) and not os.path.exists(a._path(d))
    with open(a._path(d), "wb") as f:
        f.write(b"\x00" * 7 + b"\x7f" + b"not marshal")  # a far expiry, then junk
    assert a.get(d) == (False, None) and not os.path.exists(a._path(d))


def test_the_size_bound_removes_the_expired_then_the_oldest_written(tmp_path):
    a, clock = _cache(tmp_path, ttl_s=100.0, size=16)  # trims every 16 // 16 = 1 write
    other = SharedResults("other", a.directory, 1000.0, 16, clock=clock)
    other.put(SharedFlights.digest(b"theirs"), 1)  # another service's answers are not counted
    digests = [SharedFlights.digest(f"q{i}".encode()) for i in range(20)]
    for i, d in enumerate(digests):
        a.put(d, i)
        clock.t += 1
    assert [a.get(d)[0] for d in digests] == [False] * 4 + [True] * 16  # the 4 oldest went
    clock.t += 90  # q_i was written at t0 + i, it is now t0 + 110: q4..q10 are past 100 s
    assert a.trim() == 7
    assert [i for i, d in enumerate(digests) if a.get(d)[0]] == list(range(11, 20))
    assert other.get(SharedFlights.digest(b"theirs")) == (True, 1)


def test_a_service_in_another_process_answers_from_the_machines_cache(tmp_path):
    """Service._shared: an answer one "process" got is a hit in the other, no call made."""
    store, flights = LocalStateStore(), str(tmp_path / "f")
    first = Service("api", {"cache_ttl_s": 60}, store=store, flights_dir=flights)
    second = Service("api", {"cache_ttl_s": 60}, store=store, flights_dir=flights)
    second.flights._pid = lambda: os.getpid() + 1
    made = []
    assert first.call_with(lambda: made.append(1) or REPLAY, key=b"k") == REPLAY
    assert second.call_with(lambda: made.append(2) or (500, [], b""), key=b"k") == REPLAY
    assert made == [1] and first.counts["cache_miss"] == 1
    assert second.counts["cache_hit"] == 1 and "cache_miss" not in second.counts
    assert second.call_with(lambda: made.append(3), key=b"k") == REPLAY  # now from its own memory
    assert made == [1] and second.counts["cache_hit"] == 2
    failing = Service("api", {"cache_ttl_s": 60, "retries": 0}, store=store, flights_dir=flights)
    try:
        failing.call_with(lambda: (_ for _ in ()).throw(ValueError("bad")), key=b"err")
    except ValueError:
        pass
    assert second.shared.get(SharedFlights.digest(b"err")) == (False, None)  # errors are not stored


def test_a_cache_whose_directory_is_gone_misses_and_never_fails_the_call(tmp_path):
    a, _ = _cache(tmp_path, size=1)  # trims at every write
    d = SharedFlights.digest(b"q")
    os.rmdir(a.directory)  # the daemon stopping removes the run directory under its agents
    assert a.put(d, REPLAY) is False and a.get(d) == (False, None) and a.trim() == 0
