"""``salesflow sim ...``: generate, serve and steer the simulated sales platform.

A thin command line over the simulator's modules: parse arguments, call them, print.
May import any ``simulator`` module; nothing in ``simulator`` imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

from simulator import drift as drift_mod
from simulator import faults as faults_mod
from simulator import profiles, store
from simulator.model import ENTITIES, EVOLUTIONS
from simulator.platform import Platform

DEFAULT_DIR = Path("data/sim")
DEFAULT_TOKEN = "local-dev-token"  # the simulator's own token; a real API's comes from secrets


def default_token() -> str:
    return os.environ.get("SALESFLOW_SIM_TOKEN", DEFAULT_TOKEN)


def _dir(args) -> Path:
    return Path(args.dir)


def cmd_generate(args) -> int:
    # imported here, not at the top: numpy would slow every `salesflow` start-up
    from simulator.generate import default_as_of, generate

    d = _dir(args)
    if args.force and d.exists():
        for name in (store.PRODUCTION, store.REPLICA):
            for suffix in ("", "-wal", "-shm"):
                p = d / (name + suffix)
                if p.exists():
                    p.unlink()
        for name in (faults_mod.FAULTS_FILE, drift_mod.DRIFTS_FILE):
            if (d / name).exists():
                (d / name).unlink()
    as_of = store.parse_iso(args.as_of) if args.as_of else default_as_of()
    summary = generate(
        d, orders=args.orders, seed=args.seed, as_of=as_of, days=args.days,
        clock_skew=args.clock_skew, feed=args.feed,
    )
    total = sum(summary.rows.values())
    print(f"generated {total:,} rows in {summary.seconds:.1f} s into {d} "
          f"(seed {summary.seed}, as of {summary.as_of}, {args.days} days)")
    for table, n in summary.rows.items():
        print(f"  {table:<12} {n:>12,}")
    return 0


def cmd_serve(args) -> int:
    # imported here, not at the top: fastapi would slow every `salesflow` start-up
    from simulator.server import ServeOptions, serve

    serve(
        ServeOptions(
            directory=_dir(args),
            token=args.token,
            host=args.host,
            port=args.port,
            rate=args.rate,
            lag=args.lag,
            late_commits=args.late_commits,
            clock_skew=args.clock_skew,
            change_seq=args.change_seq,
            counts=not args.no_counts,
            rate_limit=args.rate_limit,
            duration=args.duration,
            profile=args.profile,
            token_ttl=args.token_ttl,
        )
    )
    print("simulator stopped")
    return 0


def cmd_evolve(args) -> int:
    d = _dir(args)
    if args.list:
        for name, evo in EVOLUTIONS.items():
            kind = "breaking" if evo.breaking else "additive"
            print(f"{name:<12} {kind:<9} {evo.title}")
        return 0
    if not args.name:
        print("name an evolution (or --list)", file=sys.stderr)
        return 2
    now = datetime.now(timezone.utc)
    if args.at:
        effective = store.parse_iso(args.at)
    elif args.in_seconds is not None:
        effective = now + timedelta(seconds=args.in_seconds)
    else:
        effective = now
    platform = Platform(d)
    try:
        platform.schedule(args.name, effective)
        serving = (d / "server.json").exists()
        if effective <= now and not serving:
            applied = platform.apply_due()
            store.replicate(d)
            print(f"applied {', '.join(applied)} to {d} (production and replica)")
        else:
            when = "now, by the serving platform" if effective <= now else store.iso(effective)
            print(f"announced {args.name}: effective {when}")
    finally:
        platform.close()
    return 0


def cmd_fault(args) -> int:
    d = _dir(args)
    f = faults_mod.Faults() if args.clear else faults_mod.load(d)
    if args.maintenance is not None:
        f.maintenance_until = faults_mod.window(args.maintenance) if args.maintenance else None
    if args.outage is not None:
        f.outage_until = faults_mod.window(args.outage) if args.outage else None
    if args.pause_replication is not None:
        seconds = args.pause_replication
        f.replication_paused_until = faults_mod.window(seconds) if seconds else None
    for name in ("error_rate", "rate_limit_rate", "drop_rate", "malformed_rate", "slow_ms"):
        value = getattr(args, name)
        if value is not None:
            setattr(f, name, value)
    for endpoint in args.endpoint_ok or ():
        f.endpoint_status.pop(endpoint, None)
        f.endpoint_garbled = [e for e in f.endpoint_garbled if e != endpoint]
    for spec in args.endpoint_status or ():
        endpoint, _, status = spec.partition("=")
        if not status.isdigit():
            raise SystemExit(f"--endpoint-status takes ENDPOINT=STATUS, got {spec!r}")
        f.endpoint_status[endpoint] = int(status)
    for endpoint in args.endpoint_garbled or ():
        if endpoint not in f.endpoint_garbled:
            f.endpoint_garbled.append(endpoint)
    f = faults_mod.Faults(**vars(f))  # validate
    faults_mod.save(d, f)
    print(f"faults in force for {d}: {f.describe()}")
    return 0


def cmd_status(args) -> int:
    d = _dir(args)
    out: dict = {"directory": str(d)}
    for name in (store.PRODUCTION, store.REPLICA):
        path = d / name
        if not path.exists():
            out[name] = None
            continue
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        out[name] = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ENTITIES}
        if name == store.REPLICA:
            out["replica_seq"] = con.execute("SELECT last_seq FROM replication_state").fetchone()[0]
        else:
            out["production_seq"] = con.execute("SELECT max(seq) FROM txlog").fetchone()[0]
            out["evolutions"] = [
                dict(zip(("name", "announced_at", "effective_at", "applied_at"), r, strict=True))
                for r in con.execute(
                    "SELECT name, announced_at, effective_at, applied_at FROM evolutions"
                )
            ]
        con.close()
    out["faults"] = faults_mod.load(d).describe()
    out["drifts"] = [x.describe() for x in drift_mod.load(d)]
    server = d / "server.json"
    out["server"] = json.loads(server.read_text()) if server.exists() else None
    print(json.dumps(out, indent=2))
    return 0


def _json_value(text: str) -> object:
    """``--value``: JSON (``5``, ``true``, ``"x"``, ``null``), or else the text as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _print_drifts(d: Path) -> None:
    drifts = drift_mod.load(d)
    print(f"drifts declared for {d}: {len(drifts) or 'none'}")
    for x in drifts:
        print(f"  {x.describe()}")


