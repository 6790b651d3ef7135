"""Keep-alive: sync-back of every change, refresh ahead of expiry, needs_relogin, one leader."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from service import keepalive
from service.app import create_app
from service.keepalive import KeepAlive
from service.settings import ServiceSettings
from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.conftest import REPO, http_store, wait_until
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI


@pytest.fixture
def keep_settings(tmp_path: Path, issuer: FakeIssuer, api: FakeSecretsAPI) -> ServiceSettings:
    return ServiceSettings(
        issuer=issuer.url, pi_agent_dir=tmp_path / "pi", codex_home=tmp_path / "codex",
        state_dir=tmp_path / "state", secrets_api_url=api.url, secrets_api_token=api.token,
        secrets_timeout=0.5, secrets_attempts=2, secrets_deadline=2, connect_timeout=2,
        read_timeout=5, refresh_min_interval=0, lease_settle=0,
    )  # fmt: skip


def write(issuer: FakeIssuer, settings: ServiceSettings, *, expires_in: float = 3600) -> Credential:
    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    credential = credential.model_copy(
        update={"expires_ms": int((time.time() + expires_in) * 1000)}
    )
    PiAuthFile(settings.pi_auth_file).save(credential)
    return credential


def stored(api: FakeSecretsAPI) -> dict[str, object]:
    entry = api.record.get("codex_credentials")
    assert isinstance(entry, dict)
    return entry


def test_changes_are_pushed_once(keep_settings: ServiceSettings, issuer: FakeIssuer,
                                 api: FakeSecretsAPI) -> None:  # fmt: skip
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    first = write(issuer, keep_settings)
    assert keep.run_once().pushed
    assert stored(api)["refresh"] == first.refresh_token and stored(api)["generation"] == 1
    patches = api.requests.count("PATCH")
    assert not keep.run_once().pushed  # nothing changed: nothing pushed
    assert api.requests.count("PATCH") == patches
    second = write(issuer, keep_settings)  # e.g. pi or codex refreshed on its own
    assert keep.run_once().pushed
    assert stored(api)["refresh"] == second.refresh_token and stored(api)["generation"] == 2
    assert "lastRefresh" in stored(api)


def test_a_rotation_left_in_a_temp_file_is_finished_and_pushed_by_the_running_leader(
    keep_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    """A `chatgpt-login refresh` killed mid-write while the service runs: the next tick
    finishes that write (before anyone spends the retired token) and pushes it."""
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    write(issuer, keep_settings)
    assert keep.run_once().pushed
    rotated = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    rotated = rotated.model_copy(update={"expires_ms": int((time.time() + 7200) * 1000)})
    temp = keep_settings.pi_auth_file.with_name(".auth.json.0123456789ab.tmp")
    temp.write_text(json.dumps({"openai-codex": rotated.to_pi_entry()}))
    assert keep.run_once().pushed
    assert stored(api)["refresh"] == rotated.refresh_token
    on_disk = PiAuthFile(keep_settings.pi_auth_file).load()
    assert on_disk is not None and on_disk.refresh_token == rotated.refresh_token
    assert not temp.exists()


def test_refreshes_inside_the_window_only(keep_settings: ServiceSettings, issuer: FakeIssuer,
                                          api: FakeSecretsAPI) -> None:  # fmt: skip
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    write(issuer, keep_settings, expires_in=20 * 60)  # outside the 10-minute window
    assert not keep.run_once().refreshed
    # A copy here that expires sooner than the one agreed with the store is an older one (it is
    # replaced: the later expiry wins); this one comes with the store emptied meanwhile.
    api.record.clear()
    soon = write(issuer, keep_settings, expires_in=5 * 60)  # inside it (codex waits for 5)
    tick = keep.run_once()
    assert tick.refreshed and tick.pushed
    assert stored(api)["refresh"] != soon.refresh_token
    assert issuer.calls["grant:refresh_token"] == 1


def test_refresh_window_edges_with_an_injected_clock(
    keep_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    """The window is judged against the keep-alive's clock, to the second: one second before
    it opens nothing happens; one second inside, exactly one refresh; the renewed credential is
    outside the window again, so the next tick spends nothing."""
    now = [0.0]
    keep = KeepAlive(keep_settings, http_store(keep_settings), clock=lambda: now[0])
    expires = write(issuer, keep_settings).expires_ms / 1000
    window = keep_settings.refresh_window
    assert window == 600, "the default window is 10 minutes"

    now[0] = expires - window - 1
    assert not keep.run_once().refreshed
    assert issuer.calls["grant:refresh_token"] == 0

    issuer.expires_in = 7200  # the renewed token outlives the moved clock
    now[0] = expires - window + 1
    tick = keep.run_once()
    assert tick.refreshed and tick.pushed
    assert issuer.calls["grant:refresh_token"] == 1

    assert not keep.run_once().refreshed
    now[0] = expires + 1800  # after the old expiry; the new token has over 10 minutes left
    assert not keep.run_once().refreshed
    assert issuer.calls["grant:refresh_token"] == 1


def test_permanent_failure_means_needs_relogin_and_no_more_calls(
    keep_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    dead = write(issuer, keep_settings, expires_in=-60)
    issuer.refresh_tokens.pop(dead.refresh_token)
    issuer.used_refresh_tokens.add(dead.refresh_token)
    assert keep.run_once().error == "refresh_token_reused"
    calls = issuer.calls["grant:refresh_token"]
    for _ in range(3):
        keep.run_once()
    assert issuer.calls["grant:refresh_token"] == calls  # no further network attempts
    client: FlaskClient = create_app(keep_settings).test_client()
    token = (keep_settings.state_dir / "service.token").read_text()
    view = client.get("/v1/credentials", headers={"Authorization": f"Bearer {token}"}).json
    assert view is not None and view["status"] == "needs_relogin"
    assert view["reason"] == "refresh_token_reused"
    assert PiAuthFile(keep_settings.pi_auth_file).load() is not None  # kept, never deleted
    write(issuer, keep_settings, expires_in=-60)  # a new sign-in: tried again, and it works
    assert keep.run_once().refreshed
    view = client.get("/v1/credentials", headers={"Authorization": f"Bearer {token}"}).json
    assert view is not None and view["status"] == "logged_in"


def test_transient_failures_back_off_and_keep_the_token(
    keep_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    current = write(issuer, keep_settings, expires_in=60)
    issuer.token_faults.append((503, {}))
    assert keep.run_once().error == "server_error"
    assert not keep.run_once().refreshed  # backing off: no call
    assert issuer.calls["/oauth/token"] == 1
    on_disk = PiAuthFile(keep_settings.pi_auth_file).load()
    assert on_disk is not None and on_disk.access_token == current.access_token
    keep._retry_at = 0.0  # the back-off has passed
    assert keep.run_once().refreshed


def test_a_pending_push_is_made_after_a_restart(
    keep_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    credential = write(issuer, keep_settings)
    api.faults.extend(["status:503"] * 10)
    assert keep.run_once().error == "secrets_unreachable"
    assert json.loads((keep_settings.state_dir / "service.json").read_text())["persist_pending"]
    api.faults.clear()
    restarted = KeepAlive(keep_settings, http_store(keep_settings))  # a new process after a crash
    assert restarted.try_lead()
    restarted.run_once()
    assert stored(api)["refresh"] == credential.refresh_token


LEADER = textwrap.dedent(
    """
    import sys, time
    from service.keepalive import KeepAlive
    from service.secrets import FileSecretsStore
    from service.settings import ServiceSettings
    settings = ServiceSettings.model_validate_json(sys.argv[1])
    keep = KeepAlive(settings, FileSecretsStore(settings.state_dir / "s.json"))
    print("leader" if keep.try_lead() else "follower", flush=True)
    time.sleep(30)
    """
)


def test_exactly_one_leader_and_a_successor_when_it_dies(keep_settings: ServiceSettings) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    spawn = lambda: subprocess.Popen(  # noqa: E731
        [sys.executable, "-c", LEADER, keep_settings.model_dump_json()], stdout=subprocess.PIPE,
        text=True, env=env)  # fmt: skip
    first, second = spawn(), spawn()
    try:
        roles = sorted(p.stdout.readline().strip() for p in (first, second) if p.stdout)
        assert roles == ["follower", "leader"]
        first.kill(), second.kill()
        first.wait(), second.wait()
        keep = KeepAlive(keep_settings, http_store(keep_settings))
        wait_until(keep.try_lead, 5, "the lock to pass on")
    finally:
        for proc in (first, second):
            proc.kill()


def test_a_holder_past_due_looks_often_while_another_renews(
    keep_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    """Past due while another holder renews: it looks every WATCH_POLL_LATER (it holds a spent
    token from that holder's spend until it adopts), for WATCH_LIMIT at most, then every tick."""
    now = [0.0]
    keep = KeepAlive(keep_settings, http_store(keep_settings), clock=lambda: now[0])
    expires = write(issuer, keep_settings).expires_ms / 1000
    now[0] = expires - keep_settings.refresh_window - 60  # not yet due: sleeps a whole tick
    keep.run_once()
    assert keep.next_wait() == pytest.approx(keepalive.TICK)
    keep._due = now[0] - 1  # due, and renewed elsewhere (what run_once leaves when busy)
    assert keep.next_wait() == pytest.approx(keepalive.WATCH_POLL_LATER)
    keep._past_due_since = time.monotonic() - keepalive.WATCH_LIMIT - 1
    assert keep.next_wait() == pytest.approx(keepalive.TICK)


def test_a_credential_whose_token_is_not_a_jwt_is_said_once_not_traced(
    keep_settings: ServiceSettings, api: FakeSecretsAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """A pi file whose access token is not a JWT (its expiry unknown): the loop goes on, says
    so once as a warning, and never logs a traceback tick after tick."""
    import logging  # noqa: PLC0415
    import threading  # noqa: PLC0415

    path = keep_settings.pi_auth_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"openai-codex": {
        "type": "oauth", "access": "not-a-jwt", "refresh": "rt_opaque_0123456789abcdef",
        "expires": 9_999_999_999_999, "accountId": "acct-1111"}}))  # fmt: skip
    path.chmod(0o600)
    loop = KeepAlive(keep_settings, http_store(keep_settings), tick=0.05)
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="service.keepalive"):
        thread = threading.Thread(target=loop.run_forever, args=(stop,))
        thread.start()
        time.sleep(1.0)
        stop.set()
        thread.join(10)
    records = [r for r in caplog.records if r.name == "service.keepalive"]
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    warned = [r for r in records if "cannot be renewed on schedule" in r.getMessage()]
    assert len(warned) == 1


