"""Collective decisions taken by real agents: votes, negotiations, price bargaining and
consensus pipeline steps, driven inside the coordinator's loop.

The counting and the state machines are pure (``coordination.voting``,
``coordination.negotiation``); this module asks the agents and moves those machines on::

    vote       AskRound("vote") --ballots--> BallotBox --all answered | deadline--> Outcome
    negotiate  [AskRound("vote") -> Negotiation.end_round
                -> AskRound("propose") -> Negotiation.next_round]*  until agreed | round limit
    bargain    buyer = PriceStrategy (the task owner's terms, played here)
               seller = an agent's bid() hook, one move per ask   until deal | no deal
    consensus  pipeline step {"k", "method"}: the task goes to k distinct capable agents
               (one journal attempt), their k results become candidates, the same agents
               rank them through vote(), the task's result is the winner and the tally

Every ask goes out at once to every agent (``coord.ask``: the agent's control thread
answers, so a busy agent still votes); a round ends when every invited agent answered or
died (``agent_listeners``), else at its deadline (``coord.call_later``).  Nothing here
blocks the loop.  Every ballot, round and outcome is an event in the vote's trace.

Decisions where the spec is silent:

* An agent whose ``vote()`` returns ``None`` abstains: its ballot is recorded blank
  (``[]``): it counts for the quorum and supports nothing.  A ballot the BallotBox refuses
  (unknown option, wrong shape) and an answer after the deadline are recorded as events
  with the reason and not counted; a hook that raised likewise.
* Voters: the agents of ``pool`` (every connected agent if no pool is named), or the
  ``voters`` listed.  ``weights`` apply to every method (a voter of weight w counts as w
  identical ballots, ``coordination.voting``): an explicit object voter -> weight (a voter
  not in the vote, or a voter left out, is refused), or a source: ``"reputation"`` (the
  market's score, mean over the voter's capabilities, read from its durable record),
  ``"stake"`` (the voter's ledger balance in credits, 0 without an account) or
  ``"quality"`` (declared quality, mean over its capabilities, 0.5 if none declared:
  ``weighted``'s default).  ``quorum`` is a ballot count, a fraction (0.6, ``"60%"``) of
  the electorate, or ``{"min_ballots", "fraction"}``.
* Majority with runoff: when the first round has no absolute majority and the ballots
  are single choices, the voters are asked again over the two finalists (``round`` 2,
  ``runoff: true`` in the request) and that second round decides; ``first_round`` keeps
  the first.  A negotiation round does the same within the round.
* Re-votes: an agent may cast again while the round is open with the agent op
  ``vote.cast`` ``{"vote_id", "ballot"}`` (from a thread other than its control thread,
  which is busy answering); the new ballot replaces the old and the agent is no longer
  waited for.  A round closes when everyone answered, or only at its deadline with
  ``until_deadline`` (so that re-votes are possible until then).
* Recent votes (and negotiations, bargains) are kept in memory, the last
  ``KEEP_RECENT``, for ``agora votes``; the journal does not store them (the events do).
* Consensus steps: candidates are labelled ``c1..ck`` in the order of the agents' ids, so
  a voter cannot tell its own candidate by its name; the request carries
  ``candidates`` (label -> output), ``capability`` and ``input``.  The pipeline's
  ``instant_runoff`` is voting's ``irv``.  When fewer than k capable agents are connected
  the step runs with those there are (``k_run`` in the result); it waits while capable
  agents lack room.  A candidate whose agent failed or died is left out; if none is
  left, or nobody voted for anything, the attempt fails (the task's retry policy decides).
  Candidate runs take room at their agents; a hung one is cancelled at the candidate
  timeout and the vote needs a quorum of candidates (``ConsensusSteps`` says how).
* Bargaining: the seller's move is its ``bid(request)`` with ``request["bargain"]`` set
  (the session so far): ``{"accept": true}`` accepts the buyer's last offer,
  ``{"price": p}`` counter-offers, ``None`` walks away.  The default ``bid`` (a fixed
  price from the declared cost) thus behaves as a take-it-or-leave-it seller.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from coordination.negotiation import (
    AlternatingOffers,
    Negotiation,
    PriceStrategy,
    step,
    time_dependent,
)
from coordination.voting import METHOD_ALIASES, METHODS, BallotBox, Outcome, Quorum
from runtime.coordinator.command_kit import Deferred, arg, only
from runtime.coordinator.host import ServiceHost
from runtime.errors import AgoraError, InvalidInput, NotFound
from runtime.observability.trace_context import TraceContext
from shm.errors import StaleHandle

__all__ = ["install", "AskRound", "VoteRun", "NegotiationRun", "BargainRun", "ConsensusSteps",
           "Service", "PIPELINE_METHODS", "KEEP_RECENT"]

KEEP_RECENT = 200
#: named sources of vote weights (``weights`` may also be an explicit voter -> weight object)
WEIGHT_SOURCES = ("reputation", "stake", "quality")
DEFAULT_DEADLINE_S = 5.0
#: A consensus candidate's time limit when neither the task nor its pool sets timeout_s.
CANDIDATE_TIMEOUT_S = 60.0
#: Vote requests carry candidates up to this JSON size inline, larger ones by reference.
INLINE_CANDIDATE_BYTES = 16 * 1024
#: method names a pipeline's consensus step (and ``agora vote``) may use -> voting methods:
#: voting's own names and its aliases (``instant_runoff`` is ``irv``)
PIPELINE_METHODS = {**{m: m for m in METHODS}, **METHOD_ALIASES}


class Ports:
    """What the drivers need from the coordinator (a fake in unit tests)."""

    def __init__(self, ask: Callable[..., bool],
                 call_later: Callable[[float, Callable[[], None]], None],
                 clock: Callable[[], float], emit: Callable[..., None]) -> None:
        self.ask, self.call_later, self.clock, self.emit = ask, call_later, clock, emit


# ---------------------------------------------------------------------------- one round of asks

class AskRound:
    """Ask each agent the same question in parallel; done once, when all answered or died,
    or at the deadline.  ``on_answer(agent, msg)`` per answer in time; ``on_done(missing)``."""

    def __init__(self, ports: Ports, kind: str, request: dict[str, Any], agents: list[str],
                 deadline_s: float, on_answer: Callable[[str, dict[str, Any]], None],
                 on_done: Callable[[list[str]], None], *, until_deadline: bool = False) -> None:
        self.ports, self.kind, self.request = ports, kind, request
        self.waiting = set(agents)
        self.deadline_s, self.on_answer, self.on_done = deadline_s, on_answer, on_done
        self.until_deadline = until_deadline  # re-votes welcome: only the deadline ends it
        self.done = False
        self.late: list[str] = []

    def start(self) -> None:
        for agent in sorted(self.waiting):
            if not self.ports.ask(agent, self.kind, self.request,
                                  lambda aid, msg, a=agent: self._answered(a, msg)):
                self.waiting.discard(agent)  # not connected (any more): nobody to wait for
        self.ports.call_later(self.deadline_s, self._deadline)
        self._maybe_done()

    def _answered(self, agent: str, msg: dict[str, Any]) -> None:
        if self.done or agent not in self.waiting:
            self.late.append(agent)
            return
        self.waiting.discard(agent)
        self.on_answer(agent, msg)
        self._maybe_done()

    def agent_died(self, agent: str) -> None:
        if not self.done and agent in self.waiting:
            self.waiting.discard(agent)
            self._maybe_done()

    def _deadline(self) -> None:
        if not self.done:
            self._finish()

    def answered_otherwise(self, agent: str) -> None:
        """``agent`` cast through ``vote.cast`` instead: its pending answer is not awaited."""
        if not self.done and agent in self.waiting:
            self.waiting.discard(agent)
            self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.done and not self.waiting and not self.until_deadline:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.on_done(sorted(self.waiting))


# ---------------------------------------------------------------------------- votes

def _ballot(answer: Any) -> Any:
    """An answer as a ballot: None abstains (blank)."""
    return [] if answer is None else answer


def cast_answer(ports: Ports, trace: TraceContext, box_cast: Callable[[str, Any], Any],
                vote_id: str, agent: str, msg: dict[str, Any]) -> dict[str, Any]:
    """Record one vote() answer; returns the ballot record (also an event)."""
    rec: dict[str, Any] = {"voter": agent, "ballot": msg.get("answer")}
    if msg.get("error"):
        rec["refused"] = f"the vote() hook raised: {msg['error']}"
    else:
        try:
            box_cast(agent, _ballot(msg.get("answer")))
            rec["counted"] = True
        except AgoraError as e:
            rec["refused"] = e.message
    rec.setdefault("counted", False)
    ports.emit("vote.ballot", trace, vote_id=vote_id, **rec)
    return rec


class VoteRun:
    """One vote among live agents: opened, ballots cast as answers come, outcome published."""

    def __init__(self, ports: Ports, vote_id: str, box: BallotBox, voters: list[str],
                 deadline_s: float, trace: TraceContext, on_done: Callable[[VoteRun], None],
                 extra_request: dict[str, Any] | None = None, *, until_deadline: bool = False,
                 weights_by: str | None = None) -> None:
        self.ports, self.id, self.box, self.voters = ports, vote_id, box, sorted(voters)
        self.trace, self.on_done = trace, on_done
        self.deadline_s, self.extra, self.until_deadline = deadline_s, extra_request or {}, until_deadline
        self.weights_by = weights_by
        self.opened = ports.clock()
        self.ballots: list[dict[str, Any]] = []
        self.outcome: Outcome | None = None
        self.first: Outcome | None = None          # majority's first round, when it had a runoff
        self.elapsed_ms: float | None = None
        self.missing: list[str] | None = None
        self.round = self._ask_round()

    def _ask_round(self) -> AskRound:
        request = {**self.box.request(), "vote_id": self.id, **self.extra}
        return AskRound(self.ports, "vote", request, self.voters, self.deadline_s, self._answer,
                        self._close, until_deadline=self.until_deadline)

    def start(self) -> None:
        self.ports.emit("vote.opened", self.trace, vote_id=self.id, question=self.box.question,
                        options=list(self.box.options), method=self.box.method, voters=self.voters)
        self.round.start()

    def _answer(self, agent: str, msg: dict[str, Any]) -> None:
        rec = cast_answer(self.ports, self.trace, self.box.cast, self.id, agent, msg)
        self.ballots.append({**rec, "round": 1 if self.first is None else 2})

    def recast(self, agent: str, ballot: Any) -> dict[str, Any]:
        """A live re-vote (agent op ``vote.cast``): replaces the voter's ballot while the
        round is open; the voter's pending answer, if any, is no longer awaited."""
        if agent not in self.voters:
            raise InvalidInput(f"{agent!r} is not a voter of {self.id}", hint=f"voters: {self.voters}")
        if self.round.done:
            raise InvalidInput(f"vote {self.id} round {1 if self.first is None else 2} is closed; "
                               f"{agent!r} voted too late", hint="re-vote before the deadline")
        rec = cast_answer(self.ports, self.trace, self.box.cast, self.id, agent, {"answer": ballot})
        if not rec["counted"]:
            raise InvalidInput(f"ballot of {agent!r} refused: {rec['refused']}")
        self.ballots.append({**rec, "round": 1 if self.first is None else 2, "recast": True})
        self.round.answered_otherwise(agent)
        return {"vote_id": self.id, "counted": True}

    def _close(self, missing: list[str]) -> None:
        outcome = self.box.close()
        if outcome.runoff_finalists is not None and self.first is None:
            self._runoff(outcome)
            return
        self._publish(outcome, missing)

    def _runoff(self, first: Outcome) -> None:
        """Majority without a majority, on single-choice ballots: ask the voters again,
        over the two finalists (the second round of the two-round system)."""
        self.first = first
        self.ports.emit("vote.runoff", self.trace, vote_id=self.id,
                        finalists=list(first.runoff_finalists or ()), tally=first.tally)
        self.box = self.box.open_runoff(self.ports.clock() + self.deadline_s)
        self.extra = {**self.extra, "runoff": True}
        self.round = self._ask_round()
        self.round.start()

    def _publish(self, outcome: Outcome, missing: list[str]) -> None:
        self.outcome = outcome
        self.elapsed_ms = round((self.ports.clock() - self.opened) * 1000, 3)
        self.ports.emit("vote.outcome", self.trace, vote_id=self.id, winner=self.outcome.winner,
                        method=self.outcome.method, tally=self.outcome.tally, missing=missing,
                        ballots_counted=self.outcome.ballots_counted, elapsed_ms=self.elapsed_ms)
        self.missing = missing
        self.on_done(self)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": "vote", "question": self.box.question,
                "options": list(self.box.options), "method": self.box.method,
                "voters": self.voters, "ballots": self.ballots, "trace_id": self.trace.trace_id,
                "state": "open" if self.outcome is None else "closed",
                "missing": self.missing, "elapsed_ms": self.elapsed_ms,
                "weights_by": self.weights_by, "quorum": self.box.quorum.to_json(),
                "first_round": None if self.first is None else self.first.to_json(),
                "outcome": None if self.outcome is None else self.outcome.to_json()}


