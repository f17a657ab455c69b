"""Scaling: the pure policy that decides a pool's size (``policy``), psutil sampling of the
agents and the machine (``sampler``), and the coordinator service that ticks, decides and
asks the root to start or retire agents (``service``).

May import: ``runtime.errors``, ``runtime.pools``, and for ``service`` the coordinator's
service surface.
"""

from runtime.scaling.policy import Decision, PoolScaling, ScalingConfig, decide, pool_scaling

__all__ = ["Decision", "PoolScaling", "ScalingConfig", "decide", "pool_scaling"]
