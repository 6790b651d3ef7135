"""``GET /v1/events``: the event journal (:mod:`skill.events`) as Server-Sent Events.

Each event goes out as ``id``, ``event`` (its type) and ``data`` (the event as JSON); a client
that reconnects with ``Last-Event-ID`` (or ``?after=<id>``) gets what it missed, from any
worker, since the journal is one file. A comment line every ``events_heartbeat`` seconds keeps
proxies from closing an idle stream, and tells a stream whose client went away to end. A
stream holds one of the worker's threads for as long as it is open: the streams have threads of
their own (``EVENT_STREAMS`` in gunicorn_conf.py), so at most that many are served at once, more
get 503 and retry later, and the API's threads stay free. A stream ends when its worker is asked
to stop, so that a stop is not held up by a client that never leaves.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from flask import Blueprint, Response, request

from service.context import context
from service.errors import ServiceError
from service.gunicorn_conf import EVENT_STREAMS as STREAMS
from service.worker import stopping
from skill import statedir
from skill.events import since

bp = Blueprint("events", __name__)

POLL = 0.25  # seconds between looks at the journal
LOOK = 1.0  # seconds between looks at whether a stream's client is still there
_open = threading.BoundedSemaphore(STREAMS)


class _Watcher:
    """One thread per journal looks at it every ``POLL`` seconds and wakes the streams when it
    changed: fifty idle streams cost one ``stat`` per look, not fifty, and sleep until there is
    something to send or a heartbeat is due."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.version = 0  # how many changes were seen: a stream compares it with its own
        self.changed = threading.Condition()
        # The journal as it is now, before the first stream reads it: the thread may run late
        # (a loaded machine), and a look it took then would swallow a change made meanwhile,
        # which no stream would hear of until the next one.
        self._looked = _stat(journal)
        threading.Thread(target=self._watch, name="events-watcher", daemon=True).start()

    def wait(self, seen: int | None, timeout: float) -> int:
        """The version once it is past ``seen``, or after ``timeout`` seconds."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != seen or stopping(),
                                  max(0.0, timeout))  # fmt: skip
            return self.version

    def _watch(self) -> None:
        while not stopping():
            time.sleep(POLL)
            now = _stat(self.journal)
            if now != self._looked:
                self._looked = now
                with self.changed:
                    self.version += 1
                    self.changed.notify_all()
        with self.changed:  # the worker is stopping: every stream ends now
            self.changed.notify_all()


_watchers: dict[Path, _Watcher] = {}
_watchers_lock = threading.Lock()


def _watcher(journal: Path) -> _Watcher:
    with _watchers_lock:
        if journal not in _watchers:
            _watchers[journal] = _Watcher(journal)
        return _watchers[journal]


@bp.get("")
def stream() -> Response:
    after = _after(request.headers.get("Last-Event-ID") or request.args.get("after") or "0")
    if not _open.acquire(blocking=False):
        raise ServiceError(
            "too_many_streams",
            f"{STREAMS} event streams are open already (each holds a thread of the service). "
            "Close one, or retry in a few seconds.",
            status=503,
            transient=True,
        )
    try:
        return _stream(after)
    except BaseException:  # no response to give the slot back when it closes: give it now
        _open.release()
        raise


def _stream(after: int) -> Response:
    state_dir, heartbeat = context().settings.state_dir, context().settings.events_heartbeat
    watcher = _watcher(state_dir / statedir.EVENTS)
    client = request.environ.get("gunicorn.socket")  # absent under Flask's test client

    def events() -> Iterator[str]:
        last, quiet_since = after, time.monotonic()
        yield "retry: 2000\n\n"
        seen, version = None, watcher.version  # None: what the client missed is read first
        while not stopping() and not _hung_up(client):
            if version != seen:  # read and parse the journal only when it changed
                seen = version
                for event in since(state_dir, last):
                    last = event.id
                    yield f"id: {event.id}\nevent: {event.type}\ndata: {event.to_json()}\n\n"
                    quiet_since = time.monotonic()
            if time.monotonic() - quiet_since >= heartbeat:
                yield ": heartbeat\n\n"
                quiet_since = time.monotonic()
            # A look at the client at least every LOOK seconds: one that hung up gives its
            # slot back then, not at the next heartbeat.
            version = watcher.wait(seen, min(LOOK, quiet_since + heartbeat - time.monotonic()))

    response = Response(events(), mimetype="text/event-stream",
                        headers={"X-Accel-Buffering": "no"})  # fmt: skip
    # The slot goes back when the response is closed: after its client went away (a write
    # failed), when the worker stops, and for a HEAD, whose body is never read at all.
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            _open.release()

    response.call_on_close(release)
    return response


def _hung_up(client: socket.socket | None) -> bool:
    """Whether the stream's client closed its end: its socket reads as ended. (The base class's
    recv: the worker's own gives up on a client after a while, which is not a hang-up here.)"""
    if client is None:
        return False
    try:
        looking = select.poll()  # not select(): it cannot take a descriptor past 1023
        looking.register(client, select.POLLIN)
        readable = bool(looking.poll(0))
        return readable and socket.socket.recv(client, 1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # closed under us
        return True


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


def _after(value: str) -> int:
    try:
        return max(0, int(value))
    except ValueError:
        raise ServiceError("bad_request", "Last-Event-ID (or ?after=) must be an event id, a "
                           "whole number.", status=400) from None  # fmt: skip
