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
    assert statuses["service"] == statuses["secrets store"] == statuses["clock"] == "ok"
    assert statuses[f"credential file {setup['PI_CODING_AGENT_DIR']}/auth.json"] == "ok"


def no_tmux(env: dict[str, str], _: list[Any]) -> None:
    env["PATH"] = "/nonexistent"


def port_taken(env: dict[str, str], held: list[Any]) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", int(env["CHATGPT_LOGIN_CALLBACK_PORTS"].split(",")[0])))
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


def service_down(env: dict[str, str], _: list[Any]) -> None:
    env["CHATGPT_LOGIN_SERVICE_URL"] = f"http://127.0.0.1:{free_port()}"


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

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Behind)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    held.append(server)
    env["CHATGPT_LOGIN_ISSUER"] = f"http://127.0.0.1:{server.server_address[1]}"


Break = Callable[[dict[str, str], list[Any]], None]
BROKEN: list[tuple[str, Break, str, str, str]] = [
    # (setup, how, the check that fails, in its detail, in its fix)
    ("no tmux", no_tmux, "tmux", "not found", "install tmux"),
    ("a callback port taken", port_taken, "port {port}", "taken by python", "CALLBACK_PORTS"),
    ("a 0777 state directory", open_state_dir, "state directory", "drwxrwxrwx", "chmod 700"),
    ("a wrong secrets token", wrong_store_token, "secrets store", "401", "token"),
    ("the store down", store_down, "secrets store", "could not be reached", "address"),
    ("a corrupt credential file", corrupt_credential_file, "credential file {pi}", "",
     "sign in again"),
    ("a credential file others can read", readable_credential_file, "credential file {pi}",
     "-rw-r--r--", "chmod 600"),
    ("the service down", service_down, "service", "nothing answers", "chatgpt-login serve"),
    ("the clock two hours off", clock_off, "clock", "s ahead of the issuer", "NTP"),
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
    assert (code, report["ok"], list(found)) == (1, False, [name]), report
    assert detail in found[name]["detail"] and fix in found[name]["fix"], found[name]
