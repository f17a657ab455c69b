"""The supervision tree: strategies, restart types, intensity and escalation, shutdown.

Every wait is bounded by the sentinel a death makes ready; no sleeps order anything.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from runtime.supervision.child_spec import ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.supervision.supervisor import StartFailed, Tree


def serve(ctx):
    """A well-behaved child: ready, then waits; SIGUSR1 means a normal exit."""
    signal.signal(signal.SIGUSR1, lambda *_: os._exit(0))
    ctx.ready()
    while True:
        signal.pause()


def stubborn(ctx):
    """Ignores SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.ready()
    while True:
        signal.pause()


def crash_on_start(ctx):
    raise RuntimeError("boom during start-up")


def worker(cid, restart=Restart.PERMANENT, target=serve, shutdown=2.0):
    return ChildSpec(cid, target, restart=restart, shutdown=shutdown)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, type_, **fields):
        self.events.append((type_, fields))

    def of(self, type_):
        return [f for t, f in self.events if t == type_]


@pytest.fixture
def make_tree():
    trees = []

    def make(spec, **kw):
        rec = Recorder()
        tree = Tree(spec, emit=rec, **kw)
        tree.events = rec
        trees.append(tree)
        tree.start()
        return tree

    yield make
    for t in trees:
        t.stop()


def pids(tree, sup_path=None):
    sup = tree.find(sup_path) if sup_path else tree.root
    return {c.id: c.pid for c in sup.children if hasattr(c, "pid")}


def kill_and_handle(tree, pid, sig=signal.SIGKILL):
    os.kill(pid, sig)
    assert tree.wait_and_handle(timeout=10), "death not seen within 10 s (deadlock?)"


def test_start_in_order_stop_in_reverse(make_tree):
    spec = SupervisorSpec("root", tuple(worker(c) for c in "abc"))
    tree = make_tree(spec)
    started = [e["child"] for e in tree.events.of("supervisor.child_started")]
    assert started == ["root/a", "root/b", "root/c"]
    tree.stop()
    stopped = [e["child"] for e in tree.events.of("supervisor.child_stopped")]
    assert stopped == ["root/c", "root/b", "root/a"]


@pytest.mark.parametrize("strategy,restarted", [
    (Strategy.ONE_FOR_ONE, {"b"}),
    (Strategy.ONE_FOR_ALL, {"a", "b", "c"}),
    (Strategy.REST_FOR_ONE, {"b", "c"}),
])
def test_strategies(make_tree, strategy, restarted):
    spec = SupervisorSpec("root", tuple(worker(c) for c in "abc"), strategy=strategy,
                          intensity=5, period=60)
    tree = make_tree(spec)
    before = pids(tree)
    kill_and_handle(tree, before["b"])
    after = pids(tree)
    assert {c for c in "abc" if after[c] != before[c]} == restarted
    assert all(psutil.pid_exists(p) for p in after.values())
    assert tree.root.restarts == 1


@pytest.mark.parametrize("restart,normal,expect", [
    (Restart.PERMANENT, True, "restarted"),
    (Restart.PERMANENT, False, "restarted"),
    (Restart.TRANSIENT, True, "not restarted"),
    (Restart.TRANSIENT, False, "restarted"),
    (Restart.TEMPORARY, True, "removed"),
    (Restart.TEMPORARY, False, "removed"),
])
def test_restart_types(make_tree, restart, normal, expect):
    spec = SupervisorSpec("root", (worker("w", restart=restart),), intensity=5, period=60)
    tree = make_tree(spec)
    pid = pids(tree)["w"]
    kill_and_handle(tree, pid, signal.SIGUSR1 if normal else signal.SIGKILL)
    ids = [c.id for c in tree.root.children]
    if expect == "removed":
        assert ids == []
    elif expect == "not restarted":
        assert tree.root.child("w").pid is None and tree.root.child("w").state == "exited"
    else:
        new = tree.root.child("w").pid
        assert new is not None and new != pid


def test_intensity_exceeded_escalates_and_the_one_before_does_not(make_tree):
    inner = SupervisorSpec("inner", (worker("x"), worker("y")), intensity=2, period=60)
    spec = SupervisorSpec("root", (worker("a"), inner), intensity=5, period=60)
    tree = make_tree(spec)
    for _ in range(2):  # intensity 2: two restarts are within budget
        kill_and_handle(tree, pids(tree, "root/inner")["x"])
    assert tree.find("root/inner").state == "running"
    assert tree.root.restarts == 0
    a_pid = pids(tree)["a"]
    kill_and_handle(tree, pids(tree, "root/inner")["x"])  # the third exceeds it
    assert [e["supervisor"] for e in tree.events.of("supervisor.escalation")] == ["root/inner"]
    # the parent restarted the inner supervisor (permanent) and with it its children
    assert tree.root.restarts == 1
    assert tree.find("root/inner").state == "running"
    assert all(p is not None for p in pids(tree, "root/inner").values())
    assert pids(tree)["a"] == a_pid  # one_for_one at the root: a untouched


