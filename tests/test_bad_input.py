"""Bad input end to end: crafted replica API pages served over HTTP to the real loader.

Each case of the corpus in ``tests/data/bad_input/<case>/`` is a handful of pages a
broken or hostile API could serve (see README.md, "Testing"). A stub replica API on
127.0.0.1 speaks the simulator's protocol (``/v1/schema``, ``/v1/<entity>`` with
``updated_since``/``limit``/``cursor``, the next cursor in ``X-Next-Cursor``, NDJSON)
and serves the case's pages in order; ``pipeline.load`` takes them through dlt into a
DuckDB warehouse of the test's own. Then, per case, either:

* the load failed with a clear error naming the entity and the page, and nothing of
  that run was committed (raw, quarantine and dlt's cursor as before it); or
* it succeeded, and nothing was lost (every line served is in raw, superseded by a newer
  version of its key, or in ``raw.quarantine`` with a reason), raw holds exactly the
  expected versions (each key once, the newest winning), quarantine exactly the
  expected reasons, and nothing the data said was executed (every table intact).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import pytest

from loaders.replica import ReplicaError
from loaders.replica.settings import ENDPOINTS, NEXT_CURSOR_HEADER
from loaders.runners import pipeline
from loaders.warehouse import cursor_positions, dlt_pipeline
from simulator.model import ENTITIES, fields_at
from tests.support import TOKEN

CORPUS = Path(__file__).parent / "data" / "bad_input"
CONTENT_TYPES = {
    ".ndjson": "application/x-ndjson",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
}
SECOND_RUN = "then"  # a case's subfolder with the pages of a second load, if any
CANARY = "select answer from canary.kept"


@dataclass
class Page:
    body: bytes
    content_type: str


@dataclass
class StubReplica:
    """The replica API's protocol over crafted pages: each entity's pages are served in
    order, ``cursor`` being the page's index; entities without pages answer empty."""

    url: str = ""
    pages: dict[str, list[Page]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)

    def schema(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "entities": {
                name: {
                    "primary_key": e.primary_key,
                    "cursor": "updated_at",
                    "deletable": e.deletable,
                    "fields": [
                        {"name": f.name, "type": f.type, "required": f.required}
                        for f in fields_at(name, [])
                    ],
                }
                for name, e in ENTITIES.items()
            },
        }

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict, bytes]:
        self.requests.append((path, query))
        if path == "/v1/schema":
            return 200, {"Content-Type": "application/json"}, json.dumps(self.schema()).encode()
        if path == "/v1/announcements":
            return 200, {"Content-Type": "application/json"}, b'{"announcements": []}'
        entity = path.removeprefix("/v1/")
        if entity not in ENTITIES:
            return 404, {"Content-Type": "application/json"}, b'{"detail": "Not Found"}'
        pages = self.pages.get(entity, [])
        index = int(query.get("cursor", ["0"])[0])
        if index >= len(pages):
            return 200, {"Content-Type": "application/x-ndjson"}, b""
        headers = {"Content-Type": pages[index].content_type}
        if index + 1 < len(pages):
            headers[NEXT_CURSOR_HEADER] = str(index + 1)
        return 200, headers, pages[index].body


@pytest.fixture
def stub() -> Iterator[StubReplica]:
    """The stub API on an ephemeral port of 127.0.0.1, stopped after the test."""
    replica = StubReplica()

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stuck connection cannot hold the test

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, {"Content-Type": "application/json"}, b'{"detail": "token"}')
                return
            parts = urlsplit(self.path)
            self._send(*replica.answer(parts.path, parse_qs(parts.query)))

        def _send(self, status: int, headers: dict, body: bytes) -> None:
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    replica.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield replica
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Case:
    name: str
    dir: Path
    spec: dict[str, Any]

    def runs(self) -> list[dict[str, list[Page]]]:
        """The pages of each load: the case's folder, then its second-run subfolder."""
        folders = [self.dir] + [d for d in [self.dir / SECOND_RUN] if d.is_dir()]
        return [self._pages(folder) for folder in folders]

    @staticmethod
    def _pages(folder: Path) -> dict[str, list[Page]]:
        """``<entity>.<n>.<ext>`` files, in page order; the extension gives the type."""
        found: dict[str, list[tuple[int, Page]]] = {}
        for f in folder.iterdir():
            if f.is_file() and f.suffix in CONTENT_TYPES and f.name != "case.json":
                entity, number = f.stem.split(".")
                page = Page(f.read_bytes(), CONTENT_TYPES[f.suffix])
                found.setdefault(entity, []).append((int(number), page))
        return {e: [p for _, p in sorted(pages, key=lambda x: x[0])] for e, pages in found.items()}

    @property
    def entities(self) -> list[str]:
        return sorted({e for run in self.runs() for e in run})


def corpus() -> list[Case]:
    return [
        Case(d.name, d, json.loads((d / "case.json").read_text()))
        for d in sorted(CORPUS.iterdir())
        if (d / "case.json").is_file()
    ]


