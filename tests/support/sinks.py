"""Local receivers for notifications: an HTTP endpoint and an SMTP sink, on 127.0.0.1;
and the local JSON-lines log the notifier keeps by default."""

from __future__ import annotations

import email
import json
import socketserver
import threading
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def logged(state_dir: Path) -> list[dict[str, Any]]:
    """The notices in the JSON-lines log of dlt's working directory ``state_dir``."""
    path = state_dir / "notifications.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    """Records every POST; answers ``status`` (set it to 500 to play a failing channel)."""

    status: int = 200
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.status < 400:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpSink(socketserver.ThreadingTCPServer):
    """Just enough SMTP to accept messages from smtplib and keep them. It offers
    ``AUTH PLAIN`` and accepts any login, unless ``refuse_auth`` (then 535, as a server
    does for a wrong password); ``logins`` counts the logins accepted."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse_auth = False
        self.logins = 0
        super().__init__(("127.0.0.1", 0), _SmtpHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _SmtpHandler(socketserver.StreamRequestHandler):
    timeout = 10

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 sink ESMTP")
        data: list[bytes] | None = None
        while line := self.rfile.readline():
            if data is not None:
                if line.rstrip(b"\r\n") == b".":
                    self.server.messages.append(email.message_from_bytes(b"".join(data)))
                    data = None
                    self.reply("250 queued")
                else:
                    data.append(line[1:] if line.startswith(b"..") else line)
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.reply("250-sink")
                self.reply("250 AUTH PLAIN")
            elif verb == b"HELO":
                self.reply("250 sink")
            elif verb == b"AUTH":
                if self.server.refuse_auth:
                    self.reply("535 5.7.8 authentication credentials invalid")
                else:
                    self.server.logins += 1
                    self.reply("235 2.7.0 authentication successful")
            elif verb == b"DATA":
                data = []
                self.reply("354 end with <CRLF>.<CRLF>")
            elif verb == b"QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")
