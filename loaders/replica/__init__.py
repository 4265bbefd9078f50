"""dlt source for a sales platform's replica API.

One resource per entity declared in :mod:`loaders.replica.settings`. Each is incremental
on its cursor (state kept by dlt, committed with the load package, so it never advances
past data that did not load), merged on its primary key (an update replaces the row; the
newest version wins within a load), with deletions applied as tombstones
(``hard_delete`` on the ``deleted_marker`` column): the API's own in the listing,
records whose soft-delete flag is true (their marker set to their cursor), or the rows
of a deletions endpoint, read after the listing with its own position in the resource's
state, each tombstone carrying the newest version known so the merge and the incremental
never put it behind the record it deletes. Requests start ``lookback_seconds`` before
the last cursor seen, so rows committed late are caught; rows read again unchanged are
dropped before loading (:mod:`~loaders.replica.lookback`), so a cycle loads only what is
new or changed; a window read moments ago is not read again while nothing is listed past
it (``lookback_recheck_seconds``), so a run of idle cycles does not re-read the last burst
of changes every time. A row committed later than the lookback is caught two ways: where the
API offers a commit sequence (an endpoint's ``sequence``), the listing is read by it
instead (no lookback: nothing committed later has a smaller one); otherwise the caller
asks, now and then, for a wider re-read of an entity (``rereads``: how far back, and the
versions raw holds there, so that unchanged rows are still dropped). An entity's spec
(:func:`entity_spec`) and its table's hints (:func:`resource_hints`) are worked out in
one place each, which the quarantine's replay uses too: a record replayed is parsed and
merged exactly as a new one. Merging stays by the record's version (``cursor``),
whatever the listing is read by.

One endpoint failing on its own (an error status after the retries, a page that is not
records) ends only its entity's listing when the caller collects failures
(:mod:`~loaders.replica.failures`): the pages before it load, its lookback window is not
saved, and the other entities load; auth, rate limits, maintenance, an unreachable API,
or every entity failing, fail the load as a whole.

How the API is spoken (body format, paging, auth, parameters, which endpoints it has)
is configuration, held by :class:`~.protocol.Api`; the source takes one (default:
today's protocol at ``base_url``).

The package: ``settings`` (endpoint declarations), ``errors``, ``protocol`` (the
configured API: dlt's paginators and auth, pages as bytes), ``jsondoc`` (a JSON document
split into NDJSON records and its envelope), ``client`` (the schema, announcements,
health and count endpoints), ``pages`` (NDJSON → Arrow, validation and
quarantine: bad records go to the ``quarantine`` table with the reason, never silently
away), ``lookback``, ``failures`` (endpoints that failed on their own), and the source
itself here. It imports nothing of the project
outside this package: every other part of ``loaders`` may use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import dlt
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.schema.typing import C_DLT_LOAD_ID
from requests import Response
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import HTTPError, RetryError, Timeout

from loaders.replica import mapping, settings
from loaders.replica.client import (
    api_error,
    fetch_announcements,
    fetch_api_schema,
    prefetch,
)
from loaders.replica.errors import (
    PageError,
    ReplicaAuthError,
    ReplicaError,
    ReplicaUnavailable,
)
from loaders.replica.failures import (
    EndpointFailure,
    EndpointFailures,
    http_failure,
    isolable,
    page_failure,
)
from loaders.replica.lookback import LookbackWindow, Reread, WindowFiles
from loaders.replica.observe import Observations
from loaders.replica.pages import (
    QUARANTINE_KEY,
    EntitySpec,
    ParsedPage,
    check_page_type,
    parse_deletions,
    parse_page,
    quarantine_table,
)
from loaders.replica.protocol import (
    Api,
    Listing,
    api_from_settings,
    from_microseconds,
    read_pages,
)

log = logging.getLogger(__name__)

__all__ = [
    "replica_source",
    "entity_spec",
    "resource_hints",
    "with_load_id_slot",
    "fetch_api_schema",
    "fetch_announcements",
    "freezes_types",
    "Reread",
    "ReplicaError",
    "ReplicaAuthError",
    "ReplicaUnavailable",
    "EndpointFailure",
    "EndpointFailures",
    "Api",
    "Listing",
    "api_from_settings",
]


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    return value.isoformat().replace("+00:00", "Z")


def _as_datetime(value: datetime | str) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def _entity_resource(
    api: Api,
    spec: EntitySpec,
    page_size: int,
    start_date: str,
    lookback_seconds: float,
    append: bool = False,
    observations: Observations | None = None,
    failures: EndpointFailures | None = None,
    reread: Reread | None = None,
    listing: Listing | None = None,
    lookback_recheck_seconds: float = 0.0,
    windows: WindowFiles | None = None,
):
    first_start = _as_datetime(start_date)  # a bad start date fails here, not mid-load
    listing = listing or api.listing
    # read by a commit sequence: no lookback; else the lookback, or this cycle's re-read
    lag = 0.0 if spec.sequence else reread.seconds if reread else lookback_seconds
    walk = reread if reread is not None and reread.since is not None else None

    def pages(
        cursor: dlt.sources.incremental[Any] = dlt.sources.incremental(
            spec.sequence or spec.cursor,
            # no initial value: the first load asks the API from start_date and dlt has
            # nothing to filter (a copy of every page of a backfill saved); a row before
            # the requested start is set aside by parse_page, on every load
            initial_value=None,
            lag=lag or None,
            range_start="closed",
            # rows read again (boundary, lookback) are deduplicated by the merge, so no
            # unique-key bookkeeping here; quarantine rows carry a null cursor and pass
            primary_key=(),
            on_cursor_value_missing="include",
        ),
    ) -> Iterator[Any]:
        if spec.sequence:
            # from the last sequence seen (the first load: from the start of the sequence)
            since: datetime | None = None
            params: dict[str, Any] = {
                spec.sequence_param or settings.PARAM_SINCE_SEQ: cursor.start_value or 0,
            }
        else:
            asked = _as_datetime(cursor.start_value or first_start)
            if walk is not None and cursor.start_value is not None:
                # the walk reads the re-read's window (dlt's start is the last cursor less
                # the walk's lag): the listing from the lookback
                asked += timedelta(seconds=lag - lookback_seconds)
            params = {listing.since_param: listing.since_value(asked)}
            since = listing.since_requested(asked)
        params.update(listing.page_params(page_size))
        # rows read again from the lookback window (or a re-read) load only if they
        # changed
        window = (
            LookbackWindow(dlt.current.resource_state(), spec.primary_key, spec.cursor,
                           lookback_seconds, drop=not spec.reshaped, files=windows,
                           entity=spec.name)
            if lag else None
        )
        if window is not None and reread is not None:
            window.also_seen(reread.versions)
        newest = Newest(cursor.start_value if not spec.sequence else None)

        def checked(number: int, response: Response) -> None:
            check_page_type(spec, number, response, listing)

        def listed(params: dict[str, Any], since: datetime | None) -> Generator[ParsedPage]:
            responses = read_pages(api, listing, spec.path, params, checked, spec.name,
                                   page_size)
            # pages are fetched and parsed in threads of their own, each ahead of the
            # next step, so dlt writing one page overlaps parsing the next
            return prefetch(_parsed(spec, prefetch(responses), since, listing.since_param))

        def taken(parsed: ParsedPage) -> Iterator[Any]:
            """What dlt gets of a page: its quarantined records, its rows not read before."""
            if observations is not None:
                observations.add(spec.name, parsed.seen)
            if parsed.quarantined:
                yield dlt.mark.with_hints(
                    _sequence_slot(spec, quarantine_table(parsed.quarantined, spec.cursor)),
                    dlt.mark.make_hints(
                        table_name=settings.QUARANTINE_TABLE,
                        # a bad record read again (lookback) is kept once
                        write_disposition={
                            "disposition": "merge", "strategy": "delete-insert"
                        },
                        primary_key=[QUARANTINE_KEY],
                        merge_key=[],
                    ),
                    create_table_variant=True,
                )
            if parsed.table is not None:
                table = window.drop_seen(parsed.table) if window else parsed.table
                if spec.deletions_path:
                    newest.see(parsed.table[spec.cursor])
                yield from _rows(spec, table, append)

        try:
            if walk is not None and not spec.sequence:
                yield from _walk(walk, listed, taken, spec.cursor, asked, listing, page_size)
            # nothing listed past the last cursor and the window read whole moments ago:
            # reading it again would only find a commit of the last moments, which the
            # next read of the window finds (a cycle with new rows, or once it is older
            # than lookback_recheck_seconds); the window stays as it was
            skipped = (
                window is not None and window.drop and reread is None
                and window.until is not None
                and window.read_within(lookback_recheck_seconds, time.time())
                and not _listed_past(api, spec, listing, window.until, checked)
            )
            if not skipped:
                read_at = time.time()
                with closing(listed(params, since)) as parsed_pages:
                    for parsed in parsed_pages:
                        yield from taken(parsed)
            if spec.deletions_path:
                # after the listing: a record listed and then deleted is deleted
                yield from _deletions(api, spec, listing, page_size, first_start, lag,
                                      newest, append)
            if window and not skipped:
                window.save(read_at)
        except HTTPError as exc:
            error = api_error(exc.response, api.base_url)
            if error is None:
                raise
            _stop(failures, http_failure(spec.name, spec.path, exc.response.status_code,
                                         exc.response.text, error, _secrets(api)))
        except PageError as exc:
            _stop(failures, page_failure(spec.name, spec.path, exc, _secrets(api)))
        except (RequestsConnectionError, Timeout, RetryError) as exc:
            raise ReplicaUnavailable(
                f"cannot reach the replica API at {api.base_url} ({spec.path}):"
                f" {type(exc).__name__}: {exc}"
            ) from None

    return dlt.resource(pages, **resource_hints(spec, append), parallelized=True)


# records per page of the request that asks whether anything is listed past the cursor
PROBE_PAGE_SIZE = 100


def _listed_past(
    api: Api, spec: EntitySpec, listing: Listing, last_us: int,
    checked: Callable[[int, Response], None],
) -> bool:
    """Whether the listing holds anything with a cursor past ``last_us`` (the newest
    cursor read, µs since the epoch), asked from just after it in small pages until one
    holds a record (a positional listing may serve empty pages before its end). A
    listing whose parameter cannot say so finer than that answers the last rows read
    again: yes."""
    after = from_microseconds(last_us + 1)
    params: dict[str, Any] = {listing.since_param: listing.since_value(after),
                              **listing.page_params(PROBE_PAGE_SIZE)}
    pages = read_pages(api, listing, spec.path, params, checked, spec.name, PROBE_PAGE_SIZE)
    with closing(pages):
        for parsed in _parsed(spec, pages, listing.since_requested(after),
                              listing.since_param):
            if parsed.quarantined or (parsed.table is not None and parsed.table.num_rows):
                return True
    return False


def _walk(
    walk: Reread, listed: Any, taken: Any, cursor: str, lookback_start: datetime,
    listing: Listing, page_size: int,
) -> Iterator[Any]:
    """A re-read's walk (see :class:`~.lookback.Reread`): the listing from ``walk.since``,
    its pages through ``taken`` (``listed(params, since)`` lists), until ``walk.pages``
    pages were read (when they came in cursor order and got past ``since``), a page
    starts at or after
    ``lookback_start`` (the usual listing reads on from there) or the listing ends. One
    vectorised min and max per page; ``walk.reached`` and ``walk.finished`` are set once
    the walk stopped without an error."""
    assert walk.since is not None
    params = {listing.since_param: listing.since_value(walk.since),
              **listing.page_params(page_size)}
    read, newest, in_order, finished = 0, None, True, True
    with closing(listed(params, listing.since_requested(walk.since))) as pages:
        for parsed in pages:
            yield from taken(parsed)
            read += 1
            if parsed.table is not None and parsed.table.num_rows:
                column = pc.cast(parsed.table[cursor], pa.timestamp("us", tz="UTC"))
                first, last = pc.min(column).as_py(), pc.max(column).as_py()
                if first is not None:
                    in_order = in_order and (newest is None or first >= newest)
                    newest = last if newest is None else max(newest, last)
                    if in_order and first >= lookback_start:
                        break
            # stops on a page count only once it moved on (many rows of one cursor
            # value: on to the next value) and only in cursor order
            if (walk.pages and read >= walk.pages and in_order and newest is not None
                    and newest > walk.since):
                finished = False
                break
    walk.reached, walk.finished = newest, finished


def _rows(spec: EntitySpec, table: pa.Table, append: bool) -> Iterator[Any]:
    """A page's rows as the entity's table takes them. Its tombstones: on a first load
    (``append``), set aside (:mod:`loaders.runners.first_loads` applies them to the rare
    rows listed before their deletion); on later loads, merged (they delete their row)
    and also appended, as (key, cursor), to the entity's deletion log
    (:func:`deleted_table`)."""
    if spec.deleted_marker in table.column_names:
        live, tombstones = split_tombstones(spec, table)
        if append:
            table = live
        if tombstones.num_rows:
            yield dlt.mark.with_hints(
                with_load_id_slot(tombstones),
                dlt.mark.make_hints(
                    table_name=(tombstones_table if append else deleted_table)(spec.name),
                    write_disposition="append",
                    # not the entity's column hints (its deletion marker and merge
                    # order, which mean nothing to an appended table): the log's
                    # columns are those of its Arrow table
                    columns={},
                ),
                create_table_variant=True,
            )
    if table.num_rows:
        yield with_load_id_slot(table)


class Newest:
    """The newest version of an entity known: where the listing started from, then the
    newest read (one vectorised max per page)."""

    def __init__(self, start: Any) -> None:
        self.value: datetime | None = _as_datetime(start) if start else None

    def see(self, versions: pa.ChunkedArray) -> None:
        if not pa.types.is_timestamp(versions.type):
            versions = pc.cast(versions, pa.timestamp("us", tz="UTC"))
        top = pc.max(versions).as_py()
        if top is not None and (self.value is None or top > self.value):
            self.value = top


DELETIONS_STATE = "deletions_since"


def _deletions(
    api: Api, spec: EntitySpec, listing: Listing, page_size: int, first_start: datetime,
    lag: float, newest: Newest, append: bool,
) -> Iterator[Any]:
    """The deletions endpoint's listing since its own position (kept in the resource's
    state, committed with the load, lag as the listing's), as tombstones
    ``{key, deleted_marker, cursor}`` into the entity's table. A tombstone's cursor is
    the later of its deletion and the newest version known, so it is never older than
    the record it deletes (the newest version wins a merge) nor behind the listing's
    incremental start (which would drop it)."""
    state = dlt.current.resource_state()
    position = state.get(DELETIONS_STATE)
    start = _as_datetime(position) - timedelta(seconds=lag) if position else first_start
    params: dict[str, Any] = {listing.since_param: listing.since_value(start)}
    params.update(listing.page_params(page_size))
    marker = spec.deleted_marker or settings.DELETED_MARKER
    latest: datetime | None = _as_datetime(position) if position else None

    def checked(number: int, response: Response) -> None:
        check_page_type(replace(spec, path=spec.deletions_path or spec.path), number,
                        response, listing)

    for page in read_pages(api, listing, spec.deletions_path or "", params, checked,
                           spec.name, page_size):
        deleted = parse_deletions(spec, page.records)
        if deleted is None or not deleted.num_rows:
            continue
        when = deleted[marker]
        top = pc.max(when).as_py()
        latest = top if latest is None or top > latest else latest
        version = when
        if newest.value is not None:
            known = pa.scalar(newest.value, when.type)
            version = pc.if_else(pc.less(when, known), known, when)
        tombstones = deleted.append_column(pa.field(spec.cursor, when.type, nullable=False),
                                           version)
        yield from _rows(spec, _sequence_slot(spec, tombstones), append)
    if latest is not None:
        state[DELETIONS_STATE] = _iso(latest)


def _secrets(api: Api) -> tuple[str, ...]:
    return (api.token,) if api.token else ()


def _stop(failures: EndpointFailures | None, failure: EndpointFailure) -> None:
    """End an entity's listing on ``failure``: recorded when it is the endpoint's own
    and the caller collects failures (the pages yielded before it load, and the cursor
    moves up to them: they came in keyset order), raised otherwise, and raised as the
    load's first failure once every entity has failed (see :mod:`.failures`)."""
    if failures is None or not isolable(failure.error):
        raise failure.error from None
    first = failures.add(failure)
    if first is not None:
        raise first.error from None
    log.error("%s: the listing failed, the other entities load: %s", failure.entity,
              failure.message)


