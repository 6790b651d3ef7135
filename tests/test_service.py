"""The operator API through Flask's test client, with real tmux, the fake issuer and the fake
secrets API; and one end-to-end run under real gunicorn."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.cli import _with_tunable
from service.openapi import ROUTES
from service.settings import ServiceSettings
from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.conftest import PYTHON, REPO, free_port, wait_until
from tests.fake_issuer import Account, FakeIssuer
from tests.fake_secrets import FakeSecretsAPI
from tests.loopback import status_of

OPERATOR = "operator-canary-51d0"


@pytest.fixture
def service_settings(runner_settings: Any, api: FakeSecretsAPI) -> ServiceSettings:
    return ServiceSettings(
        **runner_settings.model_dump(), secrets_api_url=api.url, secrets_api_token=api.token,
        secrets_timeout=0.5, secrets_attempts=2, secrets_deadline=2, operator_token=OPERATOR,
    )  # fmt: skip


@pytest.fixture
def app(service_settings: ServiceSettings) -> Flask:
    return create_app(service_settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def auth(token: str = OPERATOR) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_protected_operation_rejects_missing_and_wrong_tokens(client: FlaskClient) -> None:
    for method, path, *_ in ROUTES:
        url = path.replace("{login_id}", "x")
        if path in ("/healthz", "/readyz"):
            assert client.open(url, method=method.upper()).status_code in (200, 503)
            continue
        for headers in ({}, auth("wrong"), {"Authorization": OPERATOR}):
            response = client.open(url, method=method.upper(), headers=headers)
            assert response.status_code == 401, (method, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.json is not None and response.json["error"] == "unauthorized"


def test_the_local_token_works_and_is_0600(
    client: FlaskClient, service_settings: ServiceSettings
) -> None:
    token_file = service_settings.state_dir / "service.token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert client.get("/v1/credentials", headers=auth(token_file.read_text())).status_code == 200


def test_openapi_lists_exactly_the_served_routes(app: Flask, client: FlaskClient) -> None:
    document = client.get("/v1/openapi.json", headers=auth()).json
    assert document is not None and document["openapi"] == "3.1.0"
    served = {
        (method.lower(), rule.rule.replace("<login_id>", "{login_id}"))
        for rule in app.url_map.iter_rules() if rule.endpoint != "static"
        for method in rule.methods or () if method not in ("HEAD", "OPTIONS")
    }  # fmt: skip
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert served == documented


def test_sign_in_through_the_api_and_persist(
    client: FlaskClient, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    started = client.post(
        "/v1/logins", json={"method": "browser", "driver": "native"}, headers=auth()
    )
    assert started.status_code == 201 and started.json is not None
    login = started.json
    again = client.post("/v1/logins", json={}, headers=auth())
    assert again.status_code == 409 and again.json is not None and again.json["id"] == login["id"]
    assert client.get(f"/v1/logins/{login['id']}", headers=auth()).json["status"] == "waiting"  # type: ignore[index]
    callback = issuer.sign_in(login["auth_url"])
    wrong = callback.replace("state=", "state=x")  # refused; the sign-in goes on
    assert client.post(f"/v1/logins/{login['id']}/redirect", json={"url": wrong},
                       headers=auth()).status_code == 400  # fmt: skip
    done = client.post(f"/v1/logins/{login['id']}/redirect", json={"url": callback}, headers=auth())
    assert done.status_code == 200 and done.json is not None
    assert done.json["status"] == "succeeded" and done.json["persisted"] is True
    assert done.json["auth_url"] is None and started.json["note"] is None
    other = callback.replace("code=", "code=other")
    late = client.post(f"/v1/logins/{login['id']}/redirect", json={"url": other}, headers=auth())
    assert late.status_code >= 400  # the sign-in is over: not a refusal of its paste
    metrics = client.get("/metrics", headers=auth()).get_data(as_text=True)
    assert 'chatgpt_login_pastes_total{outcome="refused"} 1\n' in metrics
    assert 'chatgpt_login_logins_started_total{outcome="reused"} 1\n' in metrics
    stored = api.record["codex_credentials"]
    assert stored["accountId"] == "acct-1111"
    status = client.get("/v1/credentials", headers=auth())
    assert status.headers["Cache-Control"] == "no-store"
    view = status.json
    assert view is not None and view["status"] == "logged_in" and view["plan"] == "plus"
    assert view["persist_pending"] is False and view["last_persisted_at"]
    text = status.get_data(as_text=True)
    assert stored["access"] not in text and stored["refresh"] not in text
    anew = client.post("/v1/logins", json={}, headers=auth())
    assert anew.status_code == 201 and anew.json is not None
    assert "Already signed in on this machine as" in anew.json["note"]
    client.delete(f"/v1/logins/{anew.json['id']}", headers=auth())


def test_a_cli_login_is_completable_through_the_api(
    client: FlaskClient, issuer: FakeIssuer, service_settings: ServiceSettings
) -> None:
    from skill.runner import Runner  # noqa: PLC0415

    state, _ = Runner(service_settings).start()
    assert state.auth_url
    shown = client.get(f"/v1/logins/{state.id}", headers=auth()).json
    assert shown is not None and shown["auth_url"] == state.auth_url
    bad = client.post(
        f"/v1/logins/{state.id}/redirect", json={"url": state.auth_url}, headers=auth()
    )
    assert bad.status_code == 400 and bad.json is not None and bad.json["error"] == "bad_paste"
    assert state.auth_url not in bad.get_data(as_text=True)
    url = issuer.sign_in(state.auth_url)
    done = client.post(f"/v1/logins/{state.id}/redirect", json={"url": url}, headers=auth())
    assert done.json is not None and done.json["status"] == "succeeded"
    ended = client.delete(f"/v1/logins/{state.id}", headers=auth())  # nothing left to cancel
    assert ended.status_code == 409 and ended.json is not None
    assert ended.json["error"] == "login_ended" and "succeeded" in ended.json["message"]


def test_cancel_through_the_api(client: FlaskClient) -> None:
    login = client.post("/v1/logins", headers=auth()).json
    assert login is not None
    gone = client.delete(f"/v1/logins/{login['id']}", headers=auth())
    assert gone.status_code == 200 and gone.json is not None and gone.json["status"] == "canceled"
    again = client.delete(f"/v1/logins/{login['id']}", headers=auth())  # a retried cancel
    assert again.status_code == 200 and again.json == gone.json
    assert client.delete("/v1/logins/nope", headers=auth()).status_code == 404


def test_persist_pending_survives_a_fault_and_clears(
    client: FlaskClient, issuer: FakeIssuer, api: FakeSecretsAPI, service_settings: ServiceSettings
) -> None:
    from skill.authfiles import PiAuthFile  # noqa: PLC0415
    from skill.credentials import Credential  # noqa: PLC0415
    from skill.tokens import TokenSet  # noqa: PLC0415

    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    PiAuthFile(service_settings.pi_auth_file).save(credential)
    api.faults.extend(["status:503"] * 10)
    failed = client.post("/v1/credentials/persist", headers=auth())
    assert failed.status_code == 503 and failed.json is not None
    assert failed.json["error"] == "secrets_unreachable"
    assert client.get("/v1/credentials", headers=auth()).json["persist_pending"] is True  # type: ignore[index]
    assert service_settings.pi_auth_file.exists()
    api.faults.clear()
    assert client.post("/v1/credentials/persist", headers=auth()).status_code == 200
    assert client.post("/v1/credentials/persist", headers=auth()).status_code == 200  # idempotent
    assert client.get("/v1/credentials", headers=auth()).json["persist_pending"] is False  # type: ignore[index]
    metrics = client.get("/metrics", headers=auth()).get_data(as_text=True)
    assert 'chatgpt_login_persists_total{outcome="ok"} 2' in metrics
    assert 'chatgpt_login_persists_total{outcome="failed"} 1' in metrics
    # As Prometheus reads it: every family typed, counters and a summary with _sum and _count.
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert families["chatgpt_login_persists"].type == "counter"
    assert {
        (s.name, s.labels["outcome"], s.value) for s in families["chatgpt_login_persists"].samples
    } == {("chatgpt_login_persists_total", "ok", 2), ("chatgpt_login_persists_total", "failed", 1)}
    summary = families["chatgpt_login_secrets_api_seconds"]
    assert summary.type == "summary" and summary.documentation
    assert {s.name for s in summary.samples} == {
        "chatgpt_login_secrets_api_seconds_sum",
        "chatgpt_login_secrets_api_seconds_count",
    }
    assert all(f.type in ("counter", "summary") for f in families.values())


def test_restore_and_logout(client: FlaskClient, issuer: FakeIssuer, api: FakeSecretsAPI,
                            service_settings: ServiceSettings) -> None:  # fmt: skip
    from skill.credentials import Credential  # noqa: PLC0415
    from skill.tokens import TokenSet  # noqa: PLC0415

    seeded = issuer.seed_refresh_token()
    api.record["codex_credentials"] = Credential.from_tokens(
        TokenSet.model_validate(seeded)
    ).to_pi_entry()
    restored = client.post("/v1/credentials/restore", headers=auth()).json
    assert restored is not None and restored["action"] == "restored"
    assert service_settings.pi_auth_file.exists()
    out = client.delete("/v1/credentials", headers=auth()).json
    assert out is not None and "revoked" in out["message"]
    assert out["stored"] == "tombstoned" and out["revoked"] is True
    assert out["removed"] == [str(service_settings.pi_auth_file)]
    assert "codex_credentials" not in api.record  # the entry is null (PATCH null deletes it)
    assert api.record["codex_credentials_tombstone"]["accountId"] == "acct-1111"
    assert issuer.revoked == [seeded["refresh_token"]]
    assert client.get("/v1/credentials", headers=auth()).json["status"] == "logged_out"  # type: ignore[index]
    again = client.post("/v1/credentials/restore", headers=auth()).json
    assert again is not None and again["action"] == "logged_out"
    assert (
        not service_settings.pi_auth_file.exists()
        or PiAuthFile(service_settings.pi_auth_file).load() is None
    ), "a restore after a logout brings nothing back"


def test_bad_bodies(client: FlaskClient) -> None:
    huge = client.post("/v1/logins", data=b"{" + b" " * 70000 + b"}", headers={**auth(),
                       "Content-Type": "application/json"})  # fmt: skip
    assert (
        huge.status_code == 413
        and huge.json is not None
        and huge.json["error"] == "payload_too_large"
    )
    text = client.post("/v1/logins", data="x", headers={**auth(), "Content-Type": "text/plain"})
    assert text.status_code == 415
    unknown = client.post(
        "/v1/logins", json={"method": "browser", "secret": "s3cr3t-canary"}, headers=auth()
    )
    assert unknown.status_code == 400 and unknown.json is not None
    assert unknown.json["error"] == "invalid_request" and "s3cr3t-canary" not in unknown.get_data(
        as_text=True
    )
    assert client.get("/nope", headers=auth()).status_code == 404


def test_readyz_reports_an_unreachable_store(client: FlaskClient, api: FakeSecretsAPI) -> None:
    api.faults.extend(["status:503"] * 10)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json is not None
    assert ready.json["checks"]["secrets_store"].startswith("secrets_unreachable, checked")


def test_readyz_reports_the_keepalives_failed_read_without_asking_the_store(
    app: Flask, client: FlaskClient, api: FakeSecretsAPI
) -> None:
    """A failing store is exactly when a flood of /readyz must not add reads of its own: the
    keep-alive's last look, answered or not, is the answer."""
    api.faults.extend(["status:503"] * 10)
    with app.app_context():
        from service.context import context  # noqa: PLC0415 - needs the app context
        from service.errors import ServiceError  # noqa: PLC0415

        with pytest.raises(ServiceError):
            context().persistence().pull()
    reads = api.requests.count("GET")
    for _ in range(5):
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json is not None
        check = ready.json["checks"]["secrets_store"]
        assert check.startswith("secrets_unreachable, tried") and "by the keep-alive" in check
    assert api.requests.count("GET") == reads


