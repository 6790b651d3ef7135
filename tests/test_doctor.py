"""``chatgpt-login doctor`` against a good setup and a table of broken ones.

The setup is real: the service under gunicorn (``chatgpt-login serve``) storing to the fake
secrets API, the fake issuer, a state directory and a credential file. Each broken setup breaks
one thing; doctor, run as its own process, must fail exactly that check (and exit 1), name the
fault and say what to do, and fail nothing else.
"""

from __future__ import annotations

import email.utils
import http.server
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.conftest import PYTHON, REPO, free_port, wait_until
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI
from tests.loopback import status_of


@pytest.fixture
def setup(
    tmp_path: Path, login_env: dict[str, str], issuer: FakeIssuer, api: FakeSecretsAPI
) -> Iterator[dict[str, str]]:
    """A good setup: signed in (0600 pi file), the service running and storing to the API."""
    state = tmp_path / "state"
    env = {**login_env, "CHATGPT_LOGIN_STATE_DIR": str(state),
           "CHATGPT_LOGIN_SECRETS_DIR": str(tmp_path / "no-secrets"),
           "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token}  # fmt: skip
    pi = Path(env["PI_CODING_AGENT_DIR"]) / "auth.json"
    pi.parent.mkdir(parents=True)
    entry = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    pi.write_text(json.dumps({"openai-codex": entry.to_pi_entry()}))
    pi.chmod(0o600)
    port = free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}"], env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: status_of(f"http://127.0.0.1:{port}/readyz") == 200, 30, "the service")
        yield env
    finally:
        os.killpg(server.pid, 15)
        server.wait(20)


