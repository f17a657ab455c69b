"""The ``agora`` command line: the click group and shared helpers (``group``), one module per
command group (``daemon``, ``tasks``, ``data``, ``observe``, ``market``, ``economy``, ``consensus``,
``scale``, ``run``), and ``main``.  A thin layer over ``runtime.wire.Client``.

May import anything of agora's; nothing imports it but ``bin/agora`` and the entry point.
"""
