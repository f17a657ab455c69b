"""Sale auctions: agents bid credits for units of a scarce resource (a GPU slot, a share of
a rate limit, a lock with priority); the highest bid wins, the winner pays and holds the
unit like a lease.

::

    handler: task.acquire("gpu", limit=5)      agent --call sale.bid--> coordinator
        the limit is held in escrow from agent:<id> at once (InsufficientCredits beyond its
        balance: a typed error, nothing waits); the bid waits for a free unit (FIFO of bids)
    a unit is free and bids wait -> after ``gather_ms`` (bids arriving together compete)
        an auction of ONE unit over the waiting bids (coordination.auction, Direction.SALE):
        sealed-first / vickrey   the bids' prices, decided at once (no round trip)
        english / dutch          live rounds: coord.ask(agent, "sale", offer) -> the agent's
                                 ``sale_bid(offer)`` hook answers stay/take (default: while
                                 the price is within the limit the handler gave)
    close -> the winner's escrow is refunded and the price moved to the seller (one turn,
        one COMMIT); the winner's call returns {"resource", "unit", "token", "price_mc"};
        losers keep waiting for the next unit (an auction with no award ends their bids)
    held until release (``with`` block / ``HeldUnit.release``), the attempt's end (task-held,
    however it ends), or the agent's death; then the next auction starts.

Resources come from ``[resources.NAME]`` in agora.toml or the ``resource_create`` command
(durable either way).  Keys, with defaults::

    quantity = 1                 units sold one auction each
    auction = "vickrey"          sealed-first | vickrey (alias sealed-second) | english | dutch
    reserve = 0                  credits: the lowest price a unit sells for (a limit below
                                 it is refused at bid time)
    seller = "client"            the ledger account the price goes to (the operator, who
                                 pays for tasks: credits circulate instead of piling up)
    gather_ms = 20               how long the first waiting bid waits for rivals
    round_ms = 50                english: a round's bound (ends early once all answered)
    tick_ms = 20                 dutch: a tick's bound (likewise)
    clock_steps = 50             clocks span their range in about this many rounds
    start = (none)               dutch: the first price (credits); default the highest
                                 escrowed limit (nobody can pay more than it)

Decisions where the spec is silent:

* A bid is a commitment: its ``limit`` is in escrow while it waits, so an agent can never
  bid beyond its balance, nor spend the same credits twice on two bids (or on a bid and a
  subcontract).  Payment is the auction's price: sealed-first the bid, Vickrey the best
  rival's bid (alone: the reserve), English the price of the last round anybody stayed
  in, Dutch the tick's price.  The rest of the escrow goes back in the same turn.
* Ranking is coordination.auction's (price, then the earlier bid, then the id).  A stay or
  take at a price above the bidder's own limit counts as a drop or a pass (it could not
  pay): the limit is the bid's proxy, a custom hook can only bid lower, never higher.
* Multi-unit: one auction per unit, in turn (a unit freed while an auction runs waits for
  it to end).  An agent may have several bids (from several tasks).
* A bid past its ``timeout`` fails with DEADLINE_EXCEEDED and its escrow is refunded; a bid
  taking part in an auction when its time runs out stays until that auction ends (clocks
  end within about ``clock_steps`` rounds), so a win is never thrown away.
* Units carry a fencing token per resource that only grows (durable, as leases' tokens).
* Durable (tables ``econ_resources``, ``econ_units``): resources, held units and tokens.
  After a coordinator restart a unit whose agent does not say hello within
  ``RECONCILE_S``, or says it from another pid, or whose holding attempt no longer runs,
  is released.  Waiting bids are not restored: their calls failed with UNAVAILABLE when the
  coordinator died and their escrows are refunded at start (``salebid:`` escrows still
  held); the agent asks again.
* Ray agents answer clock rounds through their actor's ``sale_bid`` (runtime.agents._ray).

Events (in the bidder's task trace when it bid from a handler): ``sale.bid``,
``sale.cfp`` (auction opened), ``sale.round`` (a clock's round answer), ``sale.award``,
``sale.no_award``, ``sale.refund``, ``sale.released``, ``sale.expired``; after a restart
``sale.reconciled`` (units kept and released once the holders had their time to return).
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import orjson

from coordination.auction import (
    ActionKind,
    Direction,
    DutchAuction,
    EnglishAuction,
    FirstPriceAuction,
    SecondPriceAuction,
)
from coordination.ledger import ESCROW_PREFIX, MAX_AMOUNT, InsufficientCredits, Ledger
from coordination.services.primitives import running_attempt
from runtime.coordinator.command_kit import Deferred, arg, only
from runtime.coordinator.host import ServiceHost
from runtime.coordinator.reconcile import RECONCILE_S
from runtime.errors import Conflict, DeadlineExceeded, InvalidInput, NoSale, NotFound
from runtime.observability.trace_context import TraceContext

__all__ = ["Sales", "ResourceSpec", "parse_resource", "install", "NoSale", "SALE_KINDS",
           "agent_account", "BID_PREFIX"]

SALE_KINDS = ("sealed-first", "vickrey", "english", "dutch")
_ALIASES = {"sealed-second": "vickrey", "first-price": "sealed-first", "second-price": "vickrey"}
BID_PREFIX = "salebid:"
DEFAULT_TIMEOUT_S = 10.0
HISTORY = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS econ_resources (name TEXT PRIMARY KEY, spec TEXT NOT NULL,
    token INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS econ_units (resource TEXT NOT NULL, unit INTEGER NOT NULL,
    holder TEXT NOT NULL, agent TEXT NOT NULL, pid INTEGER, token INTEGER NOT NULL,
    price_mc INTEGER NOT NULL, PRIMARY KEY (resource, unit));
"""


