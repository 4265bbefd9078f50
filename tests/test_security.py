"""Security: no configured secret leaks, no raw personal data reaches analysts, the docs
or notifications, the analysts' DuckDB file is read-only, and names chosen by the source
cannot inject SQL.

One pipeline run is shared by every check (the module's ``world``), with a recognisable
value for every secret (the API token, Slack and JSON webhook URLs, the webhook's signing
secret, the SMTP and database passwords, the PII key): a baseline load, new traffic
served through an API that announces and serves fields with hostile names, ``salesflow
run`` (load + dbt build) from the command line with schema-change notifications to every
channel, ``salesflow schema`` and ``schema impact --json``, then, while every channel
fails (the webhooks answer 500 or their port is closed, the SMTP server refuses the
login), a load with a wrong token (auth error, ``salesflow -v``: debug logging) and an
outage (the port closed), ``salesflow status``; the recovery, when every channel takes
what waited, the publication for analysts and ``dbt docs generate``. The process masks
secrets in its log records as the command line does. Then everything it left behind is
scanned for each secret, as is and URL-encoded: files, outputs, log records, the ledger
while channels failed, the warehouse's and the published file's tables, what the
channels received.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import pickle
import secrets
import sqlite3
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import duckdb
import pytest
import requests

from loaders import cli
from loaders.monitoring import redact
from loaders.pii import padded_keys
from loaders.replica import ReplicaAuthError, ReplicaUnavailable
from loaders.replica.pages import NAMING
from loaders.replica.settings import ENDPOINTS
from loaders.runners import pipeline, publish
from loaders.warehouse import dlt_pipeline
from simulator import store
from simulator.generate import generate
from simulator.platform import Platform
from tests.support import AS_OF, ROOT, free_port
from tests.support.simulator import start_simulator
from tests.support.sinks import HttpReceiver, SmtpSink

SECRET = f"sf-tok-{secrets.token_hex(16)}"  # the token the platform accepts
WRONG = f"sf-tok-{secrets.token_hex(16)}"  # a refused one: it must not leak either
WEBHOOK_SECRET = f"whsec-{secrets.token_hex(8)}"
# a webhook URL's secret is its path: Slack's /services/T.../B.../<token>
SLACK_PATH = f"/slack/T0SECRET/B0SECRET/{secrets.token_hex(12)}"
HOOK_PATH = f"/hook/{secrets.token_hex(12)}?key=k-{secrets.token_hex(6)}"
SMTP_USER = "salesflow-mailer"
# characters that URL-encoding changes: the encoded form is searched too
SMTP_PASSWORD = f"smtp-pw/{secrets.token_hex(8)}+@:x"
DB_PASSWORD = f"pg-pw/{secrets.token_hex(8)}+@ x"
PII_KEY = f"pii-key-{secrets.token_hex(16)}"

# field names a source could send: SQL fragments, quotes, backslashes, unicode, a very
# long name, and (on events) an existing column's name in another case
SQL_NAMES = [
    'x"; drop table raw.orders; --',
    "a') or 1=1 --",
    "o'brien \"quoted\" `ticked`",
    "back\\slash\\",
    "ünïcødé 名前 ✓",
    "long_" + "n" * 295,
]
HOSTILE_FIELDS = {
    "orders": SQL_NAMES,
    "customers": SQL_NAMES[:2],
    "events": [SQL_NAMES[0], "Channel"],
}
HOSTILE_VALUE = "'); drop table raw.customers; --"
ANNOUNCED_ID = "hostile'); drop table raw.orders; --"
MARTS = {
    "fct_orders", "fct_order_items", "fct_sessions", "dim_customers", "dim_products",
    "dim_regions", "product_sales_hourly", "product_sales_daily", "funnel_daily",
    "customer_cohorts_monthly", "pipeline_health",
}


class HostileApi:
    """The simulator's replica API seen through a proxy on 127.0.0.1 that announces
    (``/v1/schema``, ``/v1/announcements``) and serves fields with hostile names, hostile
    values in them. Everything else, status codes included, passes through."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                api.forward(self)

            def log_message(self, *args) -> None:
                pass

        self.upstream = upstream
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def forward(self, h: BaseHTTPRequestHandler) -> None:
        headers = {k: h.headers[k] for k in ("Authorization", "Accept") if h.headers.get(k)}
        r = requests.get(self.upstream + h.path, headers=headers, timeout=30)
        body = self.rewrite(urlsplit(h.path).path.strip("/"), r.content) if r.ok else r.content
        h.send_response(r.status_code)
        for k in ("Content-Type", "X-Next-Cursor", "X-Has-More", "Retry-After",
                  "WWW-Authenticate"):
            if k in r.headers:
                h.send_header(k, r.headers[k])
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def rewrite(self, path: str, body: bytes) -> bytes:
        if path == "v1/schema":
            doc = json.loads(body)
            for entity, names in HOSTILE_FIELDS.items():
                doc["entities"][entity]["fields"] += [
                    {"name": n, "type": "string", "required": False, "description": n}
                    for n in names
                ]
            return json.dumps(doc).encode()
        if path == "v1/announcements":
            doc = json.loads(body)
            doc["announcements"].append(announcement())
            return json.dumps(doc).encode()
        names = HOSTILE_FIELDS.get(path.removeprefix("v1/"))
        if not names or not body.strip():
            return body
        records = [json.loads(line) for line in body.splitlines() if line.strip()]
        for rec in records:
            if not rec.get("deleted_at"):  # tombstones keep their shape
                rec.update({n: f"{HOSTILE_VALUE} {i}" for i, n in enumerate(names)})
        return ("\n".join(json.dumps(r) for r in records) + "\n").encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def announcement() -> dict:
    now = datetime.now(timezone.utc)
    return {
        "change_id": ANNOUNCED_ID,
        "title": 'Fields named like SQL: x"; drop table raw.orders; --',
        "description": "a') or 1=1 --",
        "breaking": False,
        "announced_at": now.isoformat(),
        "effective_at": (now + timedelta(days=3)).isoformat(),
        "applied_at": None,
        "status": "upcoming",
        "changes": [{"entity": e, "field": n, "change": "added", "new_type": "string"}
                    for e, names in HOSTILE_FIELDS.items() for n in names],
    }


