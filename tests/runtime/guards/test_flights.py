"""Machine-wide in-flight de-duplication (runtime.guards.flights): the board's pure updates on
a fake clock and a fake ``alive``, then SharedFlights with two fake pids over one store and one
directory (the cross-process run is tests/system/test_services_daemon.py)."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from runtime.guards import flights
from runtime.guards.flights import (ALONE, DONE, FOLLOW, LEAD, MAX_FLIGHTS, SHARDS, BoardCodec, LeaderGone, SharedFlights, begin,
                                    fail, finish, left, purge, status)
from runtime.guards.service import Service
from runtime.guards.state import LocalStateStore

D = b"d" * 16


def test_the_second_caller_follows_and_the_last_reader_removes_the_flight():
    board: list = []
    assert begin(board, D, 1, 0.0) == LEAD
    assert begin(board, D, 1, 0.0) == LEAD  # its own process: the local cache joins, not the board
    assert begin(board, D, 2, 0.0) == FOLLOW and board[0].waiters == 1
    assert finish(board, D, 1, 1.0) is False and board[0].state == DONE  # a reader waits: keep the file
    assert status(board, D, lambda pid: True) == "done"
    assert left(board, D) is True and board == []  # the last reader: remove the file


def test_a_leader_nobody_follows_leaves_nothing_and_a_failed_one_frees_its_followers():
    board: list = []
    begin(board, D, 1, 0.0)
    assert finish(board, D, 1, 1.0) is True and board == []
    begin(board, D, 1, 0.0)
    begin(board, D, 2, 0.0)
    fail(board, D, 1)
    assert status(board, D, lambda pid: True) == "gone"


def test_a_dead_leader_and_an_abandoned_done_flight_are_purged():
    board: list = []
    begin(board, D, 1, 0.0)
    begin(board, D, 2, 0.0)
    assert status(board, D, lambda pid: pid != 1) == "gone"  # its leader died
    assert purge(board, 0.5, lambda pid: pid != 1, 10.0) == [D] and board == []
    begin(board, D, 1, 0.0)
    begin(board, D, 2, 0.0)
    finish(board, D, 1, 1.0)  # done, and its follower died before reading
    assert purge(board, 5.0, lambda pid: True, 10.0) == []
    assert purge(board, 12.0, lambda pid: True, 10.0) == [D] and board == []


def test_a_full_board_lets_calls_go_ahead_and_the_codec_round_trips():
    board: list = []
    for i in range(MAX_FLIGHTS + 3):
        assert begin(board, i.to_bytes(16, "big"), 1, float(i)) == (LEAD if i < MAX_FLIGHTS else ALONE)
    assert len(board) == MAX_FLIGHTS
    codec = BoardCodec()
    assert codec.unpack(codec.pack(board)) == board
    assert len(codec.pack(board)) <= 2044  # fits a guard state record (shm.guard_state, 2048-byte slots)
    assert codec.unpack(b"other") is None


def _same_shard(d: bytes, n: int) -> list[bytes]:
    """``n`` digests of other questions whose flights share ``d``'s shard of the board."""
    found = (SharedFlights.digest(f"other {i}") for i in range(100_000))
    return [o for o in found if o[0] % SHARDS == d[0] % SHARDS][:n]


def test_the_board_is_sharded_so_a_service_holds_shards_times_the_flights_of_a_record(tmp_path):
    store = LocalStateStore()
    lead = SharedFlights("api", store, str(tmp_path / "f"), pid=lambda: 101, alive=lambda pid: True)
    digests = [SharedFlights.digest(f"q {i}") for i in range(4000)]
    by_shard = {k: [d for d in digests if d[0] % SHARDS == k][:MAX_FLIGHTS] for k in range(SHARDS)}
    assert all(len(ds) == MAX_FLIGHTS for ds in by_shard.values())
    assert all(lead.begin(d) == LEAD for ds in by_shard.values() for d in ds)  # SHARDS x MAX_FLIGHTS
    extra = next(d for d in digests if d not in by_shard[d[0] % SHARDS])
    assert lead.begin(extra) == ALONE  # its shard is full
    assert len({k for k in store._records if k.startswith("flights/")}) == SHARDS