# ---------------------------------------------------------------------------- negotiation

class NegotiationRun:
    """Rounds of vote -> (no agreement) propose -> vote, until agreed or the round limit."""

    def __init__(self, ports: Ports, run_id: str, negotiation: Negotiation, parties: list[str],
                 round_s: float, trace: TraceContext,
                 on_done: Callable[[NegotiationRun], None]) -> None:
        self.ports, self.id, self.neg, self.parties = ports, run_id, negotiation, sorted(parties)
        self.round_s, self.trace, self.on_done = round_s, trace, on_done
        self.events: list[dict[str, Any]] = []
        self.current: AskRound | None = None
        self.finished = False

    def start(self) -> None:
        self.ports.emit("negotiation.opened", self.trace, negotiation_id=self.id,
                        question=self.neg.question, options=list(self.neg.options),
                        parties=self.parties)
        self._vote_round()

    def agent_died(self, agent: str) -> None:
        if self.current is not None:
            self.current.agent_died(agent)

    def _vote_round(self) -> None:
        request = {**self.neg.request(), "negotiation_id": self.id}
        self.current = AskRound(self.ports, "vote", request, self.parties, self.round_s,
                                self._ballot, self._end_vote_round)
        self.current.start()

    def _ballot(self, agent: str, msg: dict[str, Any]) -> None:
        cast_answer(self.ports, self.trace, self.neg.cast, self.id, agent, msg)

    def recast(self, agent: str, ballot: Any) -> dict[str, Any]:
        """A live re-vote into the current round (agent op ``vote.cast``)."""
        if self.current is None or self.current.kind != "vote" or self.current.done:
            raise InvalidInput(f"negotiation {self.id} has no vote round open",
                               hint="re-vote while a round is being voted")
        rec = cast_answer(self.ports, self.trace, self.neg.cast, self.id, agent, {"answer": ballot})
        if not rec["counted"]:
            raise InvalidInput(f"ballot of {agent!r} refused: {rec['refused']}")
        self.current.answered_otherwise(agent)
        return {"negotiation_id": self.id, "counted": True}

    def _end_vote_round(self, missing: list[str]) -> None:
        outcome = self.neg.end_round()
        if self.neg.open_runoff() is not None:  # majority's second ballot, same round
            self.ports.emit("negotiation.runoff", self.trace, negotiation_id=self.id,
                            round=self.neg.round_number, finalists=list(outcome.runoff_finalists or ()),
                            tally=outcome.tally)
            self._vote_round()
            return
        self.ports.emit("negotiation.round", self.trace, negotiation_id=self.id,
                        round=self.neg.round_number, winner=outcome.winner, support=outcome.support,
                        state=self.neg.state, tally=outcome.tally, missing=missing)
        if self.neg.state == "proposing":
            self.current = AskRound(self.ports, "propose", self.neg.request(), self.parties,
                                    self.round_s, self._proposal, self._end_propose_round)
            self.current.start()
        else:
            self._finish()

    def _proposal(self, agent: str, msg: dict[str, Any]) -> None:
        try:
            if msg.get("error"):
                raise InvalidInput(f"the propose() hook raised: {msg['error']}")
            made = self.neg.propose_from(agent, msg.get("answer") or [])
            self.ports.emit("negotiation.proposals", self.trace, negotiation_id=self.id,
                            agent=agent, proposals=[p.to_json() for p in made])
        except AgoraError as e:
            self.ports.emit("negotiation.proposal_refused", self.trace, negotiation_id=self.id,
                            agent=agent, reason=e.message)

    def _end_propose_round(self, missing: list[str]) -> None:
        self.neg.next_round()
        self._vote_round()

    def _finish(self) -> None:
        self.finished, self.current = True, None
        self.ports.emit("negotiation.outcome", self.trace, negotiation_id=self.id,
                        state=self.neg.state, agreed_option=self.neg.agreed_option,
                        rounds=self.neg.round_number)
        self.on_done(self)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": "negotiation", "trace_id": self.trace.trace_id,
                "parties": self.parties, **self.neg.to_json()}