def test_persist_without_a_credential_says_to_sign_in(client: FlaskClient) -> None:
    answer = client.post("/v1/credentials/persist", headers=auth())
    assert answer.status_code == 409 and answer.json is not None
    assert (answer.json["error"], answer.json["next"]) == ("credentials_missing", "start_again")


def test_serve_adds_its_malloc_tunable_and_keeps_the_users() -> None:
    tcache = "glibc.malloc.tcache_count"
    assert _with_tunable("", tcache, "0") == "glibc.malloc.tcache_count=0"
    assert _with_tunable("glibc.malloc.arena_max=2", tcache, "0") == (
        "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"
    )
    given = "glibc.malloc.tcache_count=7:glibc.malloc.arena_max=2"
    assert _with_tunable(given, tcache, "0") == given


def test_end_to_end_under_gunicorn(
    login_env: dict[str, str], issuer: FakeIssuer, api: FakeSecretsAPI, state_dir: Path
) -> None:
    """serve + start + complete over the real CLI: signed in and persisted; SIGTERM stops it.
    The commands are not told where the service is: `serve` left its address in the state
    directory, and a port other than the default proves they read it."""
    port = free_port()
    env = {**login_env, "CHATGPT_LOGIN_STATE_DIR": str(state_dir),
           "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
           "CHATGPT_LOGIN_SECRETS_DIR": str(state_dir / "no-secrets")}  # fmt: skip
    env.pop("CHATGPT_LOGIN_SERVICE_URL", None)
    server = subprocess.Popen([PYTHON, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}"],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    try:
        wait_until(
            lambda: status_of(f"http://127.0.0.1:{port}/healthz", timeout=1) == 200,
            20,
            "gunicorn up",
        )
        cli = [PYTHON, "-m", "service.cli"]
        started = json.loads(subprocess.run([*cli, "start", "--json"], env=env, cwd=REPO,
                             capture_output=True, text=True, check=True).stdout)  # fmt: skip
        callback = issuer.sign_in(started["auth_url"])
        done = subprocess.run([*cli, "complete", "-", "--json"], input=callback, env=env,
                              cwd=REPO, capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["persisted"] is True
        assert api.record["codex_credentials"]["accountId"] == "acct-1111"
        url_file = state_dir / "service.url"
        assert url_file.read_text() == f"http://127.0.0.1:{port}"
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        # serve became gunicorn: -OO where that bytecode is (scripts/install and the image
        # compile it), no column positions, one malloc arena and no per-thread malloc cache
        # (BENCHMARKS.md, "In the container").
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        flask = importlib.util.find_spec("flask")
        sources = [logging.__file__, flask and flask.origin, str(REPO / "service" / "app.py")]
        compiled = [importlib.util.cache_from_source(str(each), optimization=2) for each in sources]
        assert (b"-OO" in argv) == all(map(os.path.exists, compiled)) and b"gunicorn" in argv
        assert b"no_debug_ranges" in argv
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"MALLOC_ARENA_MAX=1" in environ
        assert b"GLIBC_TUNABLES=glibc.malloc.tcache_count=0" in environ

        # A second service on this state directory (another port), and one on this port
        # (another state directory): each refused in one line, the running one untouched.
        token = (state_dir / "service.token").read_bytes()
        other = {**env, "CHATGPT_LOGIN_STATE_DIR": str(state_dir.parent / "other-state")}
        for what, env_of, bind in (("already runs with the state directory", env, free_port()),
                                   (f"127.0.0.1:{port} is in use", other, port)):  # fmt: skip
            second = subprocess.run([*cli, "serve", "--bind", f"127.0.0.1:{bind}"], env=env_of,
                                    cwd=REPO, capture_output=True, text=True, check=False,
                                    timeout=30)  # fmt: skip
            assert second.returncode == 2 and what in second.stderr, second.stderr
            assert second.stderr.count("\n") == 1 and not second.stdout, second.stderr
        assert (state_dir / "service.token").read_bytes() == token
        assert (state_dir / "service.url").read_text() == f"http://127.0.0.1:{port}"
        status = subprocess.run([*cli, "refresh", "--json"], env=env, cwd=REPO,
                                capture_output=True, text=True, check=False)  # fmt: skip
        assert json.loads(status.stdout)["ok"] is True, status.stdout
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # no token needed
            raw.sendall(b"GET /x%0aFORGED%20line%1b[2J HTTP/1.1\r\nHost: x\r\n"
                        b"Connection: close\r\n\r\n")  # fmt: skip
            raw.recv(4096)
    finally:
        server.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        out, _ = server.communicate(timeout=15)
    assert time.monotonic() - stopped < 10
    assert api.token not in out
    assert "code=" not in out and "state=" not in out  # the access log has no query strings
    assert "\nFORGED" not in out and "\x1b" not in out  # a path cannot forge a line
    assert '"GET /x\\x0aFORGED line\\x1b[2J" 401' in out, out[-2000:]


def test_a_device_sign_in_started_through_the_api_ends_by_itself(
    login_env: dict[str, str], issuer: FakeIssuer, api: FakeSecretsAPI, state_dir: Path
) -> None:
    """POST /v1/logins (device), the user approves, and nobody calls anything: the service's
    keep-alive sees the program succeed, the attempt says succeeded in login.json (read here
    directly, not through the API, which would settle it itself) and the credential reaches
    the store."""
    from skill.attempt import AttemptFile  # noqa: PLC0415

    port = free_port()
    token = "an-operator-token-for-this-test-0123"
    env = {**login_env, "CHATGPT_LOGIN_STATE_DIR": str(state_dir),
           "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
           "CHATGPT_LOGIN_SECRETS_DIR": str(state_dir / "no-secrets"),
           "CHATGPT_LOGIN_OPERATOR_TOKEN": token}  # fmt: skip
    server = subprocess.Popen([PYTHON, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    base, auth_header = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        wait_until(lambda: status_of(f"{base}/healthz", timeout=1) == 200, 20, "gunicorn up")
        headers = {**auth_header, "Content-Type": "application/json"}
        request = urllib.request.Request(f"{base}/v1/logins", method="POST",
                                         data=b'{"method": "device"}', headers=headers)  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as answer:
            login = json.load(answer)
        issuer.approve_device(login["user_code"])
        approved = time.monotonic()
        states = AttemptFile(state_dir)
        wait_until(lambda: getattr(states.load(), "status", None) == "succeeded", 15,
                   "the attempt to end by itself")  # fmt: skip
        took = time.monotonic() - approved
        wait_until(lambda: "codex_credentials" in api.record, 10, "the credential in the store")
        print(f"approval to succeeded, nobody waiting: {took:.2f} s")
        request = urllib.request.Request(f"{base}/v1/logins/{login['id']}", headers=auth_header)
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert json.load(answer)["status"] == "succeeded"

        def metrics() -> str:
            request = urllib.request.Request(f"{base}/metrics", headers=auth_header)
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.read().decode()

        # Counted from the journal by the keep-alive's next tick, whoever ended the sign-in.
        ended = 'chatgpt_login_logins_completed_total{outcome="succeeded"} 1\n'
        wait_until(lambda: ended in metrics(), 5, "the ended sign-in counted")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)


def test_service_settings_read_compose_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "fat_tools_token").write_text("tok-from-file-0123456789\n")
    (secrets / "operator_token").write_text("op-from-file-0123456789")
    settings = ServiceSettings.from_env(
        {"CHATGPT_LOGIN_SECRETS_DIR": str(secrets), "HOME": str(tmp_path)}
    )
    assert (
        settings.secrets_api_token == "tok-from-file-0123456789"
        and settings.operator_token == "op-from-file-0123456789"
    )
    assert settings.secrets_api_url == "https://tinyfat.com/api/agent/secrets"
    assert "tok-from-file" not in repr(settings) and "op-from-file" not in repr(settings)
    plain = ServiceSettings.from_env(
        {"CHATGPT_LOGIN_SECRETS_DIR": str(tmp_path / "none"), "HOME": str(tmp_path)}
    )
    assert not plain.uses_secrets_api and plain.secrets_file == plain.state_dir / "secrets.json"
    assert os.environ.get("FAT_TOOLS_TOKEN") != "tok-from-file-0123456789"


FAULTS = ["delay", "reset", "truncated", "malformed", "not_ok", "status:500", "status:503",
          "retry_after:0.2", "status:401", "status:403"]  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_matrix_for_persist(
    client: FlaskClient, issuer: FakeIssuer, api: FakeSecretsAPI,
    service_settings: ServiceSettings, fault: str,
) -> None:  # fmt: skip
    """Each fault, lasting: a bounded answer, the local credential untouched, and once the fault
    clears the pending persist reaches the store."""
    from skill.authfiles import PiAuthFile  # noqa: PLC0415
    from skill.credentials import Credential  # noqa: PLC0415
    from skill.tokens import TokenSet  # noqa: PLC0415

    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    PiAuthFile(service_settings.pi_auth_file).save(credential)
    before = service_settings.pi_auth_file.read_bytes(), service_settings.pi_auth_file.stat()
    api.delay = 1.0  # past the client's 0.5 s timeout
    api.faults.extend([fault] * 10)
    started = time.monotonic()
    answer = client.post("/v1/credentials/persist", headers=auth())
    assert time.monotonic() - started < 6  # secrets_deadline is 2 s; one slow try may overrun
    assert answer.status_code in (502, 503) and answer.json is not None
    assert api.token not in answer.get_data(as_text=True)
    after = service_settings.pi_auth_file.read_bytes(), service_settings.pi_auth_file.stat()
    assert after[0] == before[0] and after[1].st_mtime_ns == before[1].st_mtime_ns
    assert client.get("/v1/credentials", headers=auth()).json["persist_pending"] is True  # type: ignore[index]
    api.faults.clear()
    assert client.post("/v1/credentials/persist", headers=auth()).status_code == 200
    assert api.record["codex_credentials"]["refresh"] == credential.refresh_token


def test_status_follows_every_change_of_the_files_at_once(
    client: FlaskClient, service_settings: ServiceSettings, issuer: FakeIssuer
) -> None:
    """The status view is cached per worker, keyed on the two files it reads: each rewrite,
    even right after a request, shows in the next answer."""
    pi = PiAuthFile(service_settings.pi_auth_file)
    assert client.get("/v1/credentials", headers=auth()).json["status"] == "not_logged_in"
    for account in ("acct-aaaa", "acct-bbbb", "acct-cccc"):
        tokens = issuer.seed_refresh_token(Account(account_id=account))
        pi.save(Credential.from_tokens(TokenSet.model_validate(tokens)))
        answer = client.get("/v1/credentials", headers=auth()).json
        assert answer["status"] == "logged_in" and answer["account_id"] == account
    with pi.lock:
        pi.path.unlink()
    assert client.get("/v1/credentials", headers=auth()).json["status"] == "not_logged_in"


@contextmanager
def held_by_clients(
    login_env: dict[str, str], state_dir: Path, count: int, sent: bytes
) -> Iterator[int]:
    """The service (its port) with ``count`` connections that sent ``sent`` and then neither
    send more nor close."""
    import socket  # noqa: PLC0415

    port = free_port()
    env = {**login_env, "CHATGPT_LOGIN_STATE_DIR": str(state_dir),
           "CHATGPT_LOGIN_OPERATOR_TOKEN": OPERATOR,
           "CHATGPT_LOGIN_SECRETS_DIR": str(state_dir / "no-secrets")}  # fmt: skip
    server = subprocess.Popen([PYTHON, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    held = []
    try:
        wait_until(lambda: status_of(f"http://127.0.0.1:{port}/healthz", timeout=1) == 200, 20,
                   "gunicorn up")  # fmt: skip
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(sent)
            held.append(sock)
        time.sleep(0.5)
        yield port
    finally:
        for sock in held:
            sock.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def test_clients_that_never_finish_a_request_do_not_hold_the_service(
    login_env: dict[str, str], state_dir: Path
) -> None:
    """Thirty-two connections that send half a request and stop (four times the service's
    threads): before, every request after them waited for as long as they stayed (here: past
    30 s); now each is dropped after 2 s of silence and the operator's request is answered."""
    with held_by_clients(login_env, state_dir, 32, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") as port:
        started = time.monotonic()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/credentials",
                                         headers=auth())  # fmt: skip
        assert status_of(request, timeout=30) == 200
        took = time.monotonic() - started
        assert took < 20, f"{took:.1f} s"


def test_clients_that_never_close_do_not_freeze_the_service(
    login_env: dict[str, str], state_dir: Path
) -> None:
    """Ten clients that send a whole request and then keep their socket open: gunicorn 27's
    graceful close waited 2 s for each on the worker's main loop, so the next request waited
    about 20 s; now a close drains what was sent without waiting, and it is answered at once."""
    whole = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with held_by_clients(login_env, state_dir, 10, whole) as port:
        started = time.monotonic()
        assert status_of(f"http://127.0.0.1:{port}/healthz", timeout=30) == 200
        took = time.monotonic() - started
        print(f"GET /healthz after 10 clients that never close: {took:.2f} s")
        assert took < 5, f"{took:.1f} s"


@pytest.mark.parametrize(
    "command", [["serve", "--bind", "127.0.0.1:9"], ["start"], ["status"], ["restore"]]
)
def test_every_command_refuses_a_state_directory_of_another_user(
    login_env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    """Its owner could plant what the commands and the service trust there (the attempt, the
    journal, the hook's records); root (the tests run as root) used to take it over."""
    state = tmp_path / "theirs"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)  # nobody's
    done = subprocess.run([PYTHON, "-m", "service.cli", *command], env={**login_env,
                          "CHATGPT_LOGIN_STATE_DIR": str(state)}, cwd=REPO, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 2 and "belongs to another user" in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert list(state.iterdir()) == []  # nothing written into it
