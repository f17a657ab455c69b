"""Reputation's running sums (O(1) readings) against the plain pass over the window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.reputation import Observation, Reputation, ReputationConfig

steps = st.lists(st.tuples(st.sampled_from([0.0, 0.5, 3.0, 100.0, 5000.0]),  # time step
                           st.floats(0, 1), st.floats(0, 1),
                           st.one_of(st.none(), st.floats(0, 1)),
                           st.booleans(),                                     # out of order
                           st.sampled_from([0.0, 1.0, 50.0, -2.0])),          # read offset
                 min_size=1, max_size=300)


def _exact(rep: Reputation) -> Reputation:
    """The same window, read by the pass (no running sums)."""
    plain = Reputation(rep.config)
    plain._history = rep._history
    return plain


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([10.0, 3600.0]), st.sampled_from([1, 5, 50]), steps)
def test_running_sums_read_what_the_pass_reads(half_life, window, ops):
    rep = Reputation(ReputationConfig(half_life=half_life, window=window))
    t = 0.0
    for dt, s, tm, q, back, offset in ops:
        t += dt
        rep.record("a", "c", Observation(t - 3.0 if back else t, s, tm, q))
        now = t + offset
        exact = _exact(rep)
        assert rep.signals("a", "c", now) == pytest.approx(exact.signals("a", "c", now), abs=1e-9)
        for read in ("weight", "quality_weight"):
            fast, slow = getattr(rep, read)("a", "c", now), getattr(exact, read)("a", "c", now)
            assert abs(fast - slow) <= 1e-9 * max(1.0, slow), (read, fast, slow)
