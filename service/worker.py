"""gunicorn's threaded worker, with every client's reading bounded.

gunicorn's ``gthread`` worker gives a connection a thread as soon as its first bytes arrive,
and the thread then reads the request head with no time limit: any local user who opens a few
connections and sends half a request line holds every thread of the service (or of the
reference secrets server) for as long as they like. Here each accepted socket is a
:class:`BoundedSocket`: a read that waits :data:`SILENCE` seconds for a byte, or that comes
:data:`LIFETIME` seconds after the connection opened, ends the connection as if the client had
hung up (gunicorn then drops it quietly). Handlers themselves may take as long as they need
(a ``complete`` waits for the login program); only waiting on the client is bounded.

This bounds what a slow client costs (a thread for seconds, not for ever); it does not make the
service a public web server. Exposed beyond this machine it belongs behind a reverse proxy.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from typing import Any

# gunicorn ships no type information.
from gunicorn.workers.gthread import TConn, ThreadWorker  # type: ignore[import-untyped]

SILENCE = 2.0  # seconds a client may send nothing while we wait for its request
LIFETIME = 60.0  # seconds a connection may be read from, in all
DRAIN_LIMIT = 65536  # bytes read from a closing connection, as gunicorn's own close does

_worker: BoundedThreadWorker | None = None  # this process's, once gunicorn has made it


def stopping() -> bool:
    """True once this process's worker is told to stop (SIGTERM): an event stream, which would
    otherwise run until its client leaves, ends so that the worker stops at once rather than at
    its graceful timeout; its client resumes with Last-Event-ID from the next worker.

    gunicorn's signal handler clears ``alive``; we only read it. Setting a ``threading.Event``
    from the handler instead deadlocks when a second SIGTERM (the master's, after ``kill`` of
    the process group) lands inside the first handler while it holds the event's lock."""
    return _worker is not None and not _worker.alive


class BoundedSocket(socket.socket):
    """A client socket whose reads give up on a silent or endless client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._until = time.monotonic() + LIFETIME

    def setblocking(self, flag: bool) -> None:
        # gunicorn switches its sockets to blocking before reading: here that means a timeout.
        if flag:
            self.settimeout(SILENCE)
        else:
            super().setblocking(False)

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._over():
            return b""
        try:
            return super().recv(size, flags)
        except TimeoutError:
            return b""  # read as the client having hung up: gunicorn closes it quietly

    def recv_into(self, buffer: Any, size: int = 0, flags: int = 0) -> int:
        if self._over():
            return 0
        try:
            return super().recv_into(buffer, size, flags)
        except TimeoutError:
            return 0

    def _over(self) -> bool:
        return time.monotonic() > self._until


class BoundedConn(TConn):  # type: ignore[misc]  # an untyped base
    """A connection whose graceful close never waits for the client.

    gunicorn 27 closes a finished connection "gracefully" on the worker's main loop: it sends
    FIN, then waits up to 2 s for the client to close its side. A client that never does (one
    with nothing to prove but a socket) holds the main loop, which accepts and dispatches
    nothing meanwhile: ten such clients froze the service for 20 s. Here the close drains what
    the client has already sent (what the linger is for: unread bytes would make the kernel
    reset the connection and cut the answer short) without waiting for more."""

    def close(self, graceful: bool = False) -> None:
        if not graceful:
            super().close()
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.setblocking(False)  # with a timeout set, even MSG_DONTWAIT would wait
            drained = 0
            while drained < DRAIN_LIMIT:
                # The base class's recv: BoundedSocket's gives up on an old connection, and
                # this one may be old (a stream); BlockingIOError once nothing more is there.
                data = socket.socket.recv(self.sock, 4096)
                if not data:
                    break
                drained += len(data)
        with contextlib.suppress(OSError):
            self.sock.close()


class BoundedThreadWorker(ThreadWorker):  # type: ignore[misc]  # an untyped base
    """``gthread``, its accepted sockets bounded (``worker_class`` in gunicorn_conf.py)."""

    def init_process(self) -> None:
        global _worker  # noqa: PLW0603 - one worker per process, read by stopping()
        _worker = self
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        bounded = BoundedSocket(client.family, client.type, client.proto, client.detach())
        bounded.setblocking(True)
        self.enqueue_req(BoundedConn(self.cfg, bounded, address, listener.getsockname()))
