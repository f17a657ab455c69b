"""Agent pools in the supervision tree: one ``pool:<name>`` supervisor per configured pool,
its agents as dynamic children (``specs``), and the root's recovery of pools that gave up
(``recovery``: restart after a doubling backoff).

May import: ``runtime.agents``, ``runtime.supervision``, ``runtime.config``.
"""

from runtime.pools.recovery import PoolRecovery, Recovery, backoff_delay
from runtime.pools.specs import agent_spec, pool_path, pools_spec

__all__ = ["agent_spec", "pool_path", "pools_spec", "PoolRecovery", "Recovery", "backoff_delay"]
