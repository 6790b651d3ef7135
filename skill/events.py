"""What changed, for whoever listens: a bounded journal of events in the state directory.

Every process that changes something appends to ``<state_dir>/events.jsonl`` (the runner for
sign-ins, the service for credentials), so the journal reads the same from every gunicorn
worker and from a command run beside them. Each event has an id (one more than the last,
also after the journal is trimmed), a type, a time and a body without any secret. The
service streams it (``GET /v1/events``, resumable with ``Last-Event-ID``) and runs the
on-change hook for the credential's events (:mod:`service.hook`).

Types: ``login.started``, ``login.completed`` (``ok``, ``error``), ``login.canceled``,
``credential.updated`` (``why``: sign-in, refresh, adopted, restored), ``credential.persisted``,
``credential.needs_relogin``, ``credential.logged_out``.

An event that cannot be written is logged and dropped: reporting a change never breaks it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skill import statedir
from skill.files import ensure_private_dir, write_private
from skill.lock import FlockLock

log = logging.getLogger(__name__)

KEEP, TRIM_AT = 500, 1000  # events kept when the journal reaches TRIM_AT lines
MAX_LINE = 16 * 1024  # an event body is small; a longer line is not ours
TYPE = re.compile(r"[a-z_]+\.[a-z_]+")


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    at: str
    body: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def emit(state_dir: Path, type_: str, **body: Any) -> Event | None:
    """Append an event; None if it could not be written (logged, never raised)."""
    if not TYPE.fullmatch(type_):
        raise ValueError(f"not an event type: {type_!r}")  # a bug of ours, not a runtime fault
    path = state_dir / statedir.EVENTS
    try:
        ensure_private_dir(state_dir)
        with FlockLock(path, timeout=5):
            found, lines = _read_counting(path)
            event = Event(
                max((e.id for e in found), default=0) + 1,  # the largest: a line may be forged
                type_,
                datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                body,
            )
            if lines + 1 >= TRIM_AT:  # lines, not events: foreign ones count too
                kept = [*found[-(KEEP - 1) :], event]
                write_private(path, "".join(e.to_json() + "\n" for e in kept).encode())
            else:
                _append(path, event.to_json() + "\n")
        return event
    except Exception as exc:
        log.warning("event %s not recorded: %s", type_, exc)
        return None


def since(state_dir: Path, after: int) -> list[Event]:
    """The events after id ``after``; all of them when ``after`` is beyond the last (the
    journal started over: a client resuming from before must not wait for ids to catch up)."""
    found = _read(state_dir / statedir.EVENTS)
    if found and after > max(e.id for e in found):
        return found
    return [event for event in found if event.id > after]


def last_id(state_dir: Path) -> int:
    return max((e.id for e in _read(state_dir / statedir.EVENTS)), default=0)


def _append(path: Path, line: str) -> None:
    # Non-blocking: a FIFO put in the journal's place must not hang the writer (with no
    # reader the open fails; with one, it is not a regular file and is refused).
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> list[Event]:
    return _read_counting(path)[0]


def _read_counting(path: Path) -> tuple[list[Event], int]:
    """The journal's events, and how many lines it has (a file too large to be ours counts
    as full, so the next event trims it). Lines that are not events (cut short, foreign,
    longer than an event can be) are skipped; only the journal's tail is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:  # missing; or a symlink in its place, which is not followed
        if not isinstance(exc, FileNotFoundError):
            log.warning("the event journal %s cannot be read: %s", path, exc.strerror or exc)
        return [], 0
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(file.fileno())
        if not stat.S_ISREG(found.st_mode):  # a FIFO or device: not ours
            return [], 0
        limit = TRIM_AT * MAX_LINE
        if found.st_size > limit:
            file.seek(found.st_size - limit)
        raw = file.read(limit)
    lines = raw.splitlines()
    if found.st_size > limit:
        lines = lines[1:]  # the first was cut by where the read began
    events = []
    for line in lines:
        if len(line) > MAX_LINE:
            continue
        try:
            data = json.loads(line)
            ident = data["id"]
            if type(ident) is not int or ident <= 0:  # not a bool, a float or a huge one
                continue
            event = Event(ident, str(data["type"]), str(data["at"]),
                          dict(data.get("body") or {}))  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue
        if TYPE.fullmatch(event.type):  # its type goes on an SSE line as it is: no newline
            events.append(event)
    return events, (TRIM_AT if found.st_size > limit else len(lines))
