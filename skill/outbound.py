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

Callers turn :class:`AnswerError` into their own error codes; nothing here raises anything else.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
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

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's (httpcore's) ``trace`` extension: watch each new connection's socket."""
        if event.endswith(("connect_tcp.complete", "start_tls.complete")):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                self.watch(sock)

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
