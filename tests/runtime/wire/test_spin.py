"""runtime.wire.spin: spinning for a reply, and the Spinner that stops when it does not pay."""

from __future__ import annotations

import socket

from runtime.wire import spin
from runtime.wire.spin import MISSES, PROBE_EVERY, Spinner, spin_until_readable


def test_spin_sees_a_readable_socket_and_gives_up_on_a_silent_one():
    a, b = socket.socketpair()
    with a, b:
        assert not spin_until_readable(a, 0.0005)
        b.send(b"x")
        assert spin_until_readable(a, 0.5)
        assert not spin_until_readable(a, 0)


def test_spinner_stops_after_late_replies_probes_and_comes_back(monkeypatch):
    spun: list[bool] = []
    ready = [False]

    def fake(sock, seconds):
        spun.append(True)
        return ready[0]

    monkeypatch.setattr(spin, "spin_until_readable", fake)
    s = Spinner(0.001)
    for _ in range(MISSES):
        assert not s.wait(None)  # late replies: each spin outlasted
    assert len(spun) == MISSES
    for _ in range(3 * PROBE_EVERY):
        s.wait(None)
    assert len(spun) == MISSES + 3  # only the probes spun
    ready[0] = True  # replies are quick again: the next probe finds it, spinning resumes
    while not s.wait(None):
        pass
    before = len(spun)
    assert s.wait(None) and s.wait(None) and len(spun) == before + 2


def test_a_zero_spinner_never_spins(monkeypatch):
    monkeypatch.setattr(spin, "spin_until_readable", lambda *a: (_ for _ in ()).throw(AssertionError))
    assert not Spinner(0).wait(None)