# ---------------------------------------------------------------------------- bargaining

class BargainRun:
    """Alternating offers between the task owner (buyer strategy, here) and an agent (seller)."""

    def __init__(self, ports: Ports, run_id: str, session: AlternatingOffers, buyer: PriceStrategy,
                 seller: str, capability: str, move_s: float, trace: TraceContext,
                 on_done: Callable[[BargainRun], None]) -> None:
        self.ports, self.id, self.session, self.buyer = ports, run_id, session, buyer
        self.seller, self.capability, self.move_s = seller, capability, move_s
        self.trace, self.on_done = trace, on_done
        self.current: AskRound | None = None
        self.finished = False

    def start(self) -> None:
        self.ports.emit("bargain.opened", self.trace, bargain_id=self.id, seller=self.seller,
                        capability=self.capability, max_rounds=self.session.max_rounds)
        self._next()

    def agent_died(self, agent: str) -> None:
        if self.current is not None:
            self.current.agent_died(agent)

    def _next(self) -> None:
        while self.session.check() == "open" and self.session.turn == "buyer":
            step(self.session, self.buyer)
            self._record("buyer")
        if self.session.state != "open":
            self._finish()
            return
        request = {"capability": self.capability, "bargain": self.session.to_json(),
                   "t": self.session.progress(), "role": "seller"}
        self.current = AskRound(self.ports, "bid", request, [self.seller], self.move_s,
                                self._seller_move, self._seller_silent)
        self.current.start()

    def _seller_move(self, agent: str, msg: dict[str, Any]) -> None:
        answer = msg.get("answer")
        try:
            if msg.get("error") or not isinstance(answer, dict):
                reason = msg.get("error") or "declined (bid() returned None)"
                self.session.walk_away("seller", reason)
            elif answer.get("accept") is True and self.session.last_offer is not None:
                self.session.accept("seller")
            elif self.session.offers_left:
                price: Any = answer.get("price")  # checked by offer()
                self.session.offer("seller", price)
            else:
                self.session.walk_away("seller", "no offers left; the last offer not accepted")
        except AgoraError as e:  # a malformed price: the seller leaves the table
            self.session.walk_away("seller", f"invalid move: {e.message}")
        self._record("seller")

    def _seller_silent(self, missing: list[str]) -> None:
        if missing and self.session.state == "open":
            self.session.walk_away("seller", f"no answer within {self.move_s} s (or it died)")
            self._record("seller")
        self.current = None
        self._next()

    def _record(self, role: str) -> None:
        last = self.session.last_offer
        self.ports.emit("bargain.round", self.trace, bargain_id=self.id, role=role,
                        state=self.session.state, offer=None if last is None else last.to_json(),
                        reason=self.session.reason)

    def _finish(self) -> None:
        self.finished = True
        self.ports.emit("bargain.outcome", self.trace, bargain_id=self.id, state=self.session.state,
                        price=self.session.price, reason=self.session.reason)
        self.on_done(self)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": "bargain", "seller": self.seller,
                "capability": self.capability, "trace_id": self.trace.trace_id,
                **self.session.to_json()}


