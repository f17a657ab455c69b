"""Agent pools in the supervision tree: one ``pool:<name>`` supervisor per configured pool,
its agents as dynamic children (``specs``).

May import: ``runtime.agents``, ``runtime.supervision``, ``runtime.config``.
"""

from runtime.pools.specs import agent_spec, pool_path, pools_spec

__all__ = ["agent_spec", "pool_path", "pools_spec"]
