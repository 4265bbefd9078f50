"""The lookback window: rows read again unchanged are not loaded again.

May import: pyarrow, and this package's ``pages`` (nothing else of the project).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Reread:
    """One cycle's wider re-read of an entity: rows up to ``seconds`` before the last
    cursor are let through instead of the lookback's, and ``versions`` (see
    :func:`versions`: the rows raw holds in that window, read from the warehouse by the
    caller) are rows not to load again: only what was missed or changed loads.

    Without ``since``, requests start ``seconds`` before the last cursor. With it, the
    re-read is a walk: a listing of its own from ``since``, of at most ``pages`` pages
    (0: to the end), before the usual one from the lookback; the source says where it
    got to (``reached``: the newest cursor it read) and whether it is done
    (``finished``: the listing ended, reached the lookback's start, or turned out not
    to be in cursor order, and was then read to its end)."""

    seconds: float
    versions: pa.Table
    since: datetime | None = None
    pages: int = 0
    reached: datetime | None = None
    finished: bool = False


def versions(key: pa.Array, cursor: pa.Array) -> pa.Table:
    """The versions of rows (``cursor`` a timestamp), as the window holds them: ``key``
    as text, ``us`` the cursor in µs. A key and its cursor identify a version of a
    record."""
    us = pc.cast(pc.cast(cursor, pa.timestamp("us", tz="UTC")), pa.int64())
    return pa.table({"key": pc.cast(key, pa.string()), "us": us})


def no_versions() -> pa.Table:
    """No rows (see :func:`versions`)."""
    return pa.table({"key": pa.array([], pa.string()), "us": pa.array([], pa.int64())})


class LookbackWindow:
    """Rows already loaded inside the lookback window, so that reading them again does
    not load them again.

    Every request starts ``lookback`` seconds before the last cursor, to catch rows
    committed late. A row read again with the same key and cursor value is the same
    version (the platform moves the cursor on every write), so it is dropped before
    dlt sees it: a cycle loads only rows that are new or changed, and their dlt load id
    says so to the incremental models downstream. Only pages that reach back before the
    last cursor are checked (the first pages of a cycle), each against the window's rows
    of its own cursor range; a backfill checks none. When the API's schema describes the
    entity differently from raw (a new field, a new type), rows read again are loaded
    anyway: existing rows served in the new shape are how the change reaches the
    warehouse, since their cursor did not move.

    The resource's dlt state (committed with the load package, like the cursor) holds
    the window's newest cursor (``until``) and when a listing last read it whole
    (:meth:`read_within`: the source skips re-reading a window it read moments ago when
    the API lists nothing past it). The window's rows themselves, one per row of the
    last ``lookback`` seconds (a burst of changes puts hundreds of thousands there), are
    kept beside the pipeline by :class:`WindowFiles`, not in the state, which dlt hashes
    several times and compresses with every load."""

    STATE_KEY = "lookback_window"

    def __init__(
        self, state: dict[str, Any], key: str, cursor: str, lookback: float,
        drop: bool = True, files: WindowFiles | None = None, entity: str = "",
    ):
        """``drop=False``: remember the window but load every row (the entity's shape
        changed upstream: rows read again carry it into the warehouse). ``files``: where
        the windows are kept between loads (none: every row read again loads again, the
        merge deduplicating it); ``entity`` names this one there."""
        self.state, self.key, self.cursor, self.drop = state, key, cursor, drop
        self.files, self.entity = files, entity
        self.lookback_us = int(lookback * 1_000_000)
        saved = state.get(self.STATE_KEY) or {}
        self.until: int | None = saved.get("until")
        # when (epoch seconds, this machine's clock) a listing last read the window whole
        self.read_at: float | None = saved.get(READ_AT_FIELD)
        self._seen: pa.Table | None = None  # read when first needed (seen)
        self.recent: list[pa.Table] = []
        self.newest: int | None = self.until

    @property
    def seen(self) -> pa.Table:
        """The rows of the window (``key`` as text, ``us``: cursor µs): read only when a
        page reaches back into it (a cycle that does not read the window again pays
        nothing for it). A window not kept, or kept for another ``until`` than the
        state's (a load that did not commit, a state restored), is empty: its rows load
        again, and the merge keeps one of each."""
        if self._seen is None:
            kept = None
            if self.files is not None and self.until is not None:
                kept = self.files.read(self.entity, self.until)
            self._seen = kept if kept is not None else no_versions()
        return self._seen

    def read_within(self, seconds: float, now: float) -> bool:
        """Whether a listing read the window whole (committed) less than ``seconds``
        before ``now``: re-reading it now would find only what committed since."""
        return seconds > 0 and self.read_at is not None and 0 <= now - self.read_at < seconds

    def also_seen(self, versions: pa.Table) -> None:
        """Rows loaded already (see :func:`versions`; e.g. raw's, for a re-read reaching
        back past the window) are dropped too when read again."""
        if versions.num_rows == 0:
            return
        newest = pc.max(versions["us"]).as_py()
        self._seen = pa.concat_tables([self.seen, versions])
        self.until = newest if self.until is None else max(self.until, newest)

    def _cursor_us(self, table: pa.Table) -> pa.Array | None:
        col = table[self.cursor] if self.cursor in table.column_names else None
        if col is None or not pa.types.is_timestamp(col.type):
            return None  # no typed cursor: nothing to compare, every row loads
        return pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())

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
        if not pc.any(earlier).as_py():
            return table
        seen = self.seen
        if seen.num_rows == 0:
            return table
        # the window's rows of this page's cursor range only: a page is checked against
        # what it can match, not the whole window (a hash set built per page)
        low, high = pc.min_max(cursor_us).values()
        near = seen.filter(pc.and_(pc.greater_equal(seen["us"], low),
                                   pc.less_equal(seen["us"], high)))
        if near.num_rows == 0:
            return table
        keys = _join(pc.cast(table[self.key], pa.string()), cursor_us)
        hit = pc.is_in(keys, value_set=_join(near["key"], near["us"]))
        return table.filter(pc.invert(pc.fill_null(pc.and_(earlier, hit), False)))

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
            key = pc.cast(table[self.key].filter(recent), pa.string())
            keep.append(pa.table({"key": key, "us": cursor_us.filter(recent)}))
        self.recent = keep

    def save(self, now: float) -> None:
        """Keep the rows of the last ``lookback`` seconds seen in this cycle (read again
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
        # the state's window as a whole: an older state's row list is dropped with it
        self.state[self.STATE_KEY] = {"until": self.newest, READ_AT_FIELD: now}
        if self.files is not None:
            self.files.stage(self.entity, self.newest, window)


class WindowFiles:
    """The lookback windows' rows between loads: an Arrow file per entity in
    ``directory`` (beside the pipeline's own files), naming the ``until`` of the window
    it holds. A cycle's windows are staged as its listings end and written by
    :meth:`commit` only once the load that read them has committed: a window never
    names rows the warehouse does not hold. One left behind (a run stopped between the
    load and the commit) names an older ``until`` than the state and is not used."""

    SUFFIX = ".arrow"

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.staged: dict[str, tuple[int, pa.Table]] = {}

    def _path(self, entity: str) -> Path:
        safe = entity if entity.replace("_", "").replace("-", "").isalnum() else (
            hashlib.sha256(entity.encode()).hexdigest()[:32])
        return self.directory / f"{safe}{self.SUFFIX}"

    def read(self, entity: str, until: int) -> pa.Table | None:
        """The window kept for ``entity`` if it is the one ending at ``until``."""
        path = self._path(entity)
        try:
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_file(source)
                meta = reader.schema.metadata or {}
                if meta.get(b"until") != str(until).encode() or meta.get(
                        b"entity") != entity.encode():
                    return None
                return reader.read_all()
        except (FileNotFoundError, pa.ArrowInvalid):
            return None  # none kept, or cut short: the rows load again

    def stage(self, entity: str, until: int, window: pa.Table) -> None:
        self.staged[entity] = (until, window)

    def commit(self) -> None:
        """Write the staged windows (each whole, then moved into place)."""
        if not self.staged:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for entity, (until, window) in self.staged.items():
            path = self._path(entity)
            meta = {b"until": str(until).encode(), b"entity": entity.encode()}
            table = window.replace_schema_metadata(meta)
            partial = path.with_suffix(".partial")
            with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(
                    sink, table.schema) as writer:
                writer.write_table(table)
            os.replace(partial, path)
        self.staged.clear()


READ_AT_FIELD = "read_at"


def _join(key: pa.Array, us: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(key, pc.cast(us, pa.string()), "@")
