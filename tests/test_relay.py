"""The relay of a pasted callback to the login program's listener (skill/relay.py): every hop
goes to the program's own listener on 127.0.0.1, never to whatever ``localhost`` resolves to."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator

import pytest

from skill.errors import SkillError
from skill.redirect import Callback
from skill.relay import relay_http
from tests.conftest import free_port


class Program(http.server.BaseHTTPRequestHandler):
    """Plays codex's listener: the callback answers with a redirect to ``Location``, and every
    request is noted with its Host header."""

    seen: list[tuple[str, str]]
    location: str

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        if self.path.startswith("/auth/callback"):
            self.send_response(302)
            self.send_header("Location", self.location.format(port=self.server.server_port))
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def program() -> Iterator[http.server.ThreadingHTTPServer]:
    handler = type("Handler", (Program,), {"seen": [], "location": ""})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


CALLBACK = Callback(code="c0de-relay", state="st4te-relay")


@pytest.mark.parametrize("host", ["localhost", "[::1]", "127.0.0.1"])
def test_the_success_redirect_goes_to_the_program_s_listener_by_address(
    program: http.server.ThreadingHTTPServer, host: str
) -> None:
    """codex answers the callback with http://localhost:PORT/success: followed to 127.0.0.1
    (where the program listens) with the Host it named, never to ::1, where localhost may
    resolve first and another user may listen on the same port."""
    handler = program.RequestHandlerClass
    handler.location = f"http://{host}:{{port}}/success?plan_type=plus"  # type: ignore[attr-defined]
    port = program.server_port
    answer = relay_http(port, CALLBACK, timeout=5)
    assert answer.status == 200
    seen = handler.seen  # type: ignore[attr-defined]
    assert seen[0][0].startswith("/auth/callback?code=c0de-relay")
    assert seen[1] == ("/success?plan_type=plus", f"{host}:{port}")


@pytest.mark.parametrize(
    "location",
    ["http://localhost:1/success", "http://localhost/success", "http://localhost:x/success",
     "https://example.com/success"],
)  # fmt: skip
def test_a_redirect_elsewhere_is_not_followed(
    program: http.server.ThreadingHTTPServer, location: str
) -> None:
    handler = program.RequestHandlerClass
    handler.location = location  # type: ignore[attr-defined]
    answer = relay_http(program.server_port, CALLBACK, timeout=5)
    assert answer.status == 302 and len(handler.seen) == 1  # type: ignore[attr-defined]


# Another local user (uid 65534, Debian's python3) listening dual-stack on [::]:port, which
# takes 127.0.0.1 too: the kernel lists the connection in tcp6, its addresses IPv4-mapped.
DUAL_STACK_STRANGER = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen()
print("up", flush=True)
c, _ = s.accept()
c.settimeout(2)
try:
    print(repr(c.recv(4096)), flush=True)
except TimeoutError:
    print("nothing", flush=True)
"""


def test_a_dual_stack_listener_of_another_user_gets_nothing() -> None:
    port = free_port()
    stranger = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
         "-c", DUAL_STACK_STRANGER, str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert stranger.stdout is not None and stranger.stdout.readline().strip() == "up"
        with pytest.raises(SkillError) as refused:
            relay_http(port, CALLBACK, timeout=5)
        assert refused.value.code == "listener_not_ours"
        assert stranger.stdout.readline().strip() in ("nothing", "b''")
    finally:
        stranger.kill()
        stranger.wait()