def _pair(tmp_path):
    store = LocalStateStore()
    a = SharedFlights("api", store, str(tmp_path / "f"), pid=lambda: 101, alive=lambda pid: True)
    b = SharedFlights("api", store, str(tmp_path / "f"), pid=lambda: 202, alive=lambda pid: True)
    return a, b


def test_a_caller_the_full_board_left_out_never_touches_the_flight_another_registers(tmp_path):
    # The race a saturation burst of perf/pipelines.py met: A calls alone (board full), a slot
    # frees, B registers the same question and C follows B; B answers; then A answers.  A
    # wrote B's file and unlinked it, and C polled a done flight with no file until its
    # wait bound (a consensus candidate timed out at 60 s).
    store = LocalStateStore()
    mk = lambda pid: SharedFlights("api", store, str(tmp_path / "f"), pid=lambda: pid, alive=lambda p: True)  # noqa: E731
    filler, a, b, c = mk(303), mk(101), mk(202), mk(404)
    d = SharedFlights.digest("question")
    others = _same_shard(d, MAX_FLIGHTS)
    assert all(filler.begin(o) == LEAD for o in others)
    assert a.begin(d) == ALONE
    filler.fail(others[0])
    assert b.begin(d) == LEAD and c.begin(d) == FOLLOW
    b.finish(d, "answer")
    a.finish(d, "answer")
    assert c.poll(d) == (True, "answer")
    assert sorted(os.listdir(tmp_path / "f")) == []


def test_a_done_flight_whose_file_is_gone_sends_its_follower_to_call_itself(tmp_path):
    a, b = _pair(tmp_path)
    d = SharedFlights.digest("q")
    a.begin(d)
    b.begin(d)
    a.finish(d, "answer")
    os.unlink(a._path(d))  # whatever removed it
    with pytest.raises(LeaderGone):
        b.poll(d)


def test_a_follower_reads_the_leaders_value_and_no_file_is_left(tmp_path):
    a, b = _pair(tmp_path)
    d = SharedFlights.digest(b"question")
    assert a.begin(d) == LEAD and b.begin(d) == FOLLOW
    assert b.poll(d) == (False, None)
    a.finish(d, (200, [(b"k", b"v")], b"body"))
    assert b.poll(d) == (True, (200, [(b"k", b"v")], b"body"))
    assert os.listdir(tmp_path / "f") == []


def test_an_unshareable_value_or_a_failure_sends_the_follower_to_call_itself(tmp_path):
    a, b = _pair(tmp_path)
    d = SharedFlights.digest("q")
    a.begin(d)
    b.begin(d)
    a.finish(d, object())  # marshal cannot encode it
    with pytest.raises(LeaderGone):
        b.poll(d)
    assert SharedFlights.digest(("not", "bytes")) is None
    assert os.listdir(tmp_path / "f") == []


def test_a_service_follows_another_processes_flight(tmp_path):
    """Service._shared: the follower makes no call and returns the leader's value."""
    store = LocalStateStore()
    lead = Service("api", {"cache_ttl_s": 60}, store=store, flights_dir=str(tmp_path / "f"))
    follow = Service("api", {"cache_ttl_s": 60}, store=store, flights_dir=str(tmp_path / "f"))
    follow.flights._pid = lambda: os.getpid() + 1  # another "process" on the same board
    key = b"same question"
    assert lead.flights.begin(lead.flights.digest(key)) == LEAD
    made = []

    def publish(delay: float) -> None:  # the leader's answer lands while the follower waits
        if not made:
            made.append("leader")
            lead.flights.finish(lead.flights.digest(key), {"answer": 42})

    follow._sleep = publish
    assert follow.call_with(lambda: made.append("follower") or {"answer": 0}, key=key) == {"answer": 42}
    assert made == ["leader"] and follow.counts["cache_join"] == 1 and "cache_miss" not in follow.counts


