"""agora's coordination layer: auctions, contracts, reputation, the credit ledger,
voting, negotiation and coordination primitives (leases, locks, leader election,
barriers, counters, vector clocks).

Pure mechanisms (each a state machine or function that takes a clock, no I/O)::

    auction.py  evaluation.py  contracts.py  reputation.py  ledger.py (SQLite rules)
    voting.py   negotiation.py leases.py     barriers.py    clocks.py

and their drivers in the coordinator process, which ask real agents through their
``bid()``, ``vote()`` and ``propose()`` hooks (each has ``install(coord)``)::

    market.py (allocation = "market")   consensus.py (votes, negotiation, consensus steps)
    primitives.py (leases, locks, elections, barriers, counters, vector clocks for agents)

May import ``runtime`` and ``shm``; nothing imports it but the coordinator (lazily, from its
``SERVICES`` list) and the CLI.
"""

from coordination.auction import (
    Direction,
    DutchAuction,
    EnglishAuction,
    FirstPriceAuction,
    SecondPriceAuction,
)
from coordination.barriers import Barrier, BarrierBroken
from coordination.clocks import LamportClock, VectorClock
from coordination.contracts import Contract, ContractState
from coordination.evaluation import Offer, Weights, evaluate
from coordination.leases import Election, LeaseTable, Lock, StaleFence
from coordination.ledger import InsufficientCredits, Ledger
from coordination.negotiation import AlternatingOffers, Negotiation
from coordination.reputation import Reputation, ReputationConfig
from coordination.voting import METHODS, BallotBox, Outcome, Quorum, tally

__all__ = [
    "Direction", "FirstPriceAuction", "SecondPriceAuction", "EnglishAuction", "DutchAuction",
    "Weights", "Offer", "evaluate", "Contract", "ContractState", "Reputation", "ReputationConfig",
    "Ledger", "InsufficientCredits", "METHODS", "tally", "BallotBox", "Outcome", "Quorum",
    "Negotiation", "AlternatingOffers", "LeaseTable", "Lock", "Election", "StaleFence",
    "Barrier", "BarrierBroken", "VectorClock", "LamportClock",
]
