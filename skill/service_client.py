"""The agent's commands talking to the local service (``chatgpt-login serve``).

The agent's commands never hold the secrets API token: they ask the service, which does. The
service writes a bearer token for local callers to ``<state_dir>/service.token`` (0600). When the
service is not running, each caller says what happens instead: a sign-in still stands locally
and persisting it is pending (the service pushes the newer local credential when it starts); a
logout is noted and carried out when it starts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from skill import statedir
from skill.errors import CODES, SkillError
from skill.procs import listener_uids, peer_uid
from skill.redirect import LOOPBACK_HOSTS
from skill.relay import Answer, loopback_request
from skill.settings import Settings, http_address_problem
from skill.waiting import backoff

DEFAULT_URL = "http://127.0.0.1:8080"
PERSIST_PATH = "/v1/credentials/persist"
CREDENTIALS_PATH = "/v1/credentials"
REFRESH_PATH = "/v1/credentials/refresh"


@dataclass(frozen=True)
class PersistResult:
    persisted: bool
    message: str
    # The store refused the service (its token, its address): not pending in the sense that it
    # passes by itself; the user must hear it, since an operator has to act.
    refused: bool = False


def call(
    settings: Settings, method: str, path: str, *, timeout: float = 30.0, body: bytes | None = None
) -> Answer:
    """One request to the service with the local token; ``service_unavailable`` if it is not
    there to answer (its message says why)."""
    token = _local_token(settings)
    url = service_url(settings)
    _refuse_a_stranger(url)
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        return loopback_request(
            method, url.rstrip("/") + path, timeout=timeout, headers=headers,
            body=body, before_sending=ours_or_refuse,
        )  # fmt: skip
    except (OSError, SkillError) as exc:
        raise SkillError("service_unavailable", "the chatgpt-login service did not answer") from exc


def _local_token(settings: Settings) -> str:
    """The token `serve` wrote for this machine's callers; ``service_unavailable`` without."""
    try:
        token = (settings.state_dir / statedir.SERVICE_TOKEN).read_text().strip()
    except OSError:
        token = ""
    if not token:
        raise SkillError("service_unavailable", "the chatgpt-login service is not running")
    return token


EVENTS_PATH = "/v1/events"
MAX_EVENT_LINE = 64 * 1024


def follow_events(
    settings: Settings, *, after: int = 0, on_gap: Callable[[str], None] = lambda _: None
) -> Iterator[dict[str, Any]]:
    """The service's events after id ``after``, as they come (Server-Sent Events), for as long
    as the caller reads. When the stream breaks (the service restarted, a worker was replaced,
    every stream slot was taken), it reconnects from the last event seen, as a browser's
    EventSource does, and tells ``on_gap`` why; ``service_unavailable`` if no service answers
    to begin with."""
    last, connected_once, attempt = after, False, 0
    while True:
        try:
            for event in _stream(settings, last):
                connected_once, attempt = True, 0
                if isinstance(event.get("id"), int):
                    last = event["id"]
                yield event
            why = "the service closed the stream"
        except SkillError as exc:
            status = exc.details.get("status")
            # What passes: every stream slot taken (503); once the service was there, a 401
            # (it restarted with a new token, read next time) or no answer (it is restarting).
            # Anything else is for the user to fix, and said at once.
            restarting = status == "401" or (status is None and exc.code == "service_unavailable")
            passes = status == "503" or (connected_once and restarting)
            if not passes:
                raise
            why = exc.message
        connected_once = True  # from here on, wait for it to come back
        attempt += 1
        wait = backoff(attempt, base=0.5, cap=5.0)
        on_gap(f"{why.rstrip('.')}; reconnecting from event {last} in {wait:.0f} s")
        time.sleep(wait)