def test_a_lease_whose_holder_died_is_watched_once_not_until_it_runs_out(
    keep_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Another holder took the lease and died (or a lease was planted): this holder, past due,
    watches it closely for WATCH_LIMIT, then looks as a holder past due does. It looked every
    WATCH_POLL (about 150 reads a second) until the lease ran out: every read restarted the
    window."""
    monkeypatch.setattr(keepalive, "WATCH_LIMIT", 0.5)
    write(issuer, keep_settings, expires_in=keep_settings.refresh_window - 30)  # due now
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    keep.persistence.persist()
    now = datetime.now(UTC)
    api.record["codex_credentials_lease"] = {
        "holder": "died-holding-it", "host": "gone", "nonce": "n1",
        "generation": stored(api)["generation"], "until": (now + timedelta(seconds=60)).isoformat(),
        "spend_after": now.isoformat(),
    }  # fmt: skip
    stop = threading.Event()
    loop = threading.Thread(target=keep.run_forever, args=(stop,), daemon=True)
    loop.start()
    try:
        time.sleep(2.0)  # the window (0.5 s), then past due at WATCH_POLL_LATER (0.5 s)
        before = api.requests.count("GET")
        time.sleep(1.5)
        reads = api.requests.count("GET") - before
    finally:
        stop.set()
        loop.join(5)
    assert api.record["codex_credentials_lease"]["holder"] == "died-holding-it"  # not taken over
    assert reads <= 8, f"{reads} reads in 1.5 s while the lease of a dead holder is in force"


def test_fresh_leases_planted_while_the_renewal_is_far_off_are_not_watched(
    keep_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    """A new lease every 0.2 s opened a new close watch each time (about 120 reads a second
    from one holder). Far from its own renewal, a holder adopts a rotation at its next read."""
    keep_settings = keep_settings.model_copy(update={"store_poll": 0.5})
    write(issuer, keep_settings, expires_in=3600)  # due in 50 minutes
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    keep.persistence.persist()
    stop = threading.Event()
    loop = threading.Thread(target=keep.run_forever, args=(stop,), daemon=True)
    loop.start()
    try:
        time.sleep(0.5)
        before = api.requests.count("GET")
        for n in range(10):  # 2 s of fresh leases, each to be spent at once
            now = datetime.now(UTC)
            api.record["codex_credentials_lease"] = {
                "holder": "planted", "nonce": f"n{n}", "generation": stored(api)["generation"],
                "until": (now + timedelta(seconds=60)).isoformat(), "spend_after": now.isoformat(),
            }  # fmt: skip
            time.sleep(0.2)
        reads = api.requests.count("GET") - before
    finally:
        stop.set()
        loop.join(5)
    assert reads <= 8, f"{reads} reads in 2 s"  # one each store_poll (0.5 s)


def test_a_tick_that_keeps_failing_is_traced_once_and_tried_less_often(
    keep_settings: ServiceSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Something in the store no check foresaw raised in every tick: a traceback twice a second
    for ever (300 MB of log a day)."""
    keep = KeepAlive(keep_settings, http_store(keep_settings))
    calls: list[float] = []

    def broken() -> None:
        calls.append(time.monotonic())
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(keep, "run_once", broken)
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="service.keepalive"):
        loop = threading.Thread(target=keep.run_forever, args=(stop,), daemon=True)
        loop.start()
        time.sleep(4)
        stop.set()
        loop.join(5)
    traced = [r for r in caplog.records if r.exc_info]
    assert len(traced) == 1 and "failed again (RecursionError" in caplog.text
    assert 2 <= len(calls) <= 5, calls  # every 0.5 s (the tick) would be 8
