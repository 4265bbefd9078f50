"""The ``salesflow`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

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
    from loaders.pipeline import describe_load

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
    from loaders.pipeline import load

    _print_load(load(**_load_options(args)))
    return 0


def cmd_run(args) -> int:
    from loaders.pipeline import run_cycle

    result, ok = run_cycle(select=args.select, **_load_options(args))
    _print_load(result)
    print("dbt build: " + ("ok" if ok else "FAILED (see the output above)"))
    return 0 if ok else 1


def cmd_demo(args) -> int:
    from loaders.demo import demo

    return demo(orders=args.orders, live_seconds=args.live_seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salesflow",
        description="Load a sales platform's replica API into a warehouse and build marts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def load_args(p):
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
    p = sub.add_parser("demo", help="simulator → load → dbt, from scratch, then stop")
    p.add_argument("--orders", type=int, default=3000)
    p.add_argument("--live-seconds", type=float, default=5.0)
    p.set_defaults(func=cmd_demo)
    sim_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _project_dir()
    from loaders.pipeline import AlreadyRunning
    from loaders.replica import ReplicaError

    try:
        return args.func(args)
    except (ReplicaError, AlreadyRunning) as exc:
        print(f"salesflow: {exc}", file=sys.stderr)
        return 3
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, TimeoutError) as exc:
        print(f"salesflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
