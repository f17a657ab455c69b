"""agora's shared memory: segments with an owner, context pools of read-only arrays,
payload arenas, and the sweeper that removes what a dead run left behind.

The bottom layer: imports nothing of agora's (its errors carry the same ``code`` and
``hint`` attributes as ``runtime.errors`` so the control channel can send them).
"""

__all__: list[str] = []