def us(value: Any) -> int:
    """A cursor value (ISO text or datetime) in µs since the epoch."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(value.timestamp() * 1_000_000)


@dataclass
class Snapshot:
    """What a warehouse holds for the corpus: raw versions, quarantine, cursors."""

    raw: dict[str, list[tuple[Any, int]]]
    quarantine: list[tuple[str, str, str]]
    cursors: dict[str, Any]
    tables: set[tuple[str, str]]


def snapshot(path: Path, entities: list[str]) -> Snapshot:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = set(con.execute(
            "select table_schema, table_name from information_schema.tables"
        ).fetchall())
        raw: dict[str, list[tuple[Any, int]]] = {}
        for e in entities:
            if ("raw", e) in tables:
                pk = ENDPOINTS[e]["primary_key"]
                raw[e] = sorted(con.execute(
                    f"select {pk}, epoch_us(updated_at) from raw.{e}"
                ).fetchall())
        quarantine = (
            sorted(con.execute("select entity, reason, record from raw.quarantine").fetchall())
            if ("raw", "quarantine") in tables else []
        )
    finally:
        con.close()
    state = dlt_pipeline(read_only=True)
    return Snapshot(raw, quarantine, cursor_positions(state), tables)


def plant_canary(path: Path) -> None:
    """A table outside raw that SQL hidden in the data would love to drop."""
    with duckdb.connect(str(path)) as con:
        con.execute("create schema canary; create table canary.kept as select 42 as answer")


def assert_nothing_executed(path: Path) -> None:
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute(CANARY).fetchall() == [(42,)]
        for name in ("_dlt_loads", "_dlt_version", "_dlt_pipeline_state"):
            assert con.execute(f"select count(*) from raw.{name}").fetchone()[0] > 0, name


def assert_stored(path: Path, stored: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Values kept under the expected columns (entity -> key -> column -> value), and
    every raw row stamped by a load that happened (never by a value in the data)."""
    with duckdb.connect(str(path), read_only=True) as con:
        for entity, rows in stored.items():
            pk = ENDPOINTS[entity]["primary_key"]
            for key, columns in rows.items():
                cur = con.execute(f"select * from raw.{entity} where {pk} = ?", [int(key)])
                names = [d[0] for d in cur.description]
                [row] = cur.fetchall()
                assert {n: v for n, v in zip(names, row, strict=True) if n in columns} == columns
            forged = con.execute(
                f"select count(*) from raw.{entity} where _dlt_load_id not in"
                " (select load_id from raw._dlt_loads)"
            ).fetchone()[0]
            assert forged == 0, f"raw.{entity}: rows stamped with a load id that never ran"


def assert_quarantine(found: list[tuple[str, str, str]], expected: list[str]) -> None:
    """Each expected reason (a prefix) matches one quarantined record, and no more."""
    reasons = [reason for _, reason, _ in found]
    left = list(reasons)
    for prefix in expected:
        match = next((r for r in left if r.startswith(prefix)), None)
        assert match is not None, f"no quarantined record for {prefix!r}; found {reasons}"
        left.remove(match)
    assert not left, f"quarantined beyond the expected: {left}"


def assert_nothing_lost(case: Case, snap: Snapshot) -> None:
    """Every line the API served is accounted for: in raw (its version, or a newer one
    of its key), or in quarantine (verbatim, or re-rendered with the same key)."""
    served = [
        (entity, line.decode("utf-8", errors="replace"))
        for run in case.runs()
        for entity, pages in run.items()
        for page in pages
        for line in page.body.splitlines()
        if line.strip()
    ]
    texts = {text for _, text in served}
    verbatim = {rec for _, _, rec in snap.quarantine if rec in texts}
    rendered = [(e, json.loads(rec)) for e, _, rec in snap.quarantine if rec not in texts]
    for entity, text in served:
        if text in verbatim:
            continue
        pk = ENDPOINTS[entity]["primary_key"]
        rec = json.loads(text)  # a line that is not JSON can only be there verbatim
        newest = dict(snap.raw.get(entity, []))
        if rec.get(pk) in newest and newest[rec[pk]] >= us(rec["updated_at"]):
            continue
        match = next(
            (r for r in rendered if r[0] == entity and r[1].get(pk) == rec.get(pk)), None
        )
        assert match is not None, f"{case.name}: neither loaded nor quarantined: {text}"
        rendered.remove(match)


def load(stub: StubReplica, case: Case) -> pipeline.LoadResult:
    return pipeline.load(base_url=stub.url, token=TOKEN, entities=case.entities)


@pytest.mark.parametrize("case", corpus(), ids=lambda c: c.name)
def test_bad_input_is_quarantined_or_refused(case: Case, stub: StubReplica, warehouse: Path):
    plant_canary(warehouse)
    runs = case.runs()
    for run in runs[:-1]:
        stub.pages = run
        load(stub, case)
    before = snapshot(warehouse, case.entities)
    stub.pages = runs[-1]
    if "error" in case.spec:
        with pytest.raises(ReplicaError) as failed:
            load(stub, case)
        assert re.search(case.spec["error"], str(failed.value)), str(failed.value)
        after = snapshot(warehouse, case.entities)
        assert (after.raw, after.quarantine, after.cursors) == (
            before.raw, before.quarantine, before.cursors
        ), "a failed load committed part of its data"
        assert not dlt_pipeline().has_pending_data
        return
    load(stub, case)
    snap = snapshot(warehouse, case.entities)
    expected = {
        e: sorted((k, us(ts)) for k, ts in rows) for e, rows in case.spec["raw"].items()
    }
    assert snap.raw == expected
    assert_quarantine(snap.quarantine, case.spec["quarantine"])
    assert {e for e, _, _ in snap.quarantine} <= set(case.entities)
    assert_nothing_lost(case, snap)
    assert_nothing_executed(warehouse)
    assert_stored(warehouse, case.spec.get("stored", {}))
    assert ("raw", "quarantine") in snap.tables or not case.spec["quarantine"]


def test_every_corpus_case_states_its_outcome():
    cases = corpus()
    assert len(cases) >= 10
    for case in cases:
        assert case.spec.get("about"), f"{case.name}: say what the case is"
        assert ("error" in case.spec) != ("raw" in case.spec), (
            f"{case.name}: expect either an error or raw rows and quarantine reasons"
        )
        assert case.runs()[0], f"{case.name}: no pages"