def _stream(settings: Settings, after: int) -> Iterator[dict[str, Any]]:
    """One connection's events; ends when the service ends the stream."""
    token = _local_token(settings)  # read again each time: a restarted service made another
    url = service_url(settings)
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK_HOSTS:
        raise SkillError("service_unavailable", "the chatgpt-login service is not on this machine")
    _refuse_a_stranger(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
    try:
        try:
            connection.connect()
        except OSError:
            raise SkillError("service_unavailable", f"nothing answers at {url}: start the "
                             "service (`chatgpt-login serve`)") from None  # fmt: skip
        assert connection.sock is not None  # noqa: S101 - connect() made it
        ours_or_refuse(connection.sock)
        connection.request("GET", EVENTS_PATH, headers={
            "Authorization": f"Bearer {token}", "Last-Event-ID": str(after),
            "Accept": "text/event-stream"})  # fmt: skip
        answer = connection.getresponse()
        if answer.status != 200:
            raise _refusal(answer)
        while line := answer.readline(MAX_EVENT_LINE):
            text = line.decode(errors="replace").rstrip("\n")
            if text.startswith("data: "):
                with contextlib.suppress(ValueError):
                    event = json.loads(text[6:])
                    if isinstance(event, dict):
                        yield event
    except OSError as exc:  # it stopped, or went quiet past the heartbeat
        raise SkillError("service_unavailable", "the service stopped answering") from exc
    finally:
        connection.close()


def _refusal(answer: http.client.HTTPResponse) -> SkillError:
    """What the service said instead of a stream: its own error code and message, and the
    HTTP status (``details["status"]``)."""
    try:
        said = json.loads(answer.read(MAX_EVENT_LINE))
    except (OSError, ValueError):
        said = {}
    said = said if isinstance(said, dict) else {}
    code = str(said.get("error") or "service_unavailable")
    message = str(said.get("message") or f"the service answered HTTP {answer.status}")
    refused = SkillError(code if code in CODES else "service_unavailable", message)
    refused.details["status"] = str(answer.status)
    return refused


def ours_or_refuse(sock: socket.socket) -> None:
    """After connecting, before a byte is sent: the other end must be this user's (a listener
    of another user may have appeared since the port was looked at)."""
    owner = peer_uid(sock)
    if owner != os.getuid():
        raise SkillError(
            "service_unavailable",
            f"the program answering on port {sock.getpeername()[1]} is not this user's "
            f"(uid {owner if owner is not None else 'unknown'}): not sending it this machine's "
            "service token",
        )


def _refuse_a_stranger(url: str) -> None:
    """The local token opens the whole API: it goes only to a listener of this user. Another
    local user can listen on the service's port while the service is down, and would be
    handed the token by the next command otherwise."""
    port = urlsplit(url).port or 80
    strangers = listener_uids(port) - {os.getuid()}
    if strangers:
        raise SkillError(
            "service_unavailable",
            f"a program of another user (uid {min(strangers)}) listens on port {port}, where "
            "the chatgpt-login service should: not sending it this machine's service token",
        )


def service_url(settings: Settings, *, default: str = DEFAULT_URL) -> str:
    """Where the service listens: the setting, else what `serve` left in the state directory,
    else ``default`` (where `serve` listens unless told otherwise)."""
    if settings.service_url:
        return settings.service_url
    try:
        found = (settings.state_dir / statedir.SERVICE_URL).read_text().strip()
    except (OSError, UnicodeDecodeError):
        found = ""
    # Not an address (left by an older version, or damaged): as if none was left.
    return found if found and http_address_problem(found) is None else default


def json_body(answer: Answer) -> dict[str, Any]:
    try:
        found = answer.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def request_persist(settings: Settings) -> PersistResult:
    try:
        answer = call(settings, "POST", PERSIST_PATH, body=b"{}")
    except SkillError as down:
        return PersistResult(False, _pending(down.message, "the service stores it as soon as "
                                             "it runs"))  # fmt: skip
    if answer.status == 200:
        return PersistResult(True, "Credentials persisted to the secrets store.")
    said = json_body(answer)
    reason = str(said.get("message") or "")
    if reason and said.get("next") == "tell_user":
        return PersistResult(False, f"Not saved for restarts: {reason[:1].lower()}{reason[1:]}",
                             refused=True)  # fmt: skip
    if reason:  # the service's own words: it says what it does next
        return PersistResult(False, f"Persistence pending: {reason[:1].lower()}{reason[1:]}")
    why = f"the service answered HTTP {answer.status}"
    return PersistResult(False, _pending(why, "the service tries again by itself"))


def credential_view(settings: Settings) -> dict[str, Any] | None:
    """The service's ``GET /v1/credentials``, or None if it is not running."""
    try:
        answer = call(settings, "GET", CREDENTIALS_PATH, timeout=2.0)
    except SkillError:
        return None
    return json_body(answer) if answer.status == 200 else None


def _pending(why: str, then: str) -> str:
    return (
        f"Persistence pending: {why.rstrip('.')}. The credential is saved on this machine; {then}."
    )
