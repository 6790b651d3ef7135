"""Where the credential is kept between container lives: one interface, two backends.

A store holds one JSON *document* (the agent's secrets) and knows two operations: read it
(optionally only if it changed since a version tag, an ``ETag``) and merge a patch into it
(optionally only if it is still at a version: compare-and-set). What the document's keys mean
is :mod:`service.persistence`'s business, not the store's.

- :class:`HttpSecretsStore`: the remote secrets API (PROTOCOL.md §8). ``GET <url>`` returns the
  document (404: empty); ``PATCH <url>`` merges top-level keys (``null`` deletes one) and must
  answer ``{"ok": true}``. The seed's API has nothing more. Our reference server
  (``chatgpt-login secrets-server``) adds versions: an ``ETag`` on every answer, ``304`` to a
  ``GET`` with a matching ``If-None-Match`` (a cheap poll), and ``412`` to a ``PATCH`` whose
  ``If-Match`` is no longer current. Whether a server honours ``If-Match`` is found out once, by
  patching nothing (``{}``) with a version no server has: a ``412`` says it does.
  Each attempt has a deadline that covers connecting, sending and reading the whole answer
  (:class:`skill.outbound.Watchdog`: a server sending a byte at a time is cut off), its answer is
  read up to ``answer_max_bytes`` and parsed as JSON only within that and a nesting limit.
  Network errors, 5xx, 429 and unreadable answers are retried with exponential backoff and
  jitter (``Retry-After`` honoured), bounded by attempts and a total deadline; 401/403, and
  answers too big or too deep, are not. A PATCH without
  ``If-Match`` sets the same keys again, so retrying it is safe; one with ``If-Match`` that
  landed before its answer was lost comes back as a conflict, and the caller reads the document
  to see whose write it holds. TLS verification is always on (``SSL_CERT_FILE`` for a CA).

  It is built on the standard library's ``urllib`` rather than httpx: ``chatgpt-login restore``
  runs before the agent on every container start, and importing httpx and loading certifi's CA
  bundle cost more than 0.1 s of its budget. urllib reads the same environment (proxies,
  ``NO_PROXY``, ``SSL_CERT_FILE`` through OpenSSL) and the store needs nothing more.
- :class:`FileSecretsStore`: the same document in a 0600 JSON file, for when no secrets API is
  configured. Writes happen under an ``flock``, so compare-and-set is exact even when several
  services share the file.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import random
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPException
from pathlib import Path
from typing import Any, Literal, Protocol

from service.errors import ServiceError, unreachable
from service.settings import ServiceSettings
from skill.files import ensure_private_dir, read_settled, write_private
from skill.lock import FlockLock
from skill.outbound import (
    MAX_ANSWER_BYTES,
    MAX_JSON_DEPTH,
    AnswerError,
    Watchdog,
    chunks_of,
    parse_json,
    read_capped,
)

log = logging.getLogger(__name__)

Document = dict[str, Any]
CasMode = Literal["auto", "on", "off"]
_BACKOFF_BASE, _BACKOFF_CAP = 0.25, 5.0


@dataclass(frozen=True)
class Snapshot:
    """The document as read, and the store's version tag for it (None: the store has none)."""

    document: Document
    etag: str | None = None


class SecretsStore(Protocol):
    name: str

    def read(self, *, if_none_match: str | None = None) -> Snapshot | None:
        """The document; None when ``if_none_match`` still names its version."""
        ...

    def write(self, patch: Document, *, if_match: str | None = None) -> str | None:
        """Merge ``patch`` (top-level keys; None deletes one); returns the new version tag if
        the store gives one. With ``if_match``, only if the document is still at that version:
        otherwise ``store_conflict``."""
        ...

    def compare_and_set(self) -> bool:
        """Whether :meth:`write` honours ``if_match``."""
        ...


def secrets_store(settings: ServiceSettings, **kwargs: Any) -> SecretsStore:
    """The configured backend."""
    url, token = settings.secrets_api_url, settings.secrets_api_token
    if url and token:
        return HttpSecretsStore(
            url=url,
            token=token,
            timeout=settings.secrets_timeout,
            attempts=settings.secrets_attempts,
            deadline=settings.secrets_deadline,
            cas=settings.secrets_cas,
            max_bytes=settings.answer_max_bytes,
            max_depth=settings.json_max_depth,
            **kwargs,
        )
    return FileSecretsStore(settings.secrets_file or settings.state_dir / "secrets.json")


