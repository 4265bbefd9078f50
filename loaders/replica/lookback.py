"""The lookback window: rows read again unchanged are not loaded again.

May import: pyarrow, and this package's ``pages`` (nothing else of the project).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Reread:
    """One cycle's wider re-read of an entity: rows up to ``seconds`` before the last
    cursor are let through instead of the lookback's, and ``versions``
    (``"<key>@<cursor µs>"`` of the rows raw holds in that window, read from the
    warehouse by the caller) are rows not to load again: only what was missed or
    changed loads.

    Without ``since``, requests start ``seconds`` before the last cursor. With it, the
    re-read is a walk: a listing of its own from ``since``, of at most ``pages`` pages
    (0: to the end), before the usual one from the lookback; the source says where it
    got to (``reached``: the newest cursor it read) and whether it is done
    (``finished``: the listing ended, reached the lookback's start, or turned out not
    to be in cursor order, and was then read to its end)."""

    seconds: float
    versions: pa.Array
    since: datetime | None = None
    pages: int = 0
    reached: datetime | None = None
    finished: bool = False


def versions(key: pa.Array, cursor: pa.Array) -> pa.Array:
    """``"<key>@<cursor µs>"`` of rows (``cursor`` a timestamp): what identifies a
    version of a record in the window."""
    us = pc.cast(pc.cast(cursor, pa.timestamp("us", tz="UTC")), pa.int64())
    return pc.binary_join_element_wise(pc.cast(key, pa.string()), pc.cast(us, pa.string()), "@")


class LookbackWindow:
    """Rows already loaded inside the lookback window, so that reading them again does
    not load them again.

    Every request starts ``lookback`` seconds before the last cursor, to catch rows
    committed late. A row read again with the same key and cursor value is the same
    version (the platform moves the cursor on every write), so it is dropped before
    dlt sees it: a cycle loads only rows that are new or changed, and their dlt load id
    says so to the incremental models downstream. Kept in the resource's dlt state —
    committed with the load package, like the cursor — as ``"<key>@<cursor µs>"`` for
    the rows of the last ``lookback`` seconds. Only pages that reach back before the last
    cursor are checked (the first pages of a cycle); a backfill checks none. When the
    API's schema describes the entity differently from raw (a new field, a new type), rows
    read again are loaded anyway: existing rows served in the new shape are how the
    change reaches the warehouse, since their cursor did not move. The state also says
    when a listing last read the window whole (:meth:`read_within`): the source skips
    re-reading a window it read moments ago when the API lists nothing past it."""

    STATE_KEY = "lookback_window"

    def __init__(
        self, state: dict[str, Any], key: str, cursor: str, lookback: float, drop: bool = True
    ):
        """``drop=False``: remember the window but load every row (the entity's shape
        changed upstream: rows read again carry it into the warehouse)."""
        self.state, self.key, self.cursor, self.drop = state, key, cursor, drop
        self.lookback_us = int(lookback * 1_000_000)
        saved = state.get(self.STATE_KEY) or {}
        self.until: int | None = saved.get("until")
        # when (epoch seconds, this machine's clock) a listing last read the window whole
        self.read_at: float | None = saved.get(READ_AT_FIELD)
        self._saved, self._seen = saved, None  # decoded when first needed (seen)
        self.recent: list[pa.Table] = []
        self.newest: int | None = self.until

    @property
    def seen(self) -> pa.Array:
        """The versions (``"<key>@<cursor µs>"``) of the rows of the window: decoded from
        the state only when a page reaches back into it (a cycle that does not read the
        window again pays nothing for it)."""
        if self._seen is None:
            self._seen = _read_window(self._saved)
        return self._seen

    @seen.setter
    def seen(self, versions: pa.Array) -> None:
        self._seen = versions

    def read_within(self, seconds: float, now: float) -> bool:
        """Whether a listing read the window whole (committed) less than ``seconds``
        before ``now``: re-reading it now would find only what committed since."""
        return seconds > 0 and self.read_at is not None and 0 <= now - self.read_at < seconds

    def also_seen(self, versions: pa.Array) -> None:
        """Rows loaded already (``"<key>@<cursor µs>"``, e.g. raw's, for a re-read
        reaching back past the window) are dropped too when read again."""
        if len(versions) == 0:
            return
        if isinstance(versions, pa.ChunkedArray):
            versions = versions.combine_chunks()
        us = pc.cast(
            pc.list_element(pc.split_pattern(versions, "@", reverse=True, max_splits=1), 1),
            pa.int64(),
        )
        newest = pc.max(us).as_py()
        self.seen = pa.concat_arrays([self.seen, pc.cast(versions, pa.string())])
        self.until = newest if self.until is None else max(self.until, newest)

    def _cursor_us(self, table: pa.Table) -> pa.Array | None:
        col = table[self.cursor] if self.cursor in table.column_names else None
        if col is None or not pa.types.is_timestamp(col.type):
            return None  # no typed cursor: nothing to compare, every row loads
        return pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())

    def _keys(self, key: pa.Array, cursor_us: pa.Array) -> pa.Array:
        return _join(pc.cast(key, pa.string()), cursor_us)

    def drop_seen(self, table: pa.Table) -> pa.Table:
        """``table`` without the rows already loaded; remembers the page for the next
        cycle's window."""
        cursor_us = self._cursor_us(table)
        if cursor_us is None or table.num_rows == 0:
            return table
        self._remember(table, cursor_us)
        if not self.drop or self.until is None:
            return table
        earlier = pc.less_equal(cursor_us, self.until)
        if not pc.any(earlier).as_py() or len(self.seen) == 0:
            return table
        keys = self._keys(table[self.key], cursor_us)
        seen = pc.and_(earlier, pc.is_in(keys, value_set=self.seen))
        return table.filter(pc.invert(pc.fill_null(seen, False)))

    def _remember(self, table: pa.Table, cursor_us: pa.Array) -> None:
        newest = pc.max(cursor_us).as_py()
        if newest is not None and (self.newest is None or newest > self.newest):
            self.newest = newest
        if self.newest is None:  # a page of rows without a cursor: nothing to remember
            return
        horizon = self.newest - self.lookback_us
        keep = [t for t in self.recent if pc.max(t["us"]).as_py() >= horizon]
        recent = pc.greater_equal(cursor_us, horizon)
        if pc.any(recent).as_py():
            # keys of the recent rows only: in a backfill, a few of each page
            us = cursor_us.filter(recent)
            key = pc.cast(table[self.key].filter(recent), pa.string())
            keep.append(pa.table({"key": key, "us": us}))
        self.recent = keep

    def save(self, now: float) -> None:
        """Store the rows of the last ``lookback`` seconds seen in this cycle (read again
        or new), read whole at ``now``; without any new row the previous window stays as
        it was, read again at ``now``."""
        if not self.recent or self.newest is None:
            saved = self.state.get(self.STATE_KEY)
            if saved:
                saved[READ_AT_FIELD] = now
            return
        horizon = self.newest - self.lookback_us
        window = pa.concat_tables(self.recent)
        window = window.filter(pc.greater_equal(window["us"], horizon))
        before = pc.subtract(pa.scalar(self.newest, pa.int64()), window["us"])
        self.state[self.STATE_KEY] = {
            "until": self.newest, WINDOW_FIELD: _one_string(_join(window["key"], before)),
            READ_AT_FIELD: now,
        }


