"""Weighted ranked profiles with textbook results (issue 18, item 3): a block of w identical
voters is one voter of weight w, and every method gives the result the literature gives
for the expanded electorate.

* Tennessee's capital (the standard example of Wikipedia's voting-method articles): 42%
  Memphis > Nashville > Chattanooga > Knoxville, 26% Nashville > Chattanooga > Knoxville >
  Memphis, 15% Chattanooga > Knoxville > Nashville > Memphis, 17% Knoxville > Chattanooga >
  Nashville > Memphis.  Plurality: Memphis; two-round majority: Nashville (58-42 over
  Memphis); instant runoff: Knoxville; Borda: Nashville (194 points); Condorcet/Schulze:
  Nashville; approval of the top two: Nashville (68).
* Schulze's own 45-voter example (Wikipedia, "Schulze method"): the winner is E, and the
  strongest-path order is E > A > C > B > D.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.voting import tally

M, N, C, K = "Memphis", "Nashville", "Chattanooga", "Knoxville"
TENNESSEE = {"memphis": (42, [M, N, C, K]), "nashville": (26, [N, C, K, M]),
             "chattanooga": (15, [C, K, N, M]), "knoxville": (17, [K, C, N, M])}


def _profile(blocks):
    ballots = {v: list(r) for v, (_, r) in blocks.items()}
    weights = {v: w for v, (w, _) in blocks.items()}
    return ballots, weights


def _expanded(blocks):
    return {f"{v}#{i}": list(r) for v, (w, r) in blocks.items() for i in range(w)}


@pytest.mark.parametrize("method, winner", [
    ("plurality", M), ("majority", N), ("irv", K), ("borda", N), ("schulze", N)])
def test_tennessee_weighted_blocks_give_the_textbook_winners(method, winner):
    ballots, weights = _profile(TENNESSEE)
    weighted = tally(method, [M, N, C, K], ballots, weights=weights)
    assert weighted.winner == winner
    expanded = tally(method, [M, N, C, K], _expanded(TENNESSEE))
    assert expanded.winner == winner and expanded.tally == weighted.tally


def test_tennessee_borda_points_and_approval_of_the_top_two():
    ballots, weights = _profile(TENNESSEE)
    borda = tally("borda", [M, N, C, K], ballots, weights=weights)
    assert borda.tally["scores"] == {M: 126, N: 194, C: 173, K: 107}
    approvals = {v: r[:2] for v, r in ballots.items()}
    assert tally("approval", [M, N, C, K], approvals, weights=weights).winner == N


SCHULZE = {"v1": (5, "ACBED"), "v2": (5, "ADECB"), "v3": (8, "BEDAC"), "v4": (3, "CABED"),
           "v5": (7, "CAEBD"), "v6": (2, "CBADE"), "v7": (7, "DCEBA"), "v8": (8, "EBADC")}


def test_schulze_example_weighted_equals_its_45_voters():
    ballots, weights = _profile(SCHULZE)
    weighted = tally("schulze", list("ABCDE"), ballots, weights=weights)
    assert weighted.winner == "E"
    assert tally("schulze", list("ABCDE"), _expanded(SCHULZE)).tally == weighted.tally


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from([f"v{i}" for i in range(6)]),
                       st.tuples(st.integers(1, 5), st.permutations(list("abcd"))), min_size=1),
       st.sampled_from(["plurality", "majority", "approval", "borda", "irv", "schulze"]))
def test_any_weighted_ranked_profile_equals_its_expansion(blocks, method):
    ballots, weights = _profile(blocks)
    if method == "approval":
        ballots = {v: r[:2] for v, r in ballots.items()}
        expanded = {k: r[:2] for k, r in _expanded(blocks).items()}
    else:
        expanded = _expanded(blocks)
    weighted = tally(method, list("abcd"), ballots, weights=weights)
    plain = tally(method, list("abcd"), expanded)
    assert (weighted.winner, weighted.tally) == (plain.winner, plain.tally)
