"""A fake of the remote secrets API (PROTOCOL.md §8) on 127.0.0.1, with faults on demand.

``faults`` is a queue: each entry shapes the answer to the next request. Kinds: ``delay`` (sleep
longer than the client's timeout), ``reset`` (close the connection without an answer),
``truncated`` (promise more body than is sent), ``malformed`` (not JSON), ``not_ok``
(``{"ok": false}``), ``status:<code>`` (e.g. ``status:503``), ``retry_after:<seconds>`` (429).

Hostile answers (a broken or malicious server): ``drip`` (a valid answer, one byte every
``drip_every`` seconds), ``drip_headers`` (the status line and headers that way), ``huge`` (a
300 MB body, sent as fast as it is read), ``nested`` (JSON nested 100000 levels deep),
``wrong_types`` (a record that is not an object, and an ``ok`` that is not ``true``),
``unclosed`` (240 KB of escaped quotes in a string that never closes: a regular expression
that backtracks takes minutes over it).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests import loopback
from tests.canary import register

TOKEN = "fat-tools-canary-7c1e"


# Faults answered 200 with a fixed body.
CANNED = {
    "malformed": b"<html>oops</html>",
    "not_ok": b'{"ok": false}',
    "nested": b"[" * 100_000 + b"]" * 100_000,
    "wrong_types": b'{"ok": "yes", "codex_credentials": [1, 2, 3]}',
    # A string that never ends, of escaped quotes, under the size cap.
    "unclosed": b'{"ok": true, "x": "' + b'\\"' * 120_000,
}


@dataclass
class FakeSecretsAPI(loopback.LoopbackFake):
    token: str = TOKEN
    record: dict[str, Any] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    delay: float = 2.0
    drip_every: float = 0.5
    patch_delay: float = 0.0  # before storing a PATCH (widens a crash window)
    acks: list[float] = field(default_factory=list)  # monotonic times of acknowledged PATCHes
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> FakeSecretsAPI:
        register(self.token, "secrets API token")
        self._serve(_Handler)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/agent/secrets"


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSecretsAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, *, length: int | None = None,
                headers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
            self.wfile.write(body)

    def _fault(self) -> bool:
        """Apply the next queued fault; True if it answered (or broke) the request."""
        fake = self.fake
        with fake.lock:
            fault = fake.faults.pop(0) if fake.faults else None
        if fault is None:
            return False
        kind, _, arg = fault.partition(":")
        if kind == "delay":
            time.sleep(fake.delay)
            return False
        if kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        elif kind == "truncated":
            self._answer(200, b'{"ok": tr', length=40)
            self.connection.close()
        elif kind in CANNED:
            self._answer(200, CANNED[kind])
        elif kind == "status":
            self._answer(int(arg), b'{"error": "fault"}')
        elif kind == "retry_after":
            self._answer(429, b'{"error": "slow down"}', headers={"Retry-After": arg})
        elif kind in ("drip", "drip_headers"):
            self._drip(headers_too=kind == "drip_headers")
        elif kind == "huge":
            self._huge()
        return True

    def _drip(self, *, headers_too: bool) -> None:
        body = json.dumps({"ok": True, **self.fake.record}).encode()
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        if not headers_too:
            self.wfile.write(head)
            self.wfile.flush()
        with contextlib.suppress(OSError):
            for byte in (head if headers_too else b"") + body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(self.fake.drip_every)
        self.close_connection = True

    def _huge(self) -> None:
        size = 300 * 1024 * 1024
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b" " * 65536
        with contextlib.suppress(OSError):
            self.wfile.write(b'{"ok": true, "x": "')
            for _ in range(size // len(chunk)):
                self.wfile.write(chunk)
        self.close_connection = True

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.fake.token}":
            return True
        self._answer(401, b'{"error": "unauthorized"}')
        return False

    def do_GET(self) -> None:
        self.fake.requests.append("GET")
        if self._fault() or not self._authorized():
            return
        with self.fake.lock:
            body = json.dumps(self.fake.record).encode()
        self._answer(200, body)

    def do_PATCH(self) -> None:
        self.fake.requests.append("PATCH")
        length = int(self.headers.get("Content-Length") or 0)
        patch = json.loads(self.rfile.read(length) or b"{}")
        if self._fault() or not self._authorized():
            return
        time.sleep(self.fake.patch_delay)
        with self.fake.lock:
            for key, value in patch.items():  # merge-patch: null deletes
                if value is None:
                    self.fake.record.pop(key, None)
                else:
                    self.fake.record[key] = value
        self._answer(200, b'{"ok": true}')
        self.fake.acks.append(time.monotonic())