def resource_hints(spec: EntitySpec, append: bool = False) -> dict[str, Any]:
    """The dlt hints of an entity's raw table (``dlt.resource`` arguments): merged on the
    primary key (``delete-insert``; with ``append``, appended: a first load), the newest
    version of a key read twice in one load winning (``dedup_sort`` on the cursor),
    tombstones deleting (``hard_delete`` on the deleted marker), and the nullable
    ``_dlt_load_id`` slot. The source and the quarantine's replay both take theirs from
    here, so a replayed record merges exactly as a new one does."""
    columns: dict[str, Any] = {
        # the load that wrote each row (see [normalize.parquet_normalizer] in
        # .dlt/config.toml); nullable, so a warehouse loaded before can add the column
        C_DLT_LOAD_ID: {"data_type": "text", "nullable": True},
    }
    if not append:
        # a key read twice in one load (changed while listed): the newest version wins
        columns[spec.cursor] = {"dedup_sort": "desc"}
    if spec.deleted_marker and not append:
        columns[spec.deleted_marker] = {
            "hard_delete": True,
            "data_type": "timestamp",
            "nullable": True,
        }
    disposition: Any = (
        "append" if append else {"disposition": "merge", "strategy": "delete-insert"}
    )
    return {
        "name": spec.name,
        "primary_key": spec.primary_key,
        # a first load appends; loaders.runners.first_loads repairs it into what a merge
        # leaves
        "write_disposition": disposition,
        "columns": columns,
    }


