"""The coordination services: drivers of the pure mechanisms of ``coordination`` inside the
coordinator process, asking real agents through their ``bid()``, ``vote()`` and
``propose()`` hooks.

    market.py       the market allocation policy (contract net, four auction kinds live)
    _auction_drivers.py  one driver per auction kind, the market's knobs
    decisions.py    votes, negotiations, price bargaining and consensus pipeline steps
    primitives.py   leases, locks, elections, barriers, counters, clocks for agents
    store.py        their durable state (and the market's learned state) in the journal's file

Each sees the coordinator only through ``runtime.coordinator.host.ServiceHost``.  May import
``coordination``'s mechanisms and the runtime core; nothing imports it but the composition
root (``runtime.daemon.composition``).
"""
