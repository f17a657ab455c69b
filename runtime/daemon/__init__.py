"""The daemon: the root supervisor process and its loop (``root``), the supervision tree it
runs (``tree``), what it prepares before forking and releases after the last child
(``resources``), and the composition root that hands the coordinator its services and
allocation policy as objects (``composition``).

The only runtime code (with ``runtime.cli``) that may import ``coordination``.
"""
