"""The live sales platform: traffic, updates, deletions and schema evolutions.

:class:`Platform` writes to the production database in small transactions (one per tick)
and keeps the replica following it (:func:`simulator.store.replicate`). Live time is
compressed so that a short run shows every kind of change: a new order is paid within
seconds, shipped within a minute and delivered within two.

Late commits (``late_commits`` > 0): a share of the ticks are long transactions, written
at once but committed up to that many seconds later (:meth:`simulator.store.Production.tx`).
Every timestamp a transaction writes is its start time, so a record's own times stay
consistent (created/occurred <= updated_at <= commit) and it is never visible before its
commit. While a late transaction is open its rows are locked, as a database's row locks
would: later ticks leave them alone (an order's next status waits, an edit picks another
row) until it commits.

May import ``store``, ``faults`` and ``model``.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from simulator import store
from simulator.faults import FaultWatcher
from simulator.model import (
    CAMPAIGNS,
    CHANNELS,
    DEVICE_CLOCK_SHARE,
    ENTITIES,
    EVOLUTIONS,
    FUNNEL,
    FX_PER_USD,
    NEW_CATEGORY,
    NEW_REGION,
    PAID_CHANNELS,
)

log = logging.getLogger(__name__)

# share of ticks that are long transactions, when late commits are on
LATE_SHARE = 0.2
# rows of these tables that a late transaction wrote stay locked until it commits
LOCKED_TABLES = ("customers", "orders", "products")

# seconds after placement at which a live order moves on (compressed time)
TRANSITIONS = {"placed": ("paid", 2.0), "paid": ("shipped", 30.0), "shipped": ("delivered", 60.0)}


class AlreadyApplied(ValueError):
    pass


@dataclass
class Activity:
    """What one or more ticks wrote, by entity."""

    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, entity: str, n: int = 1) -> None:
        d = getattr(self, kind)
        d[entity] = d.get(entity, 0) + n


class Platform:
    def __init__(
        self,
        directory: Path | str,
        seed: int | None = None,
        late_commits: float = 0.0,
        clock_skew: float = 0.0,
    ):
        """``late_commits``: up to this many seconds, some transactions commit after they
        started (long transactions), their rows stamped with the start, as on a busy
        production database. ``clock_skew``: up to this many seconds, the events sent
        from a device's own clock (``model.DEVICE_CLOCK_SHARE``) carry an ``occurred_at``
        ahead of the server's."""
        self.dir = Path(directory)
        self.prod = store.Production(self.dir)
        # transactions a previous writer left open end with it
        self.prod.commit_due(everything=True)
        base_seed = json.loads(self.prod.meta("seed") or "0")
        self.rng = random.Random(seed if seed is not None else base_seed + 1)
        self.late_commits = late_commits
        self.locks: dict[int, dict[str, set[int]]] = {}  # open late tx -> table -> keys
        if clock_skew < 0:
            raise ValueError(
                "clock_skew must be 0 or more seconds (how far device clocks run ahead)"
            )
        self.clock_skew = clock_skew
        self.ids: dict[str, int] = json.loads(self.prod.meta("next_ids") or "{}")
        self.pending: list[tuple[float, int, str]] = []  # (due monotonic, order_id, status)
        self.activity = Activity()
        self._refresh_shape()

    # -- shape -------------------------------------------------------------------------

    def _refresh_shape(self) -> None:
        self.cols = {t: set(self.prod.columns(t)) for t in ("customers", "products", "orders",
                                                             "order_items", "events")}
        self.regions = [
            (r[0], r[1])
            for r in self.prod.con.execute("SELECT region_id, currency FROM regions")
        ]
        self.products = self.prod.con.execute(
            "SELECT product_id, price FROM products WHERE is_active = 1"
        ).fetchall()
        max_c = self.prod.con.execute("SELECT max(customer_id) FROM customers").fetchone()[0]
        self.max_customer = max_c or 0
        self.erased = {
            int(r[0])
            for r in self.prod.con.execute(
                "SELECT record_id FROM deletions WHERE entity = 'customers'"
            )
        }

    def _price_cents(self, price: str | int | float) -> int:
        """Product price in US cents, whichever shape the catalogue has."""
        if isinstance(price, str):
            return round(float(price) * 100)
        return int(price)

    def _next(self, key: str, n: int = 1) -> int:
        first = self.ids.get(key, 1)
        self.ids[key] = first + n
        return first

    def _ts(self, now: datetime) -> str:
        """A timestamp the transaction writes: its start, whenever it commits."""
        return store.iso(now)

    def _locked(self, table: str, key: int) -> bool:
        """Whether a late transaction still open wrote this row."""
        return any(key in locks.get(table, ()) for locks in self.locks.values())

    def commit_due(self, everything: bool = False) -> None:
        """Commit the late transactions due (``everything``: all), releasing their rows."""
        for txid in self.prod.commit_due(everything):
            self.locks.pop(txid, None)

    def _insert(self, con, table: str, row: dict, seq: int) -> None:
        row = {k: v for k, v in row.items() if k in self.cols[table]}
        row["_seq"] = seq
        con.execute(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )

    def _channel(self) -> tuple[str, str | None, str | None, str | None]:
        names = list(CHANNELS)
        ch = self.rng.choices(names, weights=[CHANNELS[c][0] for c in names])[0]
        camp = self.rng.choice(CAMPAIGNS) if ch in PAID_CHANNELS else None
        return ch, CHANNELS[ch][1], CHANNELS[ch][2], camp

    # -- activity ----------------------------------------------------------------------

    def tick(self, orders: int) -> Activity:
        """Write one transaction: ``orders`` new orders with their sessions, plus the
        updates and deletions due. Returns what was written."""
        act = Activity()
        self.commit_due()
        late = self.late_commits > 0 and self.rng.random() < LATE_SHARE
        commit_in = self.rng.random() * self.late_commits if late else 0.0
        now = store.utcnow()
        mono = time.monotonic()
        with self.prod.tx(commit_in=commit_in) as (con, seq):
            for _ in range(orders):
                self._new_order(con, seq, now, act)
            self._advance_orders(con, seq, now, mono, act)
            self._edits(con, seq, now, orders, act)
            self.prod.set_meta(con, "next_ids", self.ids)
            if seq < 0:
                self.locks[-seq] = {
                    t: {
                        r[0] for r in con.execute(
                            f"SELECT {ENTITIES[t].primary_key} FROM {t} WHERE _seq = ?", (seq,)
                        )
                    }
                    for t in LOCKED_TABLES
                }
        for kind in ("inserted", "updated", "deleted"):
            for k, v in getattr(act, kind).items():
                self.activity.add(kind, k, v)
        return act

    def _new_customer(self, con, seq: int, now: datetime, act: Activity) -> int:
        cid = self._next("customers")
        region, _ = self.rng.choice(self.regions)
        first, last = self.rng.choice(("Ada", "Ben", "Noor", "Leo")), self.rng.choice(
            ("Reyes", "Kim", "Olsen", "Mbeki")
        )
        ts = self._ts(now)
        self._insert(
            con,
            "customers",
            {
                "customer_id": cid,
                "email": f"{first.lower()}.{last.lower()}.{cid}@example.com",
                "first_name": first,
                "last_name": last,
                "full_name": f"{first} {last}",
                "phone": f"+1-555-{cid % 10_000_000:07d}",
                "region_id": region,
                "acquisition_channel": self._channel()[0],
                "is_marketing_opt_in": int(self.rng.random() < 0.4),
                "created_at": ts,
                "updated_at": ts,
            },
            seq,
        )
        self.max_customer = max(self.max_customer, cid)
        act.add("inserted", "customers")
        return cid

    def _event(self, con, seq, now, act, session, base: dict, event_type, occurred, **extra):
        late = self.rng.random() < 0.02
        occ = occurred - timedelta(minutes=self.rng.uniform(5, 120)) if late else occurred
        if self.clock_skew and self.rng.random() < DEVICE_CLOCK_SHARE:
            occ += timedelta(seconds=self.rng.random() * self.clock_skew)  # device clock
        row = {
            "event_id": self._next("events"),
            "session_id": session,
            "event_type": event_type,
            "occurred_at": store.iso(occ),
            "updated_at": self._ts(now),
            "device_type": base.get("device_type"),
            "referrer": base.get("referrer"),
            **{k: base[k] for k in ("customer_id", "channel", "utm_source", "utm_medium",
                                    "utm_campaign", "platform")},
            **extra,
        }
        self._insert(con, "events", row, seq)
        act.add("inserted", "events")

    def _session_base(self, customer_id: int | None) -> dict:
        ch, src, med, camp = self._channel()
        return {
            "customer_id": customer_id,
            "channel": ch,
            "utm_source": src,
            "utm_medium": med,
            "utm_campaign": camp,
            "platform": "web" if self.rng.random() < 0.62 else "app",
            "device_type": self.rng.choice(("desktop", "mobile", "tablet")),
            "referrer": self.rng.choice((None, "google.com", "instagram.com", "news.example")),
        }

    def _new_order(self, con, seq: int, now: datetime, act: Activity) -> None:
        cid = self.rng.randint(1, self.max_customer) if self.max_customer else 0
        if (not cid or cid in self.erased or self.rng.random() < 0.3
                or self._locked("customers", cid)):
            cid = self._new_customer(con, seq, now, act)
        region, currency = self.rng.choice(self.regions)
        fx = FX_PER_USD[currency]
        base = self._session_base(cid)
        session = self._next("sessions")
        oid = self._next("orders")
        lines = []
        for _ in range(self.rng.choices((1, 2, 3, 4, 5), weights=(45, 28, 15, 8, 4))[0]):
            pid, price = self.rng.choice(self.products)
            qty = self.rng.choices((1, 2, 3), weights=(80, 15, 5))[0]
            lines.append((pid, qty, round(self._price_cents(price) * fx)))
        has_discount = self.rng.random() < 0.15
        subtotal = sum(q * u for _, q, u in lines)
        discount = sum((q * u) // 10 for _, q, u in lines) if has_discount else 0
        shipping = 0 if subtotal - discount >= round(5000 * fx) else round(499 * fx)
        for step in ("product_view", "add_to_cart", "checkout"):
            self._event(con, seq, now, act, session, base, step, now, product_id=lines[0][0])
        self._event(con, seq, now, act, session, base, "purchase", now, order_id=oid)
        ts = self._ts(now)
        self._insert(
            con,
            "orders",
            {
                "order_id": oid,
                "customer_id": cid,
                "region_id": region,
                "session_id": session,
                "status": "placed",
                "currency": currency,
                "channel": base["channel"],
                "utm_source": base["utm_source"],
                "utm_medium": base["utm_medium"],
                "utm_campaign": base["utm_campaign"],
                "coupon_code": self.rng.choice(("WELCOME10", "VIP15")) if has_discount else None,
                "subtotal_cents": subtotal,
                "discount_cents": discount,
                "shipping_cents": shipping,
                "total_cents": subtotal - discount + shipping,
                "ordered_at": ts,
                "updated_at": ts,
            },
            seq,
        )
        act.add("inserted", "orders")
        for pid, qty, unit in lines:
            self._insert(
                con,
                "order_items",
                {
                    "order_item_id": self._next("order_items"),
                    "order_id": oid,
                    "product_id": pid,
                    "quantity": qty,
                    "unit_price_cents": unit,
                    "discount_cents": (qty * unit) // 10 if has_discount else 0,
                    "created_at": ts,
                    "updated_at": ts,
                },
                seq,
            )
            act.add("inserted", "order_items")
        self.pending.append((time.monotonic() + TRANSITIONS["placed"][1], oid, "placed"))
        # abandoned sessions in proportion to the funnel
        p = FUNNEL["add_to_cart"] * FUNNEL["checkout"] * FUNNEL["purchase"]
        expected = 1 / p - 1
        for _ in range(int(expected) + (self.rng.random() < expected % 1)):
            s = self._next("sessions")
            b = self._session_base(cid if self.rng.random() < 0.3 else None)
            pid = self.rng.choice(self.products)[0]
            self._event(con, seq, now, act, s, b, "product_view", now, product_id=pid)
            if self.rng.random() < FUNNEL["add_to_cart"]:
                self._event(con, seq, now, act, s, b, "add_to_cart", now, product_id=pid)

    def _advance_orders(self, con, seq, now, mono, act) -> None:
        # an order a late transaction still holds moves on once it has committed
        due = [p for p in self.pending if p[0] <= mono and not self._locked("orders", p[1])]
        if not due:
            return
        self.pending = [p for p in self.pending if p not in due]
        for _, oid, status in due:
            if status == "paid" and self.rng.random() < 0.03:
                new = "cancelled"
            elif status == "shipped" and self.rng.random() < 0.002:
                self.delete(con, seq, now, "orders", oid, act)
                continue
            else:
                new = TRANSITIONS[status][0]
            con.execute(
                "UPDATE orders SET status = ?, updated_at = ?, _seq = ? WHERE order_id = ?",
                (new, self._ts(now), seq, oid),
            )
            act.add("updated", "orders")
            if new in TRANSITIONS:
                self.pending.append((mono + TRANSITIONS[new][1], oid, new))

    def _edits(self, con, seq, now, orders: int, act: Activity) -> None:
        # profile edits, price changes and erasure requests, in proportion to traffic
        for _ in range(self._poisson(orders * 0.1)):
            cid = self.rng.randint(1, max(1, self.max_customer))
            if self._locked("customers", cid):
                continue
            n = con.execute(
                "UPDATE customers SET is_marketing_opt_in = 1 - is_marketing_opt_in,"
                " updated_at = ?, _seq = ? WHERE customer_id = ?",
                (self._ts(now), seq, cid),
            ).rowcount
            if n:
                act.add("updated", "customers")
        if orders and self.rng.random() < 0.02:
            pid, price = self.rng.choice(self.products)
            cents = max(99, round(self._price_cents(price) * self.rng.uniform(0.85, 1.15)))
            new_price: object = f"{cents / 100:.2f}" if isinstance(price, str) else cents
            if self._locked("products", pid):
                return
            con.execute(
                "UPDATE products SET price = ?, updated_at = ?, _seq = ? WHERE product_id = ?",
                (new_price, self._ts(now), seq, pid),
            )
            self.products = [(p, new_price if p == pid else pr) for p, pr in self.products]
            act.add("updated", "products")
        if orders and self.rng.random() < 0.005 * orders:
            cid = self.rng.randint(1, max(1, self.max_customer))
            if not self._locked("customers", cid):
                self.delete(con, seq, now, "customers", cid, act)

    def _poisson(self, lam: float) -> int:
        n, p, limit = 0, 1.0, pow(2.718281828459045, -lam)
        while True:
            p *= self.rng.random()
            if p <= limit:
                return n
            n += 1

    def delete(self, con, seq, now, entity: str, record_id: int, act: Activity) -> bool:
        """Delete a record (an order takes its lines along) and log the deletion."""
        sql, args = store.delete_sql(entity, str(record_id))
        if con.execute(sql.replace("main.", ""), args).rowcount == 0:
            return False
        ts = store.iso(now)
        con.execute(
            "INSERT INTO deletions (entity, record_id, deleted_at, _seq) VALUES (?, ?, ?, ?)",
            (entity, str(record_id), ts, seq),
        )
        act.add("deleted", entity)
        if entity == "customers":
            self.erased.add(int(record_id))
        if entity == "orders":
            items = con.execute(
                "SELECT order_item_id FROM order_items WHERE order_id = ?", (record_id,)
            ).fetchall()
            for (item_id,) in items:
                self.delete(con, seq, now, "order_items", item_id, act)
        return True

    # -- schema evolutions ---------------------------------------------------------------

    def schedule(self, name: str, effective_at: datetime, announced_at: datetime | None = None):
        """Announce an evolution; it takes effect at ``effective_at``."""
        if name not in EVOLUTIONS:
            raise KeyError(f"unknown evolution {name!r}; known: {', '.join(EVOLUTIONS)}")
        with self.prod.tx() as (con, seq):
            row = con.execute(
                "SELECT applied_at FROM evolutions WHERE name = ?", (name,)
            ).fetchone()
            if row and row[0]:
                raise ValueError(f"evolution {name!r} was already applied at {row[0]}")
            con.execute(
                "INSERT OR REPLACE INTO evolutions (name, announced_at, effective_at,"
                " applied_at, _seq) VALUES (?, ?, ?, NULL, ?)",
                (name, store.iso(announced_at or store.utcnow()), store.iso(effective_at), seq),
            )

    def apply_due(self) -> list[str]:
        """Apply every announced evolution whose effective time has come, in that order."""
        now = store.iso(store.utcnow())
        due = self.prod.con.execute(
            "SELECT name FROM evolutions WHERE applied_at IS NULL AND effective_at <= ?"
            " ORDER BY effective_at, name",
            (now,),
        ).fetchall()
        applied = []
        for (name,) in due:
            try:
                self.apply(name)
                applied.append(name)
            except AlreadyApplied:  # another writer got there first
                self._refresh_shape()
        return applied

    def apply(self, name: str) -> None:
        """Apply an evolution now. The check and the change are one transaction, so two
        writers cannot both apply it; the loser gets AlreadyApplied."""
        evo = EVOLUTIONS[name]
        with self.prod.tx(ddl=json.dumps(list(evo.ddl))) as (con, seq):
            row = con.execute(
                "SELECT applied_at FROM evolutions WHERE name = ?", (name,)
            ).fetchone()
            if row and row[0]:
                raise AlreadyApplied(f"evolution {name!r} was already applied at {row[0]}")
            for statement in evo.ddl:
                con.execute(statement)
            now = store.utcnow()
            if name == "expansion":
                self._expand(con, seq, now)
            con.execute(
                "INSERT INTO evolutions (name, announced_at, effective_at, applied_at, _seq)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " applied_at = excluded.applied_at, _seq = excluded._seq",
                (name, store.iso(now), store.iso(now), store.iso(now), seq),
            )
            self.prod.set_meta(con, "next_ids", self.ids)
        log.info("applied schema evolution %s", name)
        self._refresh_shape()

    def _expand(self, con, seq: int, now: datetime) -> None:
        rid, (rname, country, currency, _) = NEW_REGION
        ts = store.iso(now)
        con.execute(
            "INSERT OR IGNORE INTO regions (region_id, region_name, country_code, currency,"
            " created_at, updated_at, _seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rid, rname, country, currency, ts, ts, seq),
        )
        category, (subs, (lo, hi)) = NEW_CATEGORY
        cols = self.cols["products"]
        for i in range(24):
            pid = self._next("products")
            cents = (self.rng.randrange(lo, hi) // 100) * 100 + 99
            row = {
                "product_id": pid,
                "sku": f"SKU-{pid:06d}",
                "product_name": f"Trail {subs[i % len(subs)]} {pid}",
                "category": category,
                "subcategory": subs[i % len(subs)],
                "product_line": f"{category} / {subs[i % len(subs)]}",
                "price": f"{cents / 100:.2f}" if "product_line" in cols else cents,
                "is_active": 1,
                "created_at": ts,
                "updated_at": ts,
            }
            self._insert(con, "products", row, seq)

    # -- running -------------------------------------------------------------------------

    def run(
        self,
        rate: float,
        lag: float = 0.0,
        stop: threading.Event | None = None,
        tick_seconds: float = 0.1,
        duration: float | None = None,
    ) -> Activity:
        """Produce ``rate`` orders per second (0: none) until ``stop`` is set or
        ``duration`` has passed, applying due evolutions and replicating every tick, but
        while a replication pause is in force (``Faults.replication_paused_until``):
        production goes on, the replica stays where it is."""
        stop = stop or threading.Event()
        started = time.monotonic()
        owed = 0.0
        last = started
        faults = FaultWatcher(self.dir)  # a stat per tick; read again when it changes
        rcon = store.connect(self.dir / store.REPLICA)
        try:
            while not stop.is_set():
                now = time.monotonic()
                if duration is not None and now - started >= duration:
                    break
                owed += rate * (now - last)
                last = now
                n = int(owed)
                owed -= n
                self.apply_due()
                if n or self.pending:
                    self.tick(n)
                else:
                    self.commit_due()
                if not faults.get().replication_paused_left():
                    _replicate_unless_busy(self.dir, lag, rcon)
                stop.wait(max(0.0, tick_seconds - (time.monotonic() - now)))
            self.commit_due(everything=True)  # the writer's open transactions end with it
            if not faults.get().replication_paused_left():
                store.replicate(self.dir, 0.0 if stop.is_set() else lag, con=rcon)
        finally:
            rcon.close()
        return self.activity

    # -- direct changes: each one transaction, replicated as any other -------------------
    # For tests and drills that need one particular change rather than random traffic.

    def insert(self, entity: str, rows: list[dict]) -> None:
        """Insert ``rows`` (column → value; columns the table lacks are left out) into
        ``entity`` in one transaction."""
        columns = set(self.prod.columns(entity))
        with self.prod.tx() as (con, seq):
            for row in rows:
                row = {k: v for k, v in row.items() if k in columns}
                row["_seq"] = seq
                con.execute(
                    f"INSERT INTO {entity} ({', '.join(row)})"
                    f" VALUES ({', '.join('?' * len(row))})",
                    tuple(row.values()),
                )

    def update(
        self, entity: str, record_id: object, updated_at: datetime | None = None, **values
    ) -> None:
        """Set ``values`` on one record, stamped ``updated_at`` (default now; an earlier
        time stands for a long transaction committing late)."""
        pk = ENTITIES[entity].primary_key
        changes = {**values, "updated_at": store.iso(updated_at or store.utcnow())}
        with self.prod.tx() as (con, seq):
            changed = con.execute(
                f"UPDATE {entity} SET {', '.join(f'{c} = ?' for c in changes)}, _seq = ?"
                f" WHERE {pk} = ?",
                (*changes.values(), seq, record_id),
            ).rowcount
        if not changed:
            raise KeyError(f"no {entity} record {record_id!r} in production to update")

    def touch(
        self, entity: str, record_ids: list | None = None, updated_at: datetime | None = None
    ) -> None:
        """Stamp records of ``entity`` (all of them by default) as changed at
        ``updated_at`` (default now), their values unchanged, in one transaction."""
        pk = ENTITIES[entity].primary_key
        stamp = store.iso(updated_at or store.utcnow())
        with self.prod.tx() as (con, seq):
            if record_ids is None:
                con.execute(f"UPDATE {entity} SET updated_at = ?, _seq = ?", (stamp, seq))
            for record_id in record_ids or []:
                con.execute(
                    f"UPDATE {entity} SET updated_at = ?, _seq = ? WHERE {pk} = ?",
                    (stamp, seq, record_id),
                )

    def delete_records(
        self, entity: str, record_ids: list, deleted_at: datetime | None = None
    ) -> int:
        """Delete records (an order takes its lines along) at ``deleted_at`` (default now),
        leaving tombstones, in one transaction. Returns how many of them there were."""
        when = deleted_at or store.utcnow()
        with self.prod.tx() as (con, seq):
            return sum(
                self.delete(con, seq, when, entity, record_id, Activity())
                for record_id in record_ids
            )

    def evolve(self, name: str, effective_at: datetime | None = None, orders: int = 0) -> None:
        """Announce the evolution ``name`` effective at ``effective_at`` (default now),
        apply every evolution due, then write ``orders`` new orders in the resulting shape."""
        self.schedule(name, effective_at or store.utcnow())
        self.apply_due()
        if orders:
            self.tick(orders)

    def close(self) -> None:
        self.commit_due(everything=True)
        self.prod.close()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replicate_unless_busy(directory: Path, lag: float, con: sqlite3.Connection) -> None:
    """One tick's replication. Another writer holding the replica past the busy timeout
    (a one-off replication of a large change, a drill) delays it, as it would a real
    replica: the next tick catches up."""
    try:
        store.replicate(directory, lag, con=con)
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        log.warning("replica busy (%s): replication waits for the next tick", exc)
