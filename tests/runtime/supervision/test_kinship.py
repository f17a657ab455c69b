"""runtime.supervision.kinship: only the holder of the run's secret proves an agent id."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.supervision.kinship import new_nonce, new_secret, proof, verify


def test_the_proof_binds_secret_nonce_id_and_pid():
    secret, nonce = new_secret(), new_nonce()
    good = proof(secret, nonce, "echo.0", 123)
    assert verify(secret, nonce, "echo.0", 123, good)
    assert not verify(new_secret(), nonce, "echo.0", 123, good)
    assert not verify(secret, new_nonce(), "echo.0", 123, good)
    assert not verify(secret, nonce, "echo.1", 123, good)
    assert not verify(secret, nonce, "echo.0", 124, good)
    assert not verify(b"", nonce, "echo.0", 123, proof(b"", nonce, "echo.0", 123))


@settings(max_examples=200, derandomize=True)
@given(st.one_of(st.none(), st.integers(), st.text(max_size=70), st.binary(max_size=40),
                 st.lists(st.integers(), max_size=3)),
       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)))
def test_any_forgery_is_refused_without_raising(given_proof, pid):
    assert not verify(new_secret(), new_nonce(), "echo.0", pid, given_proof)
