"""agora's coordination layer: auctions, contracts, reputation, the credit ledger,
voting, negotiation and coordination primitives (leases, locks, leader election,
barriers, counters, vector clocks).

Every mechanism here is a pure state machine or function that takes a clock; the
coordinator process drives them and asks real agents through their ``bid()`` and
``vote()`` hooks.  May import ``runtime`` and ``shm``; nothing imports it but the
coordinator and the CLI.
"""

__all__: list[str] = []
