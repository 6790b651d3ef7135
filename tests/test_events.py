"""The event stream (``GET /v1/events``), its journal, ``chatgpt-login events`` and the
on-change hook, against the real service under gunicorn, the fake issuer and the fake
secrets API."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.hook import HOOKED, QUEUE_LIMIT, TERM_GRACE, OnChangeHook
from service.metrics import Metrics
from service.settings import ServiceSettings
from skill import statedir
from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.events import Event, emit, since
from skill.tokens import TokenSet
from tests.conftest import PYTHON, REPO, SWEEP, free_port, wait_until
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI
from tests.loopback import status_of

TOKEN = "events-operator-token-0123456789"
# The hook: one JSON line per run, with the event it read and the names in its environment.
HOOK = (
    "import json, os, sys; event = json.load(sys.stdin); "
    "open(sys.argv[1], 'a').write(json.dumps({'event': event, 'env': sorted(os.environ)}) + '\\n')"
)


@pytest.fixture
def service(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI
) -> Iterator[dict[str, Any]]:
    """The service under gunicorn with two workers: the journal makes their streams one."""
    yield from serving(tmp_path, login_env, api, workers=2)


@pytest.fixture
def one_worker(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI
) -> Iterator[dict[str, Any]]:
    """The service as ``serve`` runs it by default: one worker, whose stream cap is the cap."""
    yield from serving(tmp_path, login_env, api, workers=1)


def service_env(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI, **more_env: str
) -> dict[str, str]:
    hook_out = tmp_path / "hook.jsonl"
    env = {**login_env, "CHATGPT_LOGIN_STATE_DIR": str(tmp_path / "state"),
           "CHATGPT_LOGIN_SECRETS_DIR": str(tmp_path / "no-secrets"),
           "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
           "CHATGPT_LOGIN_OPERATOR_TOKEN": TOKEN,
           "CHATGPT_LOGIN_ON_CHANGE": f"{sys.executable} -c \"{HOOK}\" {hook_out}",
           "CHATGPT_LOGIN_ON_CHANGE_TIMEOUT": "5",
           "CHATGPT_LOGIN_EVENTS_HEARTBEAT": "0.5", **more_env}  # fmt: skip
    return env


def serving(
    tmp_path: Path,
    login_env: dict[str, str],
    api: FakeSecretsAPI,
    workers: int,
    **more_env: str,
) -> Iterator[dict[str, Any]]:
    port = free_port()
    hook_out = tmp_path / "hook.jsonl"
    env = service_env(tmp_path, login_env, api, **more_env)
    server = subprocess.Popen(
        [PYTHON, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers)], env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status_of(f"{base}/readyz") == 200, 30, "the service")
        yield {"env": env, "base": base, "port": port, "pid": server.pid, "hook_out": hook_out,
               "server": server}  # fmt: skip
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)
        # A sign-in a test started and left waiting: its login program and tmux server go too.
        socket_path = str(Path(env["CHATGPT_LOGIN_STATE_DIR"]) / statedir.TMUX_SOCKET)
        subprocess.run(["tmux", "-S", socket_path, "kill-server"],
                       capture_output=True, check=False)  # fmt: skip


class Follower:
    """A client of ``GET /v1/events``, reading in a thread of its own until closed."""

    def __init__(self, port: int, after: int = 0) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", "/v1/events", headers={
            "Authorization": f"Bearer {TOKEN}", "Last-Event-ID": str(after)})  # fmt: skip
        self.sock = self.connection.sock  # the response keeps it open after the connection lets go
        self.answer = self.connection.getresponse()
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        if self.answer.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while line := self.answer.readline():
                text = line.decode()
                self.raw.append(text)
                if text.startswith("data: "):
                    self.events.append(json.loads(text[6:]))
        except (OSError, ValueError, AttributeError):  # closed under it
            pass

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def close(self) -> None:
        """Hang up for real: the service sees the connection end (closing the connection alone
        leaves the socket open while the response holds it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()
        SWEEP.add("event stream", f"GET /v1/events on port {self.connection.port}",
                  "".join(self.raw))  # fmt: skip


def api(service: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{service['base']}{path}", method=method, data=(
        b"{}" if method == "POST" else None), headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as answer:
        found = json.load(answer)
    assert isinstance(found, dict)
    return found


def api_text(service: dict[str, Any], path: str) -> str:
    request = urllib.request.Request(f"{service['base']}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as answer:
        return str(answer.read().decode())


def cli(service: dict[str, Any], *args: str, stdin: str = "") -> dict[str, Any]:
    done = subprocess.run([PYTHON, "-m", "service.cli", *args, "--json"], env=service["env"],
                          cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    found = json.loads(done.stdout)
    assert isinstance(found, dict)
    return found


def test_a_follower_sees_sign_in_refresh_and_logout_in_order_once_each(
    service: dict[str, Any], issuer: FakeIssuer
) -> None:
    follower = Follower(service["port"])
    try:
        started = cli(service, "start")
        done = cli(service, "complete", "-", stdin=issuer.sign_in(started["auth_url"]))
        assert done["status"] == "succeeded" and done["persisted"] is True
        assert api(service, "POST", "/v1/credentials/refresh")["action"] == "refreshed"
        api(service, "DELETE", "/v1/credentials")
        wait_until(lambda: "credential.logged_out" in follower.types(), 15, "the logout event")
        time.sleep(1)  # anything that would come twice
    finally:
        follower.close()
    ids = [event["id"] for event in follower.events]
    assert ids == sorted(set(ids)), ids  # in order, none twice
    # In the order the test's own steps make them happen (each emitted before the step that
    # causes the next returns).
    wanted = [("login.started", {}), ("login.completed", {"ok": {True}}),
              ("credential.updated", {"why": {"sign-in"}}),
              ("credential.updated", {"why": {"refresh"}}),
              ("credential.logged_out", {"by": {"this holder"}})]  # fmt: skip
    seen = [(e["type"], e["body"]) for e in follower.events]
    it = iter(follower.events)
    for kind, body in wanted:  # an ordered subsequence of what came
        assert any(
            e["type"] == kind and all(e["body"].get(key) in ok for key, ok in body.items())
            for e in it
        ), (kind, seen)
    # The sign-in reaches the store by complete's persist ("sign-in") or, when the keep-alive's
    # sync-back sees the new file first, by that ("sync"): then even before login.completed,
    # since the login program writes the file before the runner ends the attempt.
    assert any(kind == "credential.persisted" and body.get("reason") in ("sign-in", "sync")
               for kind, body in seen), seen  # fmt: skip
    assert follower.types().count("login.completed") == 1
    stream = "".join(follower.raw)
    for secret in [*issuer.refresh_tokens, *issuer.used_refresh_tokens, *issuer.issued_access]:
        assert secret not in stream
    # The hook ran once per credential event, with none of the service's environment.
    changes = [e for e in follower.events if e["type"] in HOOKED]  # not persisted

    def hooked() -> int:
        out = service["hook_out"]
        return len(out.read_text().splitlines()) if out.exists() else 0

    wait_until(lambda: hooked() >= len(changes), 15, "the hook runs")
    SWEEP.add("hook stdin", "what the on-change hook read", service["hook_out"].read_text())
    runs = [json.loads(line) for line in service["hook_out"].read_text().splitlines()]
    assert [run["event"]["id"] for run in runs] == [e["id"] for e in changes]
    assert all(set(run["env"]) <= {"PATH", "HOME", "LANG", "CHATGPT_LOGIN_STATE_DIR"}
               for run in runs)  # fmt: skip
    assert not any(secret in service["hook_out"].read_text() for secret in
                   [*issuer.used_refresh_tokens, *issuer.issued_access, TOKEN])  # fmt: skip


def test_resuming_with_last_event_id_after_a_worker_restart_loses_none(
    service: dict[str, Any],
) -> None:
    api(service, "POST", "/v1/logins")
    first = Follower(service["port"])
    wait_until(lambda: "login.started" in first.types(), 10, "the first event")
    seen = first.events[-1]["id"]
    first.close()
    worker = int(Path(f"/proc/{service['pid']}/task/{service['pid']}/children").read_text()
                 .split()[0])  # fmt: skip
    os.kill(worker, signal.SIGKILL)  # gunicorn's master starts another
    wait_until(lambda: status_of(f"{service['base']}/healthz") == 200, 20, "a new worker")
    login = cli(service, "status")["login"]
    api(service, "DELETE", f"/v1/logins/{login['id']}")
    api(service, "POST", "/v1/logins")
    again = Follower(service["port"], after=seen)
    try:
        wait_until(lambda: again.types()[-1:] == ["login.started"], 10, "the missed events")
    finally:
        again.close()
    assert again.types() == ["login.canceled", "login.started"]
    assert [e["id"] for e in again.events] == [seen + 1, seen + 2]


def test_fifty_idle_streams_leave_the_api_answering_and_more_are_refused(
    one_worker: dict[str, Any],
) -> None:
    service = one_worker

    def latencies() -> list[float]:
        """GET /v1/credentials from 8 clients at once, 25 each: each request's seconds."""

        def one() -> float:
            started = time.monotonic()
            assert api(service, "GET", "/v1/credentials")["status"] == "not_logged_in"
            return time.monotonic() - started

        with ThreadPoolExecutor(max_workers=8) as pool:
            return sorted(pool.map(lambda _: one(), range(200)))

    before = latencies()
    streams = [Follower(service["port"]) for _ in range(50)]
    try:
        assert [s.answer.status for s in streams] == [200] * 50
        extra = Follower(service["port"])
        assert extra.answer.status == 503 and extra.answer.getheader("Retry-After") == "2"
        assert json.loads(extra.answer.read())["error"] == "too_many_streams"
        extra.close()
        during = latencies()  # every one answered, none waiting for a thread a stream holds
        p99 = (before[int(0.99 * len(before))], during[int(0.99 * len(during))])
        print(f"API p99 without streams {p99[0] * 1000:.1f} ms, with 50: {p99[1] * 1000:.1f} ms")
        # Not a speed test (scripts/bench_events.py measures): a starved API waits seconds.
        assert p99[1] < 3 * p99[0] + 0.5
        wait_until(lambda: all("heartbeat" in "".join(s.raw) for s in streams), 10,
                   "a heartbeat on every stream")  # all 50 still served  # fmt: skip
        streams.pop().close()  # the service notices at its next write (a heartbeat at most)

        def a_stream_opens() -> bool:
            attempt = Follower(service["port"])
            attempt.close()
            return attempt.answer.status == 200

        wait_until(a_stream_opens, 20, "a freed stream")
    finally:
        for stream in streams:
            stream.close()


def test_a_stream_whose_client_hung_up_gives_its_slot_back_within_seconds(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI
) -> None:
    """With heartbeats 30 s apart, a failed write would free the slot only then; the stream
    looks at its client every second."""
    with contextmanager(serving)(tmp_path, login_env, api, workers=1,
                                 CHATGPT_LOGIN_EVENTS_HEARTBEAT="30") as service:  # fmt: skip
        streams = [Follower(service["port"]) for _ in range(50)]
        try:
            assert [s.answer.status for s in streams] == [200] * 50
            streams.pop().close()
            started = time.monotonic()

            def a_stream_opens() -> bool:
                attempt = Follower(service["port"])
                attempt.close()
                return attempt.answer.status == 200

            wait_until(a_stream_opens, 10, "the freed slot")
            took = time.monotonic() - started
            print(f"slot back {took:.2f} s after its client hung up")
            assert took < 5, took
        finally:
            for stream in streams:
                stream.close()


def test_an_open_stream_does_not_hold_up_a_stop(one_worker: dict[str, Any]) -> None:
    """gunicorn waits for its requests up to its graceful timeout (8 s); a stream ends when
    its worker is told to stop, so the service stops at once."""
    follower = Follower(one_worker["port"])
    assert follower.answer.status == 200
    started = time.monotonic()
    os.killpg(one_worker["pid"], signal.SIGTERM)
    one_worker["server"].wait(20)
    took = time.monotonic() - started
    print(f"stopped in {took:.2f} s with a stream open")
    assert took < 5, took
    follower.close()


def test_events_without_a_token_are_refused(service: dict[str, Any]) -> None:
    assert status_of(f"{service['base']}/v1/events") == 401


def test_the_cli_follows_the_stream(service: dict[str, Any]) -> None:
    follower = subprocess.Popen([PYTHON, "-m", "service.cli", "events", "--json"],
                                env=service["env"], cwd=REPO, stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
    try:
        api(service, "POST", "/v1/logins")
        assert follower.stdout is not None
        event = json.loads(follower.stdout.readline())
        assert event["type"] == "login.started" and event["body"]["method"] == "browser"
    finally:
        follower.kill()
        follower.wait(10)


def test_the_cli_follows_through_a_restart_of_the_service(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI
) -> None:
    """`chatgpt-login events` reconnects from the last event it saw, as an EventSource does:
    what happened while the service was down comes when it is back, nothing twice."""
    state = tmp_path / "state"
    with contextlib.ExitStack() as cleanup:
        with contextmanager(serving)(tmp_path, login_env, api, workers=1) as first:
            follower = subprocess.Popen([PYTHON, "-m", "service.cli", "events", "--json"],
                                        env=first["env"], cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)  # fmt: skip
            cleanup.callback(follower.wait, 10)
            cleanup.callback(follower.kill)  # whatever happens below (callbacks run last first)
            assert follower.stdout is not None and follower.stderr is not None
            time.sleep(1)  # connected
            emit(state, "login.canceled", login_id="before")
            assert json.loads(follower.stdout.readline())["body"]["login_id"] == "before"
        emit(state, "login.canceled", login_id="while down")
        gap = follower.stderr.readline()
        assert "reconnecting from event 1" in gap, gap
        with contextmanager(serving)(tmp_path, login_env, api, workers=1):
            came = json.loads(follower.stdout.readline())
            assert (came["id"], came["body"]["login_id"]) == (2, "while down")
            emit(state, "login.canceled", login_id="after")
            assert json.loads(follower.stdout.readline())["id"] == 3
        assert follower.poll() is None  # still following, through both restarts


def test_the_cli_says_when_no_service_answers(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI
) -> None:
    env = {**service_env(tmp_path, login_env, api),
           "CHATGPT_LOGIN_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "service.token").write_text("x" * 43)
    done = subprocess.run([PYTHON, "-m", "service.cli", "events", "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    error = json.loads(done.stdout)
    assert done.returncode == 4 and error["error"] == "service_unavailable", done
    assert "chatgpt-login serve" in error["message"]


def test_a_hook_that_hangs_is_killed_at_its_timeout_without_holding_anyone(
    tmp_path: Path,
) -> None:
    settings = ServiceSettings(state_dir=tmp_path, on_change="sleep 30", on_change_timeout=0.5)
    hook = OnChangeHook(settings, Metrics(tmp_path / "metrics.json"))
    event = Event(1, "credential.updated", "2026-11-30T00:00:00.000Z", {"why": "refresh"})
    started = time.monotonic()
    hook(event)  # queued: returns at once
    assert time.monotonic() - started < 0.2
    started = time.monotonic()
    assert hook.run(event) == "timeout"
    assert time.monotonic() - started < 3
    wait_until(lambda: 'outcome="timeout"} 2' in Metrics(tmp_path / "metrics.json").render(), 5,
               "both runs counted")  # fmt: skip


def test_heads_give_their_stream_slot_back(service: dict[str, Any]) -> None:
    """A HEAD's body is never read: its slot must come back all the same."""
    for _ in range(6):
        connection = http.client.HTTPConnection("127.0.0.1", service["port"], timeout=10)
        connection.request("HEAD", "/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
        assert connection.getresponse().status == 200
        connection.close()
    follower = Follower(service["port"])
    assert follower.answer.status == 200
    follower.close()


def test_a_journal_line_of_another_shape_never_reaches_the_stream(
    service: dict[str, Any],
) -> None:
    """The type goes on an SSE line as it is: a line in the journal whose type holds a newline
    (written by anyone who can write the state directory) is not an event."""
    journal = Path(service["env"]["CHATGPT_LOGIN_STATE_DIR"]) / "events.jsonl"
    forged = {"id": 1, "type": 'x.y\ndata: {"forged": true}\nid: 5000', "at": "now", "body": {}}
    with journal.open("a") as file:
        file.write(json.dumps(forged) + "\n")
    api(service, "POST", "/v1/logins")
    follower = Follower(service["port"])
    try:
        wait_until(lambda: "login.started" in follower.types(), 10, "the real event")
    finally:
        follower.close()
    assert "forged" not in "".join(follower.raw) and "5000" not in "".join(follower.raw)


def test_a_new_leader_hooks_what_came_while_there_was_none(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI
) -> None:
    """A change written while no keep-alive leads (the service restarting, its worker replaced)
    is hooked by the next leader, and what the last one hooked is not hooked again."""
    state, hook_out = tmp_path / "state", tmp_path / "hook.jsonl"

    def hooked() -> list[str]:
        lines = hook_out.read_text().splitlines() if hook_out.exists() else []
        return [json.loads(line)["event"]["body"]["why"] for line in lines]

    with contextmanager(serving)(tmp_path, login_env, api, workers=1):
        emit(state, "credential.updated", why="refresh")
        wait_until(lambda: hooked() == ["refresh"], 15, "the first hook run")
        # Recorded once the run is over (a run cut short by a stop is hooked again).
        wait_until(lambda: (state / "hooked.id").read_text() == "1", 5, "the run recorded")
    emit(state, "credential.updated", why="adopted")  # nobody leads: the service is down
    with contextmanager(serving)(tmp_path, login_env, api, workers=1):
        wait_until(lambda: len(hooked()) >= 2, 15, "the change made while down, hooked")
        time.sleep(1.5)  # three keep-alive ticks: anything hooked twice would show
    assert hooked() == ["refresh", "adopted"]
    assert (state / "hooked.id").stat().st_mode & 0o777 == 0o600


def test_a_hook_runs_once_per_change_and_one_that_hangs_never_delays_a_refresh(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI
) -> None:
    """A keep-alive run with 20-second tokens (renewed at 10 s left, so every 10 s or so) and a
    hook that hangs every time: each run is killed at its 1 s timeout, every credential change
    is hooked exactly once, and the refreshes keep their schedule."""
    issuer = FakeIssuer(expires_in=20).start()
    hook_out = tmp_path / "hangs.jsonl"
    hangs = ("import json, sys, time; event = json.load(sys.stdin); "
             "open(sys.argv[1], 'a').write(json.dumps(event) + '\\n'); time.sleep(60)")  # fmt: skip
    pi = PiAuthFile(tmp_path / "pi" / "auth.json")
    pi.save(Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token())))
    seconds = 25
    try:
        with contextmanager(serving)(
            tmp_path, login_env, api, workers=1, CHATGPT_LOGIN_ISSUER=issuer.url,
            CHATGPT_LOGIN_REFRESH_WINDOW="10", CHATGPT_LOGIN_REFRESH_MIN_INTERVAL="0",
            CHATGPT_LOGIN_ON_CHANGE=f"{sys.executable} -c \"{hangs}\" {hook_out}",
            CHATGPT_LOGIN_ON_CHANGE_TIMEOUT="1",
        ) as service:  # fmt: skip
            state = Path(service["env"]["CHATGPT_LOGIN_STATE_DIR"])
            began, expired_seen = time.monotonic(), 0
            while time.monotonic() - began < seconds:
                held = pi.load()
                if held is None or held.expires_at <= datetime.now(UTC):
                    expired_seen += 1
                time.sleep(0.5)
            changes = [e.id for e in since(state, 0) if e.type in HOOKED]
            wait_until(lambda: len(hook_out.read_text().splitlines()) >= len(changes), 15,
                       "a hook run for every change")  # fmt: skip

            def killed() -> int:
                found = re.search(r'hook_runs_total\{outcome="timeout"\} (\d+)',
                                  api_text(service, "/metrics"))  # fmt: skip
                return int(found.group(1)) if found else 0

            wait_until(lambda: killed() >= len(changes), 15, "every run killed at its timeout")
    finally:
        issuer.stop()
    refreshes = issuer.calls["/oauth/token"]
    hooked = [json.loads(line)["id"] for line in hook_out.read_text().splitlines()]
    print(f"{seconds} s: {refreshes} refreshes, {len(changes)} changes, {len(hooked)} hook runs")
    assert refreshes >= seconds // 10  # on schedule, the hung hooks notwithstanding
    assert expired_seen == 0  # the credential on disk was never past its expiry
    assert hooked[: len(changes)] == changes  # once each, in order


def test_a_logout_made_while_the_service_was_down_is_announced_then_not_after_a_new_sign_in(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI, issuer: FakeIssuer
) -> None:
    """The service, when back, signs the stored copy out; a sign-in made since stays, and no
    event says "logged out" after it (a hook acting on the last event would drop it)."""
    state = tmp_path / "state"
    pi = PiAuthFile(tmp_path / "pi" / "auth.json")
    pi.save(Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token())))
    down = {**service_env(tmp_path, login_env, api),
            "CHATGPT_LOGIN_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    done = subprocess.run([PYTHON, "-m", "service.cli", "logout", "--json"], env=down, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert json.loads(done.stdout)["stored"] == "pending", done.stdout + done.stderr
    logged_out = since(state, 0)[-1]
    assert (logged_out.type, logged_out.body.get("stored")) == ("credential.logged_out", "pending")
    time.sleep(1.1)  # the new sign-in is issued in a later second than the logout
    newer = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    pi.save(newer)
    with contextmanager(serving)(tmp_path, login_env, api, workers=1):
        wait_until(lambda: not (state / "logout.pending").exists(), 15, "the pending logout")
        wait_until(lambda: api.record.get("codex_credentials", {}).get("refresh")
                   == newer.refresh_token, 15, "the newer sign-in stored")  # fmt: skip
    after = [e.type for e in since(state, logged_out.id)]
    assert "credential.logged_out" not in after, after
    held = pi.load()
    assert held is not None and held.refresh_token == newer.refresh_token


def test_a_run_never_outlives_its_worker_and_two_never_run_at_once(
    tmp_path: Path, login_env: dict[str, str], api: FakeSecretsAPI
) -> None:
    """A hook still running when its worker is SIGKILLed is killed by the next leader, which
    runs that change again; one running at a graceful stop goes with the service."""
    pids = tmp_path / "hook.pids"
    slow = ("import os, sys, time; sys.stdin.read(); "
            "open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); time.sleep(60)")  # fmt: skip
    env = {"CHATGPT_LOGIN_ON_CHANGE": f"{sys.executable} -c \"{slow}\" {pids}",
           "CHATGPT_LOGIN_ON_CHANGE_TIMEOUT": "120"}  # fmt: skip

    def started() -> list[int]:
        return [int(line) for line in pids.read_text().split()] if pids.exists() else []

    def gone(pid: int) -> bool:  # exited (a zombie waiting for init to reap it is gone)
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    with contextmanager(serving)(tmp_path, login_env, api, workers=1, **env) as service:
        emit(Path(service["env"]["CHATGPT_LOGIN_STATE_DIR"]), "credential.updated", why="test")
        wait_until(lambda: len(started()) == 1, 15, "the hook running")
        first = started()[0]
        worker = int(Path(f"/proc/{service['pid']}/task/{service['pid']}/children").read_text()
                     .split()[0])  # fmt: skip
        os.kill(worker, signal.SIGKILL)  # no chance to end its run
        wait_until(lambda: len(started()) == 2, 30, "the next leader running it again")
        assert gone(first)  # killed before the second run began
        second = started()[1]
    wait_until(lambda: gone(second), 10, "the run gone with the service")


def test_a_full_hook_queue_drops_the_oldest_change_not_the_newest(tmp_path: Path) -> None:
    settings = ServiceSettings(state_dir=tmp_path, on_change="sleep 30", on_change_timeout=30)
    hook = OnChangeHook(settings, Metrics(tmp_path / "metrics.json"))
    events = [Event(n, "credential.updated", "2026-11-30T00:00:00.000Z", {"why": "refresh"})
              for n in range(1, QUEUE_LIMIT + 10)]  # fmt: skip
    hook._thread = threading.Thread()  # as if running (not started: the queue stays full)
    for event in events:
        hook(event)
    waiting = [hook._queue.get_nowait().id for _ in range(hook._queue.qsize())]
    assert waiting == [e.id for e in events[-QUEUE_LIMIT:]]


def _running(*names: str) -> list[str]:
    """The command lines of the processes running any of ``names`` (NUL-separated argv)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(name in cmdline for name in names):
            found.append(cmdline)
    return found


def _stubborn(tmp_path: Path, seconds: str) -> Path:
    """A script that sleeps ``seconds`` deaf to SIGTERM (the sleep inherits the ignoring); it
    makes ``<script>.deaf`` once it is, for a command that must not exit before then."""
    script = tmp_path / f"stubborn-{seconds}.sh"
    script.write_text(f"trap '' TERM\n: > {script}.deaf\nexec sleep {seconds}\n")
    return script


def _hook_once(tmp_path: Path, command: str, *, timeout: float) -> str:
    """One run of ``command`` as the on-change hook; its outcome."""
    settings = ServiceSettings(state_dir=tmp_path, on_change_timeout=timeout, on_change=command)
    hook = OnChangeHook(settings, Metrics(tmp_path / "metrics.json"))
    return hook.run(Event(1, "credential.updated", "now", {}))


def test_a_hook_that_hangs_with_children_is_killed_with_them(tmp_path: Path) -> None:
    marker = f"{time.time_ns()}"
    command = f"sh -c 'sleep 60{marker[-3:]} & sleep 61{marker[-3:]}'"
    assert _hook_once(tmp_path, command, timeout=0.5) == "timeout"
    left = (f"sleep\x0060{marker[-3:]}", f"sleep\x0061{marker[-3:]}")
    wait_until(lambda: not _running(*left), 5, "the hook's children gone")


def test_what_a_hook_leaves_running_when_it_exits_is_ended_with_it(tmp_path: Path) -> None:
    """``cmd &`` in a hook would escape its timeout and pile up, one per change: the run ends
    when the command exits, background and all (one that ignores SIGTERM too)."""
    marker = f"{time.time_ns()}"[-6:]
    stubborn = _stubborn(tmp_path, f"63{marker}")
    # Exits once the deaf one is deaf: a SIGTERM before its trap would end it without a grace.
    command = (f"sh -c 'sleep 62{marker} & sh {stubborn} & "
               f"until [ -e {stubborn}.deaf ]; do sleep 0.01; done; exit 0'")  # fmt: skip
    started = time.monotonic()
    assert _hook_once(tmp_path, command, timeout=5) == "ok"
    left = (f"sleep\x0062{marker}", f"sleep\x0063{marker}")
    assert not _running(*left)  # ended before run() returned, not eventually
    assert time.monotonic() - started >= TERM_GRACE  # the deaf one had its grace, then KILL


@pytest.mark.parametrize(
    ("seconds", "how"),
    [(65, "sh -c 'timeout 300 sleep {s}; true'"),  # GNU timeout makes a group of its own
     (66, "bash -c 'set -m; sleep {s} & exit 0'"),  # a job shell makes a group per job
     (67, "python3 -c 'import subprocess; subprocess.Popen([\"sleep\", \"{s}\"], "
          "process_group=0)'")],
    ids=["GNU timeout", "job shell", "process_group=0"],
)  # fmt: skip
def test_a_run_ends_whole_even_what_moved_to_another_group(
    tmp_path: Path, seconds: int, how: str
) -> None:
    """The run is its session: a process that left the leader's group (without setsid) ends
    with it, both when the command exits and when it is timed out."""
    sleep = f"{seconds}{time.time_ns() % 10**6:06d}"  # a sleep no other test runs
    assert _hook_once(tmp_path, how.format(s=sleep), timeout=1.0) in ("ok", "timeout")
    assert not _running(f"sleep\x00{sleep}")


def test_a_worker_stopping_after_its_run_exited_ends_what_the_run_left(tmp_path: Path) -> None:
    """A stop that comes while the hook's thread gives a leftover its grace (the command has
    exited; what it left ignores SIGTERM) still ends it, and forgets the run."""
    marker = f"{time.time_ns()}"[-6:]
    stubborn = _stubborn(tmp_path, f"68{marker}")
    command = f"sh -c 'sh {stubborn} & until [ -e {stubborn}.deaf ]; do sleep 0.01; done'"
    settings = ServiceSettings(state_dir=tmp_path, on_change_timeout=5, on_change=command)
    hook = OnChangeHook(settings, Metrics(tmp_path / "metrics.json"))
    done = threading.Thread(target=hook.run, args=(Event(1, "credential.updated", "now", {}),))
    done.start()
    wait_until(lambda: bool(_running(f"sleep\x0068{marker}")), 5, "the run's leftover")
    time.sleep(0.3)  # the command has exited; its thread waits out the grace
    hook._stop_child()  # what a worker's stop does (atexit)
    assert not _running(f"sleep\x0068{marker}")
    assert not (tmp_path / "hook.pid").exists()
    done.join(5)


def test_a_run_left_by_a_dead_worker_is_killed_even_once_its_leader_exited(
    tmp_path: Path,
) -> None:
    """The next leader kills what a killed worker's run left, named in ``hook.pid`` by its
    group and its leader's start; when that leader has exited, its children still are that run."""
    from service.hook import _kill_leftover, _pid_namespace, _started  # noqa: PLC0415

    marker = f"{time.time_ns()}"[-6:]
    leader = subprocess.Popen(
        ["sh", "-c", f"sleep 64{marker} & read go"], stdin=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    running = tmp_path / "hook.pid"
    running.write_text(f"{leader.pid} {_started(leader.pid)} {_pid_namespace()}")
    wait_until(lambda: bool(_running(f"sleep\x0064{marker}")), 5, "the run's child")
    assert leader.stdin is not None
    leader.stdin.close()  # the leader exits, its child goes on in the group
    leader.wait()
    assert _running(f"sleep\x0064{marker}")
    _kill_leftover(running)
    wait_until(lambda: not _running(f"sleep\x0064{marker}"), 5, "the leftover child killed")
    assert not running.exists()


def test_a_run_file_naming_someone_elses_session_kills_nothing(tmp_path: Path) -> None:
    """A pid used again by another process (its start differs) is not that run; nor is a
    leaderless session named by a file another container wrote (pids start again at 1 in each
    container, and the state directory outlives it on its volume)."""
    from service.hook import _kill_leftover, _pid_namespace  # noqa: PLC0415

    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    orphan_leader = subprocess.Popen(  # a daemon: its session lives on in its child
        ["sh", "-c", "sleep 31 & exit 0"], start_new_session=True
    )
    orphan_leader.wait()
    try:
        running = tmp_path / "hook.pid"
        running.write_text(f"{other.pid} 1 {_pid_namespace()}")  # started at another time
        _kill_leftover(running)
        running.write_text(f"{orphan_leader.pid} 1 4026531999")  # another container's file
        _kill_leftover(running)
        time.sleep(0.1)
        assert other.poll() is None
        assert _running("sleep\x0031")
    finally:
        other.kill()
        other.wait()
        with contextlib.suppress(OSError):
            os.killpg(orphan_leader.pid, signal.SIGKILL)


def test_an_on_change_command_line_that_does_not_parse_is_refused() -> None:
    with pytest.raises(ValueError, match="not a command line"):
        ServiceSettings(on_change='notify "unterminated')


def _in_time(call: Any, seconds: float = 5.0) -> Any:
    """``call()``'s result, failing the test if it takes longer than ``seconds`` (a hang; the
    hung call is left in a daemon thread, which nothing waits for)."""
    found: list[Any] = []
    worker = threading.Thread(target=lambda: found.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still waiting after {seconds} s"
    assert found, "it raised (see the thread's traceback above)"
    return found[0]


@pytest.mark.parametrize(
    "planted",
    ["huge id", "id zero at the end", "float id", "bool id", "over-long line", "fifo", "symlink",
     "17 MB line"],
)  # fmt: skip
def test_a_hostile_journal_neither_hangs_nor_breaks_the_ids(tmp_path: Path, planted: str) -> None:
    """Whoever can write the state directory (the agent, in a container) may plant anything
    in the journal: writers and readers go on, never hang, never raise, never go back."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    journal = state / "events.jsonl"
    emit(state, "login.started", login_id="a")
    emit(state, "login.canceled", login_id="a")  # ids 1 and 2
    victim = tmp_path / "victim"
    lines = {"huge id": '{"id":1e999,"type":"credential.updated","at":"x","body":{}}',
             "id zero at the end": '{"id":0,"type":"login.started","at":"x","body":{}}',
             "float id": '{"id":7.5,"type":"login.started","at":"x","body":{}}',
             "bool id": '{"id":true,"type":"login.started","at":"x","body":{}}',
             "over-long line": '{"id":9,"type":"login.started","at":"x","body":{"x":"'
                               + "y" * 20000 + '"}}'}  # fmt: skip
    if planted in lines:
        with journal.open("a") as file:
            file.write(lines[planted] + "\n")
    elif planted == "17 MB line":
        with journal.open("a") as file:
            file.write('{"id":3,"pad":"' + "z" * (17 * 2**20) + '"}\n')
    elif planted == "fifo":
        journal.unlink()
        os.mkfifo(journal)
    else:
        victim.write_text("someone else's\n")
        journal.unlink()
        journal.symlink_to(victim)
    made = _in_time(lambda: emit(state, "login.started", login_id="b"))
    seen = _in_time(lambda: since(state, 0))
    if planted in ("fifo", "symlink"):
        assert made is None and seen == []  # not written through, not read through
        if planted == "symlink":
            assert victim.read_text() == "someone else's\n"
        return
    if planted == "17 MB line":  # what came before it is out of reach: the journal starts over
        assert made is not None and journal.stat().st_size < 10_000
        again = _in_time(lambda: emit(state, "login.started", login_id="c"))
        assert again is not None and again.id == made.id + 1
        assert [e.id for e in _in_time(lambda: since(state, made.id))] == [again.id]
        return
    assert made is not None and made.id == 3, made
    assert [e.id for e in seen][-1] == 3
    assert [e.id for e in _in_time(lambda: since(state, 2))] == [3]  # no replay from the start


@pytest.mark.parametrize("planted", ["fifo", "dev zero", "directory", "junk", "symlink"])
def test_a_hostile_hook_cursor_neither_hangs_nor_stops_the_hook(
    tmp_path: Path, planted: str
) -> None:
    cursor = tmp_path / "hooked.id"
    if planted == "fifo":
        os.mkfifo(cursor)
    elif planted == "dev zero":
        cursor.symlink_to("/dev/zero")
    elif planted == "directory":
        cursor.mkdir()
    elif planted == "junk":
        cursor.write_text("1e999\n")
    else:
        (tmp_path / "elsewhere").write_text("3")
        cursor.symlink_to(tmp_path / "elsewhere")
    settings = ServiceSettings(state_dir=tmp_path, on_change="true")
    hook = OnChangeHook(settings, Metrics(tmp_path / "metrics.json"))
    assert _in_time(lambda: hook.resume_after(7)) == 7  # no record it can trust: from now on
    if planted != "directory":
        assert cursor.is_file() and not cursor.is_symlink() and cursor.read_text() == "7"


def test_write_private_does_not_touch_what_a_symlink_points_at(tmp_path: Path) -> None:
    from skill.files import write_private  # noqa: PLC0415

    victim = tmp_path / "victim"
    victim.write_bytes(b"same")
    victim.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(victim)
    assert write_private(link, b"same") is True  # written: the link was not a file of ours
    assert victim.stat().st_mode & 0o777 == 0o644 and victim.read_bytes() == b"same"
    assert not link.is_symlink() and link.read_bytes() == b"same"


def test_a_change_made_while_the_first_stream_opens_is_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first stream of a worker starts the journal's watcher; on a loaded machine its thread
    may run only after an event was written. That event must still wake the streams (a CI run
    with four test workers hung on it: the watcher had taken its first look after the change)."""
    from service.routes import events as route  # noqa: PLC0415

    journal = tmp_path / "events.jsonl"
    journal.write_text('{"id": 1}\n')
    go = threading.Event()

    class Late(threading.Thread):  # the watcher's thread, run only once `go` is set
        def run(self) -> None:
            go.wait(10)
            super().run()

    monkeypatch.setattr(route.threading, "Thread", Late)
    watcher = route._Watcher(journal)
    seen = watcher.version
    with journal.open("a") as more:
        more.write('{"id": 2}\n')
    go.set()
    assert watcher.wait(seen, 3.0) != seen


def test_events_without_the_service_says_what_to_do(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "CHATGPT_LOGIN_STATE_DIR": str(tmp_path / "state"),
           "CHATGPT_LOGIN_SECRETS_DIR": str(tmp_path / "none")}  # fmt: skip
    done = subprocess.run([PYTHON, "-m", "service.cli", "events", "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    answer = json.loads(done.stdout)
    assert done.returncode == 4 and answer["error"] == "service_unavailable"
    assert "chatgpt-login serve" in answer["message"] and answer["next"] == "retry"