def agent_account(agent_id: str) -> str:
    return f"agent:{agent_id}"  # the market's accounts (coordination.services.market)


@dataclass(frozen=True)
class ResourceSpec:
    name: str
    quantity: int = 1
    auction: str = "vickrey"
    reserve_mc: int = 0
    seller: str = "client"
    gather_ms: float = 20.0
    round_ms: float = 50.0
    tick_ms: float = 20.0
    clock_steps: int = 50
    start_mc: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _credits_mc(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a number of credits, got {value!r:.80}", field=what)
    mc = round(value * 1000)
    if not low <= mc <= MAX_AMOUNT:
        raise InvalidInput(f"{what} must be within [{low / 1000}, {MAX_AMOUNT / 1000}] credits, got {value}",
                           field=what)
    return mc


def _bounded(table: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
            or not math.isfinite(value):
        raise InvalidInput(f"resource key {key!r} must be a number in [{low}, {high}], got {value!r:.80}",
                           field=key)
    return float(value)


def parse_resource(name: Any, table: dict[str, Any]) -> ResourceSpec:
    """A resource's spec from its ``[resources.NAME]`` table (or ``resource_create``'s
    arguments), every key checked (pure: the composition root checks agora.toml with it)."""
    if not isinstance(name, str) or not 0 < len(name) <= 100 or not name.isprintable():
        raise InvalidInput(f"a resource name must be 1-100 printable characters, got {name!r:.80}")
    unknown = sorted(set(table) - {"quantity", "auction", "reserve", "seller", "gather_ms", "round_ms",
                                   "tick_ms", "clock_steps", "start"})
    if unknown:
        raise InvalidInput(f"unknown keys {unknown} for resource {name!r}",
                           hint="keys: quantity, auction, reserve, seller, gather_ms, round_ms, tick_ms, "
                                "clock_steps, start")
    quantity = table.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 10_000:
        raise InvalidInput(f"resource {name!r}: quantity must be an integer in [1, 10000], got {quantity!r:.80}")
    kind = _ALIASES.get(table.get("auction", "vickrey"), table.get("auction", "vickrey"))
    if kind not in SALE_KINDS:
        raise InvalidInput(f"resource {name!r}: unknown auction {kind!r:.40}", hint=f"one of {list(SALE_KINDS)}")
    seller = table.get("seller", "client")
    if not isinstance(seller, str) or not seller or seller.startswith(ESCROW_PREFIX) or seller == "mint":
        raise InvalidInput(f"resource {name!r}: seller must name a user account, got {seller!r:.80}")
    start = table.get("start")
    return ResourceSpec(
        name, quantity, kind, _credits_mc(table.get("reserve", 0), "reserve"), seller,
        _bounded(table, "gather_ms", 20.0, 0, 10_000), _bounded(table, "round_ms", 50.0, 1, 10_000),
        _bounded(table, "tick_ms", 20.0, 1, 10_000), int(_bounded(table, "clock_steps", 50, 1, 10_000)),
        None if start is None else _credits_mc(start, "start", 1))


@dataclass
class _Bid:
    id: str
    resource: str
    agent: str
    holder: str
    limit_mc: int
    price_mc: int
    escrow: str
    deferred: Deferred
    trace: TraceContext
    expired: bool = False
    in_auction: bool = False


@dataclass
class _Held:
    holder: str
    agent: str
    token: int
    price_mc: int
    pid: int | None = None


@dataclass
class _Sale:
    aid: str
    resource: str
    kind: str
    auction: Any
    bids: dict[str, _Bid]
    span: TraceContext
    asked_round: int | None = None
    timer_at: float | None = None
    answered: set[str] = field(default_factory=set)


class Sales:
    """Resources, their units and holders, waiting bids and the one auction per resource."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.conn = coord.journal.conn
        for statement in filter(str.strip, _SCHEMA.split(";")):
            self.conn.execute(statement)
        self.ledger = Ledger(self.conn, nested=True)
        self.specs: dict[str, ResourceSpec] = {}
        self.tokens: dict[str, int] = {}
        self.units: dict[str, dict[int, _Held]] = {}
        self.waiting: dict[str, list[_Bid]] = {}
        self.open: dict[str, _Sale] = {}
        self.scheduled: set[str] = set()
        self.unconfirmed: dict[str, int | None] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._run = os.urandom(3).hex()  # bid ids unique across coordinator runs
        self._seq = 0

    # -- state and durability ------------------------------------------------------------

    def restore(self, declared: dict[str, dict[str, Any]]) -> None:
        """Resources on disk, then agora.toml's (a declared one replaces its stored spec:
        the file is the operator's latest word), held units, and stale bids refunded."""
        for name, spec, token in self.conn.execute("SELECT name, spec, token FROM econ_resources").fetchall():
            self.tokens[name] = int(token)
            try:
                self.specs[name] = parse_resource(name, orjson.loads(spec))
            except (InvalidInput, orjson.JSONDecodeError) as e:  # never a coordinator that cannot start
                self.coord.emit("sale.bad_spec", None, resource=name, error=str(e)[:200])
        for name, table in declared.items():
            self._put_spec(parse_resource(name, table), table)
        for res, unit, holder, agent, pid, token, price in self.conn.execute(
                "SELECT resource, unit, holder, agent, pid, token, price_mc FROM econ_units").fetchall():
            self.units.setdefault(res, {})[int(unit)] = _Held(holder, agent, int(token), int(price), pid)
            self.unconfirmed[agent] = pid
        for e in self.ledger.held():
            if e.contract_id.startswith(BID_PREFIX):
                self.ledger.refund(e.contract_id, 0)
                self.coord.emit("sale.refund", None, escrow=e.contract_id, agent=e.payer,
                                amount_mc=e.price, why="the coordinator restarted while the bid waited")
        if self.unconfirmed:
            self.coord.call_later(RECONCILE_S, self._reconcile)

    def _put_spec(self, spec: ResourceSpec, table: dict[str, Any]) -> None:
        self.specs[spec.name] = spec
        self.tokens.setdefault(spec.name, 0)
        self.conn.execute("INSERT INTO econ_resources (name, spec, token) VALUES (?, ?, ?) "
                          "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec",
                          (spec.name, orjson.dumps(table).decode(), self.tokens[spec.name]))

    def _save_unit(self, resource: str, unit: int) -> None:
        held = self.units.get(resource, {}).get(unit)
        if held is None:
            self.conn.execute("DELETE FROM econ_units WHERE resource = ? AND unit = ?", (resource, unit))
        else:
            self.conn.execute("INSERT OR REPLACE INTO econ_units VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (resource, unit, held.holder, held.agent, held.pid, held.token, held.price_mc))

    def _reconcile(self) -> None:
        """After a restart: units of agents that did not come back, or of attempts that no
        longer run, are released."""
        gone = set(self.unconfirmed)
        self.unconfirmed.clear()
        released = 0
        for res, units in list(self.units.items()):
            for unit, held in list(units.items()):
                if held.agent in gone or not self._holder_alive(held):
                    self._free(res, unit, "its holder did not come back after the coordinator restarted")
                    released += 1
        self.coord.emit("sale.reconciled", None, released=released,
                        kept=sum(len(units) for units in self.units.values()))

    def _holder_alive(self, held: _Held) -> bool:
        link = self.coord.scheduler.agents.get(held.agent)
        if link is None:
            return False
        if held.holder.startswith("task:"):
            _, tid, attempt = held.holder.rsplit(":", 2)
            return link.inflight.get(tid) == int(attempt)
        return True

    # -- agent operations ------------------------------------------------------------------

    def agent_ops(self) -> dict[str, Any]:
        return {"sale.bid": self.bid, "sale.release": self.release, "sale.held": self.held_by}

    def _holder(self, agent: str, args: dict[str, Any]) -> str:
        task = arg(args, "task", dict, None)
        if task is None:
            return agent
        tid, attempt = running_attempt(self.coord.scheduler.agents, agent, task,
                                       "a task-held unit is bought from the attempt's own handler (task.acquire)")
        return f"task:{tid}:{attempt}"

    def _spec(self, name: Any) -> ResourceSpec:
        spec = self.specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise NotFound(f"no resource {name!r:.100}", hint="declare [resources.NAME] in agora.toml "
                           f"or create it with the resource_create command; known: {sorted(self.specs)[:20]}")
        return spec

    def bid(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        """``{"resource", "limit", "price"?, "task"?, "timeout"?, "trace"?}`` (credits): a
        Deferred resolved with the won unit, or a typed error."""
        only(args, "resource", "limit", "price", "task", "timeout", "trace")
        spec = self._spec(args.get("resource"))
        limit = _credits_mc(arg(args, "limit", (int, float)), "limit", 1)
        price = limit if args.get("price") is None else _credits_mc(arg(args, "price", (int, float)), "price", 1)
        if price > limit:
            raise InvalidInput(f"a bid's price ({price} mc) cannot exceed its limit ({limit} mc)", field="price")
        if price < spec.reserve_mc:
            raise InvalidInput(f"resource {spec.name!r} sells for at least {spec.reserve_mc / 1000} credits; "
                               f"the bid offers {price / 1000}", field="price", hint="bid at least the reserve")
        timeout = float(arg(args, "timeout", (int, float), DEFAULT_TIMEOUT_S))
        if not 0 <= timeout <= 3600:
            raise InvalidInput(f"argument 'timeout' must be within [0, 3600] s, got {timeout}", field="timeout")
        holder = self._holder(agent, args)
        given = TraceContext.from_wire(args.get("trace")) or TraceContext.from_wire(wire)
        trace = given.child() if given else TraceContext.new_trace()
        self._seq += 1
        b = _Bid(f"b{self._run}.{self._seq}", spec.name, agent, holder, limit, price, "", Deferred(), trace)
        b.escrow = f"{BID_PREFIX}{spec.name}:{b.id}"
        account = agent_account(agent)
        try:  # the limit is committed now: InsufficientCredits beyond the balance (nothing waits)
            self.ledger.hold(b.escrow, account, spec.seller, limit, trace_id=trace.trace_id)
        except NotFound as e:
            raise InsufficientCredits(f"agent {agent!r} has no ledger account to bid from",
                                      hint="agents get one when they join the market", account=account) from e
        self.waiting.setdefault(spec.name, []).append(b)
        self.coord.emit("sale.bid", trace, resource=spec.name, bid_id=b.id, agent=agent, holder=holder,
                        limit_mc=limit, price_mc=price)
        self.coord.call_later(timeout, partial(self._timed_out, b, timeout))
        self._kick(spec.name)
        return b.deferred

    def release(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "resource", "unit", "token", "task", "trace")
        spec = self._spec(args.get("resource"))
        unit, token = arg(args, "unit", int), arg(args, "token", int)
        held = self.units.get(spec.name, {}).get(unit)
        holder = self._holder_loose(agent, args)
        if held is None or held.token != token or held.holder != holder:
            raise Conflict(f"{holder!r} does not hold unit {unit} of {spec.name!r} with token {token}",
                           hint="released already, or lost when its holder ended")
        self._free(spec.name, unit, "released")
        return {"released": True, "resource": spec.name, "unit": unit, "token": token}

    def _holder_loose(self, agent: str, args: dict[str, Any]) -> str:
        """A release names its attempt, which may have just ended (then nothing is held)."""
        task = arg(args, "task", dict, None)
        return agent if task is None else f"task:{task.get('id')}:{task.get('attempt')}"

    def held_by(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args)
        return [{"resource": r, "unit": u, "token": h.token, "holder": h.holder, "price_mc": h.price_mc}
                for r, units in self.units.items() for u, h in sorted(units.items()) if h.agent == agent]

    # -- the auctions --------------------------------------------------------------------

    def _free_units(self, name: str) -> list[int]:
        held = self.units.get(name, {})
        return [u for u in range(self.specs[name].quantity) if u not in held]

    def _kick(self, name: str) -> None:
        """Open the next auction of ``name`` soon, if a unit is free and bids wait."""
        if name not in self.specs or name in self.open or name in self.scheduled or not self.waiting.get(name) \
                or not self._free_units(name):
            return
        self.scheduled.add(name)
        self.coord.call_later(self.specs[name].gather_ms / 1000, partial(self._open, name))

    def _open(self, name: str) -> None:
        self.scheduled.discard(name)
        bids = [b for b in self.waiting.get(name, []) if not b.expired and b.agent in self.coord.scheduler.agents]
        if name in self.open or not bids or not self._free_units(name):
            return
        spec, now = self.specs[name], self.coord.clock()
        self._seq += 1
        aid = f"sale-{name}-{self._run}.{self._seq}"
        auction = self._build(spec, aid, bids)
        auction.open(now, invited=[b.id for b in bids])
        for b in bids:
            b.in_auction = True
        sale = self.open[name] = _Sale(aid, name, spec.auction, auction, {b.id: b for b in bids},
                                       TraceContext.new_trace())
        self.coord.emit("sale.cfp", sale.span, resource=name, auction_id=aid, kind=spec.auction,
                        bids=sorted(sale.bids), reserve_mc=spec.reserve_mc,
                        **({"start_mc": auction.start} if spec.auction in ("english", "dutch") else {}))
        if spec.auction in ("sealed-first", "vickrey"):
            for b in bids:
                auction.submit(b.id, b.price_mc, now)
        self._step(sale)

    @staticmethod
    def _build(spec: ResourceSpec, aid: str, bids: list[_Bid]) -> Any:
        reserve = spec.reserve_mc or None
        if spec.auction == "sealed-first":
            return FirstPriceAuction(aid, Direction.SALE, window=spec.round_ms / 1000, reserve=reserve)
        if spec.auction == "vickrey":
            return SecondPriceAuction(aid, Direction.SALE, window=spec.round_ms / 1000, reserve=reserve)
        top = max(b.limit_mc for b in bids)
        if spec.auction == "english":  # up from the reserve in ~clock_steps rounds to the top limit
            start = spec.reserve_mc
            step = max(1, -(-(top - start) // spec.clock_steps))
            return EnglishAuction(aid, Direction.SALE, start=start, increment=step,
                                  round_window=spec.round_ms / 1000, reserve=reserve,
                                  max_rounds=spec.clock_steps + 2)
        start = max(spec.start_mc or top, spec.reserve_mc + 1)
        step = max(1, -(-(start - spec.reserve_mc) // spec.clock_steps))
        return DutchAuction(aid, Direction.SALE, start=start, step=step, tick=spec.tick_ms / 1000, reserve=reserve)

    def _step(self, sale: _Sale) -> None:
        """Drive the pure auction: ask a new round, arm its deadline, or close."""
        if self.open.get(sale.resource) is not sale:
            return
        now = self.coord.clock()
        action = sale.auction.next_action(now)
        if action.kind in (ActionKind.CLOSE, ActionKind.DONE):
            self._close(sale, now)
            return
        if action.kind is ActionKind.ASK and action.round != sale.asked_round:
            sale.asked_round = action.round
            self._ask_round(sale, action.price, action.round, now)
            if self.open.get(sale.resource) is not sale:
                return
            action = sale.auction.next_action(self.coord.clock())
            if action.kind in (ActionKind.CLOSE, ActionKind.DONE):
                self._close(sale, self.coord.clock())
                return
        if action.until is not None and sale.timer_at != action.until:
            sale.timer_at = action.until
            self.coord.call_later(max(0.0, action.until - now), partial(self._wake, sale, action.until))

    def _wake(self, sale: _Sale, until: float) -> None:
        if sale.timer_at == until:
            sale.timer_at = None
        self._step(sale)

    def _ask_round(self, sale: _Sale, price: int, round_no: int, now: float) -> None:
        active = sale.auction.active if sale.kind == "english" else None
        asked = sorted(active if active is not None else sale.bids)
        gone = []
        for bid_id in asked:
            b = sale.bids[bid_id]
            offer = {"resource": sale.resource, "auction": sale.kind, "auction_id": sale.aid, "bid_id": bid_id,
                     "round": round_no, "price": price / 1000, "limit": b.limit_mc / 1000, "side": "sale"}
            if not self.coord.ask(b.agent, "sale", offer, partial(self._answer, sale, round_no, bid_id)):
                gone.append(bid_id)
        for bid_id in gone:  # its agent is not connected: it drops (passes) this round
            sale.auction.submit(bid_id, False, now)

    def _answer(self, sale: _Sale, round_no: int, bid_id: str, agent_id: str | None, msg: dict[str, Any]) -> None:
        if self.open.get(sale.resource) is not sale or sale.asked_round != round_no:
            return  # late: the round (or the auction) is over
        b, now = sale.bids[bid_id], self.coord.clock()
        price = sale.auction.price
        yes = _yes(msg.get("answer")) if not msg.get("error") else False
        if yes and price > b.limit_mc:
            yes = False  # it could not pay: the limit in escrow is the most it may bid
        self.coord.emit("sale.round", b.trace, resource=sale.resource, auction_id=sale.aid, bid_id=bid_id,
                        round=round_no, price_mc=price, answer=yes, error=msg.get("error"))
        if sale.auction.answered(bid_id):
            return
        sale.auction.submit(bid_id, yes, now)
        self._step(sale)

    def _close(self, sale: _Sale, now: float) -> None:
        del self.open[sale.resource]
        result = sale.auction.close(now)
        for b in sale.bids.values():
            b.in_auction = False
        winner = sale.bids.get(result.winner) if result.winner else None
        record = {"auction_id": sale.aid, "resource": sale.resource, "kind": sale.kind,
                  "bids": {k: {"agent": b.agent, "limit_mc": b.limit_mc, "price_mc": b.price_mc}
                           for k, b in sale.bids.items()},
                  "rounds": len(getattr(sale.auction, "rounds", ()) or ()),
                  "winner": None, "price_mc": result.price, "reason": result.reason}
        if winner is not None and self._award(sale, winner, int(result.price or 0)):
            record["winner"] = {"bid_id": winner.id, "agent": winner.agent, "holder": winner.holder}
        elif winner is None:
            self.coord.emit("sale.no_award", sale.span, resource=sale.resource, auction_id=sale.aid,
                            reason=result.reason)
            for b in sale.bids.values():
                self._end_bid(b, NoSale(f"auction {sale.aid} for {sale.resource!r} ended without an award "
                                        f"({result.reason or 'no bid stayed'})",
                                        hint="raise the limit, or answer sale offers with take/stay"))
        self.history.append(record)
        for b in list(sale.bids.values()):
            if b.expired:
                self._end_bid(b, self._expiry(b))
            elif b.agent not in self.coord.scheduler.agents:
                self._end_bid(b, Conflict(f"bid {b.id}'s agent {b.agent!r} died"))
        self._kick(sale.resource)

    def _award(self, sale: _Sale, b: _Bid, price: int) -> bool:
        """The winner pays and holds a unit; False if it can no longer take it (gone)."""
        free = self._free_units(sale.resource)
        link = self.coord.scheduler.agents.get(b.agent)
        alive = link is not None and (not b.holder.startswith("task:") or self._holder_alive(
            _Held(b.holder, b.agent, 0, 0)))
        if not free or not alive:
            self._end_bid(b, Conflict(f"bid {b.id} won {sale.aid} but its holder {b.holder!r} is gone"))
            return False
        spec = self.specs[sale.resource]
        self.ledger.refund(b.escrow, 0, trace_id=b.trace.trace_id)
        try:
            self.ledger.balance(spec.seller)
        except NotFound:
            self.ledger.open_account(spec.seller)
        if price:
            self.ledger.transfer(agent_account(b.agent), spec.seller, price, None, b.trace.trace_id,
                                 reason=f"sale {sale.aid}: a unit of {sale.resource}")
        token = self.tokens[sale.resource] = self.tokens.get(sale.resource, 0) + 1
        self.conn.execute("UPDATE econ_resources SET token = ? WHERE name = ?", (token, sale.resource))
        unit = free[0]
        self.units.setdefault(sale.resource, {})[unit] = _Held(b.holder, b.agent, token, price,
                                                               getattr(link, "pid", None))
        self._save_unit(sale.resource, unit)
        self._forget(b)
        self.coord.emit("sale.award", b.trace, resource=sale.resource, auction_id=sale.aid, kind=sale.kind,
                        bid_id=b.id, agent=b.agent, holder=b.holder, unit=unit, token=token, price_mc=price,
                        limit_mc=b.limit_mc, bidders=len(sale.bids))
        b.deferred.resolve({"resource": sale.resource, "unit": unit, "token": token, "price_mc": price,
                            "price": price / 1000, "auction_id": sale.aid, "kind": sale.kind})
        return True

    # -- ends of bids and units ------------------------------------------------------------

    def _forget(self, b: _Bid) -> None:
        queue = self.waiting.get(b.resource, [])
        if b in queue:
            queue.remove(b)

    def _end_bid(self, b: _Bid, error: Exception) -> None:
        """A bid that will not win: its escrow back, its caller told why."""
        if b.deferred.done:
            return
        self._forget(b)
        if self.ledger.escrow(b.escrow).state == "held":
            self.ledger.refund(b.escrow, 0, trace_id=b.trace.trace_id)
        self.coord.emit("sale.refund", b.trace, resource=b.resource, bid_id=b.id, agent=b.agent,
                        amount_mc=b.limit_mc, why=str(error)[:200])
        b.deferred.fail(error)

    def _expiry(self, b: _Bid) -> DeadlineExceeded:
        holders = ", ".join(sorted({h.holder for h in self.units.get(b.resource, {}).values()}))
        return DeadlineExceeded(f"bid {b.id} for {b.resource!r} won no unit before its timeout",
                                hint=f"raise the timeout or the limit; units are held by {holders[:200] or 'nobody'}")

    def _timed_out(self, b: _Bid, timeout: float) -> None:
        if b.deferred.done:
            return
        self.coord.emit("sale.expired", b.trace, resource=b.resource, bid_id=b.id, timeout_s=timeout)
        if b.in_auction:
            b.expired = True  # the auction under way decides first
        else:
            self._end_bid(b, self._expiry(b))

    def _free(self, resource: str, unit: int, why: str) -> None:
        held = self.units.get(resource, {}).pop(unit, None)
        if held is None:
            return
        self._save_unit(resource, unit)
        self.coord.emit("sale.released", None, resource=resource, unit=unit, holder=held.holder,
                        token=held.token, why=why)
        self._kick(resource)

    def _end_holder(self, test: Any, why: str) -> None:
        for res, units in list(self.units.items()):
            for unit, held in list(units.items()):
                if test(held.holder, held.agent):
                    self._free(res, unit, why)
        for queue in list(self.waiting.values()):
            for b in list(queue):
                if test(b.holder, b.agent) and not b.in_auction:
                    self._end_bid(b, Conflict(f"bid {b.id}'s holder {b.holder!r} ended ({why})"))

    def attempt_ended(self, task: Any, attempt: int, fin: Any, crashed: bool) -> None:
        holder = f"task:{task.id}:{attempt}"
        self._end_holder(lambda h, a: h == holder, "its attempt ended")

    def agent_joined(self, link: Any) -> None:
        if link.id in self.unconfirmed:
            pid = self.unconfirmed.pop(link.id)
            if pid is not None and getattr(link, "pid", pid) != pid:
                self._end_holder(lambda h, a: a == link.id, "its agent is a new incarnation")

    def agent_died(self, agent_id: str) -> None:
        self._end_holder(lambda h, a: a == agent_id, "its agent died")

    # -- commands --------------------------------------------------------------------------

    def cmd_resources(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "limit")
        limit = arg(args, "limit", int, 20)
        return [{**spec.to_json(), "token": self.tokens.get(name, 0),
                 "held": [{"unit": u, "holder": h.holder, "agent": h.agent, "token": h.token, "price_mc": h.price_mc}
                          for u, h in sorted(self.units.get(name, {}).items())],
                 "waiting": [{"bid_id": b.id, "agent": b.agent, "limit_mc": b.limit_mc}
                             for b in self.waiting.get(name, [])],
                 "auction_open": name in self.open,
                 "sales": [h for h in self.history if h["resource"] == name][-limit:]}
                for name, spec in sorted(self.specs.items())]

    def cmd_create(self, args: dict[str, Any], trace: Any) -> Any:
        table = {k: v for k, v in args.items() if k != "name"}
        spec = parse_resource(args.get("name"), table)
        if spec.name in self.specs:
            raise Conflict(f"resource {spec.name!r} exists", hint="resources are declared once")
        self._put_spec(spec, table)
        return spec.to_json()


def _yes(answer: Any) -> bool:
    """A clock answer: True, or ``{"stay": true}`` / ``{"take": true}``; anything else is no."""
    if isinstance(answer, dict):
        return answer.get("stay") is True or answer.get("take") is True
    return answer is True


def install(coord: ServiceHost) -> Sales:
    sales = Sales(coord)
    sales.restore(dict(getattr(coord.cfg, "resources", {}) or {}))
    coord.add_agent_listener(sales)
    coord.add_attempt_listener(sales.attempt_ended)
    coord.add_agent_ops(sales.agent_ops())
    coord.add_commands({"resources": sales.cmd_resources, "resource_create": sales.cmd_create})
    return sales
