"""A TCP proxy on 127.0.0.1 that puts network faults between a client and a real server.

``faults`` is a queue: each new connection takes the next entry (then ``pass`` when it is
empty). Kinds:

- ``pass``: forward both ways;
- ``latency``: wait ``latency`` seconds, then forward;
- ``timeout``: read the request, never forward it, never answer (until the client gives up);
- ``reset``: accept, then close with a TCP reset before reading anything;
- ``truncate``: forward the request, then send only the first half of the server's answer and
  close (the server did the work; the client never sees all of its answer);
- ``slow_close``: forward the whole answer, then keep the connection open ``linger`` seconds;
- ``down``: accept and close at once without a byte (as a server that is going away).

``proxy.down_for(seconds)`` refuses every connection for a while (nothing listens).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    upstream_port: int
    faults: list[str] = field(default_factory=list)
    latency: float = 0.3
    linger: float = 1.0
    seen: list[str] = field(default_factory=list)  # the fault each connection got
    # (monotonic time, HTTP method) of each request forwarded: one per connection with urllib
    methods: list[tuple[float, str]] = field(default_factory=list)
    _listener: socket.socket | None = None
    _port: int = 0
    _refuse_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FaultProxy:
        self._listen()
        return self

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # socket listening until that accept() returned.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def down_for(self, seconds: float) -> None:
        """Stop listening for ``seconds`` (connections are refused), then listen again."""
        self.stop()
        self._refuse_until = time.monotonic() + seconds
        threading.Timer(seconds, self._listen).start()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(64)
        self._port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                fault = self.faults.pop(0) if self.faults else "pass"
                self.seen.append(fault)
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: str) -> None:
        with contextlib.closing(client):
            if fault == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if fault == "down":
                return
            if fault == "timeout":
                _read_some(client, wait=30.0)
                return
            if fault == "latency":
                time.sleep(self.latency)
            client.settimeout(10)
            with contextlib.suppress(OSError):
                first = client.recv(16, socket.MSG_PEEK)  # stays in the socket for the server
                self.methods.append(
                    (time.monotonic(), first.split(b" ", 1)[0].decode("ascii", "replace"))
                )
            client.settimeout(None)
            with contextlib.closing(socket.create_connection(("127.0.0.1", self.upstream_port),
                                                             timeout=10)) as server:  # fmt: skip
                if fault == "truncate":
                    self._truncate(client, server)
                else:
                    self._pump_both(client, server, self.linger if fault == "slow_close" else 0)

    def _truncate(self, client: socket.socket, server: socket.socket) -> None:
        request = _read_some(client, wait=2.0)
        server.sendall(request)
        answer = _read_some(server, wait=2.0)
        client.sendall(answer[: max(1, len(answer) // 2)])

    @staticmethod
    def _pump_both(client: socket.socket, server: socket.socket, fin_delay: float) -> None:
        """Forward both ways; when the server has finished its answer, pass its end of stream
        on to the client after ``fin_delay`` seconds."""
        answered = threading.Event()

        def pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
            try:
                while chunk := source.recv(65536):
                    sink.sendall(chunk)
                time.sleep(delay)
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        def answers() -> None:
            pump(server, client, fin_delay)
            answered.set()

        threading.Thread(target=answers, daemon=True).start()
        pump(client, server, 0)  # until the client has sent everything and closed its side
        answered.wait(30)


def _read_some(sock: socket.socket, *, wait: float) -> bytes:
    """What arrives until the peer pauses for a moment (one HTTP request or answer)."""
    sock.settimeout(wait)
    data = b""
    try:
        data = sock.recv(65536)
        sock.settimeout(0.2)
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data
