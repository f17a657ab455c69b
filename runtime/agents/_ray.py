"""The Ray engine (see runtime.agents.engines): an agent process that drives one Ray actor.

::

    coordinator ==(agents.sock)==> agent process (RayAgent: the runner of process.py, unchanged)
                                        | handler(cap)(input, task) = actor.run.remote(...), waited
                                        | bid / vote / propose      = actor.hook.remote(...), waited
                                        v
                                   Ray actor _Host (any node): the user's Agent class, its setup(ctx)
                                   with ctx.array(name) = the context's zero-copy view in Ray's
                                   object store

The agent process is a Ray driver (``ray.init(address=...)``); the actor is owned by it, so
the actor dies with it (Ray's fate sharing) and a restarted agent makes a new one.  A task's
events (``task.emit``) are collected in the actor and emitted here into the task's trace
when the call returns.  Cancellation: the waiting handler polls ``task.cancelled`` and
cancels the actor call; a call that will not stop is ended by the coordinator's grace kill
of this process, as for a local agent.  An actor that died (``RayActorError``: its worker
or its node is gone) ends this process with exit code ``ACTOR_DIED``: the coordinator sees
an agent death, the attempts are lost and rerouted, and the pool starts a new agent.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

from runtime.agents.agent import Agent, AgentContext
from runtime.errors import Unavailable

__all__ = ["RayAgent", "ACTOR_DIED", "connect"]

ACTOR_DIED = 75  # the agent process's exit code when its actor is gone (EX_TEMPFAIL)
POLL_S = 0.05  # how often a waiting handler looks at task.cancelled
CONNECT_S = 120.0  # bound on reaching the cluster (a local head may still be starting)
HOOK_S = 10.0  # bound on a bid, a ballot or a proposal from the actor


def connect(cfg: Any, address: str, env: dict[str, str]) -> Any:
    """``ray.init`` on ``address`` (bounded retries: a local head may still be starting);
    ``env``: what joining needs (the local head's token, runtime.pools.ray_head.ray_env)."""
    os.environ.update(env)  # before ray is imported: it reads its auth settings once
    import ray

    from runtime.agents.engines import loopback_only
    if not (loopback_only() or cfg.ray.get("allow_network")):
        raise Unavailable("refusing to join Ray: this process sees network interfaces other than "
                          "loopback, and Ray sends traffic beyond them",
                          hint="run the daemon in a loopback-only namespace (unshare --net, then "
                               "`ip link set lo up`), or set [ray] allow_network = true")
    deadline, delay = time.monotonic() + CONNECT_S, 0.1
    while True:
        try:
            return ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                            runtime_env=cfg.ray.get("runtime_env") or None, ignore_reinit_error=True)
        except ConnectionError as e:
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"no Ray cluster answered at {address} within {CONNECT_S} s: {e}") from e
            time.sleep(delay)  # bounded by the deadline above
            delay = min(delay * 2, 1.0)


class _ActorTask:
    """The task handle inside the actor: identity, events kept for the agent process."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.id, self.attempt, self.capability = meta["id"], meta["attempt"], meta["cap"]
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.cancelled = False

    def emit(self, type_: str, **fields: Any) -> None:
        self.events.append((type_, fields))

    def check(self) -> None:
        """Cancellation reaches an actor call as Ray's own cancellation."""


class _Contexts:
    def __init__(self, refs: dict[str, Any]) -> None:
        self.refs = refs

    def array(self, name: str) -> Any:
        import ray
        if name not in self.refs:
            from runtime.errors import NotFound
            raise NotFound(f"no context named {name!r} in this Ray agent", hint=f"contexts: {sorted(self.refs)}")
        return ray.get(self.refs[name])  # a read-only zero-copy view of the object store

    def bytes(self, name: str) -> memoryview:
        return memoryview(self.array(name)).cast("B")


class _Host:
    """The Ray actor: the user's Agent, unchanged, in a Ray worker."""

    def __init__(self, cls: type[Agent], ids: tuple[str, str, int], declared: dict[str, Any],
                 refs: dict[str, Any]) -> None:
        agent_id, pool, index = ids
        self.agent: Agent = cls()
        self.agent.ctx = AgentContext(agent_id, pool, index, declared, _Contexts(refs), lambda *a, **k: None)
        self.agent.setup(self.agent.ctx)

    def run(self, meta: dict[str, Any], value: Any) -> tuple[Any, list[Any]]:
        task = _ActorTask(meta)
        result = self.agent.handler(meta["cap"])(value, task)
        return result, task.events

    def hook(self, kind: str, request: dict[str, Any]) -> Any:
        return getattr(self.agent, kind)(request)

    def pid(self) -> int:
        return os.getpid()


