"""The credit ledger: double-entry accounts in SQLite, shared with the journal database.

Every movement of credits is one row of ``ledger_transfers`` and two rows of
``ledger_entries`` (``-amount`` on the source, ``+amount`` on the destination), written
in one ``BEGIN IMMEDIATE`` transaction together with the cached balances in
``ledger_accounts``.  Hence, at every commit:

* the sum of all balances is 0, the ``mint`` account included (credits are conserved);
* each balance equals the sum of its entries;
* no account is below its floor (``mint`` alone has no floor: ``-balance(mint)`` is the
  total issuance).

``BEGIN IMMEDIATE`` takes SQLite's write lock before the balance is read, so two
connections (threads or processes) spending from one account serialise instead of both
reading the same balance: no double spending.  Writers wait for the lock up to the
connection's busy timeout (``sqlite3.connect(timeout=...)``, default 5 s).  WAL mode is
the journal's business (the owner of the database sets ``PRAGMA journal_mode=WAL``);
the ledger works in either mode.

Inside someone else's transaction (decision): by default the ledger refuses a connection
that is already inside a transaction (it could not promise its own atomic commit).  With
``Ledger(conn, nested=True)`` -- the coordinator, whose whole loop turn is one journal
transaction -- each operation runs in a ``SAVEPOINT`` instead: a refused movement rolls
back to the savepoint and raises, the rest of the turn goes on, and the turn's COMMIT makes
the payment durable together with the task state it pays for.  Outside a transaction a
nested ledger behaves exactly like a standalone one.

Amounts are integers in milli-credits (1 credit = 1000 mc) so that sums never drift.

Escrow (decided here; the spec leaves the scheme open).  On award the coordinator calls
:meth:`Ledger.hold`: the price moves from the payer to ``escrow:<contract_id>`` and,
when a penalty is possible, the agent posts a *bond* (the penalty) to the same escrow
account.  Settlement is then always covered, whatever the agent spent meanwhile:

* completion (:meth:`release`): price and bond go to the agent;
* breach (:meth:`refund`): the price goes back to the payer, ``penalty`` of the bond
  goes to the payer, the rest of the bond back to the agent.

An agent that cannot post its bond cannot take the contract (``InsufficientCredits`` at
award: the coordinator awards the next best bid).  Each escrow settles exactly once
(``Conflict`` afterwards).  ``mint`` and ``escrow:*`` accounts are only moved by
``grant``/``hold``/``release``/``refund``, never by ``transfer``.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from coordination.contracts import Settlement
from runtime.errors import BrokenError, Conflict, InsufficientCredits, InvalidInput, NotFound

__all__ = ["Ledger", "Entry", "Escrow", "ConservationReport", "InsufficientCredits",
           "MINT", "MAX_AMOUNT"]

MINT = "mint"
ESCROW_PREFIX = "escrow:"
MAX_AMOUNT = 10**15              # per movement: a million million credits
_MAX_BALANCE = 2**62             # keeps SQLite integer sums far from int64 overflow
_NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_accounts (
    name TEXT PRIMARY KEY, floor INTEGER, balance INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,
    src TEXT NOT NULL, dst TEXT NOT NULL, amount INTEGER NOT NULL CHECK (amount > 0),
    reason TEXT, contract_id TEXT, trace_id TEXT);
CREATE TABLE IF NOT EXISTS ledger_entries (
    transfer_id INTEGER NOT NULL REFERENCES ledger_transfers(id), account TEXT NOT NULL,
    amount INTEGER NOT NULL, PRIMARY KEY (transfer_id, account));
CREATE INDEX IF NOT EXISTS ledger_entries_by_account ON ledger_entries(account, transfer_id);
CREATE TABLE IF NOT EXISTS ledger_escrows (
    contract_id TEXT PRIMARY KEY, payer TEXT NOT NULL, payee TEXT NOT NULL,
    price INTEGER NOT NULL, bond INTEGER NOT NULL, state TEXT NOT NULL,
    opened_at REAL NOT NULL, settled_at REAL);
"""


