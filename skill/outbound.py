"""The one policy for every answer from another machine (the issuer, the secrets API).

- **A deadline that is one.** Socket timeouts bound each read, not a request: a server that
  sends one byte every few seconds keeps a client waiting for ever. A :class:`Watchdog` shuts the
  request's socket down when its deadline passes, whatever the request is doing (connecting,
  sending, waiting for the headers, reading the body), so the blocked read returns and the
  caller reports a timeout.
- **A size cap.** An answer is read only up to ``max_bytes`` (:func:`read_capped`); a bigger one
  is refused, never held in memory.
- **JSON within limits.** :func:`parse_json` parses only within that cap and refuses nesting
  deeper than ``max_depth`` before the parser could recurse that deep.

- **One client.** :class:`Outbound` makes every request that leaves the machine (the issuer,
  the secrets API, Vault) on the standard library's ``urllib``: the environment's proxies
  (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) except for loopback, TLS always verified (a
  proxy's or a store's CA beside the system's), redirects never followed (a token must not
  follow an answer to another address). Not httpx: ``restore`` runs on every container start and
  ``complete`` relays a sign-in while the user waits, and importing httpx with its CA bundle
  costs each of them more than 0.1 s; the service's worker would carry it from its first
  refresh on.

Callers turn what :meth:`Outbound.send` raises into their own error codes: :class:`AnswerError`
(too big, too deep, not JSON), :class:`NotSentError` (connecting failed: the request never left, so
sending it again is safe even for a single-use code), ``TimeoutError`` (the deadline passed)
and other ``OSError``/``HTTPException`` (the connection broke after the request left).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any

MAX_ANSWER_BYTES = 256 * 1024  # a token answer or a secrets document is a few KiB
MAX_JSON_DEPTH = 32


class AnswerError(ValueError):
    """An answer too big, too deep or not JSON; ``reason`` says which, for messages."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Watchdog:
    """Shuts down the sockets it watches at ``seconds`` from entering it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, seconds)
        self.deadline = time.monotonic() + self.seconds
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline (at once if it has passed)."""
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def read_capped(chunks: Iterable[bytes], *, max_bytes: int = MAX_ANSWER_BYTES) -> bytes:
    """The chunks joined, refusing more than ``max_bytes`` as soon as it is seen."""
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise AnswerError(f"the answer is larger than {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def chunks_of(read: Any, *, size: int = 16384) -> Iterator[bytes]:
    """``read(size)`` until it returns nothing (a file-like answer's body, in pieces)."""
    while chunk := read(size):
        yield chunk


def parse_json(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from ``raw``, refusing nesting deeper than ``max_depth``."""
    if _depth(raw, max_depth) > max_depth:
        raise AnswerError(f"the answer nests deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise AnswerError("the answer is not JSON") from exc


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _depth(raw: bytes, enough: int) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (a linear scan, no recursion).
    An answer with few brackets outside its strings cannot nest deeper than their number,
    which the C string methods count at once: only when there are more than ``enough`` is it
    scanned."""
    bare = _STRINGS.sub(b'""', raw)
    opened = bare.count(b"[") + bare.count(b"{")
    if opened <= enough:
        return opened
    depth = deepest = 0
    in_string = escaped = False
    for byte in bare:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


@dataclass(frozen=True)
class Answer:
    """An answer, its body read whole (within the cap)."""

    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class NotSentError(ConnectionError):
    """Connecting failed (TCP, a proxy's tunnel or the TLS handshake): the request never left."""


class ProxySettingError(ValueError):
    """A proxy variable this client cannot use; ``variable`` names it (its value may hold a
    password, so it is never said)."""

    def __init__(self, variable: str) -> None:
        super().__init__(
            f"{variable} is not a proxy this tool can use: an http:// or https:// address "
            "with a valid port is needed (SOCKS is not supported). Fix it, then retry."
        )
        self.variable = variable


class Outbound:
    """Requests to other machines under the policy above. One per caller; it holds no
    connection between requests (each request's watchdog sees its socket from the start)."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_bytes: int = MAX_ANSWER_BYTES,
        cafile: Path | None = None,
        cadata: str | None = None,
        user_agent: str = "chatgpt-login",
    ) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_bytes, self.user_agent = max_bytes, user_agent
        context = None
        if cafile or cadata:  # a store's own CA (VAULT_CACERT), a proxy's, or both
            context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            if cadata:
                context.load_verify_locations(cadata=cadata)
        self._opener = urllib.request.build_opener(
            _ProxyUnlessLoopback(environment_proxies()), _RefuseRedirects(), _WatchedHTTP(),
            _WatchedHTTPS(context=context),
        )  # fmt: skip

    def send(
        self,
        method: str,
        url: str,
        *,
        seconds: float,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request, over within ``seconds`` whatever the server does."""
        headers = {"User-Agent": self.user_agent, **(headers or {})}
        with Watchdog(seconds) as watchdog:
            _EXCHANGE.dog, _EXCHANGE.connect_timeout = watchdog, self.connect_timeout
            try:
                answer = self._exchange(method, url, body, headers, seconds)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if watchdog.fired and not isinstance(exc, AnswerError):
                    raise TimeoutError from exc
                raise
            finally:
                _EXCHANGE.dog = None
            if watchdog.fired:  # the body ended where the watchdog cut it
                raise TimeoutError
            return answer

    def _exchange(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], seconds: float
    ) -> Answer:
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - http(s) only, checked by the settings
        timeout = max(0.1, min(self.read_timeout, seconds))
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                return Answer(answer.status, answer.headers, self._read(answer))
        except urllib.error.HTTPError as answer:  # a non-2xx answer is still an answer
            with answer:
                return Answer(answer.code, answer.headers, self._read(answer))
        except urllib.error.URLError as exc:  # urllib wraps what connecting or sending raised
            cause = exc.reason
            if isinstance(cause, OSError):
                raise cause from cause.__cause__  # what connecting raised stays its cause
            raise

    def _read(self, answer: Any) -> bytes:
        body = read_capped(chunks_of(answer.read), max_bytes=self.max_bytes)
        if getattr(answer, "length", None):  # read(n) ends quietly where the server stopped
            raise http.client.IncompleteRead(body, answer.length)
        return body


def environment_proxies() -> dict[str, str]:
    """The environment's proxies for http and https (``ALL_PROXY`` where neither is given, as
    curl and httpx read it). Raises :class:`ProxySettingError` for one that is not an http(s)
    proxy with a valid port (SOCKS is not supported), rather than fail later and vaguely."""
    found = urllib.request.getproxies_environment()
    proxies = {scheme: found.get(scheme) or found.get("all") for scheme in ("http", "https")}
    for scheme, proxy in proxies.items():
        if proxy is None:
            continue
        variable = f"{scheme.upper()}_PROXY" if found.get(scheme) else "ALL_PROXY"
        try:
            parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            usable = False
        if not usable:
            raise ProxySettingError(variable)
    return {scheme: proxy for scheme, proxy in proxies.items() if proxy}


_CAUSES: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "it did not answer in time"),
    (ConnectionRefusedError, "connection refused: nothing listens at that address"),
    (socket.gaierror, "its host name does not resolve"),
    (ssl.SSLCertVerificationError, "its TLS certificate is not one this machine trusts"),
)