def test_root_giving_up_fails_the_tree(make_tree):
    spec = SupervisorSpec("root", (worker("a"), worker("b")), intensity=0, period=60)
    tree = make_tree(spec)
    b = pids(tree)["b"]
    kill_and_handle(tree, pids(tree)["a"])
    assert tree.failed and tree.root.state == "failed"
    assert not psutil.pid_exists(b) or psutil.Process(b).status() == psutil.STATUS_ZOMBIE


def test_transient_supervisor_that_gave_up_stays_down(make_tree):
    pool = SupervisorSpec("pool", (worker("p1"),), intensity=0, period=60,
                          restart=Restart.TRANSIENT)
    spec = SupervisorSpec("root", (worker("a"), pool), intensity=5, period=60)
    tree = make_tree(spec)
    kill_and_handle(tree, pids(tree, "root/pool")["p1"])
    assert tree.find("root/pool").state == "failed"
    assert tree.root.state == "running" and not tree.failed
    assert psutil.pid_exists(pids(tree)["a"])


def test_child_ignoring_sigterm_is_killed_after_grace(make_tree):
    spec = SupervisorSpec("root", (worker("s", target=stubborn, shutdown=0.2),))
    tree = make_tree(spec)
    t0 = time.monotonic()
    code = tree.root.child("s").stop()
    assert code == -signal.SIGKILL
    assert time.monotonic() - t0 >= 0.2


def test_dynamic_children(make_tree):
    tree = make_tree(SupervisorSpec("root", (), intensity=5, period=60))
    tree.root.start_child(worker("d1"))
    tree.root.start_child(worker("d2"))
    assert set(pids(tree)) == {"d1", "d2"}
    d1 = pids(tree)["d1"]
    tree.root.terminate_child("d1")
    assert set(pids(tree)) == {"d2"} and not psutil.pid_exists(d1)


def test_a_child_that_crashes_on_start_fails_the_start(make_tree):
    tree = make_tree(SupervisorSpec("root", (worker("a"),), intensity=5, period=60))
    with pytest.raises(StartFailed) as failed:
        tree.root.start_child(ChildSpec("bad", crash_on_start, shutdown=1.0))
    assert [c.id for c in tree.root.children] == ["a"]
    # the child's own exception comes back on its ready pipe: status can say why
    assert "RuntimeError: boom during start-up" in failed.value.message



def test_start_together_forks_all_then_awaits_each_in_order(make_tree):
    """An agent pool's workers: all forked before any is awaited (each is alive when the
    first ready is read), and reported started in order."""
    spec = SupervisorSpec("root", (SupervisorSpec("pool", tuple(worker(c) for c in "abcd"),
                                                  start_together=True),))
    tree = make_tree(spec)
    started = [e["child"] for e in tree.events.of("supervisor.child_started")]
    assert started == ["root/pool/a", "root/pool/b", "root/pool/c", "root/pool/d"]
    assert all(psutil.pid_exists(p) for p in pids(tree, "root/pool").values())


def test_start_together_with_a_failing_worker_leaves_nothing_behind():
    """One worker crashes on start: the start fails, the ones started are stopped and
    the ones not yet awaited are killed and reaped."""
    spec = SupervisorSpec("root", (worker("x", target=crash_on_start), *(worker(c) for c in "abc")),
                          start_together=True)
    tree = Tree(spec, emit=Recorder())
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(StartFailed, match="boom during start-up"):
        tree.start()
    tree.stop()
    assert [p.pid for p in psutil.Process().children() if p.pid not in before] == []  # all reaped


def _fake_root(report_w):
    """A root process of its own, so the test can SIGKILL it."""
    tree = Tree(SupervisorSpec("root", tuple(worker(c) for c in "abcd"), intensity=5, period=60))
    tree.start()
    os.write(report_w, (",".join(str(p) for p in tree.pids()) + "\n").encode())
    while True:
        tree.wait_and_handle(None)


def test_sigkill_of_the_root_leaves_no_process_of_the_tree():
    import multiprocess
    r, w = os.pipe()
    root = multiprocess.get_context("fork").Process(target=_fake_root, args=(w,))
    root.start()
    os.close(w)
    with os.fdopen(r) as f:
        line = f.readline()
    children = [psutil.Process(int(p)) for p in line.split(",")]
    assert len(children) == 4
    os.kill(root.pid, signal.SIGKILL)
    root.join(10)
    _, alive = psutil.wait_procs(children, timeout=2.0)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphans still alive 2 s after the root died: {alive}"


def test_many_crash_restart_cycles_leave_no_zombie_and_no_fd_behind(make_tree):
    spec = SupervisorSpec("root", (worker("a"), worker("b")), intensity=1000, period=60)
    tree = make_tree(spec)
    kill_and_handle(tree, pids(tree)["a"])  # first restart allocates what later ones reuse
    fds_before = len(os.listdir("/proc/self/fd"))
    for i in range(150):
        kill_and_handle(tree, pids(tree)["ab"[i % 2]])
    assert len(os.listdir("/proc/self/fd")) == fds_before
    zombies = [p for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE]
    assert not zombies
    assert tree.root.restarts == 151