def conflict() -> ServiceError:
    return ServiceError(
        "store_conflict",
        "The stored copy changed while this write was on its way; read it again and retry.",
        status=409,
        transient=True,
    )


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Message
    body: bytes


@dataclass(frozen=True)
class _Answer:
    status: int
    etag: str | None
    body: Document


class HttpSecretsStore:
    name = "http"

    def __init__(
        self,
        *,
        url: str,
        token: str,
        timeout: float = 10.0,
        attempts: int = 5,
        deadline: float = 30.0,
        cas: CasMode = "auto",
        max_bytes: int = MAX_ANSWER_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.startswith(("https://", "http://")):  # ServiceSettings checks this too
            raise ValueError("the secrets API URL must be an http(s) URL")
        self.url = url
        self.timeout, self.attempts, self.deadline = timeout, attempts, deadline
        self.max_bytes, self.max_depth = max_bytes, max_depth
        self._cas: bool | None = {"on": True, "off": False}.get(cas)
        self._sleep = sleep
        self._token = token
        # Proxies from the environment as urllib reads them; certificates are always verified
        # (the default HTTPS context). Redirects are refused: the bearer token must not follow
        # an answer to another address. Every socket is watched by the attempt's watchdog.
        self._opener = urllib.request.build_opener(
            _RefuseRedirects(), _WatchedHTTP(), _WatchedHTTPS()
        )

    def read(self, *, if_none_match: str | None = None) -> Snapshot | None:
        headers = {"If-None-Match": if_none_match} if if_none_match else {}
        answer = self._request("GET", headers=headers)
        if answer.status == 304:
            return None
        return Snapshot(answer.body, answer.etag)

    def write(self, patch: Document, *, if_match: str | None = None) -> str | None:
        headers = {"If-Match": if_match} if if_match else {}
        answer = self._request("PATCH", patch, headers=headers)
        if answer.status == 412:
            raise conflict()
        if answer.body.get("ok") is not True:
            raise ServiceError(
                "secrets_rejected",
                'The secrets API did not confirm the write (no "ok": true). It will be retried.',
                status=502,
                transient=True,
            )
        return answer.etag

    def compare_and_set(self) -> bool:
        if self._cas is None:
            # An empty merge patch changes nothing anywhere; only a server that checks If-Match
            # refuses it, since no document is ever at this made-up version.
            probe = f'"chatgpt-login-probe-{secrets.token_hex(8)}"'
            answer = self._request("PATCH", {}, headers={"If-Match": probe})
            self._cas = answer.status == 412
            log.info("secrets API compare-and-set: %s", "yes" if self._cas else "no")
        return self._cas

    def _request(
        self, method: str, body: Document | None = None, *, headers: dict[str, str]
    ) -> _Answer:
        """The final answer (2xx with a JSON object, 304, 412, or 404 to a GET as an empty
        document), after bounded retries on network errors, 5xx, 429 and unreadable bodies."""
        deadline = time.monotonic() + self.deadline
        error: ServiceError = unreachable("no attempt made")
        for attempt in range(1, self.attempts + 1):
            seconds = max(0.1, min(self.timeout, deadline - time.monotonic()))
            try:
                response = self._send(method, body, headers, seconds)
            except AnswerError as exc:  # too big: a broken or hostile server; not retried
                raise _bad_answer(exc, transient=False) from None
            except (OSError, HTTPException, ValueError) as exc:  # timeouts, resets, TLS, truncation
                error, retry_after = unreachable(_reason(exc)), None
            else:
                judged = self._judge(method, response)
                if isinstance(judged, _Answer):
                    return judged
                error, retry_after = judged, _retry_after(response)
            delay = retry_after if retry_after is not None else _backoff(attempt)
            if attempt == self.attempts or time.monotonic() + delay > deadline:
                break
            log.info(
                "secrets API %s failed (attempt %d), retrying in %.2fs", method, attempt, delay
            )
            self._sleep(delay)
        raise error

    def _judge(self, method: str, response: _Response) -> _Answer | ServiceError:
        """The answer to return, or the error to retry on; raises what is not retried."""
        status, etag = response.status, response.headers.get("ETag")
        if status in (401, 403):
            raise ServiceError(
                "secrets_forbidden",
                f"The secrets API refused the token (HTTP {status}). Check FAT_TOOLS_TOKEN (or "
                "the secrets_api_token secret).",
                status=502,
            )
        if status in (304, 412) or (status == 404 and method == "GET"):
            return _Answer(status, etag, {})
        if status == 429 or status >= 500:
            return unreachable(f"HTTP {status}")
        try:
            document = parse_json(response.body, max_depth=self.max_depth)
        except AnswerError as exc:
            if "deeper" in exc.reason:  # a hostile answer: asking again brings the same
                raise _bad_answer(exc, transient=False) from None
            return _bad_answer(exc, transient=True)  # e.g. cut short by the network
        if not isinstance(document, dict):
            return _bad_answer(AnswerError("not a JSON object"), transient=True)
        return _Answer(status, etag, document)

    def _send(
        self, method: str, body: Document | None, headers: dict[str, str], seconds: float
    ) -> _Response:
        """One request, over within ``seconds`` whatever the server does."""
        with Watchdog(seconds) as watchdog:
            _WATCHING.dog = watchdog
            try:
                response = self._exchange(method, body, headers, seconds)
            except (OSError, HTTPException, ValueError) as exc:
                if watchdog.fired and not isinstance(exc, AnswerError):
                    raise TimeoutError from exc
                raise
            finally:
                _WATCHING.dog = None
            if watchdog.fired:  # the body ended where the watchdog cut it
                raise TimeoutError
            return response

    def _exchange(
        self, method: str, body: Document | None, headers: dict[str, str], seconds: float
    ) -> _Response:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url, data=data, method=method)  # noqa: S310 - http(s) only, checked in __init__
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        for name, value in headers.items():
            request.add_header(name, value)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=seconds) as answer:
                return _Response(answer.status, answer.headers, self._read(answer))
        except urllib.error.HTTPError as answer:  # a non-2xx answer is still an answer
            with answer:
                return _Response(answer.code, answer.headers, self._read(answer))

    def _read(self, answer: Any) -> bytes:
        return read_capped(chunks_of(answer.read), max_bytes=self.max_bytes)


