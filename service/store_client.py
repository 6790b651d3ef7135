"""The one HTTP client of the secrets stores (the secrets API and Vault): one policy for both.

Each attempt has a deadline that covers connecting, sending and reading the whole answer
(:class:`skill.outbound.Watchdog`: a server sending a byte at a time is cut off); its answer is
read up to ``max_bytes`` and parsed as JSON only within that and a nesting limit. Network errors
and whatever the store's *judge* calls retryable (5xx, 429, unreadable answers) are retried with
exponential backoff and jitter (``Retry-After`` honoured), bounded by attempts and a total
deadline; answers too big or too deep are not. Redirects are refused (a token must not follow
an answer to another address); TLS is always verified, against a CA file when one is given.

It is built on the standard library's ``urllib`` rather than httpx: ``chatgpt-login restore``
runs before the agent on every container start, and importing httpx and loading certifi's CA
bundle cost more than 0.1 s of its budget. urllib reads the same environment (proxies,
``NO_PROXY``, ``SSL_CERT_FILE`` through OpenSSL) and the stores need nothing more.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPException
from pathlib import Path
from typing import Any, TypeVar

from service.errors import ServiceError, unreachable
from skill.outbound import (
    MAX_ANSWER_BYTES,
    MAX_JSON_DEPTH,
    AnswerError,
    Watchdog,
    chunks_of,
    parse_json,
    read_capped,
)
from skill.waiting import backoff

log = logging.getLogger(__name__)

T = TypeVar("T")
_BACKOFF_BASE, _BACKOFF_CAP = 0.25, 5.0


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes


class StoreClient:
    """Requests to one store, named ``label`` in messages (``address_hint`` says which setting
    holds its address)."""

    def __init__(
        self,
        *,
        label: str,
        address_hint: str,
        timeout: float = 10.0,
        attempts: int = 5,
        deadline: float = 30.0,
        max_bytes: int = MAX_ANSWER_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
        cafile: Path | None = None,
        cadata: str | None = None,
        until: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.label, self.address_hint = label, address_hint
        self.until = until  # a monotonic time no request goes past (restore's whole budget)
        self.timeout, self.attempts, self.deadline = timeout, attempts, deadline
        self.max_bytes, self.max_depth = max_bytes, max_depth
        self._sleep = sleep
        context = None
        if cafile or cadata:  # a store's own CA (VAULT_CACERT), a proxy's, or both
            context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            if cadata:
                context.load_verify_locations(cadata=cadata)
        self._opener = urllib.request.build_opener(
            _ProxyUnlessLoopback(), _RefuseRedirects(), _WatchedHTTP(),
            _WatchedHTTPS(context=context),
        )  # fmt: skip

    def request(
        self,
        method: str,
        url: str,
        judge: Callable[[Response], T | ServiceError],
        *,
        body: bytes | None = None,
        headers: dict[str, str],
    ) -> T:
        """What ``judge`` makes of the answer, after bounded retries on network errors and on
        the errors ``judge`` returns (it raises what is not worth retrying)."""
        deadline = time.monotonic() + self.deadline
        if self.until is not None:
            deadline = min(deadline, self.until)
        error: ServiceError = unreachable("no time left for it", self.label)
        for attempt in range(1, self.attempts + 1):
            if time.monotonic() >= deadline:
                break
            seconds = max(0.1, min(self.timeout, deadline - time.monotonic()))
            retry_after = None
            try:
                response = self._send(method, url, body, headers, seconds)
            except AnswerError as exc:  # too big: a broken or hostile server; not retried
                raise self.bad_answer(exc, transient=False) from None
            except (OSError, HTTPException, ValueError) as exc:  # timeouts, resets, TLS, truncation
                error = unreachable(_reason(exc), self.label)
            else:
                judged = judge(response)
                if not isinstance(judged, ServiceError):
                    return judged
                error, retry_after = judged, _retry_after(response)
            delay = (retry_after if retry_after is not None
                     else backoff(attempt, base=_BACKOFF_BASE, cap=_BACKOFF_CAP))  # fmt: skip
            if attempt == self.attempts or time.monotonic() + delay > deadline:
                break
            log.info("%s %s failed (attempt %d), retrying in %.2fs", self.label, method, attempt,
                     delay)  # fmt: skip
            self._sleep(delay)
        raise error

    def json(self, response: Response) -> Any | ServiceError:
        """The answer's JSON; an error to retry on when it is unreadable (cut short, say);
        raises when it is too deep, since asking again brings the same."""
        try:
            return parse_json(response.body, max_depth=self.max_depth)
        except AnswerError as exc:
            if "deeper" in exc.reason:
                raise self.bad_answer(exc, transient=False) from None
            return self.bad_answer(exc, transient=True)

    def bad_answer(self, exc: AnswerError, *, transient: bool) -> ServiceError:
        return ServiceError(
            "secrets_bad_response",
            f"{self.label} sent an answer this tool does not take ({exc.reason}). "
            + (f"It will be retried; if it persists, check {self.label}." if transient
               else f"Check its address ({self.address_hint})."),
            status=502,
            transient=transient,
        )  # fmt: skip

    def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], seconds: float
    ) -> Response:
        """One request, over within ``seconds`` whatever the server does."""
        with Watchdog(seconds) as watchdog:
            _WATCHING.dog = watchdog
            try:
                response = self._exchange(method, url, body, headers, seconds)
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
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], seconds: float
    ) -> Response:
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - http(s) only, checked by the settings
        try:
            with self._opener.open(request, timeout=seconds) as answer:
                return Response(answer.status, answer.headers, self._read(answer))
        except urllib.error.HTTPError as answer:  # a non-2xx answer is still an answer
            with answer:
                return Response(answer.code, answer.headers, self._read(answer))

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
        return self.do_open(_WatchedTLSConnection, req, context=self._context)  # type: ignore[attr-defined]


class _ProxyUnlessLoopback(urllib.request.ProxyHandler):
    """The environment's proxies (HTTPS_PROXY, NO_PROXY), never for this machine: a store on
    127.0.0.1 is reached directly, so its token does not travel through a proxy (urllib would
    send a loopback request to an http_proxy too)."""

    def proxy_open(self, req: urllib.request.Request, proxy: str, type: str) -> Any:
        host = urllib.parse.urlsplit(req.full_url).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            return None  # the next handler connects directly
        return super().proxy_open(req, proxy, type)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then handled as an ordinary (non-2xx) answer


def _reason(exc: BaseException) -> str:
    """A short cause for the error message: the innermost reason urllib wraps."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "it did not answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens at that address"
    if isinstance(exc, socket.gaierror):
        return "its host name does not resolve"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _reason(reason)
    if isinstance(reason, str) and reason:
        return reason
    return type(exc).__name__


def _retry_after(response: Response) -> float | None:
    value = response.headers.get("Retry-After") or ""
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return None