# The window in the resource's state: one string (dlt decodes its state often, and
# compresses it with every load), ``"<key>@<µs before until>"`` joined by commas. Offsets
# from ``until`` instead of whole timestamps: a third shorter, and dlt's compression of
# the state, slow on long repeated digits, several times faster. ``rows`` held whole
# timestamps (``"<key>@<cursor µs>"``), and is still read.
WINDOW_FIELD = "before"
ABSOLUTE_FIELD = "rows"
READ_AT_FIELD = "read_at"


def _join(key: pa.Array, us: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(key, pc.cast(us, pa.string()), "@")


def _one_string(items: pa.Array | pa.ChunkedArray) -> str:
    if isinstance(items, pa.ChunkedArray):
        items = items.combine_chunks()
    if len(items) == 0:
        return ""
    listed = pa.ListArray.from_arrays(pa.array([0, len(items)], pa.int32()), items)
    return str(pc.binary_join(listed, ",")[0].as_py())


def _split(text: str) -> pa.Array:
    if not text:
        return pa.array([], pa.string())
    return pc.split_pattern(pa.array([text], pa.string()), ",")[0].values


def _read_window(saved: dict[str, Any]) -> pa.Array:
    """The versions (``"<key>@<cursor µs>"``) a saved window holds."""
    if WINDOW_FIELD in saved and saved.get("until") is not None:
        items = _split(saved[WINDOW_FIELD] or "")
        parts = pc.split_pattern(items, "@", reverse=True, max_splits=1)
        before = pc.cast(pc.list_element(parts, 1), pa.int64())
        us = pc.subtract(pa.scalar(saved["until"], pa.int64()), before)
        return _join(pc.list_element(parts, 0), us)
    rows = saved.get(ABSOLUTE_FIELD) or ""
    if isinstance(rows, str):
        return _split(rows)
    return pa.array(list(rows), pa.string())
