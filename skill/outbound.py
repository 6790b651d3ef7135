"""The one client and policy for every request to another machine (issuer, secrets API, Vault).

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
  (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) except for loopback, TLS always verified
  (against the system's CAs and a proxy's; a CA file given, ``VAULT_CACERT``, replaces the
  system's as it does for Vault's own tools), redirects never followed (a token must not
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
import ipaddress
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


# The bytes that matter to nesting: brackets, quotes and backslashes (one byte each, so the
# search cannot backtrack).
_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def _depth(raw: bytes, enough: int) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings, or a depth above ``enough`` as
    soon as one is seen. Linear and without recursion: a string that never closes, or a
    hundred thousand brackets, cost one pass. The brackets' count is an upper bound (those in
    strings count too) and the C string methods take it at once: only above ``enough`` is the
    answer scanned."""
    opened = raw.count(b"[") + raw.count(b"{")
    if opened <= enough:
        return opened
    depth = deepest = 0
    in_string, escaped_at = False, -1
    for found in _SPECIAL.finditer(raw):
        at = found.start()
        if at == escaped_at:
            continue
        byte = raw[at]
        if in_string:
            if byte == 0x5C:  # backslash: the next byte is escaped
                escaped_at = at + 1
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > enough:
                return depth
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
            f"{variable} is not a proxy this tool can use: an http://host:port address is "
            "needed (https:// and SOCKS proxies are not supported). Fix it, then retry."
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
    curl and httpx read it). Raises :class:`ProxySettingError` for one that is not
    ``http://[user:password@]host[:port]``: SOCKS is not supported, and urllib would speak plain
    HTTP to an https:// proxy, its password in the clear."""
    found = urllib.request.getproxies_environment()
    proxies = {scheme: found.get(scheme) or found.get("all") for scheme in ("http", "https")}
    for scheme, proxy in proxies.items():
        if proxy is not None and not _usable_proxy(proxy):
            raise ProxySettingError(f"{scheme.upper()}_PROXY" if found.get(scheme) else "ALL_PROXY")
    return {scheme: proxy for scheme, proxy in proxies.items() if proxy}


def _usable_proxy(proxy: str) -> bool:
    if not proxy.lower().startswith("http://"):
        return False
    try:
        parts = urllib.parse.urlsplit(proxy)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return False
    return bool(parts.hostname) and parts.path in ("", "/") and not parts.query


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or a loopback (or unspecified) IP in
    any spelling (``127.0.0.2``, ``[::1]``, ``::ffff:127.0.0.1``, ``2130706433``). Other names
    are not, even one that starts with 127.: only a resolver knows where it points."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(int(host) if host.isdigit() else host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or address.is_unspecified or bool(mapped and mapped.is_loopback)


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
    if str(exc).startswith("Tunnel connection failed: "):  # http.client's words for a CONNECT
        status = str(exc).split()[3]  # refused by the proxy; only its status is said
        return f"the proxy refused to connect to it (HTTP {status if status.isdigit() else '?'})"
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) and reason else type(exc).__name__


# What the request this thread is making needs while connecting: its watchdog (the
# connections below hand it their socket the moment it exists, so even a slow TLS handshake
# or header is cut off) and the time connecting may take.
_EXCHANGE = threading.local()


def _watched_socket(
    address: tuple[str, int], timeout: Any = None, source_address: Any = None
) -> socket.socket:
    """``socket.create_connection`` within the request's deadline: the name looked up, then
    each address tried, all before the deadline (create_connection gives each address its own
    timeout and the lookup none); every socket watched from the moment it exists."""
    dog: Watchdog | None = getattr(_EXCHANGE, "dog", None)
    if dog is None:
        return socket.create_connection(address, timeout, source_address)
    connecting = getattr(_EXCHANGE, "connect_timeout", None) or dog.seconds
    error: OSError = TimeoutError("no time was left to connect")
    for family, kind, proto, _, where in _resolve(*address, seconds=dog.remaining()):
        left = dog.remaining()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        dog.watch(sock)
        try:
            sock.settimeout(min(connecting, left))
            if source_address:
                sock.bind(source_address)
            sock.connect(where)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.settimeout(timeout if isinstance(timeout, float | int) else None)
        return sock
    raise error


def _resolve(host: str, port: int, *, seconds: float) -> list[Any]:
    """getaddrinfo within ``seconds``: a name is looked up in a thread of its own (a resolver
    that does not answer cannot be interrupted; the thread is left to end when it does)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # an address: nothing to look up
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    found: list[list[Any] | OSError] = []

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)

    worker = threading.Thread(target=look_up, daemon=True, name="resolve")
    worker.start()
    worker.join(max(0.0, seconds))
    if not found:
        raise TimeoutError("its host name did not resolve in time")
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]


class _FinalAnswer(http.client.HTTPResponse):
    """Skips every informational answer (1xx) but 101 before the real one. http.client skips
    only 100 and would take a "103 Early Hints" for the answer, its body empty: the real
    answer (new tokens, for a refresh token spent) would be lost."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)  # its headers, skipped


class _Watched:
    """A connection that hands its socket to the request's watchdog the moment it exists, says
    when connecting failed (the request never left), and reads past informational answers."""

    response_class: type[http.client.HTTPResponse] = _FinalAnswer

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
        if is_loopback(urllib.parse.urlsplit(req.full_url).hostname or ""):
            return None  # the next handler connects directly
        return super().proxy_open(req, proxy, type)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then handled as an ordinary (non-2xx) answer
