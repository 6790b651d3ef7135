"""Delivering a validated callback to a login program, and other plain-HTTP loopback calls.

Over HTTP when the program listens on the attempt's port: the request is rebuilt from the
parsed ``code`` and ``state`` (never the pasted text), sent to 127.0.0.1 only, and redirects are
followed only while they stay on loopback (codex finishes only after its ``/success`` page).

These calls never leave the machine and never use TLS or a proxy, so they use ``http.client``
directly (the library :class:`skill.outbound.Outbound` is built on) without its proxy handling
and TLS context.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from skill.authorize import CALLBACK_PATH
from skill.errors import SkillError
from skill.procs import peer_uid
from skill.protocol import ERROR_HEADER
from skill.redirect import LOOPBACK_HOSTS, Callback

MAX_HOPS = 5


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    location: str | None = None
    error_code: str | None = None  # our login program's protocol.ERROR_HEADER

    def json(self) -> Any:
        return json.loads(self.body)


def loopback_request(
    method: str, url: str, *, timeout: float, headers: dict[str, str] | None = None,
    body: bytes | None = None, before_sending: Callable[[socket.socket], None] | None = None,
) -> Answer:  # fmt: skip
    """One request to a loopback URL. Raises OSError (including timeouts) on failure.
    ``before_sending`` sees the connected socket first (and may refuse by raising)."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK_HOSTS:
        raise SkillError("internal", "Refusing a non-loopback address for a local call.")
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        if before_sending is not None:
            connection.connect()
            assert connection.sock is not None  # noqa: S101 - connect() made it
            before_sending(connection.sock)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path or "/", body=body, headers=headers or {})
        response = connection.getresponse()
        text = response.read(64 * 1024).decode("utf-8", "replace")
        return Answer(response.status, text, response.getheader("Location"),
                      response.getheader(ERROR_HEADER))  # fmt: skip
    except http.client.HTTPException as exc:  # a malformed answer: a connection fault to callers
        raise ConnectionError(f"a malformed answer ({type(exc).__name__})") from exc
    finally:
        connection.close()


def callback_url(port: int, callback: Callback) -> str:
    query = urlencode({"code": callback.code, "state": callback.state})
    return f"http://127.0.0.1:{port}{CALLBACK_PATH}?{query}"


def relay_http(port: int, callback: Callback, *, timeout: float) -> Answer:
    """GET the callback from the program's listener and follow its redirects to that same
    listener (codex completes only after its ``/success`` page, PROTOCOL.md §6); the last
    answer wins. Every hop goes to 127.0.0.1, where the program listens, and only to a listener
    of this user: ``localhost`` in a redirect may resolve to ::1 first, where another local
    user can listen on the same port and would be handed what the page carries."""
    url, host = callback_url(port, callback), None
    for _ in range(MAX_HOPS + 1):
        try:
            answer = loopback_request("GET", url, timeout=timeout, before_sending=_ours,
                                      headers={"Host": host} if host else None)  # fmt: skip
        except TimeoutError as exc:
            raise SkillError("program_timeout") from exc
        except ConnectionRefusedError as exc:
            raise _not_listening() from exc
        except ConnectionError as exc:
            # Taken, then closed unread: the listener turns away connections beyond its few
            # (another program on this machine holding them). The attempt lives on.
            raise SkillError(
                "program_timeout",
                "The login program's listener closed the connection before it took the address "
                "(it was busy with other connections). Run the same `complete` again in a "
                "moment.",
            ) from exc
        except OSError as exc:
            raise _not_listening() from exc
        if answer.status not in (301, 302, 303, 307, 308) or not answer.location:
            return answer
        target = urlsplit(urljoin(url, answer.location))
        try:
            elsewhere = target.hostname not in LOOPBACK_HOSTS or target.port != port
        except ValueError:  # a port that is no number
            elsewhere = True
        if elsewhere:
            return Answer(answer.status, "")  # not the program's page
        host = f"[::1]:{port}" if target.hostname == "::1" else f"{target.hostname}:{port}"
        url = urlunsplit(("http", f"127.0.0.1:{port}", target.path, target.query, ""))
    return Answer(310, "too many redirects")


def _ours(sock: socket.socket) -> None:
    """Before a byte is sent: the listener must be this user's (the login program is); one the
    kernel does not list as this user's gets nothing."""
    if peer_uid(sock) != os.getuid():
        raise SkillError("listener_not_ours")


def _not_listening() -> SkillError:
    return SkillError(
        "login_ended",
        "The login program stopped listening before the address reached it. "
        "Check `chatgpt-login status`, then start again if needed.",
    )
