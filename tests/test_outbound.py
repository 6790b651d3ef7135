"""The one client for requests that leave the machine (skill/outbound.py), against servers on
127.0.0.1 that answer as a broken or hostile one would. The whole-path cases (restore, persist,
sync-back, /readyz) are in tests/test_hostile_answers.py; the issuer's in tests/test_oauth.py."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skill.oauth import OAuthClient
from skill.outbound import AnswerError, Outbound, is_loopback, parse_json
from skill.settings import Settings
from tests.conftest import PYTHON, REPO

GUARD = 10.0  # seconds: far above what each case takes, far below what the bug it guards took


@contextlib.contextmanager
def raw_server(answer: Callable[[socket.socket, bytes], None]) -> Iterator[str]:
    """A loopback server that reads one request per connection and hands the socket to
    ``answer``; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
                while len(body) < length:
                    body += conn.recv(65536)
                answer(conn, body)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_early_hints_before_the_token_answer_lose_nothing(settings: Settings) -> None:
    """A CDN's "103 Early Hints" before the 200: the 200 is the answer. Taken for the answer
    (as http.client does), the rotated tokens were lost with the old refresh token spent."""
    spent: list[bytes] = []
    tokens = json.dumps({"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 60})

    def answer(conn: socket.socket, body: bytes) -> None:
        spent.append(body)
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 102 Processing\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(tokens), tokens.encode()))  # fmt: skip

    with raw_server(answer) as url, OAuthClient(settings.model_copy(update={"issuer": url})) as c:
        renewed = c.refresh("rt-old")
    assert (renewed.access_token, renewed.refresh_token) == ("at-new", "rt-new")
    assert len(spent) == 1


def test_a_string_that_never_closes_is_refused_in_one_pass(tmp_path: Path) -> None:
    """Escaped quotes in a string that never ends: a backtracking regular expression took 35 s
    over 64 KB, holding every thread of the service meanwhile (so the parse runs in a process
    of its own here: a hang is a failure, not a stuck suite)."""
    answer = tmp_path / "answer"
    # Brackets enough to be scanned (more than 32), none deep; then 240 KB, under the cap.
    answer.write_bytes(b'{"x": [' + b"[1], " * 40 + b'"' + b'\\"' * 120_000)
    code = "\n".join([
        "import sys", "from pathlib import Path",
        "from skill.outbound import AnswerError, parse_json",
        "try:", "    parse_json(Path(sys.argv[1]).read_bytes())",
        "except AnswerError as exc:", "    print(exc.reason)",
    ])  # fmt: skip
    done = subprocess.run([PYTHON, "-c", code, str(answer)], cwd=REPO, capture_output=True,
                          text=True, timeout=GUARD, check=True)  # fmt: skip
    assert done.stdout.strip() == "the answer is not JSON"
    assert parse_json(b'{"a": "[[[{{{", "b": [[1]]}', max_depth=3) == {"a": "[[[{{{", "b": [[1]]}
    with pytest.raises(AnswerError):
        parse_json(b'{"a": "\\\\", "b": [[[1]]]}', max_depth=3)  # an escaped backslash ends


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("LOCALHOST.", True), ("127.0.0.1", True), ("127.3.2.1", True),
     ("::1", True), ("[::1]", True), ("0:0:0:0:0:0:0:1", True), ("::ffff:127.0.0.1", True),
     ("0.0.0.0", True), ("2130706433", True),  # noqa: S104 - a spelling, not a bind ("127.0.0.1.nip.io", False),
     ("auth.openai.com", False), ("10.0.0.1", False), ("", False)],
)  # fmt: skip
def test_loopback_in_any_spelling_is_never_proxied(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_slow_name_lookup_is_within_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def slow(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "slow.test":
            time.sleep(GUARD)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    started = time.monotonic()
    with pytest.raises(OSError):  # a TimeoutError, or the NotSentError it caused
        Outbound().send("GET", "http://slow.test/", seconds=1.0)
    assert time.monotonic() - started < GUARD / 2


def test_every_address_of_a_name_shares_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with four addresses that take connections in but never answer the handshake (a
    listener whose backlog is full): the deadline covers them all, not one each."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filling = []
    for _ in range(8):  # fill the backlog; further handshakes get no answer
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        filling.append(sock)
    four = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))] * 4
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: four)
    started = time.monotonic()
    try:
        with pytest.raises(OSError):
            Outbound(connect_timeout=5.0).send("GET", f"http://four.test:{port}/", seconds=1.0)
        took = time.monotonic() - started
    finally:
        for sock in filling:
            sock.close()
        listener.close()
    assert took < 3.0, f"{took:.1f} s for a 1 s deadline"
