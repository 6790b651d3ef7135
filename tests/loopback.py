"""A real HTTP server on 127.0.0.1 in a background thread, for the fakes in tests/."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(
    handler: type[BaseHTTPRequestHandler], *, port: int = 0, tls: ssl.SSLContext | None = None
) -> ThreadingHTTPServer:
    """Start serving ``handler`` on 127.0.0.1:``port`` (0: any free port), over TLS if given."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def answering(status: int, document: object) -> ThreadingHTTPServer:
    """A server that answers every GET, POST, PUT and PATCH with ``status`` and ``document``
    as JSON (a store or an issuer saying one thing, whatever is asked)."""

    class Fixed(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = _answer  # noqa: N815 - http.server names them

        def log_message(self, *args: object) -> None:
            pass

    return serve(Fixed)


def stop(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def status_of(request: str | urllib.request.Request, *, timeout: float = 5) -> int:
    """The HTTP status a loopback URL answers with; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as answer:
        return answer.code
    except OSError:
        return 0


class LoopbackFake:
    """What the fakes share: their request handler bound to them (as ``fake``), served on
    127.0.0.1 in a thread, stopped with :meth:`stop`."""

    _server: ThreadingHTTPServer | None

    def _serve(
        self, handler: type[BaseHTTPRequestHandler], *, port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self._server = serve(type("Handler", (handler,), {"fake": self}), port=port, tls=tls)

    def stop(self) -> None:
        stop(self._server)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])