def describe(exc: BaseException) -> str:
    """A short cause for an error message (never an address: a proxy's may hold a password)."""
    while True:
        for kind, said in _CAUSES:
            if isinstance(exc, kind):
                return said
        inner = exc.__cause__ if isinstance(exc, NotSentError) else getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) and reason else type(exc).__name__


# What the request this thread is making needs while connecting: its watchdog (the
# connections below hand it their socket the moment it exists, so even a slow TLS handshake
# or header is cut off) and the time connecting may take.
_EXCHANGE = threading.local()


def _watched_socket(address: tuple[str, int], timeout: Any = None, *args: Any) -> socket.socket:
    connecting = getattr(_EXCHANGE, "connect_timeout", None)
    if isinstance(timeout, float | int) and connecting is not None:
        sock = socket.create_connection(address, min(timeout, connecting), *args)
        sock.settimeout(timeout)
    else:
        sock = socket.create_connection(address, timeout, *args)
    if (dog := getattr(_EXCHANGE, "dog", None)) is not None:
        dog.watch(sock)
    return sock


class _Watched:
    """A connection that hands its socket to the request's watchdog the moment it exists, and
    says when connecting failed (the request never left)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _watched_socket

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[misc]
        except OSError as exc:
            raise NotSentError(describe(exc)) from exc


class _WatchedConnection(_Watched, http.client.HTTPConnection):
    pass


class _WatchedTLSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHTTP(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_WatchedConnection, req)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_WatchedTLSConnection, req, context=self._context)  # type: ignore[attr-defined]


class _ProxyUnlessLoopback(urllib.request.ProxyHandler):
    """The environment's proxies (``NO_PROXY`` honoured), never for this machine: a server on
    127.0.0.1 is reached directly, so a token for it does not travel through a proxy (urllib
    would send a loopback request to an http_proxy too)."""

    def proxy_open(self, req: urllib.request.Request, proxy: str, type: str) -> Any:
        host = urllib.parse.urlsplit(req.full_url).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            return None  # the next handler connects directly
        return super().proxy_open(req, proxy, type)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then handled as an ordinary (non-2xx) answer