# The watchdog of the request this thread is making; the connections below hand it their
# socket the moment it exists, so even a slow TLS handshake or header is cut off.
_WATCHING = threading.local()


def _watched_socket(*args: Any, **kwargs: Any) -> socket.socket:
    sock = socket.create_connection(*args, **kwargs)
    if (dog := getattr(_WATCHING, "dog", None)) is not None:
        dog.watch(sock)
    return sock


class _WatchedConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _watched_socket


class _WatchedTLSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _watched_socket


class _WatchedHTTP(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_WatchedConnection, req)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_WatchedTLSConnection, req)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then handled as an ordinary (non-2xx) answer


def _bad_answer(exc: AnswerError, *, transient: bool) -> ServiceError:
    return ServiceError(
        "secrets_bad_response",
        f"The secrets API sent an answer this tool does not take ({exc.reason}). "
        + ("It will be retried; if it persists, check the secrets API." if transient
           else "Check the secrets API's address (CHATGPT_LOGIN_SECRETS_API_URL)."),
        status=502,
        transient=transient,
    )  # fmt: skip


def _reason(exc: BaseException) -> str:
    """A short cause for the error message: the innermost reason urllib wraps."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "it did not answer in time"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _reason(reason)
    if isinstance(reason, str) and reason:
        return reason
    return type(exc).__name__


class FileSecretsStore:
    """The document in a 0600 file; its version is a hash of the file's bytes."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, *, if_none_match: str | None = None) -> Snapshot | None:
        raw, document = self._load()
        etag = _etag(raw)
        return None if if_none_match == etag else Snapshot(document, etag)

    def write(self, patch: Document, *, if_match: str | None = None) -> str | None:
        ensure_private_dir(self.path.parent)
        with FlockLock(self.path):
            raw, document = self._load()
            if if_match is not None and if_match != _etag(raw):
                raise conflict()
            for key, value in patch.items():
                if value is None:
                    document.pop(key, None)
                else:
                    document[key] = value
            data = json.dumps(document, indent=2).encode()
            write_private(self.path, data)
            return _etag(data)

    def compare_and_set(self) -> bool:
        return True

    def _load(self) -> tuple[bytes, Document]:
        found = read_settled(self.path, json.loads)
        if found is None or not isinstance(found[1], dict):
            return (found[0] if found else b""), {}
        return found[0], found[1]


def _etag(raw: bytes) -> str:
    return '"' + hashlib.sha256(raw).hexdigest()[:20] + '"'


def _retry_after(response: _Response) -> float | None:
    value = response.headers.get("Retry-After") or ""
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    jitter = 0.5 + random.random()  # noqa: S311 - spreading retries, not cryptography
    return float(min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** (attempt - 1)) * jitter)