@dataclass
class World:
    root: Path  # everything salesflow wrote lives here (the platform under sim/)
    sim_dir: Path
    warehouse: Path
    published: Path
    target: Path  # dbt's target: docs site, manifest, catalog, run results
    texts: dict[str, str] = field(default_factory=dict)  # outputs, errors, log records
    payloads: dict[str, bytes] = field(default_factory=dict)  # what the channels received
    secrets: dict[str, str] = field(default_factory=dict)  # name -> a value configured
    failing_ledger: dict[str, list] = field(default_factory=dict)  # while channels failed
    final_ledger: dict[str, list] = field(default_factory=dict)
    smtp_logins: int = 0
    exit_codes: dict[str, int] = field(default_factory=dict)
    raw_before: dict[str, int] = field(default_factory=dict)


def run_cli(world: World, env: dict[str, str], name: str, *args: str) -> None:
    """``salesflow <args>`` in its own process; its output is kept for the scans."""
    proc = subprocess.run(
        [sys.executable, "-m", "loaders.cli", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=240,
    )
    world.texts[f"{name} stdout"] = proc.stdout
    world.texts[f"{name} stderr"] = proc.stderr
    world.exit_codes[name] = proc.returncode


def run_in_process(world: World, name: str, *args: str) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    world.texts[f"{name} stdout"], world.texts[f"{name} stderr"] = out.getvalue(), err.getvalue()
    return code


def expect_failure(world: World, name: str, kind: type[Exception], **options) -> None:
    with pytest.raises(kind) as caught:
        pipeline.load(**options)
    exc = caught.value
    world.texts[f"{name} exception"] = "\n".join(
        [str(exc), repr(exc), *traceback.format_exception(exc)]
    )


def ledger_tables(path: Path) -> dict[str, list]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        return {t: con.execute(f"select * from {t}").fetchall()
                for t in ("raised", "delivered", "pending")}


def tick(sim_dir: Path, orders: int, seed: int) -> None:
    platform = Platform(sim_dir, seed=seed)
    try:
        platform.tick(orders)
    finally:
        platform.close()
    store.replicate(sim_dir)


def raw_counts(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {e: con.execute(f'select count(*) from raw."{e}"').fetchone()[0] for e in ENDPOINTS}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("security")
    w = World(root, root / "sim", root / "warehouse.duckdb",
              root / "published" / "analytics.duckdb", root / "target")
    generate(w.sim_dir, orders=300, seed=7, as_of=AS_OF, days=30)
    http, smtp = HttpReceiver(), SmtpSink()
    records = io.StringIO()  # every log record of this process, at every level
    handler = logging.StreamHandler(records)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    sim = start_simulator(w.sim_dir, token=SECRET)
    stubs: list[HostileApi] = []
    record_factory, excepthook = logging.getLogRecordFactory(), sys.excepthook
    w.secrets = {
        "token": SECRET, "refused token": WRONG,
        "slack webhook url": http.url + SLACK_PATH, "webhook url": http.url + HOOK_PATH,
        "unreachable webhook url": f"http://127.0.0.1:{free_port()}{HOOK_PATH}",
        "webhook secret": WEBHOOK_SECRET, "smtp password": SMTP_PASSWORD,
        "database password": DB_PASSWORD, "pii key": PII_KEY,
        # the padded keys the hashing macro reads stand for the key
        **dict(zip(("pii inner key", "pii outer key"), padded_keys(PII_KEY), strict=True)),
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            settings = {
                "SALESFLOW_DUCKDB_PATH": str(w.warehouse),
                "SALESFLOW_PIPELINES_DIR": str(root / "dlt"),
                "SALESFLOW_PUBLISHED_PATH": str(w.published),
                "DLT_PROJECT_DIR": str(ROOT),
                "DBT_TARGET_PATH": str(w.target),
                "DBT_LOG_PATH": str(root / "logs"),
                "RUNTIME__REQUEST_MAX_ATTEMPTS": "2",
                "RUNTIME__REQUEST_BACKOFF_FACTOR": "0.1",
                "SOURCES__REPLICA__TOKEN": SECRET,
                "NOTIFY__SLACK_WEBHOOK_URL": w.secrets["slack webhook url"],
                "NOTIFY__WEBHOOK_URL": w.secrets["webhook url"],
                "NOTIFY__WEBHOOK_SECRET": WEBHOOK_SECRET,
                "NOTIFY__SMTP_HOST": "127.0.0.1",
                "NOTIFY__SMTP_PORT": str(smtp.port),
                "NOTIFY__SMTP_TO": "data-team@example.com",
                "NOTIFY__SMTP_USERNAME": SMTP_USER,
                "NOTIFY__SMTP_PASSWORD": SMTP_PASSWORD,
                # not used by the DuckDB warehouse, but configured and so never shown
                "DESTINATION__POSTGRES__CREDENTIALS__PASSWORD": DB_PASSWORD,
                "SALESFLOW_PII_KEY": PII_KEY,
            }
            for k, v in settings.items():
                mp.setenv(k, v)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            redact.install()  # as the command line does in its process

            pipeline.load(base_url=sim.url)  # the baseline: token from the environment
            w.raw_before = raw_counts(w.warehouse)
            tick(w.sim_dir, 40, seed=3)  # new orders, customers, events
            stub = HostileApi(sim.url)
            stubs.append(stub)
            mp.setenv("SOURCES__REPLICA__BASE_URL", stub.url)
            env["SOURCES__REPLICA__BASE_URL"] = stub.url
            run_cli(w, env, "salesflow run", "run")
            run_in_process(w, "salesflow schema", "schema", "--json")
            run_in_process(w, "salesflow schema impact", "schema", "impact", "--json")
            run_in_process(w, "salesflow schema impact column", "schema", "impact",
                           "--entity", "orders", "--column", SQL_NAMES[0], "--kind",
                           "new_column", "--json")

            # every channel fails: the webhooks answer 500, the SMTP server refuses the login
            http.status, smtp.refuse_auth = 500, True
            # a refused token, from the command line (debug logging: HTTP libraries log
            # the webhooks' paths) and in process: auth error notified
            run_cli(w, {**env, "SOURCES__REPLICA__TOKEN": WRONG}, "salesflow load wrong token",
                    "-v", "load")
            expect_failure(w, "auth error", ReplicaAuthError, token=WRONG)
            # an outage: the port closes, the cycle fails and is notified; the JSON
            # webhook's port is closed too
            mp.setenv("NOTIFY__WEBHOOK_URL", w.secrets["unreachable webhook url"])
            env["NOTIFY__WEBHOOK_URL"] = w.secrets["unreachable webhook url"]
            redact.install()  # the configuration changed: read the secrets again
            port = stub.server.server_address[1]
            stub.close()
            stubs.remove(stub)
            expect_failure(w, "unreachable", ReplicaUnavailable)
            run_cli(w, env, "salesflow load unreachable", "-v", "load")
            run_in_process(w, "salesflow status while failing", "status")
            w.failing_ledger = ledger_tables(root / "dlt" / "notifications.sqlite3")
            # the API and the channels are back: the recovery is notified, what waited
            # is delivered
            http.status, smtp.refuse_auth = 200, False
            mp.setenv("NOTIFY__WEBHOOK_URL", w.secrets["webhook url"])
            stub = HostileApi(sim.url, port)
            stubs.append(stub)
            tick(w.sim_dir, 5, seed=4)
            pipeline.load()
            w.final_ledger = ledger_tables(root / "dlt" / "notifications.sqlite3")
            run_in_process(w, "salesflow status", "status", "--json")

            publish.publish(w.warehouse)
            pipeline.dbt_docs()
            w.texts["last trace"] = "\n".join(
                [str(dlt_pipeline().last_trace),
                 repr(dlt_pipeline().last_trace),
                 json.dumps(dlt_pipeline().last_trace.asdict(), default=str)]
            )
    finally:
        for s in stubs:
            s.close()
        sim.stop()
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
        logging.setLogRecordFactory(record_factory)
        sys.excepthook = excepthook
        redact.refresh()
        http.close()
        smtp.close()
    w.smtp_logins = smtp.logins
    w.texts["log records"] = records.getvalue()
    for i, r in enumerate(http.received):
        w.payloads[f"http {r.path} {i} body"] = r.body
        w.payloads[f"http {r.path} {i} headers"] = json.dumps(r.headers).encode()
    for i, m in enumerate(smtp.messages):
        w.payloads[f"smtp {i}"] = m.as_bytes()
    yield w


def salesflow_files(world: World) -> list[Path]:
    """Every file the run left outside the platform's own directory."""
    return [p for p in world.root.rglob("*") if p.is_file() and world.sim_dir not in p.parents]


def token_forms(token: str) -> list[bytes]:
    bearer = f"Bearer {token}".encode()
    return [token.encode(), base64.b64encode(bearer), base64.b64encode(bearer).rstrip(b"="),
            base64.urlsafe_b64encode(bearer).rstrip(b"=")]


def secret_forms(name: str, value: str) -> list[bytes]:
    """A secret as is and URL-encoded; a token also as its Authorization header, a URL
    also by its path (what HTTP libraries log)."""
    forms = {value.encode(), quote(value, safe="").encode(), quote_plus(value).encode()}
    if "token" in name:
        forms.update(token_forms(value))
    if "url" in name:
        path = urlsplit(value).path
        forms |= {path.encode(), quote(path, safe="").encode()}
    return sorted(forms)


def leaks(world: World, places: Mapping[str, bytes | str]) -> list[tuple[str, str]]:
    """(secret, place) for every place holding a form of a secret."""
    found = []
    for place, data in places.items():
        raw = data.encode() if isinstance(data, str) else data
        for name, value in world.secrets.items():
            if any(f in raw for f in secret_forms(name, value)):
                found.append((name, place))
    return found


def table_texts(path: Path) -> dict[str, str]:
    """Every row of every table of a DuckDB file, as text."""
    with duckdb.connect(str(path), read_only=True) as con:
        db = con.execute("select current_database()").fetchone()[0]
        tables = con.execute(
            "select schema_name, table_name from duckdb_tables() where database_name = ?",
            [db],
        ).fetchall()
        return {
            f"{schema}.{table}": con.execute(
                f'select coalesce(string_agg(cast(t as varchar), chr(10)), \'\')'
                f' from "{schema}"."{table}" as t'
            ).fetchone()[0]
            for schema, table in tables
        }


# ------------------------------------------------------------------ no secret leaks


def test_the_run_did_everything_the_scans_rely_on(world):
    assert world.exit_codes["salesflow run"] == 0, world.texts["salesflow run stderr"]
    assert "newly held in raw.quarantine" in world.texts["salesflow run stdout"]
    assert world.exit_codes["salesflow load wrong token"] == 3
    assert "refused the token" in world.texts["salesflow load wrong token stderr"]
    assert world.exit_codes["salesflow load unreachable"] == 3
    assert "cannot reach the replica API" in world.texts["salesflow load unreachable stderr"]
    names = {p.relative_to(world.root).as_posix() for p in salesflow_files(world)}
    for expected in ("target/index.html", "target/static_index.html", "target/manifest.json",
                     "target/catalog.json", "target/run_results.json", "logs/dbt.log",
                     "dlt/notifications.jsonl", "dlt/notifications.sqlite3",
                     "dlt/health.json", "published/analytics.duckdb", "warehouse.duckdb"):
        assert expected in names, expected
    assert any(n.endswith("/trace.pickle") for n in names)
    assert any(n.endswith("/state.json") for n in names)
    assert any(n.endswith(".schema.json") for n in names)
    kinds = [json.loads(line)["kind"]
             for line in (world.root / "dlt" / "notifications.jsonl").read_text().splitlines()]
    for kind in ("schema_change", "announcement", "auth_error", "outage", "recovery"):
        assert kind in kinds, kinds
    paths = {p.split()[1] for p in world.payloads if p.startswith("http")}
    assert paths == {SLACK_PATH, HOOK_PATH}
    assert any(p.startswith("smtp") for p in world.payloads)
    # the debug logging of the command line saw the webhooks' requests (masked)
    assert '"POST *** HTTP/1.1" 500' in world.texts["salesflow load wrong token stderr"]


def test_every_channel_failed_then_delivered_what_waited(world):
    failed = {ch: err for _, ch, _, _, err in world.failing_ledger["pending"]}
    assert failed.keys() == {"slack", "webhook", "email"}
    assert failed["slack"].startswith("HTTP 500 from the Slack webhook (host 127.0.0.1:")
    assert "cannot connect to the JSON webhook (host 127.0.0.1:" in failed["webhook"]
    assert failed["email"].startswith("SMTP 535: the SMTP server 127.0.0.1:")
    assert SMTP_USER in failed["email"]
    kinds = {json.loads(event)["kind"] for _, _, event, _, _ in world.failing_ledger["pending"]}
    assert {"auth_error", "outage"} <= kinds
    assert world.final_ledger["pending"] == []  # the recovery delivered everything
    delivered = {(k, ch) for k, ch, _ in world.final_ledger["delivered"]}
    for key, channel, *_ in world.failing_ledger["pending"]:
        assert (key, channel) in delivered
    assert world.smtp_logins > 0


def test_no_file_left_by_the_run_holds_a_secret(world):
    files = salesflow_files(world)
    assert len(files) > 20
    assert leaks(world, {str(p.relative_to(world.root)): p.read_bytes() for p in files}) == []


def test_no_output_error_log_record_or_notification_holds_a_secret(world):
    assert leaks(world, {**world.texts, **world.payloads}) == []
    assert world.texts["log records"]  # the capture saw the run
    assert "kept for retry" in world.texts["log records"]  # and the failed deliveries
    assert "OPEN INCIDENT" in world.texts["salesflow status while failing stdout"]


def test_the_ledger_holds_no_secret_while_channels_fail(world):
    assert world.failing_ledger["pending"]
    texts = {t: json.dumps(rows) for t, rows in world.failing_ledger.items()}
    assert leaks(world, texts) == []


@pytest.mark.parametrize("where", ["warehouse", "published"])
def test_no_table_holds_a_secret(world, where):
    tables = table_texts(world.warehouse if where == "warehouse" else world.published)
    if where == "warehouse":
        assert tables["raw.pipeline_incidents"] and tables["raw.pipeline_cycles"]
    assert leaks(world, tables) == []


def test_dlt_trace_holds_no_secret(world):
    [trace_file] = (world.root / "dlt").rglob("trace.pickle")
    trace = pickle.loads(trace_file.read_bytes())
    text = "\n".join([str(trace), repr(trace), json.dumps(trace.asdict(), default=str)])
    assert text and leaks(world, {"trace": text, "last trace": world.texts["last trace"]}) == []
    resolved = {v.key: v for v in trace.resolved_config_values}
    if "token" in resolved:  # dlt resolved the token itself: kept as a secret, no value
        assert resolved["token"].is_secret_hint and resolved["token"].value is None


def test_the_command_line_masks_secrets_in_errors_log_records_and_crashes(
    monkeypatch, capsys, caplog
):
    key = f"pii-key-{secrets.token_hex(16)}"
    monkeypatch.setenv("SALESFLOW_PII_KEY", key)

    def failing(args) -> int:
        raise ValueError(f"cannot hash with the key {key}")

    monkeypatch.setattr(cli, "cmd_status", failing)
    factory, hook = logging.getLogRecordFactory(), sys.excepthook
    try:
        assert cli.main(["status"]) == 2
        assert capsys.readouterr().err == "salesflow: error: cannot hash with the key ***\n"
        with caplog.at_level(logging.INFO):
            logging.getLogger("any.library").info("the key %s", quote(key, safe=""))
        assert "the key ***" in caplog.text and key not in caplog.text
        try:
            raise RuntimeError(f"crashed holding {key}")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        err = capsys.readouterr().err
        assert "RuntimeError: crashed holding ***" in err and key not in err
    finally:
        logging.setLogRecordFactory(factory)
        sys.excepthook = hook
        redact.refresh()


# ------------------------------------------------------------------ no raw personal data


def personal_data(sim_dir: Path) -> dict[str, set[str]]:
    """The platform's customers' personal data, from its own database."""
    with contextlib.closing(store.connect(sim_dir / store.REPLICA, readonly=True)) as con:
        rows = con.execute("select email, first_name, last_name, phone from customers").fetchall()
    return {
        "emails": {r[0] for r in rows if r[0]},
        "phones": {r[3] for r in rows if r[3]},
        "names": {f"{r[1]} {r[2]}" for r in rows if r[1] and r[2]},
        "parts": {p for r in rows for p in (r[1], r[2]) if p},
    }


def mart_values(path: Path) -> dict[str, set[str]]:
    """Every distinct value of every column of every table in schema marts, as text."""
    out: dict[str, set[str]] = {}
    with duckdb.connect(str(path), read_only=True) as con:
        db = con.execute("select current_database()").fetchone()[0]
        columns = con.execute(
            "select table_name, column_name from duckdb_columns() where database_name = ?"
            " and schema_name = 'marts'", [db],
        ).fetchall()
        for table, column in columns:
            q = f'"{column}"'
            rows = con.execute(
                f"select distinct cast({q} as varchar) from marts.\"{table}\""
                f" where {q} is not null"
            ).fetchall()
            out[f"{table}.{column}"] = {r[0] for r in rows}
    return out


def assert_no_personal_data_in_cells(values: dict[str, set[str]], pii: dict[str, set[str]]):
    exact = {v.lower() for kind in pii.values() for v in kind}
    findings = []
    for column, cells in values.items():
        for cell in cells:
            low = cell.lower()
            if low in exact or any(s in low for s in ("@example.com", "+1-555-")):
                findings.append((column, cell))
    assert findings == []


@pytest.mark.parametrize("where", ["warehouse", "published"])
def test_marts_hold_no_raw_personal_data(world, where):
    pii = personal_data(world.sim_dir)
    assert len(pii["emails"]) > 50 and pii["phones"] and pii["names"]
    path = world.warehouse if where == "warehouse" else world.published
    values = mart_values(path)
    assert {c.split(".")[0] for c in values} >= MARTS - {"pipeline_health"}
    assert sum(len(v) for v in values.values()) > 1000
    assert_no_personal_data_in_cells(values, pii)


def docs_and_notifications(world: World) -> dict[str, str]:
    site = {p.name: p.read_text(errors="replace") for p in (
        world.target / "catalog.json", world.target / "static_index.html",
        world.target / "index.html", world.target / "manifest.json",
    )}
    sent = {k: v.decode(errors="replace") for k, v in world.payloads.items()}
    log = {"notifications.jsonl": (world.root / "dlt" / "notifications.jsonl").read_text()}
    with contextlib.closing(sqlite3.connect(world.root / "dlt" / "notifications.sqlite3")) as con:
        ledger = json.dumps(
            [con.execute(f"select * from {t}").fetchall() for t in ("raised", "delivered")]
        )
    return {**site, **sent, **log, "ledger": ledger}


def test_docs_site_and_notifications_hold_no_personal_data(world):
    pii = personal_data(world.sim_dir)
    texts = docs_and_notifications(world)
    catalog = json.loads(texts["catalog.json"])
    assert catalog["nodes"]["model.salesflow.dim_customers"]["stats"]  # real stats
    found = [(name, v) for name, text in texts.items()
             for v in pii["emails"] | pii["phones"] | pii["names"] if v in text]
    assert found == []


# ------------------------------------------------------------------ analysts are read-only


WRITES = [
    "insert into marts.fct_orders (order_id) values (-1)",
    "update marts.fct_orders set order_status = 'x'",
    "delete from marts.fct_orders",
    "create table marts.mine (x int)",
    "create view marts.mine as select 1 as x",
    "create schema mine",
    "drop table marts.fct_orders",
    "alter table marts.fct_orders add column mine int",
]


def test_the_published_file_refuses_every_write(world):
    attach = f"attach '{world.published}' as rw (read_only false)"
    with duckdb.connect(str(world.published), read_only=True) as con:  # as the README says
        (before,) = con.execute("select count(*) from marts.fct_orders").fetchone()
        for sql in WRITES:
            with pytest.raises(duckdb.Error, match="read-only mode"):
                con.execute(sql)
        with pytest.raises(duckdb.Error, match="already attached"):
            con.execute(attach)  # the same file again, for writing
    code = run_in_process(world, "salesflow query write", "query", WRITES[2],
                          "--database", str(world.published))
    assert code == 2
    assert "read-only mode" in world.texts["salesflow query write stderr"]
    with duckdb.connect(str(world.published), read_only=True) as con:
        assert con.execute("select count(*) from marts.fct_orders").fetchone() == (before,)
        assert before > 0


# ------------------------------------------------------------------ no SQL from the source


def test_hostile_names_executed_nothing(world):
    after = raw_counts(world.warehouse)
    with contextlib.closing(store.connect(world.sim_dir / store.REPLICA, readonly=True)) as con:
        served = {e: con.execute(f"select count(*) from {e}").fetchone()[0] for e in ENDPOINTS}
        events = {r[0] for r in con.execute("select event_id from events")}
    for entity in ENDPOINTS:  # every raw table there, holding what the API serves
        assert after[entity] >= world.raw_before[entity] > 0, entity
    assert {e: after[e] for e in ENDPOINTS if e != "events"} == {
        e: n for e, n in served.items() if e != "events"
    }
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        # events carrying a second "channel" are held back, each of them
        held = {r[0] for r in con.execute(
            "select cast(json_extract(record, '$.event_id') as bigint) from raw.quarantine"
            " where entity = 'events'"
        ).fetchall()}
        loaded = {r[0] for r in con.execute("select event_id from raw.events").fetchall()}
        assert held and loaded | held == events
        tables = {r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_schema = 'marts'"
        ).fetchall()}
        assert tables >= MARTS
        (orders,) = con.execute("select count(*) from marts.fct_orders").fetchone()
        assert orders > 0


def test_hostile_names_land_in_normalised_columns_with_their_values(world):
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        for entity in ("orders", "customers"):  # every new event was held back (below)
            columns = {r[0] for r in con.execute(
                "select column_name from information_schema.columns"
                " where table_schema = 'raw' and table_name = ?", [entity]
            ).fetchall()}
            for i, name in enumerate(HOSTILE_FIELDS[entity]):
                column = NAMING.normalize_identifier(name)
                assert column in columns, (entity, name)
                assert column.replace("_", "").isalnum()  # nothing left to escape
                values = con.execute(
                    f'select distinct "{column}" from raw."{entity}" where "{column}" is not null'
                ).fetchall()
                assert values == [(f"{HOSTILE_VALUE} {i}",)], (entity, name)
        [(reason, record)] = con.execute(
            "select distinct reason, json_extract_string(record, '$.Channel')"
            " from raw.quarantine where entity = 'events'"
        ).fetchall()
    assert "'channel', 'Channel' all become column 'channel'; only 'channel' is loaded" in reason
    assert record == f"{HOSTILE_VALUE} 1"


def test_hostile_names_are_data_in_the_changelog_reports_and_notifications(world):
    listed = json.loads(world.texts["salesflow schema stdout"])
    logged = {(c["entity"], c["column"]) for c in listed["detected"] if c["kind"] == "new_column"}
    for entity in ("orders", "customers"):
        for name in HOSTILE_FIELDS[entity]:
            assert (entity, NAMING.normalize_identifier(name)) in logged
    [announced] = [a for a in listed["announced"] if a["change_id"] == ANNOUNCED_ID]
    assert [c["field"] for c in announced["changes"]][:len(SQL_NAMES)] == SQL_NAMES
    reports = json.loads(world.texts["salesflow schema impact stdout"])
    labels = " ".join(r.get("change", "") for r in reports)
    for name in SQL_NAMES:
        assert f"orders.{name}: added" in labels
    [report] = json.loads(world.texts["salesflow schema impact column stdout"])
    assert report["column"] == SQL_NAMES[0] and report["classification"] == "additive"
    hooks = [json.loads(b) for k, b in world.payloads.items()
             if k.startswith("http /hook") and k.endswith("body")]
    seen = [h for h in hooks if h["kind"] == "announcement"
            and h["details"]["announcement"]["change_id"] == ANNOUNCED_ID]
    assert seen and SQL_NAMES[0] in seen[0]["text"]
    columns = {h["details"]["change"]["column"] for h in hooks if h["kind"] == "schema_change"}
    assert NAMING.normalize_identifier(SQL_NAMES[1]) in columns


def test_a_field_colliding_with_a_column_is_held_back_not_the_whole_page():
    from loaders.replica.pages import EntitySpec, parse_page

    spec = EntitySpec("events", "v1/events", "event_id", "updated_at",
                      fields={"event_id": "integer", "updated_at": "timestamp",
                              "channel": "string", "Channel": "string"})
    ts = "2026-11-01T00:00:00.000000Z"
    body = "\n".join(json.dumps(r) for r in (
        {"event_id": 1, "updated_at": ts, "channel": "web", "Channel": HOSTILE_VALUE},
        {"event_id": 2, "updated_at": ts, "channel": "app", "Channel": None},
    )).encode()
    parsed = parse_page(spec, body)
    assert parsed.table.column_names == ["event_id", "updated_at", "channel"]
    assert parsed.table["event_id"].to_pylist() == [2]
    [held] = parsed.quarantined
    assert json.loads(held["record"])["Channel"] == HOSTILE_VALUE
    assert "collide once normalized" in held["reason"]