class RayAgent:
    """What the agent process's runner drives when its pool's engine is ``ray``: the
    Agent's surface (handlers, bid, vote, propose), each a call on the actor."""

    def __init__(self, cfg: Any, pc: Any, cls: type[Agent], ids: tuple[str, str, int], address: str,
                 env: dict[str, str]) -> None:
        os.environ.update(env)  # before ray is imported: it reads its auth settings once
        import ray
        self.handlers = dict(cls.handlers)
        self.queue_len = 0
        self.ctx: AgentContext | None = None
        self._ray = ray
        connect(cfg, address, env)
        self._refs = _shared_contexts(str(cfg.home))
        opts = {"max_concurrency": pc.concurrency, "num_cpus": 0, **pc.ray}
        self.actor = ray.remote(_Host).options(**opts).remote(cls, ids, pc.capabilities, self._refs)
        self._wait(self.actor.pid.remote(), CONNECT_S)  # constructed (setup ran) before hello

    def setup(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def handler(self, cap: str) -> Any:
        if cap not in self.handlers:
            raise KeyError(cap)
        return lambda value, task: self._run(cap, value, task)

    def _run(self, cap: str, value: Any, task: Any) -> Any:
        from ray.exceptions import GetTimeoutError
        ref = self.actor.run.remote({"id": task.id, "attempt": task.attempt, "cap": cap}, value)
        while True:
            try:
                result, events = self._get(ref, POLL_S)  # one call per poll: no ray.wait first
                break
            except GetTimeoutError:
                if task.cancelled:
                    self._ray.cancel(ref)
                    task.check()  # raises Cancelled
        for type_, fields in events:
            task.emit(type_, **fields)
        return result

    def _get(self, ref: Any, timeout: float | None) -> Any:
        """The call's value; the handler's own exception; an actor death ends this process."""
        from ray.exceptions import RayActorError, RayTaskError
        try:
            return self._ray.get(ref, timeout=timeout)
        except RayTaskError as e:  # the handler raised: its own exception, for the retry policy
            cause = e.cause if isinstance(e.cause, BaseException) else None
            if cause is None:
                raise
            raise cause from None
        except RayActorError as e:  # the actor (its worker, its node) is gone: see the docstring
            self._actor_died(e)

    def _wait(self, ref: Any, timeout: float) -> Any:
        from ray.exceptions import GetTimeoutError
        try:
            return self._get(ref, timeout)
        except GetTimeoutError as e:
            raise Unavailable(f"the Ray actor did not answer within {timeout} s") from e

    def _actor_died(self, e: BaseException) -> None:
        if self.ctx is not None:
            self.ctx.emit("agent.actor_died", agent=self.ctx.agent_id, error=str(e)[:500])
            getattr(self.ctx.emit, "close", lambda: None)()
        traceback.print_exc()
        os._exit(ACTOR_DIED)

    def _hook(self, kind: str, request: dict[str, Any]) -> Any:
        return self._wait(self.actor.hook.remote(kind, request), HOOK_S)

    def bid(self, cfp: dict[str, Any]) -> Any:
        return self._hook("bid", cfp)

    def vote(self, request: dict[str, Any]) -> Any:
        return self._hook("vote", request)

    def propose(self, request: dict[str, Any]) -> Any:
        return self._hook("propose", request)

    def sale_bid(self, offer: dict[str, Any]) -> Any:
        return self._hook("sale_bid", offer)


def _read(reader: Any, name: str) -> Any:
    try:
        return reader.array(name)
    except Exception:  # a blob, not an array: ctx.bytes(name) reads it
        import numpy as np
        return np.frombuffer(bytes(reader.bytes(name)), dtype=np.uint8)


class _ContextStore:
    """One per daemon and Ray cluster (a named actor on this machine): puts each published
    context version in the object store once and hands out references to it."""

    def __init__(self, home: str) -> None:
        from shm.context import ContextReader
        self.reader = ContextReader(home)
        self.refs: dict[str, Any] = {}  # segment name (unique per version and run) -> ref

    def current(self) -> dict[str, list[Any]]:
        import ray
        out = {}
        for name in self.reader.names():
            key = self.reader.info(name).segment
            if key not in self.refs:
                self.refs[key] = ray.put(_read(self.reader, name))
            out[name] = [self.refs[key]]  # in a list: passed on as a reference, not resolved
        return out


def _shared_contexts(home: str) -> dict[str, Any]:
    """The published contexts as object references, put once per daemon: the first Ray
    agent starts the store (detached, so a restarted agent finds it; it ends with the
    cluster the daemon started, or with ``ray.kill`` by name on a cluster of the user's),
    pinned to this machine's node (it reads the shared memory here)."""
    import hashlib

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    name = "agora-contexts-" + hashlib.sha1(home.encode()).hexdigest()[:12]
    store = ray.remote(_ContextStore).options(
        name=name, namespace="agora", get_if_exists=True, lifetime="detached", num_cpus=0,
        scheduling_strategy=here).remote(home)
    return {k: v[0] for k, v in ray.get(store.current.remote(), timeout=CONNECT_S).items()}