# ---------------------------------------------------------------------------- consensus steps

class _StepRun:
    """One attempt of a consensus step: k candidate runs, then a vote among their agents."""

    def __init__(self, task: Any, k: int, method: str, agents: list[str], attempt: int) -> None:
        self.task, self.k, self.method, self.agents, self.attempt = task, k, method, agents, attempt
        self.outputs: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        self.vote: VoteRun | None = None
        self.input_handle: Any = None
        self.shared: list[Any] = []  # arena blocks the vote request's voters read (freed at the end)

    @property
    def collected(self) -> bool:
        return len(self.outputs) + len(self.errors) == len(self.agents)

    @property
    def quorum(self) -> int:
        """Candidates needed for a vote: a majority of the agents the step ran on."""
        return len(self.agents) // 2 + 1

    def labels(self) -> dict[str, str]:
        """Candidate label -> agent, for the agents that produced one (id order)."""
        ok = [a for a in self.agents if a in self.outputs]
        return {f"c{i + 1}": a for i, a in enumerate(ok)}


class ConsensusSteps:
    """Runs pipeline steps whose options carry ``consensus`` as k attempts-in-one.

    Each candidate run takes room at its agent like an attempt (``AgentLink.side``) until
    its agent reports or dies; outputs sent by handle (64 KiB and more) are read from the
    arena and their blocks released, a late report's block too.  A candidate still running
    after the step's candidate timeout (the task's ``timeout_s``, else its pool's, else
    ``CANDIDATE_TIMEOUT_S``) is cancelled (killed after its pool's cancel grace if it does
    not stop) and left out; the vote runs on the candidates there are if they are a
    quorum (a majority of the agents the step ran on), else the attempt fails
    ``CONSENSUS_NO_QUORUM``.  Vote requests carry candidates up to ``INLINE_CANDIDATE_BYTES``
    (16 KiB of JSON) inline; a larger one by handle (``{"$large": label, "bytes": n,
    "preview": ..., "handle": ...}``, resolved by the voters' agents: ``_for_ballot``) and
    its output stays in the coordinator for the result.  The step's input rides the same
    way (``{"$large": "input", ...}`` beyond 16 KiB): every voter got a copy of it, 3 x 28
    KB of frames per check step of perf/pipelines.py, for a vote that ranks candidates."""

    def __init__(self, coord: Any, service: Service) -> None:
        self.coord, self.sched, self.service = coord, coord.scheduler, service
        self.pending: list[tuple[Any, dict[str, Any]]] = []
        self.running: dict[str, _StepRun] = {}

    def spec_of(self, task: Any) -> dict[str, Any] | None:
        if task.pipeline_id is None:  # consensus exists only in pipeline steps
            return None
        return (self.coord.journal.options(task.id) or {}).get("consensus")

    def take(self, task: Any) -> bool:
        """Start the step now when k agents have room, else keep it for the next turns.
        (Only keeping it was a hang: a step taken by the turn's dispatch, after the turn
        hooks, waited for some later event to wake the loop, and with every agent idle none
        came: perf/pipelines.py's naive burst waited on one pipeline for its whole 300 s.)"""
        spec = self.spec_of(task)
        if not spec:
            return False
        task.state = "consensus"
        if not self._start(task, spec):
            self.pending.append((task, spec))
        return True

    def turn(self) -> None:
        """Start the pending steps that have enough agents with room (a turn hook)."""
        waiting, self.pending = self.pending, []
        for task, spec in waiting:
            if self.sched.tasks.get(task.id) is not task:
                continue  # cancelled or expired meanwhile
            if not self._start(task, spec):
                self.pending.append((task, spec))

    def _pick(self, task: Any, k: int) -> list[str] | None:
        live = [a for a in self.sched.capable(task.capability) if a in self.sched.agents]
        n = min(k, len(live))
        room = [a for a in self.sched.candidates(task.capability) if a.id not in task.excluded]
        if n == 0 or len(room) < n:
            return None
        room.sort(key=lambda a: (len(a.inflight) + len(a.side), a.order))
        return sorted(a.id for a in room[:n])

    def _start(self, task: Any, spec: dict[str, Any]) -> bool:
        agents = self._pick(task, spec["k"])
        if agents is None:
            return False
        attempt = self.coord.journal.start_attempt(task.id, "consensus:" + ",".join(agents))
        task.attempts, task.state, task.agent = attempt, "running", None
        method = PIPELINE_METHODS[spec["method"]]
        run = self.running[task.id] = _StepRun(task, spec["k"], method, agents, attempt)
        self.sched.result_sinks[task.id] = self._result
        span = task.trace.child()
        timeout = self._candidate_timeout(task, agents)
        self.coord.emit("consensus.started", span, task_id=task.id, attempt=attempt, agents=agents,
                        k=spec["k"], method=spec["method"], candidate_timeout_s=timeout)
        for agent in agents:
            frame = {"id": task.id, "attempt": attempt, "cap": task.capability, "trace": span.to_wire()}
            frame["input"] = task.input  # small: a large input is one block per reader
            self.sched.agents[agent].side[task.id] = attempt
            self.sched.outbox.setdefault(agent, []).append(frame)
        self.coord.call_later(timeout, lambda: self._timed_out(run))
        return True

    def _candidate_timeout(self, task: Any, agents: list[str]) -> float:
        if task.timeout_s:
            return float(task.timeout_s)
        pools = [self.sched.pools.get(self.sched.agents[a].pool) for a in agents]
        limits = [float(p.timeout_s) for p in pools if p is not None and getattr(p, "timeout_s", 0)]
        return max(limits) if limits else CANDIDATE_TIMEOUT_S

    def _free(self, agent: str | None, task_id: str, attempt: int) -> None:
        link = self.sched.agents.get(agent) if agent else None
        if link is not None and link.side.get(task_id) == attempt:
            del link.side[task_id]

    def _result(self, link: Any, r: dict[str, Any]) -> None:
        agent = getattr(link, "id", None)
        self._free(agent, r["id"], r.get("attempt"))
        run = self.running.get(r["id"])
        if run is None or r.get("attempt") != run.attempt or agent not in run.agents or run.vote \
                or agent in run.errors:
            self._drop_output(r)  # a late report of an attempt already decided: free its block
            return
        if "error" in r:
            run.errors[agent] = r["error"]
        else:
            try:
                run.outputs[agent] = self.sched.payloads.unpack(r, "ok")
            except StaleHandle as e:  # a stale block: that candidate is lost, not the step
                run.errors[agent] = {"code": "CANDIDATE_UNREADABLE", "message": str(e)}
        self._maybe_vote(run)

    def _drop_output(self, r: dict[str, Any]) -> None:
        if r.get("ok_h") is not None:
            try:
                self.sched.payloads.unpack(r, "ok")
            except StaleHandle:
                pass  # the block was reset already: nothing left to free

    def _timed_out(self, run: _StepRun) -> None:
        """Candidates still running: cancel them and vote on the rest (or fail)."""
        if self.running.get(run.task.id) is not run or run.vote is not None:
            return
        for agent in [a for a in run.agents if a not in run.outputs and a not in run.errors]:
            run.errors[agent] = {"code": "CANDIDATE_TIMEOUT",
                                 "message": f"agent {agent} did not deliver its candidate in time"}
            self._cancel(run, agent)
        self._maybe_vote(run)

    def _cancel(self, run: _StepRun, agent: str) -> None:
        link = self.sched.agents.get(agent)
        if link is None:
            return
        self.sched.cancels.setdefault(agent, []).append({"id": run.task.id, "attempt": run.attempt})
        grace = float(getattr(self.sched.pools.get(link.pool), "cancel_grace_s", None) or 5.0)
        self.coord.emit("consensus.candidate_cancelled", run.task.trace, task_id=run.task.id,
                        attempt=run.attempt, agent=agent, grace_s=grace)
        self.coord.call_later(grace, lambda: self._grace_over(agent, run.task.id, run.attempt))

    def _grace_over(self, agent: str, task_id: str, attempt: int) -> None:
        """A cancelled candidate that still holds its agent: have the agent replaced."""
        link = self.sched.agents.get(agent)
        if link is None or link.side.get(task_id) != attempt or link.killed:
            return
        link.killed = f"consensus candidate {attempt} of {task_id} did not stop within its cancel grace"
        link.draining = True
        self.coord.emit("agent.kill", None, agent=agent, pid=link.pid, task_id=task_id, why=link.killed)
        for listener in self.sched.kill_listeners:
            listener(link, link.killed)

    def agent_died(self, agent_id: str) -> None:
        for run in list(self.running.values()):
            if run.vote is None and agent_id in run.agents and agent_id not in run.outputs:
                run.errors.setdefault(agent_id, {"code": "AGENT_DIED",
                                                 "message": f"agent {agent_id} died mid-candidate"})
                self._maybe_vote(run)

    def _maybe_vote(self, run: _StepRun) -> None:
        if not run.collected or run.vote is not None:
            return
        labels = run.labels()
        if len(labels) < run.quorum:
            code = "CONSENSUS_NO_CANDIDATE" if not labels else "CONSENSUS_NO_QUORUM"
            self._fail(run, {"code": code,
                             "message": f"{len(labels)} of the {len(run.agents)} agents produced "
                                        f"a candidate; a vote needs {run.quorum}",
                             "errors": run.errors, "hint": "see the attempts' errors"})
            return
        voters = [a for a in run.agents if a in self.sched.agents]
        extra = {"candidates": {lbl: self._for_ballot(run, lbl, run.outputs[a]) for lbl, a in labels.items()},
                 "capability": run.task.capability, "input": self._for_ballot(run, "input", run.task.input),
                 "task_id": run.task.id}
        run.vote = self.service.open_vote(
            f"consensus of task {run.task.id}", list(labels), run.method, voters or run.agents,
            DEFAULT_DEADLINE_S, run.task.trace.child(), lambda v: self._voted(run, v), extra=extra)

    def _voted(self, run: _StepRun, vote: VoteRun) -> None:
        outcome = vote.outcome
        assert outcome is not None
        labels = run.labels()
        if outcome.winner is None:
            self._fail(run, {"code": "CONSENSUS_NO_WINNER", "vote_id": vote.id,
                             "tally": outcome.tally,
                             "message": f"the vote on {len(labels)} candidates had no winner "
                                        f"({outcome.ballots_counted} ballots counted)",
                             "hint": "the agents' vote() abstained or failed: implement vote()"})
            return
        result = {"winner": outcome.winner, "agent": labels[outcome.winner],
                  "output": run.outputs[labels[outcome.winner]], "method": outcome.method,
                  "tally": outcome.tally, "support": outcome.support, "vote_id": vote.id,
                  "k": run.k, "k_run": len(run.agents),
                  "candidates": [{"label": lbl, "agent": a, "output": run.outputs[a]}
                                 for lbl, a in labels.items()],
                  "failed": run.errors}
        self._settle(run, "succeeded", result=result)

    def _fail(self, run: _StepRun, error: dict[str, Any]) -> None:
        self._settle(run, "failed", error=error)

    def _for_ballot(self, run: _StepRun, label: str, output: Any) -> Any:
        """A candidate as a vote request carries it: inline up to INLINE_CANDIDATE_BYTES,
        else a reference (its size and the start of its JSON) with the handle of a copy in
        the coordinator's arena block, which each voter's agent reads in place of the
        reference before its ``vote`` hook sees the request (runtime.agents.process): 3
        voters of a 30 KB candidate read one block instead of three 30 KB frames.  The
        block is freed when the step settles; a voter too late for it keeps the reference."""
        data = orjson.dumps(output)
        if len(data) <= INLINE_CANDIDATE_BYTES:
            return output
        ref = {"$large": label, "bytes": len(data), "preview": data[:256].decode("utf-8", "replace")}
        handle = self.sched.payloads.share(data)
        if handle is not None:
            run.shared.append(handle)
            ref["handle"] = handle.to_json()
        return ref

    def _settle(self, run: _StepRun, outcome: str, result: Any = None, error: Any = None) -> None:
        task = run.task
        for handle in run.shared:
            self.sched.payloads.discard(handle)
        run.shared.clear()
        self.running.pop(task.id, None)
        self.sched.result_sinks.pop(task.id, None)
        fin = self.coord.journal.finish_attempt(task.id, run.attempt, outcome, result=result,
                                                error=error)
        self.coord.emit("consensus." + outcome, task.trace, task_id=task.id, attempt=run.attempt,
                        winner=(result or {}).get("winner"), error=(error or {}).get("code"))
        if self.sched.tasks.get(task.id) is task:  # not cancelled or expired meanwhile
            self.sched.follow(task, run.attempt, fin)


