"""The canary sweep: one whole run (serve, start, complete, status, refresh, restore, logout)
with distinctive secret values, then a search for them in everything captured: the service's
log (access and errors), every command's output, API answers, and every file left in the state
directory (tmux pane logs included). None may appear anywhere."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.conftest import PYTHON, REPO, free_port, wait_until
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI

OPERATOR = "opcanary-4f9c2a61"


def test_no_secret_anywhere(login_env: dict[str, str], issuer: FakeIssuer, state_dir: Path) -> None:
    api = FakeSecretsAPI(token="fatcanary-7d31e0b2").start()
    port = free_port()
    env = {**login_env, "CHATGPT_LOGIN_STATE_DIR": str(state_dir),
           "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
           "CHATGPT_LOGIN_OPERATOR_TOKEN": OPERATOR,
           "CHATGPT_LOGIN_SERVICE_URL": f"http://127.0.0.1:{port}",
           "CHATGPT_LOGIN_SECRETS_DIR": str(state_dir / "none")}  # fmt: skip
    server = subprocess.Popen([PYTHON, "-m", "service.cli", "-v", "serve", "--bind",
                               f"127.0.0.1:{port}"], env=env, cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    captured: list[str] = []

    def cli(*args: str, stdin: str = "") -> str:
        argv = [PYTHON, "-m", "service.cli", "-v", *args]
        done = subprocess.run(argv, input=stdin, env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        captured.append(done.stdout + done.stderr)
        return done.stdout

    def get(path: str) -> str:
        headers = {"Authorization": f"Bearer {OPERATOR}"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read().decode()
        captured.append(body)
        return body

    try:
        wait_until(lambda: _up(port), 20, "the service")
        started = json.loads(cli("start", "--json"))
        link = started["auth_url"]
        # The link is what start exists to print (it carries the state by design): that one
        # occurrence is expected; the state anywhere else is a leak.
        captured[-1] = captured[-1].replace(json.dumps(link)[1:-1], "<link>")
        callback = issuer.sign_in(link)
        state = parse_qs(urlsplit(link).query)["state"][0]
        code = parse_qs(urlsplit(callback).query)["code"][0]
        cli("complete", "-", "--json", stdin=callback)
        entry = json.loads((Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").read_text())[
            "openai-codex"
        ]
        first_tokens = [entry["access"], entry["refresh"]]
        cli("status", "--json")
        cli("refresh")
        get("/v1/credentials")
        get("/metrics")
        cli("restore")
        entry = json.loads((Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").read_text())[
            "openai-codex"
        ]
        cli("logout")
    finally:
        server.send_signal(signal.SIGTERM)
        log, _ = server.communicate(timeout=15)
        api.stop()
    captured.append(log)
    canaries = [OPERATOR, api.token, state, code, *first_tokens, entry["access"], entry["refresh"]]
    for path in state_dir.rglob("*"):
        # service.token is the local bearer token, kept 0600 in this directory by design.
        if path.is_file() and path.name not in {"tmux.sock", "service.token"}:
            captured.append(path.read_bytes().decode(errors="replace"))
    everything = "\n".join(captured)
    assert len(everything) > 1000  # the sweep did capture the run
    names = ["operator", "secrets-api", "state", "code", "access", "refresh", "access2", "refresh2"]
    found = [f"{name} in capture {i}" for name, c in zip(names, canaries, strict=True)
             for i, text in enumerate(captured) if c in text]  # fmt: skip
    assert found == [], f"secrets leaked: {found}"


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return int(answer.status) == 200
    except OSError:
        return False
