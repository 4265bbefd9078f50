"""Serving the simulated platform: the replica API plus, in a child process, the live
platform (traffic, replication, scheduled schema evolutions).

The API runs under uvicorn on a socket this module binds itself, so that a hard outage
(``Faults.outage_until``) can really close the port — clients get "connection refused" —
and reopen the same port when the window ends. Once listening, the address is written to
``server.json`` in the simulator's directory for other processes (tests, ``make demo``).

May import ``store``, ``api``, ``faults`` and ``platform``; within the package, only ``cli``
imports it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from simulator import store
from simulator.api import create_app
from simulator.faults import FaultWatcher
from simulator.platform import Platform

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"


@dataclass
class ServeOptions:
    directory: Path
    token: str
    host: str = "127.0.0.1"
    port: int = 0
    rate: float = 0.0  # live orders per second (0: static data)
    lag: float = 0.0  # replica lag in seconds
    late_commits: float = 0.0  # long transactions commit up to this many s late
    clock_skew: float = 0.0  # device clocks ahead of the server, see Platform
    change_seq: bool = False  # records carry their commit sequence (see api)
    counts: bool = True  # the count endpoint is served
    rate_limit: float = 200.0  # requests per second per token
    profile: str = "native"  # the protocol served, see simulator.profiles
    token_ttl: float = 300.0  # seconds an OAuth2 access token lives (profile links)
    duration: float | None = None  # stop by itself after this many seconds


def _platform_main(
    directory: str, rate: float, lag: float, late_commits: float, stop,
    clock_skew: float = 0.0,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through `stop`
    logging.basicConfig(level=logging.INFO, format="%(asctime)s platform %(message)s")
    platform = Platform(directory, late_commits=late_commits, clock_skew=clock_skew)
    try:
        platform.run(rate, lag, stop=stop)
    finally:
        platform.close()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # as a production web server: the connections accepted inherit it, so a response's
    # body is not held back (Nagle) until the client acknowledges its headers, which a
    # client on a kept-alive connection delays by some 40 ms
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class ApiServer:
    """uvicorn on our own socket, in a thread; can be taken down and brought back."""

    def __init__(self, app, host: str, port: int) -> None:
        self.app, self.host = app, host
        self.sock: socket.socket | None = _bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.sock is None:
            self.sock = _bind(self.host, self.port)
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off",
            timeout_keep_alive=30,
        )
        self.server = uvicorn.Server(config)
        sock = self.sock
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.server.force_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.server = self.thread = None


def serve(opts: ServeOptions, stop: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM, ``stop``, or ``opts.duration``."""
    d = Path(opts.directory)
    if not (d / store.REPLICA).exists():
        raise FileNotFoundError(f"no platform in {d}: run `salesflow sim generate --dir {d}`")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    # the replica is brought up to date (and given its feeds, if it was made without)
    # before the API serves it, unless its replication is paused
    if not FaultWatcher(d).get().replication_paused_left():
        store.replicate(d, opts.lag)

    ctx = mp.get_context("spawn")
    platform_stop = ctx.Event()
    platform = ctx.Process(
        target=_platform_main,
        args=(str(d), opts.rate, opts.lag, opts.late_commits, platform_stop, opts.clock_skew),
        name="salesflow-platform",
        daemon=True,
    )
    platform.start()

    app = create_app(d, opts.token, rate_limit=opts.rate_limit, change_seq=opts.change_seq,
                     counts=opts.counts, profile=opts.profile, token_ttl=opts.token_ttl)
    api = ApiServer(app, opts.host, opts.port)
    api.start()
    url = f"http://{opts.host}:{api.port}"
    info = {"url": url, "pid": os.getpid(), "platform_pid": platform.pid, "rate": opts.rate,
            "profile": opts.profile}
    tmp = d / (SERVER_FILE + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, d / SERVER_FILE)
    log.info("replica API listening on %s (live rate %s orders/s)", url, opts.rate)
    print(f"replica API listening on {url}  (data: {d}, live: {opts.rate} orders/s,"
          f" profile {opts.profile})", flush=True)

    faults = FaultWatcher(d)
    started = time.monotonic()
    try:
        while not stop.is_set():
            if opts.duration is not None and time.monotonic() - started >= opts.duration:
                break
            if not platform.is_alive():
                raise RuntimeError(f"the platform process exited with {platform.exitcode}")
            left = faults.get().outage_left()
            if left > 0 and api.server is not None:
                log.warning("hard outage: closing %s for %.1f s", url, left)
                api.stop()
            elif left <= 0 and api.server is None:
                log.warning("outage over: reopening %s", url)
                api.start()
            stop.wait(0.05)
    finally:
        api.stop()
        platform_stop.set()
        platform.join(timeout=15)
        if platform.is_alive():
            platform.terminate()
        (d / SERVER_FILE).unlink(missing_ok=True)


def read_server_file(directory: Path | str, timeout: float = 30.0) -> dict:
    """Wait for a serving simulator in ``directory`` and return its address."""
    path = Path(directory) / SERVER_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise TimeoutError(f"no simulator answered in {directory} within {timeout} s")