def entity_spec(
    name: str,
    endpoint: settings.Endpoint,
    described: dict[str, Any],
    known_types: dict[str, dict[str, str]] | None = None,
    contract: Any = None,
    maps: tuple[mapping.FieldMap, ...] = (),
) -> EntitySpec:
    """What the loader knows of one entity, the one way it is worked out: its endpoint
    declaration, the API's schema (``described``: the schema endpoint's answer for all
    entities), the raw columns' types (``known_types``: table -> column -> dlt type), its
    schema contract and its field mappings. The source and the quarantine's replay both
    build their specs here, so a record replayed is parsed exactly as a new one would
    be."""
    entity_fields = described.get(name, {}).get("fields", [])
    known = (known_types or {}).get(name, {})
    sequence = settings.sequence_of(endpoint)
    if sequence and entity_fields and sequence[0] not in {f["name"] for f in entity_fields}:
        raise ReplicaError(
            f"{name}: the endpoint declares the sequence {sequence[0]!r}, but the API's"
            f" schema has no such field: have the API serve it, or remove `sequence` from"
            f" [sources.replica.endpoints.{name}] to read by {settings.cursor_of(endpoint)!r}"
        )
    return EntitySpec(
        name=name,
        path=endpoint["path"],
        primary_key=endpoint["primary_key"],
        cursor=settings.cursor_of(endpoint),
        sequence=sequence[0] if sequence else None,
        sequence_param=sequence[1] if sequence else None,
        deleted_marker=settings.deleted_marker_of(endpoint),
        soft_delete_field=endpoint.get("soft_delete_field") or None,
        deletions_path=endpoint.get("deletions_path") or None,
        fields={f["name"]: f["type"] for f in entity_fields},
        required=tuple(f["name"] for f in entity_fields if f.get("required")),
    ).with_mapping(maps, known).with_variants(known, freeze_types=freezes_types(contract))


