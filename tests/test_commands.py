"""The agent's commands as real processes: JSON output, exit codes, the paste on stdin,
persistence through a local service, logout, and a sweep for leaked secrets."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import PYTHON, REPO, free_port, port_is_free, wait_until
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI


@pytest.fixture
def env(login_env: dict[str, str], state_dir: Path) -> dict[str, str]:
    return {
        **login_env,
        "XDG_STATE_HOME": str(state_dir.parent),
        "CHATGPT_LOGIN_STATE_DIR": str(state_dir),
    }


def cli(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [PYTHON, "-m", "skill.cli", *args, "--json"], input=stdin, capture_output=True,
        text=True, env=env, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout), done.stdout + done.stderr


def test_start_complete_status_over_the_cli(env: dict[str, str], issuer: FakeIssuer) -> None:
    code, started, _ = cli(env, "start")
    assert code == 0 and started["status"] == "waiting" and started["auth_url"]
    callback = issuer.sign_in(started["auth_url"])
    code, done, _ = cli(env, "complete", "-", stdin=callback + "\n")
    assert code == 10  # signed in locally; no service running, so persistence is pending
    assert done["status"] == "succeeded" and done["persisted"] is False
    assert "Persistence pending" in done["persist_message"]
    code, again, _ = cli(env, "complete", callback)  # positional works too; same result
    assert code == 10 and again["id"] == done["id"]
    code, status, _ = cli(env, "status")
    assert code == 0 and status["login"]["status"] == "succeeded"
    assert status["credential"]["account_id"] == "acct-1111"
    assert "auth_url" not in status["login"]
    assert started["note"] is None
    code, second, _ = cli(env, "start")  # signed in: a new sign-in says what it replaces
    assert code == 0 and second["status"] == "waiting" and second["id"] != started["id"]
    assert second["note"] == ("Already signed in on this machine as user@example.com: "
                              "completing this sign-in replaces that.")  # fmt: skip
    cli(env, "cancel")


def test_a_repeated_complete_tells_a_sign_in_the_service_stored_while_it_is_down(
    env: dict[str, str], issuer: FakeIssuer, state_dir: Path
) -> None:
    """The service stored the sign-in, then stopped: asking again must not say "pending"."""
    from skill.events import emit  # noqa: PLC0415

    _, started, _ = cli(env, "start")
    callback = issuer.sign_in(started["auth_url"])
    assert cli(env, "complete", "-", stdin=callback)[0] == 10  # no service yet: pending
    with (state_dir / "events.jsonl").open("a") as journal:  # a line not of ours: no zone
        journal.write('{"id": 900, "type": "credential.persisted", "at": "2999-01-01T00:00:00",'
                      ' "body": {"reason": "sign-in"}}\n')  # fmt: skip
    assert cli(env, "complete", callback)[0] == 10
    emit(state_dir, "credential.persisted", reason="sign-in", generation=1)  # as it writes
    code, again, _ = cli(env, "complete", callback)
    assert code == 0 and again["persisted"] is True, again
    assert "persisted to the secrets store at" in again["persist_message"]
    emit(state_dir, "credential.logged_out", by="another holder")
    code, after, _ = cli(env, "complete", callback)
    assert code == 10 and after["persisted"] is False


def test_status_says_when_the_access_token_expired_and_what_renews_it(
    env: dict[str, str], issuer: FakeIssuer
) -> None:
    from skill.authfiles import PiAuthFile  # noqa: PLC0415
    from skill.credentials import Credential  # noqa: PLC0415
    from skill.tokens import TokenSet  # noqa: PLC0415

    def status() -> str:
        done = subprocess.run([PYTHON, "-m", "skill.cli", "status"], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=60, check=True)  # fmt: skip
        return done.stdout

    assert "a sign-in made now is saved for restarts only once it starts" in status()
    made = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    expired = made.model_copy(update={"expires_ms": int((time.time() - 60) * 1000)})
    PiAuthFile(Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").save(expired)
    said = status()
    assert "access token expired at " in said and "the service renews it when it runs" in said
    assert "renewable until" not in said and "until it starts, the sign-in is not renewed" in said


def test_a_bad_paste_is_exit_2_and_the_attempt_lives_on(env: dict[str, str]) -> None:
    cli(env, "start")
    code, error, _ = cli(env, "complete", "-", stdin="https://auth.openai.com/oauth/authorize?x=1")
    assert code == 2 and error == {
        "ok": False,
        "error": "bad_paste",
        "message": error["message"],
        "next": "ask_user",
    }
    assert "sign-in link itself" in error["message"]
    _, status, _ = cli(env, "status")
    assert status["login"]["status"] == "waiting"
    assert cli(env, "cancel")[1]["canceled"] is True
    assert cli(env, "cancel")[1]["canceled"] is False


def test_complete_without_a_sign_in(env: dict[str, str]) -> None:
    code, error, _ = cli(env, "complete", "-", stdin="http://localhost:1455/auth/callback?code=a")
    assert (code, error["error"]) == (2, "no_login")
    assert "chatgpt-login start" in error["message"]


def test_wrong_method_for_driver(env: dict[str, str]) -> None:
    code, error, _ = cli(env, "start", "--driver", "pi-ai", "--method", "device")
    assert (code, error["error"]) == (2, "unsupported_method")


@pytest.fixture
def service(env: dict[str, str], state_dir: Path) -> Iterator[list[str]]:
    """A stand-in for the service's persist endpoint (the service itself is a later issue)."""
    seen: list[str] = []
    token = "svc-token-canary-9f2"

    class Persist(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            ok = self.path == "/v1/credentials/persist" and seen[-1] == f"Bearer {token}"
            body = json.dumps({"persisted": True} if ok else {"error": "unauthorized"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Persist)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (state_dir / "service.token").write_text(token)
    env["CHATGPT_LOGIN_SERVICE_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield seen
    server.shutdown()


def test_complete_asks_the_service_to_persist(
    env: dict[str, str], issuer: FakeIssuer, service: list[str]
) -> None:
    _, started, _ = cli(env, "start")
    code, done, _ = cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
    assert code == 0 and done["persisted"] is True
    assert service == ["Bearer svc-token-canary-9f2"]


def test_logout_revokes_and_removes_only_our_entry(
    env: dict[str, str], issuer: FakeIssuer, tmp_path: Path
) -> None:
    _, started, _ = cli(env, "start")
    cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
    pi_file = tmp_path / "pi" / "auth.json"
    document = json.loads(pi_file.read_text())
    document["anthropic"] = {"type": "oauth", "access": "keep"}
    pi_file.write_text(json.dumps(document, indent=2))
    refresh = document["openai-codex"]["refresh"]
    code, out, _ = cli(env, "logout")
    assert code == 0 and out["revoked"] is True and out["removed"] == [str(pi_file)]
    assert issuer.revoked == [refresh]
    assert json.loads(pi_file.read_text()) == {"anthropic": {"type": "oauth", "access": "keep"}}
    _, status, _ = cli(env, "status")
    assert status["credential"] is None


def test_no_secret_reaches_output_logs_or_leftover_files(
    env: dict[str, str], issuer: FakeIssuer, state_dir: Path, tmp_path: Path
) -> None:
    """Canaries: the code, state, tokens and verifier of a whole sign-in must appear in no
    command output and in no file we keep (the credential file itself aside)."""
    noisy = {**env}
    _, started, start_out = cli(noisy, "-v", "start")
    state = parse_qs(urlsplit(started["auth_url"]).query)["state"][0]
    callback = issuer.sign_in(started["auth_url"])
    code = parse_qs(urlsplit(callback).query)["code"][0]
    _, _, complete_out = cli(noisy, "-v", "complete", "-", stdin=callback)
    _, _, status_out = cli(noisy, "-v", "status")
    entry = json.loads((tmp_path / "pi" / "auth.json").read_text())["openai-codex"]
    canaries = [code, state, entry["access"], entry["refresh"]]
    for secret in canaries:
        assert secret not in complete_out and secret not in status_out
    assert code not in start_out
    kept = [p for p in state_dir.rglob("*") if p.is_file() and p.name != "tmux.sock"]
    for path in kept:
        text = path.read_bytes()
        for secret in canaries:
            assert secret.encode() not in text, path
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in kept)
    assert os.listdir(state_dir / "logs") == [] and os.listdir(state_dir / "work") == []


def test_refresh_without_the_service_refuses_and_spends_nothing(
    env: dict[str, str], issuer: FakeIssuer
) -> None:
    """Without the service there is no lease: renewing here could spend a token another
    container of this user is spending, so it refuses, says why, and calls no issuer."""
    _, started, _ = cli(env, "start")
    cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
    done = subprocess.run([PYTHON, "-m", "service.cli", "refresh"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 4, done.stdout + done.stderr
    assert "Not renewed" in done.stderr and "another container" in done.stderr
    assert issuer.calls["grant:refresh_token"] == 0


def test_refresh_through_the_service_renews_under_the_lease(
    env: dict[str, str], issuer: FakeIssuer, state_dir: Path, running_service: str
) -> None:
    _, started, _ = cli(env, "start")
    cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
    done = subprocess.run([PYTHON, "-m", "service.cli", "refresh"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0 and "Renewed and stored" in done.stdout, done.stderr
    assert issuer.calls["grant:refresh_token"] == 1
    stored = stored_document(state_dir)["codex_credentials"]
    local = json.loads((Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").read_text())
    assert stored["refresh"] == local["openai-codex"]["refresh"] and stored["generation"] >= 2


def test_status_shows_needs_relogin_from_the_service(
    env: dict[str, str], issuer: FakeIssuer, state_dir: Path
) -> None:
    from werkzeug.serving import make_server  # noqa: PLC0415

    from service.app import create_app  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415

    _, started, _ = cli(env, "start")
    cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
    settings = ServiceSettings.from_env({**env, "CHATGPT_LOGIN_SECRETS_DIR": str(state_dir / "x")})
    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env["CHATGPT_LOGIN_SERVICE_URL"] = f"http://127.0.0.1:{server.server_port}"
    try:
        _, view, _ = cli(env, "status")
        assert view["service"]["status"] == "logged_in"
        refresh = json.loads((Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").read_text())
        import hashlib  # noqa: PLC0415

        dead = hashlib.sha256(refresh["openai-codex"]["refresh"].encode()).hexdigest()
        (state_dir / "service.json").write_text(
            json.dumps({"needs_relogin": "refresh_token_reused", "dead_refresh": dead})
        )
        code, view, _ = cli(env, "status")
        assert code == 0 and view["service"]["status"] == "needs_relogin"
        done = subprocess.run([PYTHON, "-m", "service.cli", "status"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert "Needs a new sign-in (refresh_token_reused)" in done.stdout
    finally:
        server.shutdown()


@pytest.fixture
def running_service(env: dict[str, str], state_dir: Path) -> Iterator[str]:
    """The operator API in this process (its keep-alive not started), the file store in the
    state directory; the commands find it through CHATGPT_LOGIN_SERVICE_URL."""
    from werkzeug.serving import make_server  # noqa: PLC0415

    from service.app import create_app  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415

    settings = ServiceSettings.from_env({**env, "CHATGPT_LOGIN_SECRETS_DIR": str(state_dir / "x")})
    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env["CHATGPT_LOGIN_SERVICE_URL"] = f"http://127.0.0.1:{server.server_port}"
    yield env["CHATGPT_LOGIN_SERVICE_URL"]
    server.shutdown()


def test_a_store_that_refuses_the_service_is_told_not_pending(
    env: dict[str, str], issuer: FakeIssuer, state_dir: Path, api: FakeSecretsAPI
) -> None:
    """The sign-in stands (exit 10), but a store that refuses the service's token does not take
    it by itself later: the agent is told to pass that on (next: tell_user), not 'nothing to
    do'; the API's answer says the same."""
    from werkzeug.serving import make_server  # noqa: PLC0415

    from service.app import create_app  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415

    settings = ServiceSettings.from_env(
        {**env, "CHATGPT_LOGIN_SECRETS_DIR": str(state_dir / "x"),
         "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": "not-the-token-0123456789",
         "CHATGPT_LOGIN_SECRETS_DEADLINE": "2"}
    )  # fmt: skip
    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env["CHATGPT_LOGIN_SERVICE_URL"] = f"http://127.0.0.1:{server.server_port}"
    try:
        _, started, _ = cli(env, "start")
        code, done, _ = cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
        assert code == 10 and done["status"] == "succeeded" and done["persisted"] is False
        assert (done["persist_error"], done["next"]) == ("store_misconfigured", "tell_user")
        assert "refused the service's token (FAT_TOOLS_TOKEN" in done["persist_message"]
        assert "until an operator fixes that" in done["persist_message"]
        assert (Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").exists()  # signed in here
        client = create_app(settings).test_client()
        header = {"Authorization": f"Bearer {(state_dir / 'service.token').read_text()}"}
        again = client.post("/v1/credentials/persist", headers=header)
        assert again.status_code == 502 and again.json is not None
        assert (again.json["error"], again.json["next"]) == ("secrets_forbidden", "tell_user")
    finally:
        server.shutdown()
    assert "codex_credentials" not in api.record


def stored_document(state_dir: Path) -> dict[str, Any]:
    found = json.loads((state_dir / "secrets.json").read_text())
    assert isinstance(found, dict)
    return found


def test_logout_through_the_service_signs_out_the_stored_copy_too(
    env: dict[str, str], issuer: FakeIssuer, state_dir: Path, running_service: str
) -> None:
    _, started, _ = cli(env, "start")
    code, done, _ = cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
    assert code == 0 and done["persisted"] is True
    assert stored_document(state_dir)["codex_credentials"]["accountId"] == "acct-1111"
    _, status, _ = cli(env, "status")
    assert status["service"]["holders"] == [] and status["service"]["holder"]
    code, out, text = cli(env, "logout")
    assert code == 0 and out["stored"] == "tombstoned" and out["revoked"] is True, text
    document = stored_document(state_dir)
    assert "codex_credentials" not in document and document["codex_credentials_tombstone"]
    assert "replaced with a tombstone" in text
    _, status, _ = cli(env, "status")
    assert status["credential"] is None and status["service"]["status"] == "logged_out"
    tombstone = document["codex_credentials_tombstone"]
    code, out, text = cli(env, "logout")  # a repeat says so, and leaves the tombstone as it was
    assert code == 0 and out["stored"] == "tombstoned" and not out["removed"], text
    assert "already signed out by an earlier logout" in text and "replaced with" not in text
    assert stored_document(state_dir)["codex_credentials_tombstone"] == tombstone


def test_a_logout_with_the_service_down_waits_for_it(
    env: dict[str, str], issuer: FakeIssuer, state_dir: Path
) -> None:
    """No service: the local half happens at once and the stored copy's logout is noted;
    status says so; the next restore (a container start) carries it out."""
    from service.persistence import Persistence  # noqa: PLC0415
    from service.secrets import FileSecretsStore  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415

    _, started, _ = cli(env, "start")
    cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
    settings = ServiceSettings.from_env({**env, "CHATGPT_LOGIN_SECRETS_DIR": str(state_dir / "x")})
    Persistence(settings, FileSecretsStore(state_dir / "secrets.json")).persist()
    code, out, text = cli(env, "logout")
    assert code == 0 and out["stored"] == "pending" and out["removed"], text
    _, status, _ = cli(env, "status")
    assert status["logout_pending"] is True and status["credential"] is None
    human = subprocess.run([PYTHON, "-m", "skill.cli", "status"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert "Signing out the copy kept for restarts is pending: the service does it when it runs" \
        in human.stdout  # fmt: skip
    restored = subprocess.run(
        [PYTHON, "-m", "service.cli", "restore"], env={**env, "CHATGPT_LOGIN_SECRETS_DIR":
        str(state_dir / "x")}, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "logged out" in restored.stdout, restored.stdout + restored.stderr
    assert "codex_credentials" not in stored_document(state_dir)
    _, status, _ = cli(env, "status")
    assert status["logout_pending"] is False and status["credential"] is None


def test_a_pending_logout_with_the_service_up_is_the_store_s_to_take() -> None:
    """With the service answering, a logout still pending waits on the store, not on a service
    to start (the user would look for a stopped service that is not stopped)."""
    from skill.commands import _service_lines  # noqa: PLC0415

    lines = _service_lines({"status": "logged_out", "store_error": "secrets_unreachable",
                            "store_problem": "The secrets API could not be reached."},
                           True, signed_in=False)  # fmt: skip
    assert "the secrets store has not taken it yet, and the service keeps trying" in lines[0]
    assert not any("service is not running" in line for line in lines)


def test_status_says_when_the_service_keeps_the_sign_in() -> None:
    from skill.commands import _service_lines  # noqa: PLC0415

    kept = "The service renews it and keeps it in the secrets store for restarts (stored " \
        "generation 3)."  # fmt: skip
    view = {"status": "logged_in", "generation": 3, "holder": "me"}
    assert kept in _service_lines(view, False, signed_in=True)
    for trouble in ({"persist_pending": True}, {"store_error": "secrets_unreachable"},
                    {"conflict": "acct-2"}, {"generation": 0}):  # fmt: skip
        assert kept not in _service_lines(view | trouble, False, signed_in=True)


def test_a_finished_sign_in_takes_only_its_own_address_again(
    env: dict[str, str], issuer: FakeIssuer
) -> None:
    """After success, the same address again gets the first result while the credential is
    here; any other paste is told "already signed in", and nothing is called signed in once
    the credential is gone."""
    _, started, _ = cli(env, "start")
    url = issuer.sign_in(started["auth_url"])
    code, done, _ = cli(env, "complete", "-", stdin=url)
    assert code == 10 and done["status"] == "succeeded"
    code, again, _ = cli(env, "complete", "-", stdin=f"here it is again: {url}")
    assert code == 10 and again["id"] == done["id"]
    for other in ("anything at all", issuer.sign_in(started["auth_url"])):
        code, refused, _ = cli(env, "complete", "-", stdin=other)
        assert (code, refused["error"], refused["next"]) == (2, "already_signed_in", "tell_user")
        assert "not the address it used" in refused["message"]
    cli(env, "logout")
    code, refused, _ = cli(env, "complete", "-", stdin=url)
    assert (code, refused["error"]) == (2, "login_ended")
    assert "no longer on this machine" in refused["message"]


def test_an_unreadable_credential_file_is_said_by_status_complete_and_logout(
    env: dict[str, str], issuer: FakeIssuer, tmp_path: Path
) -> None:
    pi_file = tmp_path / "pi" / "auth.json"
    pi_file.parent.mkdir(parents=True)
    pi_file.write_text("{not json")
    _, status, _ = cli(env, "status")
    assert status["credential"] is None and "cannot be read" in status["file_problems"][0]
    _, started, _ = cli(env, "start")
    _, done, text = cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
    assert done["status"] == "succeeded" and "moved it aside" in done["notes"][0], text
    aside = list(pi_file.parent.glob("auth.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    pi_file.write_text("{broken again")
    _, out, _ = cli(env, "logout")
    assert out["moved_aside"] and out["moved_aside"][0].startswith(str(pi_file))
    assert len(list(pi_file.parent.glob("auth.json.corrupt-*"))) == 2


def listening_as_nobody(port: int, then: str) -> subprocess.Popen[str]:
    """Another local user (uid 65534, Debian's python3) listening on 127.0.0.1:``port``; once a
    connection comes, it runs ``then`` (``c`` is the connection). Returned once it listens."""
    stranger = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
         "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))"
         f"; s.listen(); print('up', flush=True); c, _ = s.accept(); {then}", str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert stranger.stdout is not None and stranger.stdout.readline().strip() == "up"
    return stranger


def test_the_local_token_never_goes_to_another_users_listener(
    env: dict[str, str], state_dir: Path
) -> None:
    """While the service is down, another local user listens on its port: `status` must not
    hand it the local token (which opens the whole API), and says why."""
    port = free_port()
    token = "svc-token-canary-5b7e-" + "x" * 20
    (state_dir / "service.token").write_text(token)
    env["CHATGPT_LOGIN_SERVICE_URL"] = f"http://127.0.0.1:{port}"
    stranger = listening_as_nobody(port, "print(c.recv(65536).decode(errors='replace'))")
    try:
        code, view, _ = cli(env, "status")
        assert code == 0 and view["service"] is None
    finally:
        stranger.kill()
        heard, _ = stranger.communicate(timeout=10)
    assert token not in heard
    done = subprocess.run([PYTHON, "-m", "service.cli", "status"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert token not in done.stdout + done.stderr


def test_the_owner_of_the_other_end_is_checked_after_connecting() -> None:
    """A listener can appear between the look at the port and the connection: the connected
    socket's other end is what is checked before the token is sent."""
    from skill.errors import SkillError  # noqa: PLC0415
    from skill.service_client import ours_or_refuse  # noqa: PLC0415

    port = free_port()
    stranger = listening_as_nobody(port, "time.sleep(5)")
    try:
        with (socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
              pytest.raises(SkillError) as refused):  # fmt: skip
            ours_or_refuse(sock)
        assert "is not this user's (uid 65534)" in refused.value.message
        with socket.socket() as ours:
            ours.bind(("127.0.0.1", 0))
            ours.listen()
            with socket.create_connection(ours.getsockname(), timeout=5) as sock:
                ours_or_refuse(sock)  # this user's: no complaint
    finally:
        stranger.kill()
        stranger.wait(10)


def test_a_reader_that_goes_away_gets_no_traceback(env: dict[str, str]) -> None:
    """`chatgpt-login status --json | head -c 10`: when the reader is gone, the command ends
    as a program killed by SIGPIPE would, saying nothing (it printed a traceback)."""
    import os  # noqa: PLC0415

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([PYTHON, "-m", "skill.cli", "status", "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, timeout=60,
                              check=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("args", [["start", "--method", "x"], ["bogus"], ["status", "--nope"]])
def test_a_wrong_command_line_with_json_is_answered_in_json(
    env: dict[str, str], args: list[str]
) -> None:
    code, answer, said = cli(env, *args)
    assert code == 2 and answer["ok"] is False and answer["error"] == "bad_usage", said
    assert answer["next"] == "report" and "--help" in answer["message"]
    plain = subprocess.run([PYTHON, "-m", "skill.cli", *args], capture_output=True, text=True,
                           env=env, cwd=REPO, timeout=60, check=False)  # fmt: skip
    assert plain.returncode == 2 and "usage:" in plain.stderr  # argparse's own, without --json


def test_main_answers_a_wrong_command_line_in_json_for_the_arguments_it_is_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What decides is the command line main() parses, not this process's own (pytest's)."""
    from skill.cli import main  # noqa: PLC0415

    with pytest.raises(SystemExit) as exited:
        main(["status", "--json", "--nope"])
    answer = json.loads(capsys.readouterr().out)
    assert exited.value.code == 2 and answer["error"] == "bad_usage"
    with pytest.raises(SystemExit) as exited:
        main(["status", "--nope"])
    assert exited.value.code == 2 and "usage:" in capsys.readouterr().err


def test_the_address_the_browser_took_to_the_program_itself_is_a_repeated_paste(
    env: dict[str, str], issuer: FakeIssuer
) -> None:
    """Outside a container the browser can reach the login program's listener: the user then
    pastes the same address anyway, and is told the sign-in's result, not "already signed in"
    (no code passed through us: the attempt's state tells its address)."""
    import urllib.request  # noqa: PLC0415

    _, started, _ = cli(env, "start")
    url = issuer.sign_in(started["auth_url"])
    # The link is out as soon as the program prints it; its listener may come up a moment later.
    wait_until(lambda: not port_is_free(started["redirect_port"]), 10, "the program's listener")
    with urllib.request.urlopen(url, timeout=30) as page:  # the login program, on loopback
        assert page.status == 200
    code, done, said = cli(env, "complete", "-", stdin=url)
    assert code in (0, 10) and done["status"] == "succeeded" and done["id"] == started["id"], said
    code, refused, _ = cli(env, "complete", "-", stdin=issuer.sign_in(started["auth_url"]).replace(
        "state=", "state=x"))  # fmt: skip
    assert (code, refused["error"]) == (2, "already_signed_in")


def test_start_for_another_method_replaces_the_live_sign_in_and_says_so(
    env: dict[str, str],
) -> None:
    """A user on a phone cannot copy the address: `start --method device` while a browser
    sign-in is live replaces it (it used to hand the browser one back, which has no code);
    a plain `start` still gives the live one back, whatever its method."""
    code, browser, _ = cli(env, "start")
    assert code == 0 and browser["method"] == "browser" and not browser["replaced"]
    code, device, said = cli(env, "start", "--method", "device")
    assert code == 0 and device["method"] == "device" and device["id"] != browser["id"], said
    assert device["replaced"] and not device["reused"]
    code, again, _ = cli(env, "start")
    assert (again["id"], again["method"], again["reused"]) == (device["id"], "device", True)
    human = subprocess.run([PYTHON, "-m", "skill.cli", "start", "--method", "browser"],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
                           check=False)  # fmt: skip
    assert "Replaced the device sign-in in progress (native)" in human.stdout, human.stderr
    cli(env, "cancel")


def test_an_attempt_that_ran_out_says_so_and_wait_speaks_of_the_browser(
    env: dict[str, str], issuer: FakeIssuer
) -> None:
    code, started, _ = cli(env, "start")
    url = issuer.sign_in(started["auth_url"])
    code, waited, _ = cli(env, "wait", "--timeout", "0.5")
    assert (code, waited["error"]) == (6, "approval_pending")
    assert "finished in the browser" in waited["message"] and "code" not in waited["message"]
    short = {**env, "CHATGPT_LOGIN_LOGIN_TIMEOUT": "3"}
    cli(short, "start", "--restart")
    time.sleep(3.5)
    code, ended, _ = cli(short, "complete", "-", stdin=url)
    assert (code, ended["error"], ended["next"]) == (6, "login_timeout", "start_again")
    assert "expired" in ended["message"]


def test_a_listener_held_busy_by_another_program_keeps_the_attempt(
    env: dict[str, str], issuer: FakeIssuer
) -> None:
    """Another program on the machine can hold the listener's few connections: the paste then
    cannot reach it, which is said as something to retry, not as a sign-in that ended."""
    _, started, _ = cli(env, "start")
    url = issuer.sign_in(started["auth_url"])
    port = started["redirect_port"]
    wait_until(lambda: not port_is_free(port), 10, "the program's listener")
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
    try:
        for each in held:
            each.sendall(b"G")  # a request begun, never ended: each holds its place
        time.sleep(0.3)
        code, busy, said = cli(env, "complete", "-", stdin=url)
        assert (code, busy["error"], busy["next"]) == (6, "program_timeout", "retry"), said
        assert "busy" in busy["message"]
    finally:
        for each in held:
            each.close()
    code, done, said = cli(env, "complete", "-", stdin=url)
    assert code in (0, 10) and done["status"] == "succeeded", said