# ---------------------------------------------------------------------------- the service

class Service:
    """The coordinator's voting, negotiation, bargaining and consensus-step service."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.ports = Ports(coord.ask, coord.call_later, coord.clock, coord.emit)
        self.ids = itertools.count(1)
        self.open: dict[str, Any] = {}            # id -> VoteRun | NegotiationRun | BargainRun
        self.recent: deque[dict[str, Any]] = deque(maxlen=KEEP_RECENT)
        self.steps = ConsensusSteps(coord, self)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{int(time.time())}-{next(self.ids)}"

    # -- agents

    def agent_joined(self, link: Any) -> None:
        """New agents vote from the next vote on."""

    def agent_died(self, agent_id: str) -> None:
        for run in list(self.open.values()):
            (run.round if isinstance(run, VoteRun) else run).agent_died(agent_id)
        self.steps.agent_died(agent_id)

    def _closed(self, then: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """A run's on_done: keep its record among the recent ones, then ``then(run)``."""
        def done(run: Any) -> None:
            self.open.pop(run.id, None)
            self.recent.append(run.to_json())
            if then is not None:
                then(run)
        return done

    # -- voters

    def voters(self, pool: str | None, listed: list[str] | None) -> list[str]:
        agents = self.coord.scheduler.agents
        if listed:
            unknown = [a for a in listed if a not in agents]
            if unknown:
                raise NotFound(f"voters {unknown} are not connected agents",
                               hint="`agora agents` lists the live agents")
            return sorted(listed)
        chosen = sorted(a.id for a in agents.values() if pool is None or a.pool == pool)
        if not chosen:
            where = f"pool {pool!r}" if pool else "any pool"
            raise NotFound(f"no live agent in {where} to vote",
                           hint="`agora agents` lists the live agents and their pools")
        return chosen

    def weights(self, voters: list[str]) -> dict[str, float]:
        """Each voter's declared quality (mean over its capabilities; 0.5 if none)."""
        out = {}
        for v in voters:
            caps = self._caps(v)
            qs = [float(c.get("quality", 0.5)) for c in caps.values()]
            out[v] = sum(qs) / len(qs) if qs else 0.5
        return out

    def _caps(self, voter: str) -> dict[str, Any]:
        link = self.coord.scheduler.agents.get(voter)
        return link.caps if link is not None else {}

    def weights_by(self, source: Any, voters: list[str]) -> tuple[dict[str, float] | None, str | None]:
        """``weights`` as asked: a dict (explicit, voter -> weight), ``"reputation"`` (the
        market's score, mean over the voter's capabilities), ``"stake"`` (the voter's
        balance in credits), ``"quality"`` (declared), or None; and the source's name."""
        if source is None or isinstance(source, dict):
            return source, None if source is None else "explicit"
        if source == "quality":
            return self.weights(voters), source
        if source == "reputation":
            return self._reputation_weights(voters), source
        if source == "stake":
            return self._stake_weights(voters), source
        raise InvalidInput(f"weights must be an object (voter -> weight) or one of "
                           f"{list(WEIGHT_SOURCES)}, got {source!r:.100}", field="weights")

    def _reputation_weights(self, voters: list[str]) -> dict[str, float]:
        """The market's reputation as learned (its durable record: the store)."""
        from coordination.reputation import Reputation
        from coordination.services.store import MarketMemory, Store
        rep, now = Reputation(), self.coord.clock()
        MarketMemory(Store(self.coord.journal.conn), self.coord.clock).load(rep, {})
        out = {}
        for v in voters:
            caps = sorted(set(self._caps(v)) | {c for a, c in rep.keys() if a == v})
            scores = [rep.score(v, c, now) for c in caps] or [rep.config.prior]
            out[v] = sum(scores) / len(scores)
        return out

    def _stake_weights(self, voters: list[str]) -> dict[str, float]:
        """Credits each voter holds in the ledger (0 without an account: it stakes nothing)."""
        from coordination.ledger import Ledger
        from coordination.services.market import agent_account
        ledger = Ledger(self.coord.journal.conn, nested=True)
        out = {}
        for v in voters:
            try:
                out[v] = max(0, ledger.balance(agent_account(v))) / 1000
            except NotFound:
                out[v] = 0.0
        return out

    def open_vote(self, question: str, options: list[str], method: str, voters: list[str],
                  deadline_s: float, trace: TraceContext,
                  on_done: Callable[[VoteRun], None] | None = None, *,
                  quorum: Quorum | None = None, weights: Any = None,
                  tie_break: str | int = "lexicographic",
                  extra: dict[str, Any] | None = None, until_deadline: bool = False) -> VoteRun:
        """Open a vote among live ``voters``; ``on_done(run)`` once its outcome is out.
        ``weights``: see :meth:`weights_by`; ``weighted`` defaults to declared quality."""
        if method == "weighted" and weights is None:
            weights = "quality"
        weights, source = self.weights_by(weights, voters)
        box = BallotBox(question, options, method, voters, quorum, self.coord.clock() + deadline_s,
                        self.coord.clock, weights=weights, tie_break=tie_break)
        run = VoteRun(self.ports, self._new_id("vote"), box, voters, deadline_s, trace,
                      self._closed(on_done), extra, until_deadline=until_deadline,
                      weights_by=source)
        self.open[run.id] = run
        run.start()
        return run

    # -- commands

    def cmd_vote(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        only(args, "question", "options", "method", "pool", "voters", "deadline_s", "quorum",
             "weights", "tie_break", "wait", "until_deadline")
        voters = self.voters(arg(args, "pool", str, None), _names(args, "voters"))
        method = arg(args, "method", str, "plurality")
        d = Deferred() if arg(args, "wait", bool, True) else None
        run = self.open_vote(arg(args, "question", str), _names(args, "options", required=True),
                             PIPELINE_METHODS.get(method, method), voters,
                             _seconds(args, "deadline_s"), _span(trace),
                             None if d is None else self._resolve_later(d),
                             quorum=_quorum(args), weights=arg(args, "weights", (dict, str), None),
                             tie_break=arg(args, "tie_break", (str, int), "lexicographic"),
                             until_deadline=arg(args, "until_deadline", bool, False))
        return d if d is not None else {"id": run.id, "voters": run.voters}

    def _resolve_later(self, d: Deferred) -> Callable[[Any], None]:
        # an outcome can come within this very call (no voter reachable): resolve after bind
        return lambda run: self.coord.call_later(0.0, lambda: d.resolve(run.to_json()))

    def cmd_votes(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "id", "limit", "kind")
        wanted = arg(args, "id", str, None)
        rows = [r.to_json() for r in self.open.values()] + list(reversed(self.recent))
        if wanted is not None:
            found = [r for r in rows if r["id"] == wanted]
            if not found:
                raise NotFound(f"no recent vote {wanted!r}",
                               hint=f"only the last {KEEP_RECENT} are kept; "
                                    "`agora votes` lists them")
            return found[0]
        kind = arg(args, "kind", str, None)
        return [r for r in rows if kind is None or r["kind"] == kind][:arg(args, "limit", int, 50)]

    def cmd_negotiate(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        only(args, "question", "options", "method", "threshold", "max_rounds", "round_s", "pool",
             "voters", "weights", "quorum", "tie_break")
        parties = self.voters(arg(args, "pool", str, None), _names(args, "voters"))
        method = arg(args, "method", str, "plurality")
        method = PIPELINE_METHODS.get(method, method)
        weights = arg(args, "weights", (dict, str), "quality" if method == "weighted" else None)
        neg = Negotiation(arg(args, "question", str), _names(args, "options", required=True),
                          method, arg(args, "threshold", (int, float), 0.5),
                          arg(args, "max_rounds", int, 3), electorate=parties,
                          weights=self.weights_by(weights, parties)[0], quorum=_quorum(args),
                          tie_break=arg(args, "tie_break", (str, int), "lexicographic"),
                          clock=self.coord.clock)
        d = Deferred()
        run = NegotiationRun(self.ports, self._new_id("neg"), neg, parties,
                             _seconds(args, "round_s"), _span(trace),
                             self._closed(self._resolve_later(d)))
        self.open[run.id] = run
        run.start()
        return d

    def op_vote_cast(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        """Agent op ``vote.cast`` ``{"vote_id", "ballot"}``: a (re-)vote while the vote (or
        the negotiation's round) is open; it replaces the agent's earlier ballot."""
        only(args, "vote_id", "ballot", "trace")
        vote_id = arg(args, "vote_id", str)
        run = self.open.get(vote_id)
        if not isinstance(run, (VoteRun, NegotiationRun)):
            raise NotFound(f"no open vote or negotiation {vote_id!r}",
                           hint="it closed (the deadline passed or everybody answered), or the id is wrong")
        return run.recast(agent, args.get("ballot"))

    def cmd_bargain(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        only(args, "agent", "capability", "initial", "reservation", "beta", "max_rounds", "move_s")
        seller = arg(args, "agent", str)
        if seller not in self.coord.scheduler.agents:
            raise NotFound(f"agent {seller!r} is not connected",
                           hint="`agora agents` lists the live agents")
        buyer = PriceStrategy("buyer", arg(args, "initial", (int, float)),
                              arg(args, "reservation", (int, float)),
                              time_dependent(float(arg(args, "beta", (int, float), 1.0))))
        session = AlternatingOffers(first="buyer", max_rounds=arg(args, "max_rounds", int, 10),
                                    clock=self.coord.clock, subject=arg(args, "capability", str))
        d = Deferred()
        run = BargainRun(self.ports, self._new_id("bargain"), session, buyer, seller,
                         session.subject, _seconds(args, "move_s"), _span(trace),
                         self._closed(self._resolve_later(d)))
        self.open[run.id] = run
        run.start()
        return d


def _names(args: dict[str, Any], name: str, required: bool = False) -> Any:
    """A list argument of non-empty strings (None if absent and not required)."""
    value = arg(args, name, list) if required else arg(args, name, list, None)
    if value is not None and not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"argument {name!r} must be a list of non-empty strings, "
                           f"got {value!r:.200}", field=name)
    return value


def _quorum(args: dict[str, Any]) -> Quorum | None:
    """``quorum``: a ballot count, a fraction of the electorate (0.6 or "60%"), or both."""
    value = arg(args, "quorum", (int, float, str, dict), None)
    return None if value is None else Quorum.of(value)


def _span(trace: TraceContext | None) -> TraceContext:
    """A span under the client's trace (a new trace if it sent none)."""
    return (trace or TraceContext.new_trace()).child()


def _seconds(args: dict[str, Any], name: str) -> float:
    value = float(arg(args, name, (int, float), DEFAULT_DEADLINE_S))
    if not 0 < value <= 600:
        raise InvalidInput(f"argument {name!r} must be within (0, 600] s, got {value}", field=name)
    return value


def install(coord: ServiceHost) -> Service:
    service = Service(coord)
    coord.add_agent_listener(service)
    coord.add_turn_hook(service.steps.turn)
    coord.add_task_taker(service.steps.take)
    coord.add_consensus_methods(PIPELINE_METHODS)
    coord.add_agent_ops({"vote.cast": service.op_vote_cast})
    coord.add_commands({"vote": service.cmd_vote, "votes": service.cmd_votes,
                           "negotiate": service.cmd_negotiate, "bargain": service.cmd_bargain})
    return service
