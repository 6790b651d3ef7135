"""Counters for ``/metrics``, shared by every gunicorn worker through ``<state>/metrics.json``.

Each worker counts in memory and adds its counts to the file under a lock: at once for the
routes (``count``), at most every few seconds for the keep-alive, whose store reads can come
many times a second while it watches a rotation (``add`` then ``flush``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args

from skill import statedir
from skill.errors import SkillError
from skill.events import Event, since
from skill.files import ensure_private_dir, read_settled, write_private
from skill.lock import FlockLock

log = logging.getLogger(__name__)
T = TypeVar("T")
_SUMMARY = "_seconds"  # a family ending so is a summary: <family>_sum and <family>_count
_JOURNAL_POSITION = "@journal_position"  # kept beside the counts, not one of them


class Metrics:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._flushed = time.monotonic()
        self._journal_looked: tuple[int, int, int] | None = None  # the journal as last counted

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        """Count in memory; :meth:`flush` writes it."""
        key = name + _labels(labels)
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + value

    def count(self, name: str, outcome: str) -> None:
        self.add(name, outcome=outcome)
        self.flush()

    def observe(self, name: str, seconds: float) -> None:
        self.add(f"{name}{_SUMMARY}_sum", seconds)
        self.add(f"{name}{_SUMMARY}_count")

    def timed(self, name: str, call: Callable[[], T]) -> T:
        started = time.monotonic()
        try:
            return call()
        finally:
            self.observe(name, time.monotonic() - started)

    def flush(self, *, every: float = 0.0) -> None:
        """Add the counts made since the last flush to the file (if ``every`` seconds passed)."""
        if time.monotonic() - self._flushed < every:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed = time.monotonic()
        if pending:
            self._write(pending)

    def count_journal(self, state_dir: Path) -> None:
        """Count the sign-ins started and ended since the journal position kept in the file, and
        move it, in one write under the file's lock: the keep-alive does at every tick and
        ``/metrics`` before it answers, and each event is counted once whoever comes first
        (another worker, a new leader, after a restart). Counted from the journal, not where
        one ends: whoever ended it (a paste through the API or the CLI, a status read that
        found it expired, the keep-alive for an approved device code) wrote the event."""
        try:
            # The keep-alive loops every few milliseconds while it watches a renewal: a journal
            # unchanged since this object's last count costs one stat.
            found = (state_dir / statedir.EVENTS).stat()
            looked = (found.st_ino, found.st_size, found.st_mtime_ns)
            if looked != self._journal_looked:
                self._count_journal(state_dir)
                self._journal_looked = looked
        except FileNotFoundError:
            return  # no journal yet: nothing to count
        except (OSError, SkillError) as exc:  # counting never breaks what asked for it
            log.warning("sign-ins not counted: %s", getattr(exc, "code", None) or exc)

    def _count_journal(self, state_dir: Path) -> None:
        from skill.attempt import LIVE, Status  # noqa: PLC0415 - not on restore's path

        ended = frozenset(get_args(Status)) - LIVE  # how a sign-in ends, as login.completed says
        ensure_private_dir(self.path.parent)
        with FlockLock(self.path, timeout=5):
            data = self.read()
            position = data.get(_JOURNAL_POSITION, 0)
            events = since(state_dir, position if isinstance(position, int) else 0)
            if not events:
                return
            for event in events:
                if counted := _sign_in_count(event, ended):
                    key = counted[0] + _labels({"outcome": counted[1]})
                    data[key] = data.get(key, 0) + 1
            data[_JOURNAL_POSITION] = events[-1].id
            write_private(self.path, json.dumps(data, indent=1).encode())

    def _write(self, pending: dict[str, float]) -> None:
        ensure_private_dir(self.path.parent)
        with FlockLock(self.path, timeout=5):
            data = self.read()
            for key, value in pending.items():
                data[key] = data.get(key, 0) + value
            write_private(self.path, json.dumps(data, indent=1).encode())

    def read(self) -> dict[str, Any]:
        try:
            found = read_settled(self.path, json.loads, settle=0.1)
        except Exception:  # an unreadable file must not break /metrics; counting restarts
            return {}
        return found[1] if found and isinstance(found[1], dict) else {}

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4: counters as ``<family>_total``, summaries
        as ``<family>_sum`` and ``<family>_count``, each family with its HELP and TYPE."""
        lines, seen = [], set()
        for key, value in sorted(self.read().items()):
            if key == _JOURNAL_POSITION:
                continue
            series, _, labels = key.partition("{")
            family = series.removesuffix("_sum").removesuffix("_count")
            summary = family.endswith(_SUMMARY) and family != series
            if not summary:
                family = series
            if family not in seen:
                seen.add(family)
                name = f"chatgpt_login_{family}" + ("" if summary else "_total")
                lines.append(f"# HELP {name} {HELP.get(family, family.replace('_', ' '))}")
                lines.append(f"# TYPE {name} {'summary' if summary else 'counter'}")
            sample = f"chatgpt_login_{series}" + ("" if summary else "_total")
            lines.append(f"{sample}{'{' + labels if labels else ''} {_number(value)}")
        return "\n".join(lines) + "\n"


# What each family counts (HELP lines); a family without one is described by its name.
HELP = {
    "refreshes": "Access token renewals by outcome (ok, adopted, or an error code).",
    "persists": "Credential writes to the secrets store by outcome.",
    "secrets_api_seconds": "Time spent in secrets store requests.",
    "secrets_api_requests": "Requests to the secrets store by method.",
    "issuer_calls": "Refresh calls to the issuer by account and outcome.",
    "adoptions": "Rotations adopted from the stored copy (another holder renewed).",
    "adopted_after_reuse": "Adoptions after the issuer answered refresh_token_reused.",
    "leases": "Refresh leases taken, lost or found stale.",
    "logouts": "Logouts by what happened to the stored copy.",
    "restores": "Restores through the API by action.",
    "logins_started": "Sign-ins started from the CLI or the API (new), or API starts that found "
    "one live (reused).",
    "logins_completed": "Sign-ins ended, by status, whoever ended them.",
    "pastes": "Pasted addresses the API refused while their sign-in went on.",
}


def _sign_in_count(event: Event, ended: frozenset[str]) -> tuple[str, str] | None:
    """The counter a journal event adds to, if any (a status not ours is not counted: whoever can
    write the journal must not make up the metrics' labels)."""
    if event.type == "login.started":
        return ("logins_started", "new")
    if event.type == "login.canceled":
        return ("logins_completed", "canceled")
    status = event.body.get("status")
    if event.type == "login.completed" and isinstance(status, str) and status in ended:
        return ("logins_completed", status)
    return None


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
