"""The ``salesflow`` command line: parse the arguments, call a runner or a service, print.

The commands import what they run when they run it (marked ``# on use``): ``salesflow
sim serve`` and ``salesflow status`` must not pay for importing dlt, dbt, pyarrow and
sqlglot, which the loading commands need.

Every command but ``sim`` masks the configured secrets in every log record, in uncaught
tracebacks and in the errors it prints (:mod:`loaders.monitoring.redact`).

May import: anything in ``loaders`` (on use), and ``simulator.cli``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the types only: the module imports dlt
    from loaders.schema_changes.declared import Announced

from simulator import cli as sim_cli


def _project_dir() -> None:
    """dlt reads .dlt/config.toml from the project; find it from anywhere inside it."""
    if "DLT_PROJECT_DIR" in os.environ:
        return
    for d in (Path.cwd(), *Path.cwd().parents):
        if (d / ".dlt" / "config.toml").exists():
            os.environ["DLT_PROJECT_DIR"] = str(d)
            return


def _print_load(result) -> None:
    from loaders.runners.pipeline import describe_load  # on use

    print(describe_load(result))


def _load_options(args) -> dict:
    opts = {}
    if args.base_url:
        opts["base_url"] = args.base_url
    if args.entities:
        opts["entities"] = args.entities.split(",")
    if args.progress:
        opts["progress"] = args.progress
    return opts


def cmd_load(args) -> int:
    from loaders.runners.pipeline import load  # on use

    _print_load(load(**_load_options(args)))
    return 0


def cmd_run(args) -> int:
    from loaders.runners.pipeline import run_cycle  # on use

    result, ok = run_cycle(select=args.select, **_load_options(args))
    _print_load(result)
    print("dbt build: " + ("ok" if ok else "FAILED (see the output above)"))
    return 0 if ok else 1


def _announcements(args) -> Announced:
    """Announced changes, the API's and the repository's, and what could not be read."""
    from loaders.schema_changes.declared import all_announcements  # on use

    return all_announcements(args.base_url)


def _print_announced(assessed, declared_errors: list[str]) -> None:
    from loaders.contract.assess import format_assessment  # on use

    for a, assessment in assessed:
        print(f"  [{a.get('status')}] {a.get('change_id')}: {a.get('title')}"
              f" — effective {a.get('effective_at')}"
              + (" (breaking)" if a.get("breaking") else "")
              + (" [declared in the repository]" if a.get("source") == "repository" else ""))
        for fc in a.get("changes", []):
            extra = f" into {fc['into']}" if fc.get("into") else ""
            print(f"      {fc.get('entity')}.{fc.get('field')}: {fc.get('change')}{extra}")
        if assessment is not None:
            print("    " + format_assessment(assessment).replace("\n", "\n    "))
    for problem in declared_errors:
        print(f"  NOT USED: {problem}")


def cmd_schema(args) -> int:
    import json

    from loaders.contract.assess import assess_announcement  # on use
    from loaders.contract.document import committed
    from loaders.schema_changes.changelog import recent_changes
    from loaders.schema_changes.observed import current_mismatches, last_observed_at

    read = _announcements(args)
    announced = read.announcements
    problem = str(read.api_error) if read.api_error else None
    declared_errors = [str(e) for e in read.declared_errors]
    detected = recent_changes(limit=args.limit)
    doc = committed() if announced else None
    assessed = [(a, assess_announcement(a, doc) if doc else None) for a in announced]
    as_of = last_observed_at()
    mismatches = current_mismatches(announced) if as_of else []
    if args.json:
        listed = [{**a, "contract": assessment} for a, assessment in assessed]
        print(json.dumps({"announced": listed, "detected": detected,
                          "announcements_error": problem, "declared_errors": declared_errors,
                          "observed": [m.as_dict() for m in mismatches],
                          "observed_as_of": as_of},
                         indent=2, default=str))
        return 0
    print("Announced changes" + (f" (the API's unavailable: {problem})" if problem else ":"))
    _print_announced(assessed, declared_errors)
    if not announced and not problem and not declared_errors:
        print("  none")
    print("Announced vs observed" + (f" (as of the cycle at {as_of:%Y-%m-%d %H:%M:%S}Z):"
                                     if as_of else ": no cycle has run yet"))
    for m in mismatches:
        print(f"  {m.describe()}")
    if as_of and not mismatches:
        print("  every announced change due was seen as announced")
    print(f"Detected changes (raw.schema_changelog, newest first, up to {args.limit}):")
    for c in detected:
        where = f"{c['entity']}.{c['column']}" if c["column"] else c["entity"]
        change = c["kind"] + (f" {c['old_type']} -> {c['new_type']}" if c["old_type"]
                              and c["new_type"] else "")
        value = f" {c['value']!r}" if c["value"] else ""
        print(f"  {c['detected_at']}  {where:<28} {change}{value}"
              + (f"  ({c['detail']})" if c["detail"] else ""))
    if not detected:
        print("  none yet")
    return 0


def cmd_schema_impact(args) -> int:
    import json

    from loaders import config  # on use
    from loaders.contract.reach import current
    from loaders.schema_changes.announcements import announcement_impacts
    from loaders.schema_changes.changelog import recent_changes
    from loaders.schema_changes.impact import format_impact, impact

    lineage = current()
    maps = config.field_maps()
    reports = []
    if args.entity:
        kind = args.kind or ("column_removed" if args.column else "new_table")
        reports.append((f"{args.entity}.{args.column or ''} {kind}",
                        impact(lineage, args.entity, args.column, kind,
                               maps=maps.get(args.entity, ()))))
    else:
        read = _announcements(args)
        for problem in read.problems:
            print(f"salesflow: announced changes incomplete: {problem}", file=sys.stderr)
        for a in read.announcements:
            if a.get("status") == "applied":
                continue
            for label, report in announcement_impacts(a, lineage):
                reports.append((f"[announced {a.get('change_id')}, effective"
                                f" {a.get('effective_at')}] {label}", report))
        for c in recent_changes(limit=args.limit):
            label = f"[detected {c['detected_at']}] {c['entity']}.{c['column'] or ''} {c['kind']}"
            if c["value"]:
                label += f" {c['value']!r}"
            reports.append((label, impact(lineage, c["entity"], c["column"], c["kind"],
                                          maps=maps.get(c["entity"], ()))))
    if args.json:
        print(json.dumps([{"change": label, **r.as_dict()} for label, r in reports], indent=2))
        return 0
    for label, report in reports:
        print(format_impact(label, report))
        print()
    if not reports:
        print("no announced or detected changes")
    return 0


def cmd_quarantine(args) -> int:
    import json

    from loaders.runners import dead_letters  # on use

    try:
        listing = dead_letters.list_held(args.entity, limit=args.limit, base_url=args.base_url)
    except dead_letters.WarehouseBusy as exc:
        print(f"salesflow: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(listing.as_dict(), indent=2, default=str))
    else:
        print(dead_letters.render_listing(listing, args.entity))
    return 0


def cmd_quarantine_replay(args) -> int:
    import json

    from loaders.runners import dead_letters  # on use

    report = dead_letters.replay(args.entity, dry_run=args.dry_run, base_url=args.base_url)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(dead_letters.render_replay(report))
    return 0


def cmd_contract_export(args) -> int:
    from loaders.config import PROJECT_ROOT  # on use
    from loaders.contract import export
    from loaders.contract.document import fields

    exported = export.export(PROJECT_ROOT)
    doc = exported.document
    summary = (f"contract {doc['version']}: {len(doc['$defs'])} entities,"
               f" {sum(1 for _ in fields(doc))} fields")
    if args.check:
        stale = export.stale(exported, PROJECT_ROOT)
        if stale:
            print(f"salesflow: {', '.join(map(str, stale))} out of date with the models:"
                  " run `salesflow contract export` and commit the result", file=sys.stderr)
            return 1
        print(f"{summary}; the committed files are up to date")
        return 0
    if args.out:
        fmt = args.format or ("yaml" if args.out.endswith((".yaml", ".yml")) else "json")
        text = exported.yaml if fmt == "yaml" else exported.json
        if args.out == "-":
            sys.stdout.write(text)
        else:
            Path(args.out).write_text(text)
            print(f"{summary}; wrote {args.out} ({fmt})")
        return 0
    changed = export.write(exported, PROJECT_ROOT)
    print(f"{summary}; " + (f"wrote {', '.join(map(str, changed))}" if changed
                            else "the committed files were up to date"))
    return 0


def cmd_contract_verify(args) -> int:
    import json

    from loaders import config  # on use
    from loaders.contract import document, verify

    doc = document.load(Path(args.contract) if args.contract else None)
    base_url, token = config.api_base_url(args.api), config.api_token(args.token)
    if not base_url:
        raise ValueError("no API to check: pass --api URL (or set SOURCES__REPLICA__BASE_URL)")
    if not token:
        raise ValueError("no token for the API: set SOURCES__REPLICA__TOKEN or pass --token")
    api = config.api_connection(base_url, token)
    listings = {name: api.listing_for(ep) for name, ep in config.endpoints().items()}
    report = verify.verify(doc, api, sample=args.sample, since=args.since,
                           maps=config.field_maps(), listings=listings)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        print(verify.render(report))
    return report.exit_code


def cmd_check_api(args) -> int:
    from loaders.monitoring.redact import redact  # on use
    from loaders.runners.check_api import check_api

    report = check_api(base_url=args.base_url)
    for line in report.lines():
        print(redact(line))
    print("check-api: " + ("everything needed for a first load works" if report.ok
                           else "FAILED (fix the settings named above)"))
    return 0 if report.ok else 1


def cmd_status(args) -> int:
    from loaders import config  # on use
    from loaders.monitoring import status

    report = status.collect(config.pipelines_dir(), config.PROJECT_ROOT)
    print(status.as_json(report) if args.json else status.render(report))
    return 1 if report["status"] == status.RED else 0


def cmd_watch(args) -> int:
    from loaders.monitoring.redact import redact  # on use
    from loaders.runners.watch import watch

    def show(stats) -> None:
        print(redact(f"cycle {stats.cycles}: {stats.last}"), flush=True)

    opts = _load_options(args)
    stats = watch(interval=args.interval, max_cycles=args.cycles, max_backoff=args.max_backoff,
                  test_interval=args.test_interval,
                  test_slice_seconds=args.test_slice_seconds,
                  test_whole_interval=args.test_whole_interval, on_cycle=show, **opts)
    print(f"stopped after {stats.cycles} cycle(s): {stats.builds} build(s),"
          f" {stats.published} publication(s), {stats.failures} failed cycle(s)")
    return 0


def cmd_query(args) -> int:
    import duckdb

    from loaders.runners.publish import published_path  # on use

    path = Path(args.database) if args.database else published_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `salesflow watch` or `make demo`")
    sql = Path(args.sql).read_text() if Path(args.sql).is_file() else args.sql
    with duckdb.connect(str(path), read_only=True) as con:
        try:
            rel = con.sql(sql)
            if rel is None:
                return 0
            if args.csv:
                import csv

                w = csv.writer(sys.stdout)
                w.writerow(rel.columns)
                w.writerows(rel.fetchall())
            else:
                rel.show(max_rows=args.max_rows, max_width=200)
        except duckdb.Error as exc:  # a bad query, or a write: the file is read-only
            print(f"salesflow: query refused on {path}: {exc}", file=sys.stderr)
            return 2
    return 0


def cmd_warehouse_init_roles(args) -> int:
    from loaders import roles, warehouse  # on use
    from loaders.monitoring.redact import redact

    if warehouse.target_type() != "postgres":
        raise ValueError(
            f"init-roles sets up a PostgreSQL warehouse; the target is {warehouse.target_name()!r}"
            " (use --target postgres or SALESFLOW_TARGET=postgres)"
        )
    creds = warehouse.postgres_credentials()
    logins = args.analyst_login or []
    if args.print:
        print(roles.script(creds.database, creds.username, args.analyst_role, logins), end="")
        return 0
    import psycopg2

    try:
        # the administrator's password: PGPASSWORD or ~/.pgpass, as for psql
        con = psycopg2.connect(host=creds.host, port=creds.port, dbname=creds.database,
                               user=args.admin_user, connect_timeout=15)
        try:
            roles.init_roles(con, creds.database, creds.username, creds.password,
                             args.analyst_role, {name: None for name in logins})
        finally:
            con.close()
    except psycopg2.Error as exc:
        print(f"salesflow: roles not set up in {creds.database} on {creds.host}:{creds.port}"
              f" as {args.admin_user}: {redact(str(exc).strip())}\n  connect as a superuser or the"
              " database owner with CREATEROLE (--admin-user; password in PGPASSWORD or"
              " ~/.pgpass)", file=sys.stderr)
        return 2
    print(f"roles ready in {creds.database}: loader {creds.username} owns"
          f" {', '.join(roles.SCHEMAS)}; {args.analyst_role or roles.analyst_role()} may"
          f" read {roles.PUBLIC_SCHEMA} only"
          + (f" (members: {', '.join(logins)}; set their passwords with \\password)"
             if logins else ""))
    return 0


def cmd_board(args) -> int:
    """Streamlit serves the board's app (loaders/board/app.py): it replaces this process,
    so a signal to the command (Ctrl-C, a service manager's stop) reaches Streamlit."""
    import loaders.board  # on use: the path of its app only

    app = Path(loaders.board.__file__).with_name("app.py")
    env = {**os.environ, "SALESFLOW_BOARD_REFRESH_SECONDS": str(args.refresh)}
    print(f"salesflow board: http://{args.host}:{args.port}/live  (also /funnel and"
          " /retention; Ctrl-C stops it)", flush=True)
    os.execve(sys.executable, [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", args.host, "--server.port", str(args.port),
        "--server.headless", "true", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
    ], env)


def cmd_demo(args) -> int:
    from loaders.runners.demo import demo  # on use

    return demo(orders=args.orders, live_seconds=args.live_seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salesflow",
        description="Load a sales platform's replica API into a warehouse and build marts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def target_arg(p):
        # SUPPRESS: `schema --target x impact` keeps x (a subcommand's default would not)
        p.add_argument("--target", default=argparse.SUPPRESS,
                       help="profiles.yml output to read and write: dev (DuckDB, the"
                       " default), postgres or spark; overrides SALESFLOW_TARGET")
        return p

    def load_args(p):
        target_arg(p)
        p.add_argument("--base-url", help="replica API (default: sources.replica.base_url)")
        p.add_argument("--entities", help="comma-separated subset of entities")
        p.add_argument("--progress", choices=["log", "tqdm", "enlighten", "alive_progress"],
                       help="progress display while loading")
        return p

    p = load_args(sub.add_parser("load", help="extract, normalize and load the replica API"))
    p.set_defaults(func=cmd_load)
    p = load_args(sub.add_parser("run", help="one cycle: load, then dbt build"))
    p.add_argument("--select", nargs="*", help="dbt selection for the build")
    p.set_defaults(func=cmd_run)
    p = target_arg(sub.add_parser("schema", help="announced and detected schema changes"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=50, help="detected changes to show")
    p.add_argument("--base-url", help="replica API (default: sources.replica.base_url)")
    p.set_defaults(func=cmd_schema)
    schema_sub = p.add_subparsers(dest="schema_command")
    q = target_arg(
        schema_sub.add_parser("impact", help="what each change reaches in the dbt project")
    )
    q.add_argument("--entity", help="one entity (default: announced and recent changes)")
    q.add_argument("--column", help="with --entity: one column")
    q.add_argument("--kind", choices=["new_table", "new_column", "type_change",
                                      "column_removed", "new_value"])
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--limit", type=int, default=20, help="detected changes to assess")
    q.add_argument("--base-url", help="replica API (default: sources.replica.base_url)")
    q.set_defaults(func=cmd_schema_impact)
    p = target_arg(sub.add_parser(
        "quarantine", help="records held in raw.quarantine: why, and whether they would"
        " load now"))
    p.add_argument("--entity", help="one entity (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=50,
                   help="groups (entity, rule, field) to list, the largest first")
    p.add_argument("--base-url", help="replica API (default: sources.replica.base_url)")
    p.set_defaults(func=cmd_quarantine)
    quarantine_sub = p.add_subparsers(dest="quarantine_command")
    # SUPPRESS: `quarantine --entity orders replay` keeps orders (a default would not)
    q = target_arg(quarantine_sub.add_parser(
        "replay", help="load held records again through the current configuration;"
        " those loaded or superseded leave the quarantine"))
    q.add_argument("--entity", default=argparse.SUPPRESS, help="one entity (default: all)")
    q.add_argument("--dry-run", action="store_true", help="say what would happen, change"
                   " nothing")
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output")
    q.add_argument("--base-url", default=argparse.SUPPRESS,
                   help="replica API (default: sources.replica.base_url)")
    q.set_defaults(func=cmd_quarantine_replay)
    p = sub.add_parser("contract", help="the data contract with the platform team")
    contract_sub = p.add_subparsers(dest="contract_command", required=True)
    q = contract_sub.add_parser(
        "export", help="derive the contract from the models (writes contracts/ and its docs"
        " page, or --out)")
    q.add_argument("--out", help="write one document here instead ('-': stdout)")
    q.add_argument("--format", choices=["json", "yaml"],
                   help="with --out (default: from the file name, else json)")
    q.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the committed files are stale")
    q.set_defaults(func=cmd_contract_export)
    q = contract_sub.add_parser(
        "verify", help="check a running replica API against the contract; exit 1 when it"
        " breaks it")
    q.add_argument("--api", help="the API's base URL (default: sources.replica.base_url)")
    q.add_argument("--token", help="the API's secret: bearer token, API key, password or"
                   " client secret, as [sources.replica.auth] says (default:"
                   " SOURCES__REPLICA__TOKEN, which"
                   " keeps it out of the process list)")
    q.add_argument("--contract", help="contract file, JSON or YAML (default: the committed"
                   " contracts/replica_api.contract.json)")
    q.add_argument("--sample", type=int, default=200,
                   help="records to check per entity (0: the schema endpoint only)")
    q.add_argument("--since", help="sample the records changed at or after this ISO-8601"
                   " time (e.g. the deploy's), instead of the oldest")
    q.add_argument("--json", action="store_true", help="machine-readable report")
    q.set_defaults(func=cmd_contract_verify)
    p = load_args(sub.add_parser(
        "watch", help="continuous cycles: load, build what changed, publish for analysts"
    ))
    p.add_argument("--interval", type=float, default=2.0, help="seconds between cycle starts")
    p.add_argument("--cycles", type=int, help="stop after this many cycles")
    p.add_argument("--max-backoff", type=float, default=60.0,
                   help="longest wait in seconds between failed cycles (the wait doubles"
                        " from --interval with each failure in a row)")
    p.add_argument("--test-interval", type=float, default=300.0,
                   help="seconds between runs of the data tests (they also gate the first"
                        " build and builds after a schema change)")
    p.add_argument("--test-slice-seconds", type=float, default=1.0,
                   help="a run of the data tests goes in slices of about this many seconds,"
                        " one after each cycle's publication")
    p.add_argument("--test-whole-interval", type=float, default=86400.0,
                   help="seconds between runs of the data tests over every row (the others"
                        " read the rows loaded since the last run that passed)")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("query", help="SQL on the published marts (read-only)")
    p.add_argument("sql", help="a SQL statement, or a file holding one (e.g. analyses/*.sql)")
    p.add_argument("--database", help="DuckDB file (default: the published analytics file)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout")
    p.add_argument("--max-rows", type=int, default=40)
    p.set_defaults(func=cmd_query)
    p = target_arg(sub.add_parser(
        "status", help="freshness, incidents, announcements; exit 1 when something is red"
    ))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "check-api", help="before a first load: probe the configured replica API and say"
        " what works; exit 1 when a check fails (writes nothing)")
    p.add_argument("--base-url", help="replica API (default: sources.replica.base_url)")
    p.set_defaults(func=cmd_check_api)
    p = sub.add_parser("warehouse", help="set up a server warehouse (PostgreSQL)")
    wh_sub = p.add_subparsers(dest="warehouse_command", required=True)
    q = target_arg(wh_sub.add_parser(
        "init-roles",
        help="create the loader and analyst roles and their grants (idempotent; as an"
        " administrator: PGPASSWORD or ~/.pgpass)",
    ))
    q.add_argument("--admin-user", default=os.environ.get("PGUSER", "postgres"),
                   help="role to connect as: a superuser or the database owner with"
                   " CREATEROLE (default: PGUSER or postgres)")
    q.add_argument("--analyst-role", help="the analysts' group role (default:"
                   " SALESFLOW_ANALYST_ROLE or salesflow_analyst)")
    q.add_argument("--analyst-login", action="append", metavar="NAME",
                   help="a person's login to create as a member of the analyst role"
                   " (repeatable)")
    q.add_argument("--print", action="store_true",
                   help="print the SQL for a DBA to run with psql instead of running it")
    q.set_defaults(func=cmd_warehouse_init_roles)
    p = target_arg(sub.add_parser(
        "board", help="the live board (Streamlit) on the published marts, on 127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("SALESFLOW_BOARD_PORT",
                                                                  "8501")))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--refresh", type=float,
                   default=float(os.environ.get("SALESFLOW_BOARD_REFRESH_SECONDS", "3")),
                   help="seconds between refreshes of the figures and notices")
    p.set_defaults(func=cmd_board)
    p = sub.add_parser("demo", help="simulator → load → dbt, from scratch, then stop")
    p.add_argument("--orders", type=int, default=3000)
    p.add_argument("--live-seconds", type=float, default=5.0)
    p.set_defaults(func=cmd_demo)
    sim_cli.register(sub)
    return parser


# the commands that write the warehouse
WRITING = {"load", "run", "watch", "demo", "quarantine", "warehouse"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _project_dir()
    if getattr(args, "target", None):
        os.environ["SALESFLOW_TARGET"] = args.target
    if args.command == "sim":  # the simulator holds none of salesflow's secrets
        return args.func(args)
    # on use: the redaction and the errors' modules import dlt (and sqlglot)
    from loaders.contract.document import ContractError
    from loaders.contract.lineage import LineageError
    from loaders.monitoring import redact
    from loaders.replica.errors import ReplicaError
    from loaders.runners.pipeline import AlreadyRunning

    redact.install()  # after _project_dir: the secrets are read from .dlt/ there
    try:
        if args.command in WRITING:
            from loaders.warehouse import refuse_published_target  # on use

            refuse_published_target()
        return args.func(args)
    except (ReplicaError, AlreadyRunning) as exc:
        print(redact.redact(f"salesflow: {exc}"), file=sys.stderr)
        return 3
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, TimeoutError,
            ContractError, LineageError) as exc:
        print(redact.redact(f"salesflow: error: {exc}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