@dataclass(frozen=True)
class Entry:
    """One side of a transfer, as seen from ``account``."""

    transfer_id: int
    at: float
    account: str
    amount: int                  # signed: negative leaves the account
    counterparty: str
    kind: str                    # grant|transfer|hold|bond|release|refund|penalty|bond_return
    reason: str | None
    contract_id: str | None
    trace_id: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Escrow:
    contract_id: str
    payer: str
    payee: str
    price: int
    bond: int
    state: str                   # held | released | refunded


@dataclass(frozen=True)
class ConservationReport:
    total_balance: int           # sum of all balances, mint included: 0
    total_entries: int           # sum of all entries: 0
    issued: int                  # -balance(mint)
    granted: int                 # sum of all grants
    mismatched: tuple[str, ...]  # accounts whose balance != sum of their entries
    below_floor: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return (self.total_balance == 0 and self.total_entries == 0 and self.issued == self.granted
                and not self.mismatched and not self.below_floor)


def _check_amount(amount: Any, what: str = "amount") -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidInput(f"expected {what} as an integer of milli-credits in 1..{MAX_AMOUNT}, "
                           f"got: {amount!r}", hint="1 credit = 1000 milli-credits")
    return amount


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"expected an account name of 1-200 printable characters, got: {name!r}")
    return name


def _check_user_account(name: Any) -> str:
    _check_name(name)
    if name == MINT or name.startswith(ESCROW_PREFIX):
        raise InvalidInput(f"account {name!r} is a system account",
                           hint="credits enter only through grant() and escrow only through hold()")
    return name


