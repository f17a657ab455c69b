"""Fuzz the economy's agent operations and commands: any JSON arguments get a value or a
typed error (never another exception), and the ledger stays conserved."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import AgoraError
from tests.support.economy_host import EconHost

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
KEYS = ("resource", "limit", "price", "task", "timeout", "unit", "token", "capability", "input", "budget",
        "key", "options", "name", "quantity", "auction", "reserve", "trace")
likely = st.sampled_from(["gpu", 1, 2.5, {"id": "t", "attempt": 1}])
args_st = st.dictionaries(st.sampled_from(KEYS), json_values | likely, max_size=6)
OPS = ("sale.bid", "sale.release", "sale.held", "economy.subcontract", "economy.balance")
COMMANDS = ("resources", "resource_create", "subcontracts")


@settings(max_examples=60, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(st.sampled_from(OPS + COMMANDS), args_st), min_size=1, max_size=8))
def test_any_arguments_get_a_value_or_a_typed_error(calls):
    with tempfile.TemporaryDirectory() as home:
        h = EconHost(Path(home), resources={"gpu": {"quantity": 1}})
        try:
            h.join("a")
            for name, args in calls:
                if name in COMMANDS:
                    try:
                        h.turn(lambda name=name, args=args: h.table[name](dict(args), None))
                    except AgoraError:
                        pass
                else:
                    out = h.op("a", name, dict(args))
                    assert out.msg is None or "ok" in out.msg or out.error not in (None, "INTERNAL"), out.msg
                h.later(0.05)
            assert h.ledger.check_conservation().ok
            open_ = {r[0] for r in h.journal.conn.execute(
                "SELECT account FROM econ_subcontracts WHERE state = 'open'")}
            stuck = [a for a in h.ledger.accounts() if a["name"].startswith("budget:")
                     and a["name"] not in open_ and a["balance_mc"]]
            assert not stuck, stuck  # a refused subcontract leaves no credit behind
        finally:
            h.journal.close()