def cmd_drift_add(args) -> int:
    d = _dir(args)
    if args.at:
        effective: str | None = args.at
    elif args.in_seconds is not None:
        effective = store.iso(store.utcnow() + timedelta(seconds=args.in_seconds))
    else:
        effective = None
    options: dict = {}
    if args.value is not None:
        options["value"] = _json_value(args.value)
    if args.share is not None:
        options["share"] = args.share
    try:
        added = drift_mod.add(d, drift_mod.Drift(
            kind=args.kind, entity=args.entity, field=args.field, to=args.to,
            source=args.source, fields=args.fields or (),
            effective_at=effective, described=args.described, announced=args.announced,
            enacted=not args.not_enacted, **options,
        ))
    except drift_mod.DriftError as exc:
        print(f"drift not added: {exc}", file=sys.stderr)
        return 2
    print(f"added {added.describe()}")
    _print_drifts(d)
    return 0


def cmd_drift_list(args) -> int:
    _print_drifts(_dir(args))
    return 0


def cmd_drift_clear(args) -> int:
    drift_mod.clear(_dir(args))
    _print_drifts(_dir(args))
    return 0


def register_drift(ssub: argparse._SubParsersAction, with_dir) -> None:
    p = ssub.add_parser("drift", help="change what the API serves: any field, any entity")
    dsub = p.add_subparsers(dest="drift_command", required=True)

    a = with_dir(dsub.add_parser("add", help="declare a drift (in force from now by default)"))
    a.add_argument("kind", choices=drift_mod.KINDS)
    a.add_argument("entity", help="the entity (or a drift-added endpoint)")
    a.add_argument("field", nargs="?", help="the field changed")
    a.add_argument("--to", help="rename/nest: new field; retype: type; add_endpoint: name")
    a.add_argument("--value", help="add/new_value: JSON (or else a string)")
    a.add_argument("--source", help="add: copy this field")
    a.add_argument("--fields", help="nest: the fields moved, a,b,c")
    a.add_argument("--share", type=float, help="new_value: share of records (default 0.1)")
    a.add_argument("--described", action="store_true", help="/v1/schema reflects it")
    a.add_argument("--announced", action="store_true", help="/v1/announcements lists it")
    a.add_argument("--not-enacted", action="store_true", help="records never change")
    when = a.add_mutually_exclusive_group()
    when.add_argument("--in", dest="in_seconds", type=float, help="effective in N seconds")
    when.add_argument("--at", help="effective at this ISO time")
    a.set_defaults(func=cmd_drift_add)

    ls = with_dir(dsub.add_parser("list", help="the drifts declared and their state"))
    ls.set_defaults(func=cmd_drift_list)
    c = with_dir(dsub.add_parser("clear", help="remove every drift"))
    c.set_defaults(func=cmd_drift_clear)


