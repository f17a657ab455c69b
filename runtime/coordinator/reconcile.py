"""Reconciling live agents with the journal after a coordinator restart.

A coordinator restart restarts nothing else (``runtime.daemon.root``): the agents keep
running their tasks and reconnect (``runtime.agents.process``), announcing in their hello
the attempts still running (``inflight``) and the results the old coordinator may not have
recorded (``results``).  The new coordinator:

* at start, if this is not the run's first coordinator (``RunResources.coordinator_starts``),
  keeps the journal's open attempts open as *orphans* instead of closing them as crashed;
* on each hello: a result of an attempt the journal would still take is recorded (the
  journal's guarded UPDATE makes it exactly once; a result it already has is skipped
  without reading its payload); a claimed orphan is *adopted* (it stays the same attempt
  on the same agent: nothing is re-run, no attempt is counted); an orphan of that agent
  that it neither claims nor reports is lost (crashed, requeued by the journal's rules);
* ``RECONCILE_S`` after start (or as soon as no orphan is left) every unclaimed orphan is
  lost: its agent did not come back.

Decisions: the registry partitions are not restarted and keep their entries (their owners,
the agent pids, are alive; a hello registers its agent again, which is idempotent for the
same owner); the ``local`` registry lives in the coordinator and is rebuilt from the
hellos.  Telemetry is not restarted either: events emitted while the coordinator was down
(by agents, the root) are kept.  Clients see ``UNAVAILABLE`` while the control socket is
down and retry; what they were waiting on stays in the journal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.tasks.scheduler import attempt_open, resumable, running_attempts

__all__ = ["Reconciler", "RECONCILE_S"]

RECONCILE_S = 3.0  # agents reconnect within ~0.5 s of the new socket (their backoff cap)

_LOST = {"code": "LOST", "message": "the coordinator restarted and no live agent claimed this attempt"}


class Reconciler:
    """Orphaned attempts of a restarted coordinator, and what each agent's hello says."""

    def __init__(self, scheduler: Any, journal: Any, emit: Callable[..., None],
                 task_run: Callable[[Any], Any], call_later: Callable[[float, Callable[[], None]], None]
                 ) -> None:
        self.scheduler, self.journal, self.emit = scheduler, journal, emit
        self.task_run, self.call_later = task_run, call_later
        self.orphans: dict[str, tuple[int, str]] = {}  # task id -> (attempt, agent id)

    def hold(self) -> list[Any]:
        """Restart: keep open attempts as orphans; return the tasks to resume otherwise."""
        for tid, attempt, agent in running_attempts(self.journal):
            self.orphans[tid] = (attempt, agent)
        self.emit("coordinator.reconciling", orphans=len(self.orphans), window_s=RECONCILE_S)
        if self.orphans:
            self.call_later(RECONCILE_S, self.close)
        return resumable(self.journal)

    def hello(self, link: Any, inflight: Any, results: Any) -> None:
        """A (re)connected agent's announcement, after its link joined the scheduler."""
        claimed = _claims(inflight)
        reported = []
        for r in results if isinstance(results, list) else ():
            if isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("attempt"), int):
                if attempt_open(self.journal, r["id"], r["attempt"]):
                    self._take(r["id"], r["attempt"], link)
                    reported.append(r)
        if reported:
            self.scheduler.results(link.id, reported)
        for tid, attempt in claimed.items():
            if self.orphans.get(tid, (None,))[0] == attempt:
                self._take(tid, attempt, link)
        for tid, (attempt, agent) in list(self.orphans.items()):
            if agent == link.id:
                self._lose(tid, attempt)
        self.emit("agent.reconciled", agent=link.id, adopted=len(claimed), results=len(reported))

    def close(self) -> None:
        """The window is over: whatever no agent claimed was lost with its agent."""
        for tid, (attempt, _) in list(self.orphans.items()):
            self._lose(tid, attempt)

    def _take(self, tid: str, attempt: int, link: Any) -> None:
        """Adopt ``tid``'s attempt on ``link`` (its result may follow at once)."""
        self.orphans.pop(tid, None)
        rec = self.journal.get(tid)
        if rec.state != "running" or rec.attempts != attempt:
            return  # cancelled meanwhile, or an old attempt: the journal will judge the result
        task = self.scheduler.tasks.get(tid) or self.task_run(rec)
        self.scheduler.adopt(task, link, attempt)

    def _lose(self, tid: str, attempt: int) -> None:
        self.orphans.pop(tid, None)
        rec = self.journal.get(tid)
        if rec.state == "running" and rec.attempts == attempt:
            self.scheduler.lost(self.task_run(rec), attempt, _LOST)


def _claims(inflight: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in inflight if isinstance(inflight, list) else ():
        if isinstance(i, dict) and isinstance(i.get("id"), str) and isinstance(i.get("attempt"), int):
            out[i["id"]] = i["attempt"]
    return out
