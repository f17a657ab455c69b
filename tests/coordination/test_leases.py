"""Leases, fencing, locks, leader election and counters on a fake clock."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.leases import (
    Counters,
    Election,
    Handover,
    Leadership,
    Lease,
    LeaseBusy,
    LeaseTable,
    Lock,
    Queued,
    StaleFence,
)
from runtime.errors import Conflict, InvalidInput
from tests.support.helpers import FakeClock


@pytest.fixture
def clock():
    return FakeClock(100.0)


@pytest.fixture
def table(clock):
    return LeaseTable(clock)


def test_fencing_tokens_strictly_increase_and_survive_release(table):
    tokens = []
    for holder in ["a", "b", "c"]:
        lease = table.acquire("db", holder, 5.0)
        tokens.append(lease.token)
        table.release("db", holder, lease.token)
    assert tokens == [1, 2, 3]
    assert table.holder_of("db") is None and table.last_token("db") == 3
    assert table.acquire("other", "a", 5.0).token == 1  # tokens are per resource


def test_stale_token_is_refused(table, clock):
    old = table.acquire("db", "a", 5.0)
    clock.t += 5.0
    assert not table.check_fence("db", old.token)  # expired: refused at once, before expire()
    table.expire()
    new = table.acquire("db", "b", 5.0)
    assert table.check_fence("db", new.token)
    assert not table.check_fence("db", old.token)
    with pytest.raises(StaleFence, match=r"token 1 refused.*token 2 held by 'b'") as info:
        table.fence("db", old.token)
    assert isinstance(info.value, Conflict) and info.value.code == "STALE_FENCE"
    assert "acquire the resource again" in info.value.hint
    with pytest.raises(StaleFence):
        table.release("db", "a", old.token)  # a stale holder cannot release its successor
    with pytest.raises(StaleFence):
        table.renew("db", "a", old.token)
    assert table.holder_of("db") == new


def test_busy_without_wait(table):
    table.acquire("db", "a", 5.0)
    with pytest.raises(LeaseBusy, match="held by 'a'"):
        table.acquire("db", "b", 5.0)


def test_reacquire_by_the_holder_renews_and_keeps_the_token(table, clock):
    first = table.acquire("db", "a", 5.0)
    clock.t += 3.0
    again = table.acquire("db", "a", 10.0)
    assert again.token == first.token and again.expires_at == clock.t + 10.0


def test_renew_extends_from_now(table, clock):
    lease = table.acquire("db", "a", 5.0)
    clock.t += 4.0
    renewed = table.renew("db", "a", lease.token)
    assert renewed.expires_at == clock.t + 5.0 and renewed.token == lease.token
    clock.t += 4.0
    assert table.expire() == Handover()


def test_expiry_returns_expired_leases_and_grants_the_next_waiter(table, clock):
    a = table.acquire("db", "a", 5.0)
    assert table.acquire("db", "b", 2.0, wait=True) == Queued("db", "b", 1)
    assert table.next_deadline() == a.expires_at
    clock.t += 4.9
    assert table.expire() == Handover()
    clock.t += 0.1
    out = table.expire()
    assert out.released == (a,)
    assert [(g.holder, g.token, g.expires_at) for g in out.granted] == [("b", 2, clock.t + 2.0)]


def test_holder_death_releases_everything_and_grants_next_waiters(table):
    a1 = table.acquire("r1", "a", 30.0)
    a2 = table.acquire("r2", "a", 30.0)
    table.acquire("r1", "b", 30.0, wait=True)
    table.acquire("r1", "c", 30.0, wait=True)
    table.acquire("r3", "x", 30.0)
    table.acquire("r3", "a", 30.0, wait=True)  # a also waits elsewhere
    out = table.holder_died("a")
    assert set(out.released) == {a1, a2}
    assert [(g.resource, g.holder) for g in out.granted] == [("r1", "b")]
    assert table.waiters("r1") == ("c",) and table.waiters("r3") == ()
    assert table.holder_of("r2") is None
    assert not table.check_fence("r1", a1.token)


def test_waiters_are_served_fifo(table):
    first = table.acquire("db", "a", 5.0)
    assert [table.acquire("db", h, 5.0, wait=True).position for h in "bcd"] == [1, 2, 3]
    assert table.acquire("db", "c", 5.0, wait=True).position == 2  # asking again keeps the place
    assert table.cancel("db", "c") and not table.cancel("db", "c")
    order, lease = [], first
    while lease is not None:
        out = table.release("db", lease.holder, lease.token)
        lease = out.granted[0] if out.granted else None
        if lease:
            order.append(lease.holder)
    assert order == ["b", "d"]


@pytest.mark.parametrize(
    "args",
    [("", "a", 1.0), ("r", "", 1.0), ("r", "a", 0), ("r", "a", float("inf")), ("r", "a", True)],
)
def test_bad_arguments(table, args):
    with pytest.raises(InvalidInput):
        table.acquire(*args)


def test_lock_is_a_lease_with_a_queue(table):
    lock = Lock(table, "migrations", ttl=10.0)
    held = lock.acquire("a")
    assert isinstance(held, Lease) and lock.holder == "a"
    assert lock.acquire("b") == Queued("lock:migrations", "b", 1)
    assert lock.holder == "a"  # the reference's mutex let go right after acquiring; this one holds
    out = lock.release("a", held.token)
    assert out.granted[0].holder == "b" and lock.holder == "b"
    table.holder_died("b")
    assert lock.holder is None


# ---------------------------------------------------------------- random sequences

names = st.sampled_from(["h0", "h1", "h2", "h3"])
resources = st.sampled_from(["r0", "r1"])
ops = st.one_of(
    st.tuples(st.just("acquire"), resources, names, st.sampled_from([1.0, 3.0]), st.booleans()),
    st.tuples(st.just("release"), resources, names, st.integers(min_value=0, max_value=6)),
    st.tuples(st.just("renew"), resources, names, st.integers(min_value=0, max_value=6)),
    st.tuples(st.just("died"), names),
    st.tuples(st.just("cancel"), resources, names),
    st.tuples(
        st.just("expire"),
    ),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 2.5])),
)


class Model:
    """What must hold whatever the sequence: checked after every operation."""

    def __init__(self, table: LeaseTable, clock: FakeClock) -> None:
        self.table, self.clock = table, clock
        self.issued: dict[str, list[Lease]] = {"r0": [], "r1": []}
        self.queues: dict[str, deque[str]] = {"r0": deque(), "r1": deque()}
        self.dead: set[str] = set()

    def saw(self, lease: Lease) -> None:
        past = self.issued[lease.resource]
        if past and past[-1].token == lease.token:
            assert past[-1].holder == lease.holder  # a renewal, same holder
            return
        assert not past or lease.token > past[-1].token, "tokens must strictly increase"
        past.append(lease)

    def handover(self, out: Handover) -> None:
        for lease in out.granted:
            assert self.queues[lease.resource].popleft() == lease.holder, "grants must be FIFO"
            self.saw(lease)

    def check(self) -> None:
        for resource, leases in self.issued.items():
            valid = [lease for lease in leases if self.table.check_fence(resource, lease.token)]
            assert len(valid) <= 1, f"two holders of {resource}: {valid}"
            assert not any(lease.holder in self.dead for lease in valid), (
                "a dead holder still fences"
            )
            assert list(self.queues[resource]) == list(self.table.waiters(resource))
            holder = self.table.holder_of(resource)
            assert holder is None or holder.holder not in self.table.waiters(resource)


def apply(model: Model, op: tuple) -> None:
    table, kind = model.table, op[0]
    if kind == "acquire":
        _, r, h, ttl, wait = op
        model.dead.discard(h)  # a new process may reuse a dead holder's name
        try:
            out = table.acquire(r, h, ttl, wait=wait)
        except LeaseBusy:
            return
        if isinstance(out, Queued):
            if h not in model.queues[r]:
                model.queues[r].append(h)
        else:
            model.saw(out)
    elif kind in ("release", "renew"):
        _, r, h, token = op
        try:
            if kind == "release":
                model.handover(table.release(r, h, token))
            else:
                model.saw(table.renew(r, h, token))
        except StaleFence:
            return
    elif kind == "died":
        model.dead.add(op[1])
        for q in model.queues.values():
            if op[1] in q:
                q.remove(op[1])
        model.handover(table.holder_died(op[1]))
    elif kind == "cancel":
        if table.cancel(op[1], op[2]):
            model.queues[op[1]].remove(op[2])
    elif kind == "expire":
        model.handover(table.expire())
    else:
        model.clock.t += op[1]


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=40))
def test_random_sequences_keep_one_holder_and_increasing_tokens(sequence):
    clock = FakeClock(100.0)
    model = Model(LeaseTable(clock), clock)
    for op in sequence:
        apply(model, op)
        model.check()


# ---------------------------------------------------------------- election and counters


def test_one_leader_longest_standing_not_highest_name():
    e = Election("planners")
    assert e.join("m") == Leadership("planners", "m", 1)
    assert e.join("z") is None and e.join("a") is None  # newcomers do not take over
    assert e.leader == "m" and e.term == 1


def test_re_elected_on_death_with_a_new_term():
    e = Election("planners")
    for c in ["b", "c", "a"]:
        e.join(c)
    assert e.candidate_died("b") == Leadership("planners", "c", 2)
    assert e.check_term("c", 2) and not e.check_term("b", 1) and not e.check_term("c", 1)
    assert e.leave("a") is None  # a follower leaving changes nothing
    assert e.leave("c") == Leadership("planners", None, 2)
    assert e.join("b") == Leadership("planners", "b", 3)  # a re-join is a new candidacy


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["join", "leave"]), st.sampled_from("abcde")), max_size=40)
)
def test_election_always_has_the_most_senior_live_candidate(events):
    e, joined, last_term = Election("g"), [], 0
    for action, c in events:
        change = e.join(c) if action == "join" else e.leave(c)
        if action == "join" and c not in joined:
            joined.append(c)
        elif action == "leave" and c in joined:
            joined.remove(c)
        assert e.leader == (joined[0] if joined else None)
        assert e.term >= last_term and (change is None or change.leader == e.leader)
        if change is not None and change.leader is not None:
            assert change.term == last_term + 1
        last_term = e.term


def test_counters():
    c = Counters()
    assert c.get("tasks") == 0
    assert c.add("tasks") == 1 and c.add("tasks", 4) == 5 and c.add("tasks", -2) == 3
    assert c.snapshot() == {"tasks": 3}
    with pytest.raises(InvalidInput, match="integer delta"):
        c.add("tasks", 1.5)