def doctor(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([PYTHON, "-m", "service.cli", "doctor", "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def failed(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in report["checks"] if check["status"] == "fail"}


def test_a_good_setup_passes(setup: dict[str, str]) -> None:
    code, report = doctor(setup)
    assert (code, report["ok"], failed(report)) == (0, True, {})
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses["service"] == statuses["secrets store"] == statuses["issuer"] == "ok"
    assert statuses["settings"] == "ok"
    assert statuses[f"credential file {setup['PI_CODING_AGENT_DIR']}/auth.json"] == "ok"


def serving(handler: type[http.server.BaseHTTPRequestHandler], held: list[Any]) -> str:
    """A server of ``handler`` on 127.0.0.1 (stopped by the test through ``held``); its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    held.append(server)
    return f"http://127.0.0.1:{server.server_address[1]}"


def no_tmux(env: dict[str, str], _: list[Any]) -> None:
    env["PATH"] = "/nonexistent"


def ports_taken(env: dict[str, str], held: list[Any]) -> None:
    """Every callback port taken (one alone is a warning: the login program takes the next)."""
    for port in env["CHATGPT_LOGIN_CALLBACK_PORTS"].split(","):
        sock = socket.socket()
        sock.bind(("127.0.0.1", int(port)))
        sock.listen()
        held.append(sock)


def open_state_dir(env: dict[str, str], _: list[Any]) -> None:
    """A 0777 copy of the state directory (the running service would tighten its own at once:
    doctor matters where no service runs, or another tool made the directory)."""
    state = Path(env["CHATGPT_LOGIN_STATE_DIR"])
    opened = state.with_name("opened-state")
    opened.mkdir()
    opened.chmod(0o777)
    for name in ("service.token", "service.url"):
        (opened / name).write_bytes((state / name).read_bytes())
    env["CHATGPT_LOGIN_STATE_DIR"] = str(opened)


def wrong_store_token(env: dict[str, str], _: list[Any]) -> None:
    env["FAT_TOOLS_TOKEN"] = "a-wrong-token-of-the-right-length-000"


def store_down(env: dict[str, str], _: list[Any]) -> None:
    env["CHATGPT_LOGIN_SECRETS_API_URL"] = f"http://127.0.0.1:{free_port()}/api/agent/secrets"
    env["CHATGPT_LOGIN_SECRETS_ATTEMPTS"] = "1"


def corrupt_credential_file(env: dict[str, str], _: list[Any]) -> None:
    (Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").write_text('{"openai-codex": {"acc')


def readable_credential_file(env: dict[str, str], _: list[Any]) -> None:
    (Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").chmod(0o644)


def another_service(env: dict[str, str], held: list[Any]) -> None:
    """A service that does not take this machine's local token (another container's port)."""

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    env["CHATGPT_LOGIN_SERVICE_URL"] = serving(Other, held)


def bad_setting(env: dict[str, str], _: list[Any]) -> None:
    env["CHATGPT_LOGIN_CALLBACK_PORTS"] = "abc"


def missing_hook(env: dict[str, str], _: list[Any]) -> None:
    env["CHATGPT_LOGIN_ON_CHANGE"] = "/nonexistent/reload --now"


def clock_off(env: dict[str, str], held: list[Any]) -> None:
    """An issuer whose clock is two hours behind this machine's."""

    class Behind(http.server.BaseHTTPRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(time.time() - 7200, usegmt=True)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    env["CHATGPT_LOGIN_ISSUER"] = serving(Behind, held)


Break = Callable[[dict[str, str], list[Any]], None]
BROKEN: list[tuple[str, Break, str, str, str]] = [
    # (setup, how, the check that fails, in its detail, in its fix)
    ("no tmux", no_tmux, "tmux", "not found", "install tmux"),
    ("every callback port taken", ports_taken, "port {port}", "taken by python",
     "CALLBACK_PORTS"),
    ("a 0777 state directory", open_state_dir, "state directory", "drwxrwxrwx", "chmod 700"),
    ("a wrong secrets token", wrong_store_token, "secrets store", "401", "token"),
    ("the store down", store_down, "secrets store", "could not be reached", "address"),
    ("a corrupt credential file", corrupt_credential_file, "credential file {pi}", "",
     "sign in again"),
    ("a credential file others can read", readable_credential_file, "credential file {pi}",
     "-rw-r--r--", "chmod 600"),
    ("another service", another_service, "service", "did not take this machine's local token",
     "CHATGPT_LOGIN_SERVICE_URL"),
    ("a setting that is not valid", bad_setting, "settings", "CHATGPT_LOGIN_CALLBACK_PORTS",
     "fix that setting"),
    ("the clock two hours off", clock_off, "clock", "s ahead of the issuer", "NTP"),
    ("an on-change hook that is not a program", missing_hook, "on-change hook",
     "'/nonexistent/reload' is not a program", "CHATGPT_LOGIN_ON_CHANGE"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "breaks", "check", "detail", "fix"), BROKEN,
                         ids=[b[0] for b in BROKEN])  # fmt: skip
def test_a_broken_setup_fails_that_check_only(
    setup: dict[str, str], what: str, breaks: Break, check: str, detail: str, fix: str
) -> None:
    held: list[Any] = []
    breaks(setup, held)
    try:
        code, report = doctor(setup)
    finally:
        for each in held:
            (each.close if isinstance(each, socket.socket) else each.shutdown)()
    name = check.format(port=setup["CHATGPT_LOGIN_CALLBACK_PORTS"].split(",")[0],
                        pi=f"{setup['PI_CODING_AGENT_DIR']}/auth.json")  # fmt: skip
    found = failed(report)
    expected = [name]
    if breaks is ports_taken:  # each port fails, the first named in the table
        expected = [f"port {port}" for port in setup["CHATGPT_LOGIN_CALLBACK_PORTS"].split(",")]
    assert (code, report["ok"], list(found)) == (1, False, expected), report
    assert detail in found[name]["detail"] and fix in found[name]["fix"], found[name]


def test_one_taken_port_warns_and_the_service_down_warns(setup: dict[str, str]) -> None:
    """Neither keeps a sign-in from working: the login program takes the next port; without
    the service the sign-in stands (nothing renews or stores it): warnings, exit 0."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", int(setup["CHATGPT_LOGIN_CALLBACK_PORTS"].split(",")[0])))
    sock.listen()
    setup["CHATGPT_LOGIN_SERVICE_URL"] = f"http://127.0.0.1:{free_port()}"
    try:
        code, report = doctor(setup)
    finally:
        sock.close()
    warned = {c["name"]: c for c in report["checks"] if c["status"] == "warn"}
    assert (code, failed(report)) == (0, {}), report
    assert {"service", f"port {setup['CHATGPT_LOGIN_CALLBACK_PORTS'].split(',')[0]}"} <= set(warned)
    assert "nothing answers" in warned["service"]["detail"]


def test_an_issuer_behind_an_untrusted_certificate_fails_until_its_ca_is_given(
    setup: dict[str, str], tmp_path: Path
) -> None:
    """A TLS-intercepting proxy, played by an HTTPS issuer whose CA this machine does not know:
    doctor fails it and says where the CA goes; given as CHATGPT_LOGIN_PROXY_CA, it passes."""
    from tests.netns import make_ca  # noqa: PLC0415

    ca = make_ca(tmp_path / "ca", names=("IP:127.0.0.1",))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(ca.server_cert, ca.server_key)
    issuer, port = FakeIssuer(), free_port()
    issuer.start(port=port, tls=tls, public_url=f"https://127.0.0.1:{port}")
    try:
        setup["CHATGPT_LOGIN_ISSUER"] = issuer.url
        code, report = doctor(setup)
        assert (code, list(failed(report))) == (1, ["issuer"]), report
        assert "proxy_ca.pem" in failed(report)["issuer"]["fix"]
        setup["CHATGPT_LOGIN_PROXY_CA"] = ca.ca_cert.read_text()
        code, report = doctor(setup)
        assert (code, failed(report)) == (0, {}), report
    finally:
        issuer.stop()


class Hostile(http.server.BaseHTTPRequestHandler):
    """A service (or issuer) answering as an attacker on this machine would."""

    mode = "drip"

    def do_GET(self) -> None:
        if self.mode == "drip":  # a header every second, for ever
            self.send_response(200)
            for n in range(1000):
                self.send_header(f"X-Drip-{n}", "x")
                self.wfile.flush()
                time.sleep(1)
        body = b'{"checks": []}' if self.path == "/readyz" else b"\x1b[2J\x1b]0;pwn\x07"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def date_time_string(self, timestamp: float | None = None) -> str:
        return "not a date"

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("mode", ["drip", "odd answers"])
def test_a_hostile_service_or_issuer_costs_its_check_only(setup: dict[str, str], mode: str) -> None:
    """A listener that drips its answer, or answers with terminal escapes, an empty list of
    checks and a Date that is not one: doctor ends (each check has a deadline), reports every
    other check, prints no control characters, and names no traceback."""
    handler = type("Handler", (Hostile,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    setup |= {"CHATGPT_LOGIN_SERVICE_URL": url, "CHATGPT_LOGIN_ISSUER": url,
              "CHATGPT_LOGIN_DOCTOR_DEADLINE": "3", "CHATGPT_LOGIN_READ_TIMEOUT": "2"}  # fmt: skip
    try:
        started = time.monotonic()
        done = subprocess.run([PYTHON, "-m", "service.cli", "doctor"], env=setup, cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        took = time.monotonic() - started
    finally:
        server.shutdown()
    names = [line.split(":")[0][5:] for line in done.stdout.splitlines()]
    assert names[:3] == ["settings", "tmux", "node"] and "issuer" in names, done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not any(ord(c) < 32 and c != "\n" for c in done.stdout), repr(done.stdout)
    assert "ok   settings" in done.stdout, done.stdout
    print(f"{mode}: doctor took {took:.1f} s\n{done.stdout}")


def test_addresses_are_printed_without_their_secrets(setup: dict[str, str]) -> None:
    """A service URL with a user and password, a store URL with a signature in its query."""
    port = setup["CHATGPT_LOGIN_SERVICE_URL"].rsplit(":", 1)[1] if (
        "CHATGPT_LOGIN_SERVICE_URL" in setup) else None  # fmt: skip
    state = Path(setup["CHATGPT_LOGIN_STATE_DIR"])
    base = (state / "service.url").read_text().strip() if port is None else setup[
        "CHATGPT_LOGIN_SERVICE_URL"]  # fmt: skip
    setup["CHATGPT_LOGIN_SERVICE_URL"] = base.replace("http://", "http://op:SvcPassw0rd@")
    setup["CHATGPT_LOGIN_SECRETS_API_URL"] += "?sig=SIGNEDSECRET123"
    done = subprocess.run([PYTHON, "-m", "service.cli", "doctor", "--json"], env=setup, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert "SvcPassw0rd" not in done.stdout + done.stderr
    assert "SIGNEDSECRET123" not in done.stdout + done.stderr


def test_an_invalid_setting_leaves_every_other_as_configured(setup: dict[str, str]) -> None:
    """One bad value must not make doctor look at another setup: the issuer it asks is the
    configured one (not auth.openai.com), the state directory the configured one."""
    setup["CHATGPT_LOGIN_ON_CHANGE_TIMEOUT"] = "abc"
    code, report = doctor(setup)
    checks = {check["name"]: check for check in report["checks"]}
    assert (code, list(failed(report))) == (1, ["settings"]), report
    assert "CHATGPT_LOGIN_ON_CHANGE_TIMEOUT" in checks["settings"]["detail"]
    assert "its default" in checks["settings"]["detail"]
    assert checks["issuer"]["status"] == "ok", checks["issuer"]  # the fake one answered
    assert "auth.openai.com" not in json.dumps(report)


def test_before_the_first_serve_the_service_is_looked_for_where_it_will_listen(
    tmp_path: Path,
) -> None:
    """`serve` leaves its address in the state directory; before it first ran, doctor looked at
    the default port whatever CHATGPT_LOGIN_BIND said."""
    from service.doctor import _service  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415

    port = free_port()
    settings = ServiceSettings(state_dir=tmp_path / "state", bind=f"0.0.0.0:{port}")
    (service,) = _service(settings)
    assert service.status == "warn" and f"http://127.0.0.1:{port}" in service.detail, service
