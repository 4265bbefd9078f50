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
With ``clock_skew``, a share of events (``model.DEVICE_CLOCK_SHARE``) report the time of
a device clock running up to that many seconds ahead of the server, drawn from a random
stream of their own: the rest of the history is the same as without it.

May import ``store`` and ``model``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from simulator import store
from simulator.model import (
    CAMPAIGNS,
    CATEGORIES,
    CHANNELS,
    DEVICE_CLOCK_SHARE,
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
# a SQL null in an object array (numpy's stubs do not take None as np.where's branch)
NULL: Any = None

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
    camp = np.where(paid, camp, NULL)
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


@dataclass
class _Catalogue:
    """Regions and products, and what orders draw from them."""

    region_ids: np.ndarray
    region_weights: np.ndarray
    fx: np.ndarray  # local units per USD, by region index
    currencies: np.ndarray  # by region index
    price: np.ndarray  # list price in USD cents, by product index
    popularity: np.ndarray  # chance of a product being picked, by product index


@dataclass
class _Customers:
    """Customers drawn up front (orders pick among those created before them)."""

    ids: np.ndarray
    created: np.ndarray
    region: np.ndarray
    channel: np.ndarray
    first: np.ndarray
    last: np.ndarray
    updated: np.ndarray
    opt_in: np.ndarray
    erasure_requested: np.ndarray
    last_activity: np.ndarray  # an erasure can only come after a customer's last activity


@dataclass
class _NextIds:
    """The next free id of each generated sequence."""

    orders: int = 1
    items: int = 1
    sessions: int = 1
    events: int = 1


@dataclass
class _Orders:
    """One chunk of orders: their buyers, attribution and amounts."""

    ids: np.ndarray
    times: np.ndarray
    customer: np.ndarray
    region: np.ndarray  # region index
    channel: np.ndarray
    source: np.ndarray
    medium: np.ndarray
    campaign: np.ndarray


@dataclass
class _Items:
    """The lines of one chunk of orders, with the orders' totals."""

    ids: np.ndarray
    order: np.ndarray  # order index within the chunk, per line
    per_order: np.ndarray  # number of lines, per order
    product: np.ndarray  # product index
    quantity: np.ndarray
    unit_price: np.ndarray
    line_discount: np.ndarray
    subtotal: np.ndarray
    discount: np.ndarray
    shipping: np.ndarray
    total: np.ndarray


@dataclass
class _DeviceClocks:
    """The clocks events are stamped with: the server's, or for a share of events a
    device's, running up to ``skew_us`` ahead (none when 0)."""

    rng: np.random.Generator
    skew_us: int

    def reported(self, occurred: np.ndarray) -> np.ndarray:
        if not self.skew_us:
            return occurred
        device = self.rng.random(len(occurred)) < DEVICE_CLOCK_SHARE
        ahead = self.rng.integers(0, self.skew_us, size=len(occurred), endpoint=True)
        return occurred + np.where(device, ahead, 0)


N_PRODUCTS = 400


def generate(
    directory: Path | str,
    orders: int = 2000,
    seed: int = 42,
    as_of: datetime | None = None,
    days: int = 90,
    chunk_orders: int = 250_000,
    clock_skew: float = 0.0,
    feed: str = store.STORED,
) -> GenerationSummary:
    """Create ``production.db`` and ``replica.db`` in ``directory`` (which must not hold a
    platform yet) with ``orders`` orders over the ``days`` before ``as_of``; device clocks
    up to ``clock_skew`` seconds ahead on a share of the events; the replica's feeds kept
    as ``feed`` says (stored records, or views: see :mod:`simulator.store`)."""
    if orders < 1:
        raise ValueError("orders must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    if feed not in store.FEED_STORAGES:
        raise ValueError(f"feed must be one of {', '.join(store.FEED_STORAGES)}, not {feed!r}")
    if clock_skew < 0:
        raise ValueError("clock_skew must be 0 or more seconds (how far device clocks run ahead)")
    started = time.perf_counter()
    d = Path(directory)
    con = _open_production(d)
    as_of = (as_of or datetime.now(timezone.utc)).astimezone(timezone.utc)
    end_us = int(as_of.timestamp() * US)
    start_us = end_us - days * DAY
    rng = np.random.default_rng(seed)
    clocks = _DeviceClocks(np.random.default_rng([seed, 1]), int(clock_skew * US))

    w = _Writer(con)
    con.execute("BEGIN")
    catalogue = _write_catalogue(w, rng, start_us, end_us)
    customers = _draw_customers(rng, orders, catalogue, start_us, end_us)
    deletion_rows: list[tuple[str, str, int]] = []
    ids = _NextIds()
    order_times = _sample_times(rng, orders, start_us, end_us)
    for c0 in range(0, orders, chunk_orders):
        chunk = order_times[c0 : c0 + chunk_orders]
        _write_order_chunk(
            w, rng, chunk, ids, catalogue, customers, end_us, deletion_rows, clocks
        )
    _write_customers(w, rng, customers, catalogue, end_us, deletion_rows)
    _write_deletions(w, deletion_rows)
    _write_meta(con, seed, as_of, ids, len(customers.ids))
    con.execute("COMMIT")
    _finish_production(con)
    store.create_replica(d, feed)
    rows = {k: v for k, v in w.rows.items()}
    return GenerationSummary(d, store.iso(as_of), seed, rows, time.perf_counter() - started)


def _open_production(d: Path):
    """Create an empty production database in ``d``, refusing to overwrite one."""
    d.mkdir(parents=True, exist_ok=True)
    if (d / store.PRODUCTION).exists():
        raise FileExistsError(
            f"{d / store.PRODUCTION} exists: choose another --dir or remove it (--force)"
        )
    con = store.connect(d / store.PRODUCTION)
    con.execute("PRAGMA synchronous=OFF")
    store.create_schema(con, with_indexes=False)
    return con


def _write_catalogue(
    w: _Writer, rng: np.random.Generator, start_us: int, end_us: int
) -> _Catalogue:
    """Write the regions and products, which exist long before the window."""
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
    price, popularity = _write_products(w, rng, catalogue_us, start_us, end_us)
    return _Catalogue(
        region_ids=region_ids,
        region_weights=region_w,
        fx=np.array([FX_PER_USD[REGIONS[r][2]] for r in region_ids]),
        currencies=np.array([REGIONS[r][2] for r in region_ids]),
        price=price,
        popularity=popularity,
    )


def _write_products(
    w: _Writer, rng: np.random.Generator, catalogue_us: int, start_us: int, end_us: int
) -> tuple[np.ndarray, np.ndarray]:
    """Write the products; return their prices and how popular each is."""
    subcats = [(c, s, rng_) for c, (subs, rng_) in CATEGORIES.items() for s in subs]
    n_products = N_PRODUCTS
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
    return price, popularity


def _draw_customers(
    rng: np.random.Generator,
    orders: int,
    catalogue: _Catalogue,
    start_us: int,
    end_us: int,
) -> _Customers:
    """Draw the customers, sorted by creation; 30% existed before the window."""
    n_customers = max(20, round(orders * 0.35))
    n_old = round(n_customers * 0.3)
    c_created = np.concatenate(
        [
            start_us - rng.integers(1, 365 * DAY, size=n_old),
            _sample_times(rng, n_customers - n_old, start_us, end_us),
        ]
    )
    c_created.sort()
    c_region = rng.choice(len(catalogue.region_ids), size=n_customers, p=catalogue.region_weights)
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
    return _Customers(
        ids=np.arange(1, n_customers + 1),
        created=c_created,
        region=c_region,
        channel=c_channel,
        first=first,
        last=last,
        updated=c_updated,
        opt_in=opt_in,
        erasure_requested=erasure_requested,
        last_activity=c_updated.copy(),
    )


def _write_order_chunk(
    w: _Writer,
    rng: np.random.Generator,
    t: np.ndarray,
    ids: _NextIds,
    catalogue: _Catalogue,
    customers: _Customers,
    end_us: int,
    deletion_rows: list[tuple[str, str, int]],
    clocks: _DeviceClocks,
) -> None:
    """Write one chunk of consecutive orders with their lines, sessions and events."""
    orders = _draw_orders(rng, t, ids, customers)
    items = _draw_items(rng, orders, ids, catalogue)
    status, updated = _order_status(rng, t, end_us)
    session_ids = np.arange(ids.sessions, ids.sessions + len(t))
    ids.sessions += len(t)
    purchases, purchase_times = _purchase_events(rng, orders, items, session_ids)
    abandoned, abandoned_times = _abandoned_events(rng, t, ids, catalogue, customers)
    _write_events(
        w, rng, purchases, purchase_times, abandoned, abandoned_times, ids, end_us, clocks
    )
    _write_orders_and_items(
        w, rng, orders, items, catalogue, session_ids, status, updated, end_us, deletion_rows
    )
    log.info("generated orders %d..%d", orders.ids[0], orders.ids[-1])


def _draw_orders(
    rng: np.random.Generator, t: np.ndarray, ids: _NextIds, customers: _Customers
) -> _Orders:
    """Draw each order's customer (one created before it) and its attribution."""
    n = len(t)
    oid = np.arange(ids.orders, ids.orders + n)
    ids.orders += n
    k = np.searchsorted(customers.created, t, side="right")
    k = np.maximum(k, 1)
    cust_idx = (rng.random(n) * k).astype(np.int64)
    np.maximum.at(customers.last_activity, cust_idx, t)
    ch, src, med, camp = _channel_arrays(rng, n)
    loyal = rng.random(n) < 0.4
    ch = np.where(loyal, customers.channel[cust_idx], ch)
    src = np.where(loyal, np.array([CHANNELS[c][1] for c in ch.tolist()], dtype=object), src)
    med = np.where(loyal, np.array([CHANNELS[c][2] for c in ch.tolist()], dtype=object), med)
    camp = np.where(np.isin(ch, PAID_CHANNELS), camp, NULL)
    camp = np.where(
        np.isin(ch, PAID_CHANNELS) & (camp == None),  # noqa: E711 (numpy elementwise)
        CAMPAIGNS[-1],
        camp,
    )
    return _Orders(
        ids=oid,
        times=t,
        customer=customers.ids[cust_idx],
        region=customers.region[cust_idx],
        channel=ch,
        source=src,
        medium=med,
        campaign=camp,
    )


def _draw_items(
    rng: np.random.Generator, orders: _Orders, ids: _NextIds, catalogue: _Catalogue
) -> _Items:
    """Draw each order's lines and work out its amounts in the region's currency."""
    n = len(orders.ids)
    reg, fx = orders.region, catalogue.fx
    n_items = rng.choice(5, size=n, p=ITEMS_PER_ORDER) + 1
    item_order = np.repeat(np.arange(n), n_items)
    m = len(item_order)
    item_ids = np.arange(ids.items, ids.items + m)
    ids.items += m
    prod = rng.choice(len(catalogue.price), size=m, p=catalogue.popularity)
    qty = rng.choice(3, size=m, p=[0.8, 0.15, 0.05]) + 1
    unit = np.rint(catalogue.price[prod] * fx[reg[item_order]]).astype(np.int64)
    has_discount = rng.random(n) < 0.15
    line_total = unit * qty
    line_discount = np.where(has_discount[item_order], line_total // 10, 0)
    subtotal = np.bincount(item_order, weights=line_total, minlength=n).astype(np.int64)
    discount = np.bincount(item_order, weights=line_discount, minlength=n).astype(np.int64)
    shipping = np.where(
        subtotal - discount >= np.rint(5000 * fx[reg]), 0, np.rint(499 * fx[reg])
    ).astype(np.int64)
    return _Items(
        ids=item_ids,
        order=item_order,
        per_order=n_items,
        product=prod,
        quantity=qty,
        unit_price=unit,
        line_discount=line_discount,
        subtotal=subtotal,
        discount=discount,
        shipping=shipping,
        total=subtotal - discount + shipping,
    )


def _order_status(
    rng: np.random.Generator, t: np.ndarray, end_us: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each order's status at ``end_us`` by its age, and when it last changed."""
    n = len(t)
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
    return status, updated


def _purchase_events(
    rng: np.random.Generator, orders: _Orders, items: _Items, session_ids: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Purchase sessions: view, cart, checkout and purchase ending in each order."""
    t, n = orders.times, len(orders.times)
    s_start = t - rng.integers(2 * 60 * US, 40 * 60 * US, size=n)
    first_prod = items.product[np.concatenate([[0], np.cumsum(items.per_order)[:-1]])] + 1
    platform = np.where(rng.random(n) < 0.62, "web", "app")
    ev = {
        "session_id": np.repeat(session_ids, 4),
        "customer_id": np.repeat(orders.customer, 4).astype(object),
        "event_type": np.tile(["product_view", "add_to_cart", "checkout", "purchase"], n),
        "product_id": np.repeat(first_prod, 4).astype(object),
        "order_id": np.repeat(orders.ids, 4).astype(object),
        "channel": np.repeat(orders.channel, 4),
        "utm_source": np.repeat(orders.source, 4),
        "utm_medium": np.repeat(orders.medium, 4),
        "utm_campaign": np.repeat(orders.campaign, 4),
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
    ev["order_id"] = np.where(ev["event_type"] == "purchase", ev["order_id"], NULL)
    ev["product_id"] = np.where(ev["event_type"] == "purchase", NULL, ev["product_id"])
    return ev, occ


def _abandoned_depths() -> np.ndarray:
    """Chances that an abandoned session stops at view (1), cart (2) or checkout (3)."""
    depth_p = np.array(
        [
            1 - FUNNEL["add_to_cart"],
            FUNNEL["add_to_cart"] * (1 - FUNNEL["checkout"]),
            FUNNEL["add_to_cart"] * FUNNEL["checkout"] * (1 - FUNNEL["purchase"]),
        ]
    )
    return depth_p / depth_p.sum()


def _abandoned_events(
    rng: np.random.Generator,
    t: np.ndarray,
    ids: _NextIds,
    catalogue: _Catalogue,
    customers: _Customers,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Abandoned sessions over the same stretch of time as a chunk of orders."""
    a = int(round(len(t) * (1 / purchase_rate() - 1)))
    lo_t, hi_t = int(t[0]), int(t[-1]) + 1
    a_start = _sample_times(rng, a, lo_t, hi_t) if a else np.array([], dtype=np.int64)
    sid_a = np.arange(ids.sessions, ids.sessions + a)
    ids.sessions += a
    depth = rng.choice(3, size=a, p=_abandoned_depths()) + 1
    a_ev_sess = np.repeat(np.arange(a), depth)
    a_step = np.arange(len(a_ev_sess)) - np.repeat(np.cumsum(depth) - depth, depth)
    logged_in = rng.random(a) < 0.55
    ka = np.maximum(np.searchsorted(customers.created, a_start, side="right"), 1)
    a_idx = (rng.random(a) * ka).astype(np.int64)
    a_cust = np.where(logged_in, customers.ids[a_idx], 0)
    np.maximum.at(customers.last_activity, a_idx[logged_in], a_start[logged_in] + HOUR)
    a_ch, a_src, a_med, a_camp = _channel_arrays(rng, a)
    a_prod = rng.choice(len(catalogue.price), size=a, p=catalogue.popularity) + 1
    a_platform = np.where(rng.random(a) < 0.62, "web", "app")
    steps = np.array(["product_view", "add_to_cart", "checkout"])
    a_occ = a_start[a_ev_sess] + a_step * rng.integers(20 * US, 300 * US, size=len(a_step))
    a_cust_ev = a_cust[a_ev_sess].astype(object)
    a_cust_ev[a_cust_ev == 0] = None
    ev = {
        "session_id": sid_a[a_ev_sess],
        "customer_id": a_cust_ev,
        "event_type": steps[a_step],
        "product_id": a_prod[a_ev_sess].astype(object),
        "order_id": np.full(len(a_step), None),
        "channel": a_ch[a_ev_sess],
        "utm_source": a_src[a_ev_sess],
        "utm_medium": a_med[a_ev_sess],
        "utm_campaign": a_camp[a_ev_sess],
        "platform": a_platform[a_ev_sess],
    }
    return ev, a_occ


def _write_events(
    w: _Writer,
    rng: np.random.Generator,
    purchases: dict[str, np.ndarray],
    purchase_times: np.ndarray,
    abandoned: dict[str, np.ndarray],
    abandoned_times: np.ndarray,
    ids: _NextIds,
    end_us: int,
    clocks: _DeviceClocks,
) -> None:
    """Write the events in order of arrival; about 2% arrive late, some after ``end_us``;
    ``occurred_at`` as the clock that stamped it told it (``_DeviceClocks``)."""
    occurred = np.concatenate([purchase_times, abandoned_times])
    ev_all = {key: np.concatenate([purchases[key], abandoned[key]]) for key in purchases}
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
    event_ids = np.arange(ids.events, ids.events + n_ev)
    ids.events += n_ev
    cols: dict[str, Any] = {"event_id": event_ids}
    for key, arr in ev_all.items():
        cols[key] = arr[sel]
    cols["occurred_at"] = _iso(clocks.reported(occurred[sel]))
    cols["updated_at"] = _iso(received[sel])
    w.write("events", cols)


def _write_orders_and_items(
    w: _Writer,
    rng: np.random.Generator,
    orders: _Orders,
    items: _Items,
    catalogue: _Catalogue,
    session_ids: np.ndarray,
    status: np.ndarray,
    updated: np.ndarray,
    end_us: int,
    deletion_rows: list[tuple[str, str, int]],
) -> None:
    """Write the orders and their lines, less a few deleted ones (test and fraud orders)."""
    oid, t, reg, item_order = orders.ids, orders.times, orders.region, items.order
    gone = rng.random(len(oid)) < 0.002
    keep_o = ~gone
    keep_i = keep_o[item_order]
    w.write(
        "orders",
        {
            "order_id": oid[keep_o],
            "customer_id": orders.customer[keep_o],
            "region_id": catalogue.region_ids[reg][keep_o],
            "session_id": session_ids[keep_o],
            "status": status[keep_o],
            "currency": catalogue.currencies[reg][keep_o],
            "channel": orders.channel[keep_o],
            "utm_source": orders.source[keep_o],
            "utm_medium": orders.medium[keep_o],
            "utm_campaign": orders.campaign[keep_o],
            "subtotal_cents": items.subtotal[keep_o],
            "discount_cents": items.discount[keep_o],
            "shipping_cents": items.shipping[keep_o],
            "total_cents": items.total[keep_o],
            "ordered_at": _iso(t[keep_o]),
            "updated_at": _iso(updated[keep_o]),
        },
    )
    item_ts = _iso(t[item_order][keep_i])
    w.write(
        "order_items",
        {
            "order_item_id": items.ids[keep_i],
            "order_id": oid[item_order][keep_i],
            "product_id": items.product[keep_i] + 1,
            "quantity": items.quantity[keep_i],
            "unit_price_cents": items.unit_price[keep_i],
            "discount_cents": items.line_discount[keep_i],
            "created_at": item_ts,
            "updated_at": item_ts,
        },
    )
    gone_at = np.where(gone, np.minimum(updated + HOUR, end_us - 1), 0)
    for o in oid[gone].tolist():
        deletion_rows.append(("orders", str(o), int(gone_at[o - oid[0]])))
    for i, o in zip(items.ids[~keep_i].tolist(), item_order[~keep_i].tolist(), strict=True):
        deletion_rows.append(("order_items", str(i), int(gone_at[o])))


def _write_customers(
    w: _Writer,
    rng: np.random.Generator,
    customers: _Customers,
    catalogue: _Catalogue,
    end_us: int,
    deletion_rows: list[tuple[str, str, int]],
) -> None:
    """Write the customers less those erased on request, a day or more after their last
    order or visit (within the window, else they are kept)."""
    c = customers
    erased_at = c.last_activity + DAY + rng.integers(0, 30 * DAY, size=len(c.ids))
    erased = c.erasure_requested & (erased_at < end_us)
    keep = ~erased
    emails = [
        f"{f.lower()}.{ln.lower()}.{i}@example.com"
        for f, ln, i in zip(c.first.tolist(), c.last.tolist(), c.ids.tolist(), strict=True)
    ]
    phones = [f"+1-555-{i % 10_000_000:07d}" for i in c.ids.tolist()]
    w.write(
        "customers",
        {
            "customer_id": c.ids[keep],
            "email": np.array(emails, dtype=object)[keep],
            "first_name": c.first[keep],
            "last_name": c.last[keep],
            "phone": np.array(phones, dtype=object)[keep],
            "region_id": catalogue.region_ids[c.region][keep],
            "acquisition_channel": c.channel[keep],
            "is_marketing_opt_in": c.opt_in[keep],
            "created_at": _iso(c.created[keep]),
            "updated_at": _iso(c.updated[keep]),
        },
    )
    deletion_rows.extend(
        ("customers", str(cid), int(ts))
        for cid, ts in zip(c.ids[erased].tolist(), erased_at[erased].tolist(), strict=True)
    )


def _write_deletions(w: _Writer, deletion_rows: list[tuple[str, str, int]]) -> None:
    """Write the deletions log, oldest first."""
    deletion_rows.sort(key=lambda r: r[2])
    w.write(
        "deletions",
        {
            "entity": [r[0] for r in deletion_rows],
            "record_id": [r[1] for r in deletion_rows],
            "deleted_at": _iso(np.array([r[2] for r in deletion_rows], dtype=np.int64)),
        },
    )


def _write_meta(con, seed: int, as_of: datetime, ids: _NextIds, n_customers: int) -> None:
    """Write the first log entry and what live traffic continues from (seed, ids)."""
    con.execute(
        "INSERT INTO txlog (seq, committed_at, ddl) VALUES (1, ?, NULL)", (store.iso(as_of),)
    )
    for key, value in (
        ("seed", seed),
        ("as_of", store.iso(as_of)),
        (
            "next_ids",
            {
                "orders": ids.orders,
                "order_items": ids.items,
                "sessions": ids.sessions,
                "events": ids.events,
                "customers": n_customers + 1,
                "products": N_PRODUCTS + 1,
            },
        ),
    ):
        con.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def _finish_production(con) -> None:
    """Build the indexes after the bulk insert (faster than keeping them up) and close."""
    for entity in ENTITIES:
        for ddl in store.indexes_sql(entity):
            con.execute(ddl)
    store.create_schema(con)  # the remaining indexes
    con.execute("PRAGMA synchronous=NORMAL")
    con.close()


def default_as_of() -> datetime:
    """Now, to the second: live traffic continues from the generated history."""
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