def _profiles_help() -> str:
    lines = ["protocol profiles (--profile): the same data served as"]
    for name, description in profiles.PROFILES.items():
        lines.append(textwrap.fill(
            description, 88, initial_indent=f"  {name:<12} ", subsequent_indent=" " * 15,
            break_on_hyphens=False,
        ))
    lines.append(textwrap.fill(
        "The token (--token) is the bearer token, the API key, the basic-auth password"
        f" (user {profiles.BASIC_USER}) or the OAuth2 client secret (client id"
        f" {profiles.OAUTH_CLIENT_ID}). The loader configuration that reads a profile:"
        " simulator.profiles.loader_toml(NAME).", 88
    ))
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("sim", help="the simulated sales platform and its replica API")
    ssub = sim.add_subparsers(dest="sim_command", required=True)

    def with_dir(p):
        p.add_argument("--dir", default=str(DEFAULT_DIR), help="simulator data directory")
        return p

    g = with_dir(ssub.add_parser("generate", help="generate the platform's history"))
    g.add_argument("--orders", type=int, default=2000)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--days", type=int, default=90, help="days of history")
    g.add_argument("--as-of", help="end of the history (ISO time; default now)")
    g.add_argument("--force", action="store_true", help="replace an existing platform")
    g.add_argument("--clock-skew", type=float, default=0.0,
                   help="device clocks up to N seconds ahead on a share of events")
    g.add_argument("--feed", choices=store.FEED_STORAGES, default=store.STORED,
                   help="how the replica keeps the records it serves: stored once rendered"
                        " (cheapest to serve; every record on disk twice) or views"
                        " rendering them from the tables (less than half the disk, more"
                        " CPU per record served)")
    g.set_defaults(func=cmd_generate)

    s = with_dir(ssub.add_parser(
        "serve", help="serve the replica API (and live traffic)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_profiles_help(),
    ))
    s.add_argument(
        "--profile", default="native", choices=list(profiles.PROFILES),
        help="the protocol served: body, paging, auth, deletions, since parameter, schema"
        " (see below; default native)",
    )
    s.add_argument(
        "--token-ttl", type=float, default=profiles.DEFAULT_TOKEN_TTL,
        help="seconds an OAuth2 access token is accepted (profile links)",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0 picks a free port")
    s.add_argument(
        "--token", default=default_token(), help="bearer token (env SALESFLOW_SIM_TOKEN)"
    )
    s.add_argument("--rate", type=float, default=0.0, help="live orders per second (0-1000)")
    s.add_argument("--lag", type=float, default=0.0, help="replica lag in seconds")
    s.add_argument(
        "--late-commits", "--jitter", dest="late_commits", type=float, default=0.0,
        help="long transactions: a share of commits land up to N s after their rows' updated_at",
    )
    s.add_argument("--clock-skew", type=float, default=0.0,
                   help="device clocks up to N seconds ahead on a share of events")
    s.add_argument(
        "--change-seq", action="store_true",
        help="records carry change_seq (their commit sequence); listings take since_seq",
    )
    s.add_argument(
        "--no-counts", action="store_true", help="serve no /v1/<entity>/count endpoint"
    )
    s.add_argument("--rate-limit", type=float, default=200.0, help="requests/s per token")
    s.add_argument("--duration", type=float, help="stop after N seconds")
    s.set_defaults(func=cmd_serve)

    e = with_dir(ssub.add_parser("evolve", help="announce or apply a schema evolution"))
    e.add_argument("name", nargs="?", choices=list(EVOLUTIONS))
    e.add_argument("--in", dest="in_seconds", type=float, help="effective in N seconds")
    e.add_argument("--at", help="effective at this ISO time")
    e.add_argument("--list", action="store_true", help="list the evolutions")
    e.set_defaults(func=cmd_evolve)

    f = with_dir(ssub.add_parser("fault", help="switch injected faults on or off"))
    f.add_argument("--maintenance", type=float, help="planned maintenance for N s (0 ends it)")
    f.add_argument("--outage", type=float, help="hard outage for N s (0 ends it)")
    f.add_argument(
        "--pause-replication", type=float,
        help="the replica stops following production for N s (0 resumes)",
    )
    f.add_argument("--error-rate", type=float, help="share of 5xx responses")
    f.add_argument("--rate-limit-rate", type=float, help="share of 429 responses")
    f.add_argument("--drop-rate", type=float, help="share of responses cut mid-body")
    f.add_argument("--slow-ms", type=int, help="added latency per request")
    f.add_argument("--malformed-rate", type=float, help="share of malformed records")
    f.add_argument("--endpoint-status", action="append", metavar="ENDPOINT=STATUS",
                   help="the endpoint answers STATUS (4xx/5xx) to every request")
    f.add_argument("--endpoint-garbled", action="append", metavar="ENDPOINT",
                   help="the endpoint answers 200 with an HTML error page")
    f.add_argument("--endpoint-ok", action="append", metavar="ENDPOINT",
                   help="the endpoint answers normally again")
    f.add_argument("--clear", action="store_true", help="clear all faults first")
    f.set_defaults(func=cmd_fault)

    register_drift(ssub, with_dir)

    st = with_dir(ssub.add_parser("status", help="rows, replication, faults and drifts"))
    st.set_defaults(func=cmd_status)