class Ledger:
    """Double-entry credits in the given SQLite connection (one Ledger per connection;
    use one connection per thread, as sqlite3 requires)."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time, *,
                 nested: bool = False) -> None:
        self._conn = conn
        self._clock = clock
        self._nested = nested
        with self._write() as cur:
            for statement in _statements():
                cur.execute(statement)
            cur.execute("INSERT OR IGNORE INTO ledger_accounts (name, floor, balance, created_at) "
                        "VALUES (?, NULL, 0, ?)", (MINT, self._clock()))

    # -- transactions ---------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[sqlite3.Cursor]:
        """One BEGIN IMMEDIATE transaction: the write lock is held before anything is read."""
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Cursor]:
        """One read transaction: a consistent snapshot across several SELECTs."""
        return self._transaction("BEGIN")

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Cursor]:
        if self._conn.in_transaction:
            if self._nested:
                yield from self._savepoint()
                return
            raise InvalidInput(
                "the ledger's connection is inside a transaction already",
                hint="commit or roll back first, give the ledger its own connection, or "
                     "open it with nested=True to write inside the caller's transaction")
        cur = self._conn.cursor()
        cur.execute(begin)
        try:
            yield cur
        except BaseException:
            self._conn.rollback()
            raise
        else:
            self._conn.commit()
        finally:
            cur.close()

    def _savepoint(self) -> Iterator[sqlite3.Cursor]:
        """Inside the owner's transaction (the coordinator's turn): a SAVEPOINT, so a refused
        movement undoes only itself; the owner's COMMIT makes the rest durable together
        with the task state it belongs to.  The owner already holds the write lock."""
        cur = self._conn.cursor()
        cur.execute("SAVEPOINT agora_ledger")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK TO agora_ledger")
            raise
        finally:
            cur.execute("RELEASE agora_ledger")
            cur.close()

    # -- accounts ---------------------------------------------------------------------------

    def open_account(self, name: str, floor: int = 0) -> None:
        """Create ``name`` with ``floor`` (the lowest balance it may reach; may be negative
        for an overdraft).  Opening it again with the same floor does nothing."""
        _check_user_account(name)
        if isinstance(floor, bool) or not isinstance(floor, int) or abs(floor) > MAX_AMOUNT:
            raise InvalidInput(f"expected the floor of {name!r} as an integer of milli-credits "
                               f"within +-{MAX_AMOUNT}, got: {floor!r}")
        with self._write() as cur:
            self._open(cur, name, floor)

    def _open(self, cur: sqlite3.Cursor, name: str, floor: int | None) -> None:
        row = cur.execute("SELECT floor FROM ledger_accounts WHERE name = ?", (name,)).fetchone()
        if row is None:
            cur.execute("INSERT INTO ledger_accounts (name, floor, balance, created_at) "
                        "VALUES (?, ?, 0, ?)", (name, floor, self._clock()))
        elif row[0] != floor:
            raise Conflict(f"account {name!r} exists with floor {row[0]}, not {floor}",
                           hint="set_floor() changes the floor of an existing account")

    def set_floor(self, name: str, floor: int) -> None:
        """Change a user account's floor; refused if the balance is already below it."""
        _check_user_account(name)
        with self._write() as cur:
            balance, _ = self._account(cur, name)
            if balance < floor:
                raise Conflict(f"account {name!r} holds {balance} mc, below the new floor {floor}",
                               hint="move credits in first, or choose a lower floor")
            cur.execute("UPDATE ledger_accounts SET floor = ? WHERE name = ?", (floor, name))

    def _account(self, cur: sqlite3.Cursor, name: str) -> tuple[int, int | None]:
        sql = "SELECT balance, floor FROM ledger_accounts WHERE name = ?"
        row = cur.execute(sql, (name,)).fetchone()
        if row is None:
            raise NotFound(f"no ledger account {name!r}",
                           hint="open_account() or grant() creates it")
        return row[0], row[1]

    def balance(self, account: str) -> int:
        with self._read() as cur:
            return self._account(cur, account)[0]

    def floor(self, account: str) -> int | None:
        with self._read() as cur:
            return self._account(cur, account)[1]

    def accounts(self) -> list[dict[str, Any]]:
        """Every account with its balance and floor (``None``: no floor), by name."""
        sql = "SELECT name, balance, floor FROM ledger_accounts ORDER BY name"
        with self._read() as cur:
            return [{"name": n, "balance_mc": b, "floor_mc": f} for n, b, f in cur.execute(sql)]

    def issued(self) -> int:
        """Total credits ever minted by grant()."""
        return -self.balance(MINT)

    # -- movements --------------------------------------------------------------------------

    def grant(self, account: str, amount: int, reason: str, trace_id: str | None = None) -> int:
        """Mint ``amount`` into ``account`` (opened with floor 0 if new); the transfer id."""
        _check_user_account(account)
        _check_amount(amount)
        if not isinstance(reason, str) or not reason:
            raise InvalidInput("a grant needs a reason (who decided to mint, and why)")
        with self._write() as cur:
            sql = "SELECT 1 FROM ledger_accounts WHERE name = ?"
            if cur.execute(sql, (account,)).fetchone() is None:
                self._open(cur, account, 0)
            return self._move(cur, MINT, account, amount, "grant", reason, None, trace_id)

    def transfer(self, src: str, dst: str, amount: int, contract_id: str | None,
                 trace_id: str | None, reason: str = "transfer") -> int:
        """Move ``amount`` from ``src`` to ``dst`` atomically; the transfer id.  Raises
        InsufficientCredits (nothing moved) if ``src`` would fall below its floor."""
        _check_user_account(src)
        _check_user_account(dst)
        _check_amount(amount)
        if src == dst:
            raise InvalidInput(f"transfer from {src!r} to itself",
                               hint="name two different accounts")
        with self._write() as cur:
            return self._move(cur, src, dst, amount, "transfer", reason, contract_id, trace_id)

    def _move(self, cur: sqlite3.Cursor, src: str, dst: str, amount: int, kind: str,
              reason: str | None, contract_id: str | None, trace_id: str | None) -> int:
        """The one place balances change: check, then two entries and one transfer row (four
        statements: both accounts read at once, both entries in one INSERT, both balances in
        one UPDATE; a contract moves credits three times, in the coordinator's turn)."""
        if src == dst:  # (callers refuse it first; the UPDATE below needs two rows)
            raise InvalidInput(f"transfer from {src!r} to itself", hint="name two different accounts")
        rows = {n: (b, f) for n, b, f in cur.execute(
            "SELECT name, balance, floor FROM ledger_accounts WHERE name IN (?, ?)", (src, dst))}
        for name in (src, dst):
            if name not in rows:
                raise NotFound(f"no ledger account {name!r}", hint="open_account() or grant() creates it")
        (src_balance, src_floor), (dst_balance, _) = rows[src], rows[dst]
        if src_floor is not None and src_balance - amount < src_floor:
            raise self._refusal(src, dst, amount, src_balance, src_floor, contract_id, trace_id)
        if dst_balance + amount > _MAX_BALANCE or src_balance - amount < -_MAX_BALANCE:
            raise InvalidInput(f"moving {amount} mc from {src!r} to {dst!r} would exceed the "
                               f"ledger's balance range of +-{_MAX_BALANCE} mc")
        cur.execute("INSERT INTO ledger_transfers (at, kind, src, dst, amount, reason, "
                    "contract_id, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (self._clock(), kind, src, dst, amount, reason, contract_id, trace_id))
        tid = int(cur.lastrowid or 0)
        cur.execute("INSERT INTO ledger_entries (transfer_id, account, amount) VALUES (?, ?, ?), (?, ?, ?)",
                    (tid, src, -amount, tid, dst, amount))
        cur.execute("UPDATE ledger_accounts SET balance = balance + CASE name WHEN ? THEN ? ELSE ? END "
                    "WHERE name IN (?, ?)", (src, -amount, amount, src, dst))
        return tid

    @staticmethod
    def _refusal(src: str, dst: str, amount: int, balance: int, floor: int,
                 contract_id: str | None, trace_id: str | None) -> InsufficientCredits:
        return InsufficientCredits(
            f"refused to move {amount} mc from {src!r} to {dst!r} (contract {contract_id}, "
            f"trace {trace_id}): {src!r} holds {balance} mc with floor {floor}, so at most "
            f"{max(0, balance - floor)} mc can leave it",
            hint=f"grant credits to {src!r}, lower its floor, or lower the price",
            account=src, balance=balance, floor=floor, amount=amount,
            contract_id=contract_id, trace_id=trace_id)

    # -- escrow -----------------------------------------------------------------------------

    def hold(self, contract_id: str, payer: str, payee: str, price: int, bond: int = 0,
             trace_id: str | None = None) -> None:
        """On award: price from ``payer`` and bond from ``payee`` into the contract's escrow,
        both or neither."""
        _check_user_account(payer)
        _check_user_account(payee)
        escrow = ESCROW_PREFIX + _check_name(contract_id)
        for what, amount in (("price", price), ("bond", bond)):
            whole = isinstance(amount, int) and not isinstance(amount, bool)
            if not whole or not 0 <= amount <= MAX_AMOUNT:
                raise InvalidInput(f"expected the {what} of contract {contract_id!r} as an integer "
                                   f"of milli-credits in 0..{MAX_AMOUNT}, got: {amount!r}")
        with self._write() as cur:
            sql = "SELECT 1 FROM ledger_escrows WHERE contract_id = ?"
            if cur.execute(sql, (contract_id,)).fetchone():
                raise Conflict(f"contract {contract_id!r} already has an escrow",
                               hint="an award holds credits once; settle it with release/refund")
            self._open(cur, escrow, 0)
            for src, amount, kind in ((payer, price, "hold"), (payee, bond, "bond")):
                if amount:
                    self._move(cur, src, escrow, amount, kind, kind, contract_id, trace_id)
            cur.execute("INSERT INTO ledger_escrows VALUES (?, ?, ?, ?, ?, 'held', ?, NULL)",
                        (contract_id, payer, payee, price, bond, self._clock()))

    def release(self, contract_id: str, trace_id: str | None = None) -> None:
        """On completion: price and bond go to the agent (payee)."""
        with self._write() as cur:
            e = self._held(cur, contract_id)
            self._pay_out(cur, e, [(e.payee, e.price + e.bond, "release")], trace_id, "released")

    def refund(self, contract_id: str, penalty: int = 0, trace_id: str | None = None) -> int:
        """On breach: the price back to the payer plus ``penalty`` (at most the bond) from
        the bond; the rest of the bond back to the agent.  Returns the penalty taken."""
        if isinstance(penalty, bool) or not isinstance(penalty, int) or penalty < 0:
            raise InvalidInput(f"expected a penalty >= 0 milli-credits, got: {penalty!r}")
        with self._write() as cur:
            e = self._held(cur, contract_id)
            taken = min(penalty, e.bond)
            legs = [(e.payer, e.price, "refund"), (e.payer, taken, "penalty"),
                    (e.payee, e.bond - taken, "bond_return")]
            self._pay_out(cur, e, legs, trace_id, "refunded")
            return taken

    def settle(self, settlement: Settlement, trace_id: str | None = None) -> int:
        """Apply a contract Settlement: ``pay`` -> release, ``penalty``/``refund`` -> refund
        (a cancelled contract's refund takes no penalty).  Returns
        the credits the agent received (pay) or lost (penalty)."""
        if settlement.action == "pay":
            self.release(settlement.contract_id, trace_id)
            return settlement.amount
        if settlement.action in ("penalty", "refund"):
            return self.refund(settlement.contract_id, settlement.amount, trace_id)
        raise InvalidInput(f"unknown settlement action {settlement.action!r}",
                           hint="expected pay, penalty or refund")

    def escrow(self, contract_id: str) -> Escrow:
        with self._read() as cur:
            return self._escrow(cur, contract_id)

    def _escrow(self, cur: sqlite3.Cursor, contract_id: str) -> Escrow:
        sql = ("SELECT contract_id, payer, payee, price, bond, state FROM ledger_escrows "
               "WHERE contract_id = ?")
        row = cur.execute(sql, (contract_id,)).fetchone()
        if row is None:
            raise NotFound(f"no escrow for contract {contract_id!r}",
                           hint="hold() creates it on award")
        return Escrow(*row)

    def held(self) -> list[Escrow]:
        """Escrows not settled yet, oldest first (after a restart: contracts of a past run)."""
        sql = ("SELECT contract_id, payer, payee, price, bond, state FROM ledger_escrows "
               "WHERE state = 'held' ORDER BY opened_at")
        with self._read() as cur:
            return [Escrow(*row) for row in cur.execute(sql)]

    def _held(self, cur: sqlite3.Cursor, contract_id: str) -> Escrow:
        e = self._escrow(cur, contract_id)
        if e.state != "held":
            raise Conflict(f"the escrow of contract {contract_id!r} is already {e.state}",
                           hint="a contract settles exactly once")
        return e

    def _pay_out(self, cur: sqlite3.Cursor, e: Escrow, legs: list[tuple[str, int, str]],
                 trace_id: str | None, state: str) -> None:
        escrow = ESCROW_PREFIX + e.contract_id
        for dst, amount, kind in legs:
            if amount:
                self._move(cur, escrow, dst, amount, kind, kind, e.contract_id, trace_id)
        cur.execute("UPDATE ledger_escrows SET state = ?, settled_at = ? WHERE contract_id = ?",
                    (state, self._clock(), e.contract_id))

    # -- retention --------------------------------------------------------------------------

    def fold(self, older_than: float, batch: int = 50_000) -> dict[str, int]:
        """Fold transfers made before ``older_than`` (epoch seconds) into ONE checkpoint
        transfer holding one entry per account: the net of what was folded.  Balances
        (cached and summed) stay exact and nothing of the money is deleted: the sum of an
        account's entries is unchanged, conservation still checks.  Grants are never
        folded (``issued == granted`` is audited from them; there is one per account),
        nor the transfers of escrows still held; escrows settled before ``older_than`` go.
        A previous checkpoint is folded into the new one, so there is at most one.  The
        checkpoint's ``amount`` counts the transfers folded into it (a transfer needs a
        positive amount; its money is in its entries).  At most ``batch`` per call."""
        with self._write() as cur:
            ids = [r[0] for r in cur.execute(
                "SELECT id FROM ledger_transfers WHERE at < ? AND kind != 'grant' AND (contract_id IS NULL "
                "OR contract_id NOT IN (SELECT contract_id FROM ledger_escrows WHERE state = 'held')) "
                "ORDER BY id LIMIT ?", (older_than, batch)).fetchall()]
            if not ids:
                return {"transfers": 0, "accounts": 0, "escrows": 0}
            in_fold = set(ids)
            previous = [(i, n) for i, n in cur.execute(
                "SELECT id, amount FROM ledger_transfers WHERE kind = 'checkpoint'").fetchall() if i in in_fold]
            count = len(ids) - len(previous) + sum(n for _, n in previous)
            nets: dict[str, int] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ", ".join("?" * len(chunk))
                for account, amount in cur.execute(
                        f"SELECT account, sum(amount) FROM ledger_entries WHERE transfer_id IN ({marks}) "
                        "GROUP BY account", chunk).fetchall():
                    nets[account] = nets.get(account, 0) + int(amount)
                cur.execute(f"DELETE FROM ledger_entries WHERE transfer_id IN ({marks})", chunk)
                cur.execute(f"DELETE FROM ledger_transfers WHERE id IN ({marks})", chunk)
            cur.execute("INSERT INTO ledger_transfers (at, kind, src, dst, amount, reason) "
                        "VALUES (?, 'checkpoint', 'checkpoint', 'checkpoint', ?, ?)",
                        (older_than, count, f"checkpoint of transfers before {older_than}"))
            tid = cur.lastrowid
            cur.executemany("INSERT INTO ledger_entries (transfer_id, account, amount) VALUES (?, ?, ?)",
                            [(tid, a, n) for a, n in sorted(nets.items()) if n])  # a zero net: no row
            escrows = cur.execute("DELETE FROM ledger_escrows WHERE state != 'held' AND settled_at < ?",
                                  (older_than,)).rowcount
        return {"transfers": len(ids), "accounts": sum(1 for n in nets.values() if n), "escrows": escrows}

    # -- reading ----------------------------------------------------------------------------

    def entries(self, account: str) -> list[Entry]:
        """Every entry of ``account``, oldest first."""
        sql = ("SELECT t.id, t.at, e.account, e.amount, CASE WHEN t.src = e.account THEN t.dst "
               "ELSE t.src END, t.kind, t.reason, t.contract_id, t.trace_id FROM ledger_entries e "
               "JOIN ledger_transfers t ON t.id = e.transfer_id WHERE e.account = ? ORDER BY t.id")
        with self._read() as cur:
            self._account(cur, account)
            return [Entry(*row) for row in cur.execute(sql, (account,))]

    def check_conservation(self) -> ConservationReport:
        """Audit the invariants on one consistent snapshot; ``.ok`` is True when they hold."""
        with self._read() as cur:
            one = lambda sql: int(cur.execute(sql).fetchone()[0] or 0)  # noqa: E731
            mismatched = cur.execute(
                "SELECT a.name FROM ledger_accounts a LEFT JOIN (SELECT account, SUM(amount) s "
                "FROM ledger_entries GROUP BY account) e ON e.account = a.name "
                "WHERE a.balance != COALESCE(e.s, 0) ORDER BY a.name").fetchall()
            below = cur.execute("SELECT name FROM ledger_accounts WHERE floor IS NOT NULL "
                                "AND balance < floor ORDER BY name").fetchall()
            return ConservationReport(
                one("SELECT SUM(balance) FROM ledger_accounts"),
                one("SELECT SUM(amount) FROM ledger_entries"),
                -one(f"SELECT balance FROM ledger_accounts WHERE name = '{MINT}'"),
                one("SELECT SUM(amount) FROM ledger_transfers WHERE kind = 'grant'"),
                tuple(r[0] for r in mismatched), tuple(r[0] for r in below))

    def assert_conserved(self) -> None:
        """Raise BrokenError with the facts if an invariant does not hold."""
        report = self.check_conservation()
        if not report.ok:
            raise BrokenError(
                f"ledger invariants broken: {report}",
                hint="something wrote the ledger tables outside Ledger: audit ledger_transfers")


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]
