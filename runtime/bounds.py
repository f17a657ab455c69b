"""The bounds numbers of agora.toml are checked against at load time (``runtime.config``
for [daemon] and [pools], ``runtime.guards`` for [services]); a leaf module, so that the
config's loader does not import the guards.

TOML has ``inf`` and ``nan``, and a guard that is handed one fails far from the config:
``time.sleep(inf)`` and ``Condition.wait(1e308)`` raise OverflowError inside an agent's call,
``rate = 1e-300`` makes one request wait 1e300 s, ``nan`` passes no comparison and so slips
past ``>= 0`` checks written as ``min(...)``.  So every number is finite and in a range, and
no wait a guard computes is longer than ``MAX_WAIT_S`` (a day): a longer one is refused as
``Throttled`` (the limiter) or at load (every configured duration).
"""

from __future__ import annotations

import math
from typing import Any

from runtime.errors import InvalidInput

__all__ = ["MAX_WAIT_S", "check_number"]

MAX_WAIT_S = 86_400.0  # a day: the longest any guard's wait, timeout or backoff may be


def check_number(what: str, value: Any, low: float, high: float, *, low_open: bool = False,
                 integer: bool = False, hint: str | None = None) -> None:
    """InvalidInput naming ``what`` unless ``value`` is a finite number (an int when
    ``integer``) in ``[low, high]`` (``(low, high]`` when ``low_open``); bools are not numbers."""
    kinds = int if integer else (int, float)
    ok = (isinstance(value, kinds) and not isinstance(value, bool)
          and (isinstance(value, int) or math.isfinite(value))  # isfinite overflows on a huge int
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:.6g}, {high:.6g}]"
        kind = "an int" if integer else "a finite number"
        raise InvalidInput(f"{what} must be {kind} in {interval}, got {value!r}", hint=hint)
