"""Deterministic, vectorised generation of the platform's history.

``generate(directory, orders=N, seed=S, as_of=T)`` writes a production database whose
content depends only on ``(N, S, T, days)``: the same arguments give byte-for-byte the same
rows. Columns are drawn with numpy and written in chunks, so 10M orders with their events
take minutes, not hours.

Behaviour modelled: hour-of-day and weekday seasonality with a gentle growth trend;
repeat customers (customers exist before their orders); a view → cart → checkout →
purchase funnel (see ``model.FUNNEL``) whose purchases are the orders; order status
progressing with age (placed → paid → shipped → delivered, some cancelled or returned);
profile edits; a few deleted customers and orders; about 2% of events arriving late.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from simulator import store
from simulator.model import (
    CAMPAIGNS,
    CATEGORIES,
    CHANNELS,
    ENTITIES,
    FUNNEL,
    FX_PER_USD,
    PAID_CHANNELS,
    REGIONS,
)

log = logging.getLogger(__name__)

US = 1_000_000  # microseconds per second
HOUR = 3600 * US
DAY = 24 * HOUR

FIRST_NAMES = np.array(
    [
        "Ada",
        "Alan",
        "Amara",
        "Ben",
        "Chloe",
        "Dev",
        "Elena",
        "Farah",
        "Grace",
        "Hugo",
        "Ines",
        "Jon",
        "Kai",
        "Lena",
        "Mateo",
        "Nia",
        "Omar",
        "Priya",
        "Quinn",
        "Rosa",
        "Sam",
        "Tariq",
        "Uma",
        "Vera",
        "Wen",
        "Yara",
        "Zoe",
    ]
)
LAST_NAMES = np.array(
    [
        "Abbott",
        "Baker",
        "Chen",
        "Diaz",
        "Evans",
        "Fischer",
        "Garcia",
        "Haddad",
        "Ito",
        "Jensen",
        "Kowalski",
        "Lopez",
        "Moreau",
        "Nakamura",
        "Okafor",
        "Patel",
        "Quinn",
        "Rossi",
        "Schmidt",
        "Tanaka",
        "Usman",
        "Varga",
        "Weber",
        "Xu",
        "Young",
        "Zhang",
    ]
)
ADJECTIVES = np.array(
    ["Classic", "Urban", "Trail", "Pro", "Lite", "Everyday", "Studio", "Nordic", "Coastal", "Prime"]
)

# hour-of-day traffic shape (index = UTC hour): low at night, evening peak
HOUR_WEIGHTS = np.array(
    [2, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 7, 7, 6, 6, 6, 7, 8, 10, 11, 10, 7, 4], dtype=float
)
# weekday factor (Monday = 0): weekends sell more
WEEKDAY_WEIGHTS = np.array([1.0, 0.95, 0.95, 1.0, 1.1, 1.3, 1.25])
ITEMS_PER_ORDER = np.array([0.45, 0.28, 0.15, 0.08, 0.04])  # 1..5 lines


@dataclass(frozen=True)
class GenerationSummary:
    directory: Path
    as_of: str
    seed: int
    rows: dict[str, int]
    seconds: float


def purchase_rate() -> float:
    return FUNNEL["add_to_cart"] * FUNNEL["checkout"] * FUNNEL["purchase"]


def _iso(us: np.ndarray) -> list[str]:
    s = np.datetime_as_string(us.astype("datetime64[us]"), unit="us")
    return np.char.add(s, "Z").tolist()


def _sample_times(rng: np.random.Generator, n: int, start_us: int, end_us: int) -> np.ndarray:
    """n timestamps in [start, end) following the seasonality, sorted ascending."""
    n_days = max(1, math.ceil((end_us - start_us) / DAY))
    day0 = start_us - start_us % DAY
    days = np.arange(n_days)
    weekday = (((day0 // DAY) + days + 3) % 7).astype(int)  # 1970-01-01 was a Thursday
    growth = 1.0 + 0.3 * days / max(1, n_days - 1)
    w = WEEKDAY_WEIGHTS[weekday] * growth
    day_idx = rng.choice(n_days, size=n, p=w / w.sum())
    hour = rng.choice(24, size=n, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    within = rng.integers(0, HOUR, size=n)
    t = day0 + day_idx * DAY + hour * HOUR + within
    # fold anything outside the window back in (the edge days are partial)
    span = end_us - start_us
    t = start_us + (t - start_us) % span
    t.sort()
    return t


def _channel_arrays(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    names = np.array(list(CHANNELS))
    weights = np.array([v[0] for v in CHANNELS.values()])
    ch = rng.choice(len(names), size=n, p=weights / weights.sum())
    src = np.array([v[1] for v in CHANNELS.values()], dtype=object)[ch]
    med = np.array([v[2] for v in CHANNELS.values()], dtype=object)[ch]
    paid = np.isin(names[ch], PAID_CHANNELS)
    camp = np.array(CAMPAIGNS, dtype=object)[rng.integers(0, len(CAMPAIGNS), size=n)]
    camp = np.where(paid, camp, None)
    return names[ch], src, med, camp


class _Writer:
    def __init__(self, con) -> None:
        self.con = con
        self.rows: dict[str, int] = {}

    def write(self, table: str, columns: dict[str, list | np.ndarray]) -> None:
        names = list(columns)
        lists = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns.values()]
        n = len(lists[0])
        if n == 0:
            return
        sql = (
            f"INSERT INTO {table} ({', '.join(names)}, _seq) "
            f"VALUES ({', '.join('?' * len(names))}, 1)"
        )
        self.con.executemany(sql, zip(*lists, strict=True))
        self.rows[table] = self.rows.get(table, 0) + n


def generate(
    directory: Path | str,
    orders: int = 2000,
    seed: int = 42,
    as_of: datetime | None = None,
    days: int = 90,
    chunk_orders: int = 250_000,
) -> GenerationSummary:
    """Create ``production.db`` and ``replica.db`` in ``directory`` (which must not hold a
    platform yet) with ``orders`` orders over the ``days`` before ``as_of``."""
    if orders < 1:
        raise ValueError("orders must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    started = time.perf_counter()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if (d / store.PRODUCTION).exists():
        raise FileExistsError(
            f"{d / store.PRODUCTION} exists: choose another --dir or remove it (--force)"
        )
    as_of = (as_of or datetime.now(timezone.utc)).astimezone(timezone.utc)
    end_us = int(as_of.timestamp() * US)
    start_us = end_us - days * DAY
    rng = np.random.default_rng(seed)

    con = store.connect(d / store.PRODUCTION)
    con.execute("PRAGMA synchronous=OFF")
    store.create_schema(con, with_indexes=False)
    w = _Writer(con)
    con.execute("BEGIN")

    # regions ----------------------------------------------------------------------
    region_ids = np.array(list(REGIONS))
    region_w = np.array([v[3] for v in REGIONS.values()])
    region_w = region_w / region_w.sum()
    catalogue_us = start_us - 400 * DAY
    w.write(
        "regions",
        {
            "region_id": list(REGIONS),
            "region_name": [v[0] for v in REGIONS.values()],
            "country_code": [v[1] for v in REGIONS.values()],
            "currency": [v[2] for v in REGIONS.values()],
            "created_at": _iso(np.full(len(REGIONS), catalogue_us)),
            "updated_at": _iso(np.full(len(REGIONS), catalogue_us)),
        },
    )

    # products ---------------------------------------------------------------------
    subcats = [(c, s, rng_) for c, (subs, rng_) in CATEGORIES.items() for s in subs]
    n_products = 400
    sc = rng.integers(0, len(subcats), size=n_products)
    lo = np.array([subcats[i][2][0] for i in sc])
    hi = np.array([subcats[i][2][1] for i in sc])
    price = (rng.integers(lo, hi) // 100) * 100 + 99
    product_ids = np.arange(1, n_products + 1)
    p_created = catalogue_us + rng.integers(0, 300 * DAY, size=n_products)
    p_updated = np.where(
        rng.random(n_products) < 0.3,
        start_us + rng.integers(0, end_us - start_us, size=n_products),
        p_created,
    )
    w.write(
        "products",
        {
            "product_id": product_ids,
            "sku": [f"SKU-{i:06d}" for i in product_ids.tolist()],
            "product_name": [
                f"{a} {subcats[s][1]} {i}"
                for a, s, i in zip(
                    ADJECTIVES[rng.integers(0, len(ADJECTIVES), size=n_products)].tolist(),
                    sc.tolist(),
                    product_ids.tolist(),
                    strict=True,
                )
            ],
            "category": [subcats[i][0] for i in sc.tolist()],
            "subcategory": [subcats[i][1] for i in sc.tolist()],
            "price": price,
            "is_active": (rng.random(n_products) < 0.95).astype(int),
            "created_at": _iso(p_created),
            "updated_at": _iso(p_updated),
        },
    )
    popularity = 1.0 / np.arange(1, n_products + 1) ** 0.8
    popularity = rng.permutation(popularity)
    popularity /= popularity.sum()

    # customers (sorted by creation; 30% existed before the window) ------------------
    n_customers = max(20, round(orders * 0.35))
    n_old = round(n_customers * 0.3)
    c_created = np.concatenate(
        [
            start_us - rng.integers(1, 365 * DAY, size=n_old),
            _sample_times(rng, n_customers - n_old, start_us, end_us),
        ]
    )
    c_created.sort()
    customer_ids = np.arange(1, n_customers + 1)
    c_region = rng.choice(len(region_ids), size=n_customers, p=region_w)
    c_channel, _, _, _ = _channel_arrays(rng, n_customers)
    first = FIRST_NAMES[rng.integers(0, len(FIRST_NAMES), size=n_customers)]
    last = LAST_NAMES[rng.integers(0, len(LAST_NAMES), size=n_customers)]
    edited = rng.random(n_customers) < 0.2
    c_updated = np.where(
        edited,
        c_created + (rng.random(n_customers) * (end_us - c_created)).astype(np.int64),
        c_created,
    )
    opt_in = (rng.random(n_customers) < 0.4).astype(int)
    erasure_requested = rng.random(n_customers) < 0.005
    # a customer's last order or logged-in visit: an erasure can only come after it
    last_activity = c_updated.copy()
    deletion_rows: list[tuple[str, str, int]] = []

    # orders, items and sessions, in chunks of consecutive order times -----------------
    order_times = _sample_times(rng, orders, start_us, end_us)
    p_purchase = purchase_rate()
    abandoned_per_order = 1 / p_purchase - 1
    # depth of an abandoned session: 1 view, 2 cart, 3 checkout (conditional on no purchase)
    depth_p = np.array(
        [
            1 - FUNNEL["add_to_cart"],
            FUNNEL["add_to_cart"] * (1 - FUNNEL["checkout"]),
            FUNNEL["add_to_cart"] * FUNNEL["checkout"] * (1 - FUNNEL["purchase"]),
        ]
    )
    depth_p /= depth_p.sum()
    next_order_id, next_item_id, next_session_id, next_event_id = 1, 1, 1, 1
    fx = np.array([FX_PER_USD[REGIONS[r][2]] for r in region_ids])
    currencies = np.array([REGIONS[r][2] for r in region_ids])
    for c0 in range(0, orders, chunk_orders):
        t = order_times[c0 : c0 + chunk_orders]
        n = len(t)
        oid = np.arange(next_order_id, next_order_id + n)
        next_order_id += n
        # a customer created before the order
        k = np.searchsorted(c_created, t, side="right")
        k = np.maximum(k, 1)
        cust_idx = (rng.random(n) * k).astype(np.int64)
        np.maximum.at(last_activity, cust_idx, t)
        cust = customer_ids[cust_idx]
        reg = c_region[cust_idx]
        ch, src, med, camp = _channel_arrays(rng, n)
        loyal = rng.random(n) < 0.4
        ch = np.where(loyal, c_channel[cust_idx], ch)
        src = np.where(loyal, np.array([CHANNELS[c][1] for c in ch.tolist()], dtype=object), src)
        med = np.where(loyal, np.array([CHANNELS[c][2] for c in ch.tolist()], dtype=object), med)
        camp = np.where(np.isin(ch, PAID_CHANNELS), camp, None)
        camp = np.where(
            np.isin(ch, PAID_CHANNELS) & (camp == None),  # noqa: E711 (numpy elementwise)
            CAMPAIGNS[-1],
            camp,
        )

        # items
        n_items = rng.choice(5, size=n, p=ITEMS_PER_ORDER) + 1
        item_order = np.repeat(np.arange(n), n_items)
        m = len(item_order)
        item_ids = np.arange(next_item_id, next_item_id + m)
        next_item_id += m
        prod = rng.choice(n_products, size=m, p=popularity)
        qty = rng.choice(3, size=m, p=[0.8, 0.15, 0.05]) + 1
        unit = np.rint(price[prod] * fx[reg[item_order]]).astype(np.int64)
        has_discount = rng.random(n) < 0.15
        line_total = unit * qty
        line_discount = np.where(has_discount[item_order], line_total // 10, 0)
        subtotal = np.bincount(item_order, weights=line_total, minlength=n).astype(np.int64)
        discount = np.bincount(item_order, weights=line_discount, minlength=n).astype(np.int64)
        shipping = np.where(
            subtotal - discount >= np.rint(5000 * fx[reg]), 0, np.rint(499 * fx[reg])
        ).astype(np.int64)
        total = subtotal - discount + shipping

        # status by age
        paid = t + rng.integers(60 * US, 1800 * US, size=n)
        shipped = paid + rng.integers(6 * HOUR, 36 * HOUR, size=n)
        delivered = shipped + rng.integers(24 * HOUR, 96 * HOUR, size=n)
        cancelled = paid + rng.integers(600 * US, 6 * HOUR, size=n)
        returned = delivered + rng.integers(2 * DAY, 14 * DAY, size=n)
        is_cancel = rng.random(n) < 0.03
        is_return = (~is_cancel) & (rng.random(n) < 0.04)
        status = np.full(n, "placed", dtype=object)
        updated = t.copy()
        for when, name, mask in (
            (paid, "paid", np.ones(n, bool)),
            (shipped, "shipped", ~is_cancel),
            (delivered, "delivered", ~is_cancel),
            (cancelled, "cancelled", is_cancel),
            (returned, "returned", is_return),
        ):
            hit = mask & (when <= end_us)
            status = np.where(hit, name, status)
            updated = np.where(hit, when, updated)

        # purchase sessions: view, cart, checkout, purchase ending in the order
        sid_p = np.arange(next_session_id, next_session_id + n)
        next_session_id += n
        s_start = t - rng.integers(2 * 60 * US, 40 * 60 * US, size=n)
        first_prod = prod[np.concatenate([[0], np.cumsum(n_items)[:-1]])] + 1
        platform = np.where(rng.random(n) < 0.62, "web", "app")
        ev = {
            "session_id": np.repeat(sid_p, 4),
            "customer_id": np.repeat(cust, 4).astype(object),
            "event_type": np.tile(["product_view", "add_to_cart", "checkout", "purchase"], n),
            "product_id": np.repeat(first_prod, 4).astype(object),
            "order_id": np.repeat(oid, 4).astype(object),
            "channel": np.repeat(ch, 4),
            "utm_source": np.repeat(src, 4),
            "utm_medium": np.repeat(med, 4),
            "utm_campaign": np.repeat(camp, 4),
            "platform": np.repeat(platform, 4),
        }
        frac = np.sort(rng.random((n, 2)), axis=1)
        span = t - s_start
        occ = np.stack(
            [
                s_start,
                s_start + (frac[:, 0] * span).astype(np.int64),
                s_start + (frac[:, 1] * span).astype(np.int64),
                t,
            ],
            axis=1,
        ).ravel()
        ev["order_id"] = np.where(ev["event_type"] == "purchase", ev["order_id"], None)
        ev["product_id"] = np.where(ev["event_type"] == "purchase", None, ev["product_id"])

        # abandoned sessions over the same stretch of time
        a = int(round(n * abandoned_per_order))
        lo_t, hi_t = int(t[0]), int(t[-1]) + 1
        a_start = _sample_times(rng, a, lo_t, hi_t) if a else np.array([], dtype=np.int64)
        sid_a = np.arange(next_session_id, next_session_id + a)
        next_session_id += a
        depth = rng.choice(3, size=a, p=depth_p) + 1
        a_ev_sess = np.repeat(np.arange(a), depth)
        a_step = np.arange(len(a_ev_sess)) - np.repeat(np.cumsum(depth) - depth, depth)
        logged_in = rng.random(a) < 0.55
        ka = np.maximum(np.searchsorted(c_created, a_start, side="right"), 1)
        a_idx = (rng.random(a) * ka).astype(np.int64)
        a_cust = np.where(logged_in, customer_ids[a_idx], 0)
        np.maximum.at(last_activity, a_idx[logged_in], a_start[logged_in] + HOUR)
        a_ch, a_src, a_med, a_camp = _channel_arrays(rng, a)
        a_prod = rng.choice(n_products, size=a, p=popularity) + 1
        a_platform = np.where(rng.random(a) < 0.62, "web", "app")
        steps = np.array(["product_view", "add_to_cart", "checkout"])
        a_occ = a_start[a_ev_sess] + a_step * rng.integers(20 * US, 300 * US, size=len(a_step))
        a_cust_ev = a_cust[a_ev_sess].astype(object)
        a_cust_ev[a_cust_ev == 0] = None

        occurred = np.concatenate([occ, a_occ])
        ev_all = {
            "session_id": np.concatenate([ev["session_id"], sid_a[a_ev_sess]]),
            "customer_id": np.concatenate([ev["customer_id"], a_cust_ev]),
            "event_type": np.concatenate([ev["event_type"], steps[a_step]]),
            "product_id": np.concatenate([ev["product_id"], a_prod[a_ev_sess].astype(object)]),
            "order_id": np.concatenate([ev["order_id"], np.full(len(a_step), None)]),
            "channel": np.concatenate([ev["channel"], a_ch[a_ev_sess]]),
            "utm_source": np.concatenate([ev["utm_source"], a_src[a_ev_sess]]),
            "utm_medium": np.concatenate([ev["utm_medium"], a_med[a_ev_sess]]),
            "utm_campaign": np.concatenate([ev["utm_campaign"], a_camp[a_ev_sess]]),
            "platform": np.concatenate([ev["platform"], a_platform[a_ev_sess]]),
        }
        late = rng.random(len(occurred)) < 0.02
        delay = np.where(
            late,
            rng.integers(10 * 60 * US, 6 * HOUR, size=len(occurred)),
            rng.integers(50_000, 2 * US, size=len(occurred)),
        )
        received = occurred + delay
        visible = received <= end_us  # not yet arrived at as_of: never generated
        order_by_arrival = np.argsort(received[visible], kind="stable")
        sel = np.flatnonzero(visible)[order_by_arrival]
        n_ev = len(sel)
        event_ids = np.arange(next_event_id, next_event_id + n_ev)
        next_event_id += n_ev
        cols = {"event_id": event_ids}
        for key, arr in ev_all.items():
            cols[key] = arr[sel]
        cols["occurred_at"] = _iso(occurred[sel])
        cols["updated_at"] = _iso(received[sel])
        w.write("events", cols)

        # a few orders are deleted (test and fraudulent orders), with their lines
        gone = rng.random(n) < 0.002
        keep_o = ~gone
        keep_i = keep_o[item_order]
        w.write(
            "orders",
            {
                "order_id": oid[keep_o],
                "customer_id": cust[keep_o],
                "region_id": region_ids[reg][keep_o],
                "session_id": sid_p[keep_o],
                "status": status[keep_o],
                "currency": currencies[reg][keep_o],
                "channel": ch[keep_o],
                "utm_source": src[keep_o],
                "utm_medium": med[keep_o],
                "utm_campaign": camp[keep_o],
                "subtotal_cents": subtotal[keep_o],
                "discount_cents": discount[keep_o],
                "shipping_cents": shipping[keep_o],
                "total_cents": total[keep_o],
                "ordered_at": _iso(t[keep_o]),
                "updated_at": _iso(updated[keep_o]),
            },
        )
        item_ts = _iso(t[item_order][keep_i])
        w.write(
            "order_items",
            {
                "order_item_id": item_ids[keep_i],
                "order_id": oid[item_order][keep_i],
                "product_id": prod[keep_i] + 1,
                "quantity": qty[keep_i],
                "unit_price_cents": unit[keep_i],
                "discount_cents": line_discount[keep_i],
                "created_at": item_ts,
                "updated_at": item_ts,
            },
        )
        gone_at = np.where(gone, np.minimum(updated + HOUR, end_us - 1), 0)
        for o in oid[gone].tolist():
            deletion_rows.append(("orders", str(o), int(gone_at[o - oid[0]])))
        for i, o in zip(item_ids[~keep_i].tolist(), item_order[~keep_i].tolist(), strict=True):
            deletion_rows.append(("order_items", str(i), int(gone_at[o])))
        log.info("generated orders %d..%d", oid[0], oid[-1])

    # customers, written once their activity is known: some asked to be erased a day or
    # more after their last order or visit (within the window, else they are kept)
    erased_at = last_activity + DAY + rng.integers(0, 30 * DAY, size=n_customers)
    erased = erasure_requested & (erased_at < end_us)
    keep = ~erased
    emails = [
        f"{f.lower()}.{ln.lower()}.{i}@example.com"
        for f, ln, i in zip(first.tolist(), last.tolist(), customer_ids.tolist(), strict=True)
    ]
    phones = [f"+1-555-{i % 10_000_000:07d}" for i in customer_ids.tolist()]
    w.write(
        "customers",
        {
            "customer_id": customer_ids[keep],
            "email": np.array(emails, dtype=object)[keep],
            "first_name": first[keep],
            "last_name": last[keep],
            "phone": np.array(phones, dtype=object)[keep],
            "region_id": region_ids[c_region][keep],
            "acquisition_channel": c_channel[keep],
            "is_marketing_opt_in": opt_in[keep],
            "created_at": _iso(c_created[keep]),
            "updated_at": _iso(c_updated[keep]),
        },
    )
    deletion_rows.extend(
        ("customers", str(cid), int(ts))
        for cid, ts in zip(customer_ids[erased].tolist(), erased_at[erased].tolist(), strict=True)
    )
    deletion_rows.sort(key=lambda r: r[2])
    w.write(
        "deletions",
        {
            "entity": [r[0] for r in deletion_rows],
            "record_id": [r[1] for r in deletion_rows],
            "deleted_at": _iso(np.array([r[2] for r in deletion_rows], dtype=np.int64)),
        },
    )
    con.execute(
        "INSERT INTO txlog (seq, committed_at, ddl) VALUES (1, ?, NULL)", (store.iso(as_of),)
    )
    for key, value in (
        ("seed", seed),
        ("as_of", store.iso(as_of)),
        (
            "next_ids",
            {
                "orders": next_order_id,
                "order_items": next_item_id,
                "sessions": next_session_id,
                "events": next_event_id,
                "customers": n_customers + 1,
                "products": n_products + 1,
            },
        ),
    ):
        con.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))
    con.execute("COMMIT")
    for entity in ENTITIES:
        for ddl in store.indexes_sql(entity):
            con.execute(ddl)
    store.create_schema(con)  # the remaining indexes
    con.execute("PRAGMA synchronous=NORMAL")
    con.close()
    store.create_replica(d)
    rows = {k: v for k, v in w.rows.items()}
    return GenerationSummary(d, store.iso(as_of), seed, rows, time.perf_counter() - started)


def default_as_of() -> datetime:
    """Now, to the second: live traffic continues from the generated history."""
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
