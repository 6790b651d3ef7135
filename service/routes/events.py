"""``GET /v1/events``: the event journal (:mod:`skill.events`) as Server-Sent Events.

Each event goes out as ``id``, ``event`` (its type) and ``data`` (the event as JSON); a client
that reconnects with ``Last-Event-ID`` (or ``?after=<id>``) gets what it missed, from any
worker, since the journal is one file. A comment line every ``events_heartbeat`` seconds keeps
proxies from closing an idle stream, and tells a stream whose client went away to end. A
stream holds one of the worker's threads for as long as it is open, so at most ``STREAMS`` are
served at once; more get 503 and retry later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from flask import Blueprint, Response, request

from service.context import context
from service.errors import ServiceError
from skill.events import EVENTS_FILE, since

bp = Blueprint("events", __name__)

STREAMS = 4  # of the worker's 8 threads; the API keeps the rest
POLL = 0.25  # seconds between looks at the journal
_open = threading.BoundedSemaphore(STREAMS)


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
    state_dir, heartbeat = context().settings.state_dir, context().settings.events_heartbeat
    journal = state_dir / EVENTS_FILE

    def events() -> Iterator[str]:
        last, quiet_since, seen = after, time.monotonic(), None
        yield "retry: 2000\n\n"
        while True:
            looked = _stat(journal)
            if looked != seen:  # read and parse the journal only when it changed
                seen = looked
                for event in since(state_dir, last):
                    last = event.id
                    yield f"id: {event.id}\nevent: {event.type}\ndata: {event.to_json()}\n\n"
                    quiet_since = time.monotonic()
            if time.monotonic() - quiet_since >= heartbeat:
                yield ": heartbeat\n\n"
                quiet_since = time.monotonic()
            time.sleep(POLL)

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