def _parsed(
    spec: EntitySpec, pages: Iterable[Any], since: datetime | None, since_param: str
) -> Iterator[ParsedPage]:
    """The pages of a listing (checked by :func:`read_pages`), parsed (``since``: the
    start requested, when the listing is by time and the format can say it)."""
    for page in pages:
        yield parse_page(spec, page.records, since, since_param)


def deleted_table(entity: str) -> str:
    """The entity's deletion log: a row (key, cursor, dlt load id) per record a load
    deleted, appended by every load after the first. A merge removes the deleted row
    from raw, so this is what tells the models which keys went, and when (by load id),
    without comparing whole tables (the dbt macro ``delete_tombstoned``)."""
    return f"{entity}__deleted"


def tombstones_table(entity: str) -> str:
    """Where a first load sets aside the tombstones it reads (see loaders.runners.first_loads)."""
    return f"{entity}__first_load_tombstones"


def split_tombstones(spec: EntitySpec, table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Live rows, and the tombstones as (key, cursor)."""
    dead = pc.is_valid(table[spec.deleted_marker])
    kept = [spec.primary_key, spec.cursor, *([spec.sequence] if spec.sequence else [])]
    if not pc.any(dead).as_py():
        return table, table.select(kept).slice(0, 0)
    tombstones = table.filter(dead).select(kept)
    return table.filter(pc.invert(dead)), tombstones


def _sequence_slot(spec: EntitySpec, table: pa.Table) -> pa.Table:
    """``table`` (records set aside) with an empty sequence column, when the listing is
    read by one: dlt's incremental looks for its column in every table it passes."""
    if not spec.sequence or spec.sequence in table.column_names:
        return table
    return table.append_column(
        pa.field(spec.sequence, pa.int64(), nullable=True), pa.nulls(table.num_rows, pa.int64())
    )


def with_load_id_slot(table: pa.Table) -> pa.Table:
    """``table`` with an empty, nullable ``_dlt_load_id`` column, which dlt fills while
    extracting. Declared on the Arrow table as on the resource (nullable), dlt finds
    the two schemas agree instead of warning about it on every page."""
    if C_DLT_LOAD_ID in table.column_names:
        return table
    return table.append_column(
        pa.field(C_DLT_LOAD_ID, pa.string(), nullable=True), pa.nulls(table.num_rows, pa.string())
    )


def freezes_types(contract: Any) -> bool:
    if isinstance(contract, str):
        return contract == "freeze"
    return bool(contract) and contract.get("data_type") == "freeze"


@dlt.source(name=settings.SOURCE_NAME, max_table_nesting=0)
def replica_source(
    base_url: str = dlt.config.value,
    token: str = dlt.secrets.value,
    page_size: int = 20000,
    start_date: str = "2000-01-01T00:00:00Z",
    lookback_seconds: float = 30.0,
    lookback_recheck_seconds: float = 5.0,
    endpoints: dict[str, settings.Endpoint] | None = None,
    entities: Sequence[str] | None = None,
    known_types: dict[str, dict[str, str]] | None = None,
    schema_contracts: dict[str, Any] | None = None,
    described: dict[str, dict[str, Any]] | None = None,
    append: Sequence[str] = (),
    field_mapping: dict[str, Any] | None = None,
    observations: Observations | None = None,
    failures: EndpointFailures | None = None,
    rereads: dict[str, Reread] | None = None,
    api: Api | None = None,
    windows: WindowFiles | None = None,
) -> Any:
    """All entities of the replica API (or just ``entities``), as incremental resources.

    ``known_types`` (table -> column -> dlt data type, from the pipeline's schema) lets a
    field whose type changed upstream load into a variant column instead of being
    coerced into the old one, or, where the entity's schema contract freezes data types
    (``schema_contracts``, over :data:`settings.SCHEMA_CONTRACTS`), go to quarantine.
    ``described`` is the API's schema when the caller has fetched it already.
    ``append``: entities to append instead of merge, for their first load; the caller
    must then repair them (:mod:`loaders.runners.first_loads`) into what a merge leaves.
    ``field_mapping``: entity -> raw column -> what the API sends for it now (see
    :mod:`.mapping`). ``observations`` collects what the records of every page looked
    like (see :mod:`.observe`). ``failures`` collects the entities whose endpoint failed
    on its own (see :mod:`.failures`): the others load; without it, any failure fails
    the load. ``rereads``: entities read this cycle from further back than the lookback
    (see :class:`~.lookback.Reread`). ``lookback_recheck_seconds``: a lookback window
    read whole less than this long ago is not read again while the API lists nothing
    past it (a small page asked from past the cursor says so): a commit landing in it in
    those moments is read by the next read of the window (0: every load reads it).
    ``api``: how the API is spoken (see
    :mod:`.protocol`; default: today's protocol at ``base_url`` with ``token``).
    ``windows``: where the lookback windows' rows are kept between loads; the caller
    commits them once the load has (see :class:`~.lookback.WindowFiles`; without it,
    rows read again in the lookback load again and the merge deduplicates them)."""
    if not base_url.startswith(("http://", "https://")):
        raise ReplicaError(f"base_url must be an http(s) URL, got {base_url!r}")
    api = api or api_from_settings(base_url, token, {})
    if not 1 <= page_size <= 1_000_000:
        raise ReplicaError(f"page_size must be between 1 and 1000000, got {page_size}")
    if not 0 <= lookback_recheck_seconds < float("inf"):
        raise ReplicaError("lookback_recheck_seconds must be 0 or more seconds, got"
                           f" {lookback_recheck_seconds!r}")
    declared = dict(endpoints or settings.ENDPOINTS)
    unknown = set(entities or ()) - set(declared)
    if unknown:
        raise ReplicaError(f"unknown entities {sorted(unknown)}; declared: {sorted(declared)}")
    unmapped = set(field_mapping or {}) - set(declared)
    if unmapped:
        raise ReplicaError(
            f"[sources.replica.field_mapping] names unknown entities {sorted(unmapped)};"
            f" declared: {sorted(declared)}"
        )
    contracts = {**settings.SCHEMA_CONTRACTS, **(schema_contracts or {})}
    schema = described if described is not None else fetch_api_schema(api)
    resources = []
    for name, ep in declared.items():
        if entities and name not in entities:
            continue
        spec = entity_spec(name, ep, schema, known_types, contracts.get(name),
                           mapping.parse(name, (field_mapping or {}).get(name)))
        if spec.variants:
            log.warning("%s: type changed upstream, loading %s", name, spec.variants)
        if spec.frozen:
            log.warning(
                "%s: type changed upstream on %s; data types are frozen: rows quarantined",
                name, sorted(spec.frozen),
            )
        resource = _entity_resource(
            api, spec, page_size, start_date,
            lookback_seconds, append=name in append, observations=observations,
            failures=failures,
            reread=(rereads or {}).get(name),
            listing=api.listing_for(ep),
            lookback_recheck_seconds=lookback_recheck_seconds,
            windows=windows,
        )
        resource.apply_hints(schema_contract=contracts.get(name))
        resources.append(resource)
    if failures is not None:
        failures.expect(len(resources))
    return resources
