"""The agora daemon: the root supervisor process and its loop.

::

    agora daemon (root: single-threaded, only supervises and forks)
    ├── telemetry                 started first, stopped last: no event is lost
    └── core (one_for_one, transient, significant)
        ├── registry (one_for_one)  registry.0 .. registry.N-1
        ├── coordinator             control socket, journal, dispatch, market, voting
        └── pools (one_for_one)
            └── pool:<name> (transient supervisor)
                └── agent:<name>.<i>

The root's loop is one ``multiprocess.connection.wait`` over the workers' sentinels, the
root command socket (the coordinator asks it to start and stop agents, and for the
tree's status) and a signal wake-up pipe.  SIGTERM/SIGINT stop the tree in reverse order
and exit 0.  A pid file with an exclusive ``flock`` keeps two daemons off one home.

Restarts that cannot wedge (issue 15, items 5 and 6):

* ``core`` is ``one_for_one``: a coordinator restart restarts the coordinator only.  Agents
  keep running their tasks and reconnect to the new coordinator, which reconciles what
  they announce with the journal (``runtime.coordinator.reconcile``).  The registry
  partitions keep running too: their entries belong to agent pids, which are still alive,
  and each agent's new hello registers it again.  Telemetry is outside ``core`` and
  never notices.
* The wedge of two coordinator deaths close together came from rest_for_one: the root
  restarted the pools synchronously, each new agent waited up to 10 s in its start-up to
  connect to a coordinator that had died again, ``StartFailed`` counted against the pool
  and started the next one, and the root never got back to its loop (signals, ``down``
  and the new coordinator's death all unseen).  Now no agent start waits on the
  coordinator (an agent that cannot connect is ready at once and retries on its own), and
  a coordinator restart starts no agent.
* ``core`` is ``transient`` and ``significant``: when its intensity (5 restarts in 10 s) is
  exceeded it gives up and the root shuts down with it; the daemon exits 1 and its log
  (stderr, ``agora.log``) and the ``supervisor.escalation`` event name the reason.  There
  is never a live root that serves nothing.

Pool recovery (issue 16, item 5): a pool supervisor that gave up is noticed after each
turn's sentinels and restarted when its backoff is due (the loop's wait is bounded by the
next retry): ``runtime.pools.recovery``.  Root commands ``pools_state`` (every pool's
state, failures, retry time, last exit reasons) and ``restart_pool`` (now) serve the
coordinator's ``agora pools`` / ``agora pools restart``; ``start_agent`` into a failed pool
adds the agent without starting it (it starts with the pool).  A pool whose agents cannot
start during ``agora up`` still fails the start (a bad import path or setup is a config
error to see at once, not later).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from multiprocess.connection import wait

from runtime.config import Config, RunPaths, RunResources, load_config
from runtime.errors import AgoraError, Conflict, InvalidInput, NotFound, Unavailable, to_wire
from runtime.observability.events import Emitter, set_tracing
from runtime.observability.telemetry import telemetry_main
from runtime.supervision.child_spec import ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.supervision.forking import root_private_fds, set_process_name
from runtime.supervision.supervisor import Tree
from runtime.wire.boundary import error_wire
from runtime.wire.protocol import FrameReader, Limits, encode_frame, parse_request, peer_uid
from runtime.wire.server import listen_unix, remove_run_dir

__all__ = ["Daemon", "run_daemon", "PidLock", "ROOT_LIMITS", "DaemonRunning", "running", "read_pid",
           "config_source"]

#: Frames on the root command socket: small requests from the coordinator (and its
#: scaler); the control channel's checks with a 1 MiB frame.  Replies are bounded in time:
#: a peer that does not read them within ROOT_SEND_S is dropped (the root never blocks).
ROOT_LIMITS = Limits(max_frame=1 << 20, max_depth=16, max_string=4096)
ROOT_SEND_S = 2.0
ACCEPT_PAUSE_S = 0.05  # a listener out of descriptors rests this long before accepting again
_POOL_SUP = "root/core/pools/pool:"


class DaemonRunning(Conflict):
    """``agora up`` on a home whose daemon runs (exit code 5, Conflict's)."""

    code = "DAEMON_RUNNING"


def already_running(home: Path, pid: int | str, config: str) -> DaemonRunning:
    return DaemonRunning(f"an agora daemon already runs on home {home} (pid {pid}, config {config})",
                         hint="`agora up --replace` stops it and starts with the new config; "
                              "`agora down` stops it")


class PidLock:
    """``<home>/agora.pid`` held with flock for the daemon's whole life.

    It holds two lines: the root's pid and the config file it runs with (``(defaults)``
    without one), so that a second ``agora up`` can name both."""

    def __init__(self, home: Path, config: str = "(defaults)") -> None:
        self.path = home / "agora.pid"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            lines = (os.read(self.fd, 4096).decode(errors="replace").splitlines() + ["?", "?"])[:2]
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise already_running(home, lines[0] or "?", lines[1] or "?") from None
            raise
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n{config}\n".encode())
        root_private_fds.add(self.fd)

    def release(self) -> None:
        root_private_fds.discard(self.fd)
        try:
            os.unlink(self.path)
        finally:
            os.close(self.fd)


def _root_args(cmd: str, args: dict[str, Any], **kinds: type) -> list[Any]:
    """The arguments of a root command, each of its type (booleans are not ints), no
    others: InvalidInput naming the argument."""
    unknown = sorted(set(args) - set(kinds))
    if unknown:
        raise InvalidInput(f"{cmd}: unknown argument(s) {[u[:40] for u in unknown]}",
                           hint=f"allowed: {sorted(kinds)}")
    out = []
    for name, kind in kinds.items():
        value = args.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidInput(f"{cmd}: argument {name!r} must be {kind.__name__}, "
                               f"got {type(value).__name__}", field=name)
        out.append(value)
    return out


def read_pid(home: Path) -> int | None:
    try:
        return int((home / "agora.pid").read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def running(home: Path) -> tuple[int, str] | None:
    """(pid, config) of the daemon that runs on ``home``, or None.  Reads the pid file and
    checks the process is alive and is an agora daemon; it never takes the lock (a check
    holding it, even briefly, could make a daemon starting at that moment fail)."""
    try:
        lines = (home / "agora.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    if not comm.startswith("agora:daemon"):
        return None  # a stale file (the daemon was SIGKILLed) whose pid was reused
    return pid, (lines[1] if len(lines) > 1 else "?")


def pool_recovery(cfg: Config, tree: Tree, emit: Any) -> Any:
    """The root's watch over its pools: failed ones are restarted after a backoff."""
    from runtime.pools.recovery import Recovery
    pools = {p.name: (f"{_POOL_SUP}{p.name}", p.restart_backoff_s, p.restart_backoff_max_s)
             for p in cfg.pools}
    return Recovery(tree, pools, emit)


def tree_spec(cfg: Config, run: RunPaths, res: RunResources) -> SupervisorSpec:
    """The daemon's supervision tree for a config."""
    from runtime.coordinator.loop import coordinator_main
    from runtime.daemon.composition import composition
    from runtime.pools.specs import pools_spec
    from runtime.registry.service import registry_spec

    telemetry = ChildSpec("telemetry", telemetry_main, (str(cfg.home), run.events), shutdown=5.0)
    coordinator = ChildSpec("coordinator", coordinator_main, (cfg, run, composition(cfg)),
                            shutdown=cfg.drain_s + 5)
    from runtime.pools.ray_head import ray_head_spec
    head = ray_head_spec(cfg)  # pools with engine = "ray" and no [ray] address
    children = (registry_spec(cfg, run), coordinator, *([head] if head else []),
                pools_spec(cfg, run, res.slots))
    core = SupervisorSpec("core", children,
                          strategy=Strategy.ONE_FOR_ONE, intensity=5, period=10.0,
                          restart=Restart.TRANSIENT, significant=True)
    return SupervisorSpec("root", (telemetry, core), intensity=5, period=10.0)


class Daemon:
    """The root process: owns the tree, the pid lock and the root command socket."""

    def __init__(self, cfg: Config, config_path: str = "(defaults)") -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.run = RunPaths.for_home(cfg.home)
        set_tracing(cfg.tracing)  # before any Emitter here or in a child (runtime.observability.events)
        self.emit = Emitter(self.run.events, "root")
        self.stopping = False
        self.conns: dict[socket.socket, FrameReader] = {}
        self._accept_paused_until = 0.0  # out of descriptors: the listener rests (ACCEPT_PAUSE_S)

    def serve(self) -> int:
        set_process_name("agora:daemon")
        lock = PidLock(self.cfg.home, self.config_path)
        wake_r = self._install_signals()
        listener = self._listen()
        try:
            from runtime.daemon.resources import prepare_root
            self.resources = prepare_root(self.cfg, self.run, self.emit)
            self.tree = Tree(tree_spec(self.cfg, self.run, self.resources), emit=self.emit,
                             resources=self.resources)
            self.tree.start()
            self.recovery = pool_recovery(self.cfg, self.tree, self.emit)
            self.emit("daemon.started", home=str(self.cfg.home))
            self.emit.flush()
            self._loop(listener, wake_r)
            return self._exit_code()
        finally:
            self._shutdown(listener, lock)

    def _exit_code(self) -> int:
        """0 after a requested stop; 1 (the reason on stderr, i.e. agora.log) after the
        tree gave up."""
        if not self.tree.failed:
            return 0
        reason = self.tree.reason or "the supervision tree gave up"
        self.emit("daemon.failed", reason=reason)
        print(f"agora daemon: exiting with status 1: {reason}", file=sys.stderr, flush=True)
        return 1

    def _loop(self, listener: socket.socket, wake_r: int) -> None:
        while not self.stopping and not self.tree.failed:
            listening = [listener] if time.monotonic() >= self._accept_paused_until else []
            ready = wait([*self.tree.sentinels, *listening, wake_r, *self.conns], self._wait_s())
            self.tree.handle(ready)
            self.recovery.step(self.tree.clock())  # failed pools: noticed, restarted when due
            for r in ready:
                if r is listener:
                    self._accept(listener)
                elif r == wake_r:
                    self._on_signal(wake_r)
                elif r in self.conns:
                    self._serve_conn(r)
            self.emit.maybe_flush()

    def _wait_s(self) -> float | None:
        """The loop's wait bound: the next event flush, the next pool retry, or the end of
        a pause of the listener."""
        pause = self._accept_paused_until - time.monotonic()
        waits = [w for w in (self.emit.flush_due_in(), self.recovery.next_in(self.tree.clock()),
                             pause if pause > 0 else None) if w is not None]
        return min(waits) if waits else None

    # -- root command socket (only processes of the tree use it) ------------------------

    def _listen(self) -> socket.socket:
        sock = listen_unix(self.run.root_sock)
        root_private_fds.add(sock.fileno())
        return sock

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError as e:  # EMFILE/ENFILE: a flood of connections must not end the root
            self.emit("root.accept_failed", error=f"{type(e).__name__}: {e}"[:200])
            self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
            return
        if peer_uid(conn) != os.getuid():
            conn.close()
            return
        root_private_fds.add(conn.fileno())
        conn.settimeout(ROOT_SEND_S)
        self.conns[conn] = FrameReader(ROOT_LIMITS)

    def _serve_conn(self, conn: socket.socket) -> None:
        """Frames of one root connection, under the boundary policy: each request gets a
        reply; bad bytes get the frames before them answered, then an explicit refusal,
        then the connection is dropped.  Nothing a peer sends ends the root."""
        refusal: AgoraError | None = None
        try:
            data = conn.recv(1 << 16)
            frames = self.conns[conn].feed(data) if data else None
        except AgoraError as e:
            frames, refusal = getattr(e, "frames", []), e
        except OSError:
            frames = None
        if frames is None:
            self._drop(conn)
            return
        try:
            for req in frames:
                conn.sendall(encode_frame(self._command(req)))
            if refusal is not None:
                conn.sendall(encode_frame({"v": 1, "id": None, "error": to_wire(refusal)}))
        except OSError:  # the peer went away or does not read (ROOT_SEND_S)
            refusal = refusal or AgoraError("send failed")
        if refusal is not None:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        root_private_fds.discard(conn.fileno())
        del self.conns[conn]
        conn.close()

    def _command(self, obj: Any) -> dict[str, Any]:
        """One root request -> its reply (runtime.wire.boundary: never raises)."""
        rid = obj.get("id") if isinstance(obj, dict) else None
        rid = rid if type(rid) is int and 0 <= rid < 2**63 else None
        try:
            req = parse_request(obj)
            reply = {"v": 1, "id": rid, "ok": self._dispatch(req.cmd, req.args)}
            encode_frame(reply)  # a reply we cannot encode is an error reply instead
            return reply
        except Exception as e:  # noqa: BLE001 - the root's boundary
            return {"v": 1, "id": rid, "error": error_wire(e, "root command", self.emit)}

    def _dispatch(self, cmd: Any, args: dict[str, Any]) -> Any:
        from runtime.pools.specs import agent_spec
        if cmd in ("tree", "shutdown", "pools_state"):
            _root_args(cmd, args)
        if cmd == "tree":
            return self.tree.status()
        if cmd in ("pools_state", "restart_pool"):
            return self._pools_command(cmd, args)
        slots = self.resources.slots
        if cmd == "start_agent":
            pool, index = _root_args(cmd, args, pool=str, index=int)
            if not 0 <= index < 1 << 20:
                raise InvalidInput(f"start_agent: argument 'index' {index} is out of range [0, 2**20)",
                                   field="index")
            if not pool or "/" in pool:
                raise InvalidInput(f"start_agent: argument 'pool' {pool[:80]!r} is not a pool name",
                                   field="pool")
            sup = self.tree.find(f"{_POOL_SUP}{pool}")
            try:  # into a failed pool: added now, started with the pool's restart (a replacement
                # of a killed agent keeps its place; `agora scale` refuses failed pools earlier)
                child = sup.start_child(agent_spec(self.cfg, self.run, pool, index, slots),
                                        start=sup.state != "failed")
            except Exception:  # typed by _command; the slot goes back either way
                slots.give_back(f"{pool}.{index}")
                raise
            return {"pid": child.pid, "id": child.id}
        if cmd == "terminate_child":
            supervisor, child = _root_args(cmd, args, supervisor=str, child=str)
            if not supervisor.startswith(_POOL_SUP) or not child.startswith("agent:"):
                raise InvalidInput(f"terminate_child: only agents of a pool can be terminated "
                                   f"(supervisor {supervisor[:80]!r}, child {child[:80]!r})",
                                   field="child", hint=f"supervisor '{_POOL_SUP}<pool>', child 'agent:<id>'")
            self.tree.find(supervisor).terminate_child(child)
            slots.give_back(child[len("agent:"):])
            return True
        if cmd == "shutdown":
            self.stopping = True
            return True
        raise InvalidInput(f"unknown root command {cmd!r}",
                           hint="root commands: tree, start_agent, terminate_child, shutdown, "
                                "pools_state, restart_pool")

    def _pools_command(self, cmd: str, args: dict[str, Any]) -> Any:
        """``pools_state``: every pool's recovery row; ``restart_pool``: restart a failed
        pool now (UNAVAILABLE if it does not start, CONFLICT if it is running)."""
        now = self.tree.clock()
        if cmd == "pools_state":
            return self.recovery.rows(now)
        (pool,) = _root_args(cmd, args, pool=str)
        if pool not in self.recovery.pools:
            raise NotFound(f"restart_pool: no pool named {pool[:80]!r}",
                           hint=f"pools: {sorted(self.recovery.pools)}")
        self.recovery.notice(now)  # a failure the loop has not noticed yet counts first
        if self.recovery.pools[pool].retry_at is None:
            raise Conflict(f"pool {pool!r} is running: nothing to restart",
                           hint="`agora scale` resizes it; `agora pools` shows its state")
        row = self.recovery.restart(pool, now, why="requested")
        if row["state"] != "running":
            exits = row["last_exits"][-1:] or [{"reason": "?"}]
            raise Unavailable(f"pool {pool!r} did not start: {exits[0]['reason']}",
                              hint=f"next automatic retry in {row['retry_in_s']} s; the daemon log has "
                                   "the agent's output")
        return row

    # -- signals and shutdown -----------------------------------------------------------

    def _install_signals(self) -> int:
        r, w = os.pipe()
        os.set_blocking(w, False)
        root_private_fds.update((r, w))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        signal.set_wakeup_fd(w)
        return r

    def _on_signal(self, wake_r: int) -> None:
        os.read(wake_r, 64)
        self.stopping = True

    @staticmethod
    def _drain_first(tree: Tree) -> None:
        """A graceful stop drains before the reverse-order stop: the coordinator gets its
        SIGTERM while the agents still run, lets running tasks finish (up to drain_s) and
        leaves the rest accepted in the journal; then the tree stops in reverse order."""
        try:
            tree.find("root/core").child("coordinator").stop()
        except AgoraError:
            pass  # the core already gave up: nothing to drain

    def _stop_core(self, tree: Tree) -> None:
        """Everything but telemetry, then flush our own events while telemetry still
        listens: a graceful stop loses no event (only telemetry's own stop goes unlogged)."""
        try:
            tree.find("root/core").stop()
        except AgoraError:
            pass  # no core (it failed to start): nothing to stop before telemetry
        self.emit.flush()

    def _shutdown(self, listener: socket.socket, lock: PidLock) -> None:
        self.emit("daemon.stopping")
        tree = getattr(self, "tree", None)
        if tree is not None:
            self._drain_first(tree)
            self._stop_core(tree)
            tree.stop()
        for conn in list(self.conns):
            self._drop(conn)
        listener.close()
        from runtime.daemon.resources import release_root
        release_root(getattr(self, "resources", None))
        remove_run_dir(self.run)
        self.emit.close()
        lock.release()


def run_daemon(home: str | Path | None = None, config_file: str | Path | None = None,
               **overrides: Any) -> int:
    from runtime.daemon.composition import check_config
    cfg = load_config(home, config_file, **overrides)
    check_config(cfg)
    from runtime.agents.loading import probe_agents  # a bad agent path fails now, not after a time-out
    probe_agents(((p.name, p.agent) for p in cfg.pools), cfg.config_dir)
    return Daemon(cfg, config_source(cfg.home, config_file)).serve()


def config_source(home: Path, config_file: str | Path | None) -> str:
    """The config file a daemon runs with, as ``agora up`` reports it."""
    if config_file:
        return str(Path(config_file).resolve())
    default = Path(home) / "agora.toml"
    return str(default.resolve()) if default.exists() else "(defaults)"


def wait_until_up(client_factory, deadline: float, proc: Any = None) -> None:
    """Poll the control socket (with backoff) until the daemon answers ``ping``.

    ``proc`` (the daemon's Popen) lets a daemon that exits during start-up fail fast.
    """
    delay = 0.01
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"the daemon exited during start-up (exit code {proc.returncode})",
                              hint="its log is agora.log in the home directory")
        try:
            with client_factory() as c:
                c.call("ping")
                # the root answers the tree's status only once its start-up is complete,
                # i.e. every initial agent has said hello: then capabilities are known
                c.call("status", timeout=max(1.0, deadline - time.monotonic()))
                return
        except AgoraError as e:
            last = e
        time.sleep(delay)
        delay = min(delay * 2, 0.02)  # a refused connect costs microseconds; a coarse poll
        # cost start-up up to its own period (0.2 s: `agora up` read 0.72 s for 0.55)
    raise Unavailable("the daemon did not answer within its start-up time",
                      hint="see the daemon log in the home directory") from last


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def wait_gone(home: Path, pid: int | None, deadline: float) -> None:
    """Wait (bounded, with backoff) until the daemon of ``home`` has exited."""
    delay = 0.01
    while pid is not None and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # our own child (embedded runs): reap it so it is not a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if _is_zombie(pid):  # exited; its parent (not us) has not reaped it yet
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    if pid is not None:
        raise Unavailable(f"the daemon (pid {pid}) is still running after the wait",
                          hint="`agora ps` shows what it is waiting for; kill it with SIGKILL if stuck")


if __name__ == "__main__":  # pragma: no cover - `agora up --foreground` is the entry
    sys.exit(run_daemon())
