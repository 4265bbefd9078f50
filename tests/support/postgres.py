"""A throw-away PostgreSQL server on 127.0.0.1 for the tests: ``initdb`` into a temporary
directory, ``pg_ctl start`` on a free port, ``pg_ctl stop`` when done (also at exit).

The server binaries are Debian's (``/usr/lib/postgresql/<version>/bin``) or whatever
``pg_ctl`` and ``initdb`` on the PATH are; ``make postgres`` installs them when missing.
initdb refuses to run as root, so as root the server runs as the ``postgres`` user (or
``nobody`` when there is none), owning its data directory. A watchdog process stops the
server when the process that started it dies without stopping it (killed, SIGTERM).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "salesflow-test-admin"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        real = Path(on_path).resolve().parent
        if (real / "initdb").exists() and (real / "postgres").exists():
            return real
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return debian[-1].parent if debian else None


def _run_as() -> str | None:
    """The OS user to run the server as: None for the current one (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no 'postgres' or 'nobody' user to run"
                              " the server as: create one (useradd --system postgres)")


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # data directory, socket, password file and log live under it
    port: int
    user: str | None
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def _cmd(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        return ["runuser", "-u", self.user, "--", *args]

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}"
                f"\n{log}"
            )
        return proc

    def start(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            for p in (self.root, pwfile):
                os.chown(p, info.pw_uid, info.pw_gid)
        self.root.chmod(0o700)
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
            "--encoding=UTF8", "--locale=C", "--no-sync",
            timeout=START_TIMEOUT_S,
        )
        pwfile.unlink()
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=60 -c shared_buffers=64MB"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-w",
            "-t", str(START_TIMEOUT_S), "-l", str(self.log_file), "-o", options,
            timeout=START_TIMEOUT_S + 10,
        )

    def watch_parent(self) -> None:
        """Start a watchdog: once this process is gone, it stops the server (immediate
        mode) and deletes its directory; it exits with the server otherwise."""
        code = (
            "import os, shutil, subprocess, sys, time\n"
            "parent, pg_ctl, data, root = int(sys.argv[1]), *sys.argv[2:5]\n"
            "cmd = ([] if sys.argv[5] == '-' else ['runuser', '-u', sys.argv[5], '--'])\n"
            "while os.path.exists(os.path.join(data, 'postmaster.pid')):\n"
            "    try:\n"
            "        os.kill(parent, 0)\n"
            "    except ProcessLookupError:\n"
            "        subprocess.run(cmd + [pg_ctl, 'stop', '-D', data, '-m', 'immediate',\n"
            "                        '-w', '-t', '30'], capture_output=True, timeout=40)\n"
            "        shutil.rmtree(root, ignore_errors=True)\n"
            "        break\n"
            "    time.sleep(1)\n"
        )
        subprocess.Popen(
            [sys.executable, "-c", code, str(os.getpid()), str(self.bin_dir / "pg_ctl"),
             str(self.data_dir), str(self.root), self.user or "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and delete its directory."""
        if (self.data_dir / "postmaster.pid").exists():
            for mode in ("fast", "immediate"):
                try:
                    self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                              "-m", mode, "-w", "-t", str(STOP_TIMEOUT_S),
                              timeout=STOP_TIMEOUT_S + 10)
                    break
                except (RuntimeError, subprocess.TimeoutExpired):
                    continue
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD,
            database: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={user} password={password}" \
            f" dbname={database} connect_timeout=10"

    def connect(self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD,
                database: str = "postgres"):
        import psycopg2

        con = psycopg2.connect(self.dsn(user, password, database))
        con.autocommit = True
        return con

    def create_database(self, name: str) -> None:
        with contextlib.closing(self.connect()) as con, con.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')


def start_server() -> PostgresServer:
    """Start a new server; raises PostgresUnavailable when there are no binaries."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries (pg_ctl, initdb) on the PATH or in"
            " /usr/lib/postgresql/*/bin: run `make postgres` (apt-get install postgresql)"
        )
    # not under pytest's tmp dirs: those are private to this user, and the server runs as
    # another one
    root = Path(tempfile.mkdtemp(prefix="salesflow-pg-"))
    server = PostgresServer(bin_dir, root, free_port(), _run_as())
    atexit.register(server.stop)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    server.watch_parent()
    return server