def test_a_leader_that_cannot_write_its_answer_frees_its_followers(tmp_path):
    a, b = _pair(tmp_path)
    d = SharedFlights.digest(b"q")
    assert a.begin(d) == LEAD and b.begin(d) == FOLLOW
    os.rmdir(tmp_path / "f")  # the run directory went (a stopping daemon): the write fails
    a.finish(d, {"answer": 1})  # does not raise: the leader keeps its answer
    with pytest.raises(LeaderGone):
        b.poll(d)


# ---------------------------------------------------------------------------- model-based
class FlightsMachine(RuleBasedStateMachine):
    """Random interleavings of leaders and followers of two questions on shards of one flight
    each (so that boards fill and calls go ALONE), leaders finishing, failing or dying,
    followers polling, abandoning or dying, time passing.  A follower that is told to wait
    has a live leader of its question to wait for; at the end, with everyone gone and the
    linger past, no flight and no file is left."""

    directory: str

    def __init__(self) -> None:
        super().__init__()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.store, self.now, self.alive, self.next_pid = LocalStateStore(), 0.0, set(), 100
        self.callers: list[list] = []  # [pid, question, role, flights, open]
        self.questions = _same_shard(SharedFlights.digest("q0"), 1) + [SharedFlights.digest("q0")]

    def _flights(self, pid: int) -> SharedFlights:
        return SharedFlights("api", self.store, self.directory, linger_s=10.0, clock=lambda: self.now,
                             alive=lambda p: p in self.alive, pid=lambda: pid)

    def _open(self, roles: tuple[str, ...], i: int) -> list | None:
        mine = [c for c in self.callers if c[4] and c[2] in roles]
        return mine[i % len(mine)] if mine else None

    @rule(q=st.integers(0, 1))
    def ask(self, q):
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        self.alive.add(pid)
        fl = self._flights(pid)
        self.callers.append([pid, q, fl.begin(self.questions[q]), fl, True])

    @rule(i=st.integers(0, 9), how=st.sampled_from(["finish", "fail", "die"]))
    def leader_ends(self, i, how):
        c = self._open((LEAD, ALONE), i)
        if c is None:
            return
        c[4] = False
        if how == "finish":
            c[3].finish(self.questions[c[1]], ("answer", c[1]))
        elif how == "fail":
            c[3].fail(self.questions[c[1]])
        else:
            self.alive.discard(c[0])

    @rule(i=st.integers(0, 9))
    def follower_polls(self, i):
        c = self._open((FOLLOW,), i)
        if c is None:
            return
        try:
            done, value = c[3].poll(self.questions[c[1]])
        except LeaderGone:
            c[4] = False  # it calls itself
            return
        if done:
            assert value == ("answer", c[1])
            c[4] = False
        else:  # told to wait: someone is still answering this question
            assert any(o[4] and o[2] == LEAD and o[1] == c[1] and o[0] in self.alive for o in self.callers)

    @rule(i=st.integers(0, 9), die=st.booleans())
    def follower_leaves(self, i, die):
        c = self._open((FOLLOW,), i)
        if c is None:
            return
        c[4] = False
        if die:
            self.alive.discard(c[0])
        else:
            c[3].abandon(self.questions[c[1]])

    @rule()
    def time_passes(self):
        self.now += 11.0

    def teardown(self) -> None:
        for c in self.callers:  # everyone still there leaves
            if c[4] and c[2] == FOLLOW:
                c[3].abandon(self.questions[c[1]])
            elif c[4]:
                c[3].fail(self.questions[c[1]])
        self.now += 11.0
        for d in self.questions:  # a later caller of each shard purges what the dead left
            last = self._flights(1)
            assert last.begin(d) == LEAD
            last.fail(d)
        boards = [b for k, b in self.store._records.items() if k.startswith("flights/")]
        assert all(b == [] for b in boards), boards
        assert os.listdir(self.directory) == []


def test_random_interleavings_of_flights_leave_no_waiter_stuck_and_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(flights, "MAX_FLIGHTS", 1)  # one flight per shard: the boards fill
    FlightsMachine.directory = str(tmp_path / "f")
    run_state_machine_as_test(FlightsMachine, settings=settings(
        max_examples=120, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)))
