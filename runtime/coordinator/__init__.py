"""The coordinator process: one thread, one selectors loop (``loop``), the fixed command
table of the control channel and the core commands (``commands``), the task and pipeline
commands (``task_commands``), and the surface services see (``host``: the ``ServiceHost``
protocol).

It receives its services and its allocation policy as objects from the composition root
(``runtime.daemon.composition``); it never imports ``coordination``.

May import: every runtime package below it (wire, observability, registry, tasks,
supervision) and ``shm``.
"""
