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

from skill.errors import SkillError
from skill.files import ensure_private_dir, write_private
from skill.lock import FlockLock

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
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
    path = state_dir / EVENTS_FILE
    try:
        ensure_private_dir(state_dir)
        with FlockLock(path, timeout=5):
            found = _read(path)
            event = Event(
                (found[-1].id if found else 0) + 1,
                type_,
                datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                body,
            )
            if len(found) + 1 >= TRIM_AT:
                kept = [*found[-(KEEP - 1) :], event]
                write_private(path, "".join(e.to_json() + "\n" for e in kept).encode())
            else:
                _append(path, event.to_json() + "\n")
        return event
    except (OSError, SkillError) as exc:
        log.warning("event %s not recorded: %s", type_, exc)
        return None


def since(state_dir: Path, after: int) -> list[Event]:
    """The events after id ``after``; all of them when ``after`` is beyond the last (the
    journal started over: a client resuming from before must not wait for ids to catch up)."""
    found = _read(state_dir / EVENTS_FILE)
    if found and after > found[-1].id:
        return found
    return [event for event in found if event.id > after]


def last_id(state_dir: Path) -> int:
    found = _read(state_dir / EVENTS_FILE)
    return found[-1].id if found else 0


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> list[Event]:
    """The journal's events; lines that are not events (cut short, foreign) are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a FIFO or device: not ours
            return []
        raw = file.read((TRIM_AT + 1) * MAX_LINE)
    events = []
    for line in raw.splitlines():
        try:
            data = json.loads(line)
            event = Event(int(data["id"]), str(data["type"]), str(data["at"]),
                          dict(data.get("body") or {}))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            continue
        if TYPE.fullmatch(event.type):  # its type goes on an SSE line as it is: no newline
            events.append(event)
    return events
