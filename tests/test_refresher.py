"""One refresher: a refresh token is never spent twice, whoever else is refreshing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.refresher import Refresher
from service.settings import ServiceSettings
from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.errors import SkillError
from skill.lock import DirLock
from skill.tokens import TokenSet
from tests.conftest import REPO
from tests.fake_issuer import Account, FakeIssuer


@pytest.fixture
def keep_settings(tmp_path: Path, issuer: FakeIssuer) -> ServiceSettings:
    return ServiceSettings(issuer=issuer.url, pi_agent_dir=tmp_path / "pi",
                           codex_home=tmp_path / "codex", state_dir=tmp_path / "state",
                           connect_timeout=2, read_timeout=5, lock_timeout=30)  # fmt: skip


def seed(issuer: FakeIssuer, settings: ServiceSettings, *, expires_in: float = -60,
         account: str = "acct-1111") -> Credential:  # fmt: skip
    tokens = TokenSet.model_validate(issuer.seed_refresh_token(Account(account_id=account)))
    credential = Credential.from_tokens(tokens)
    credential = credential.model_copy(
        update={"expires_ms": int((time.time() + expires_in) * 1000)}
    )
    PiAuthFile(settings.pi_auth_file).save(credential)
    return credential


def test_a_valid_token_costs_nothing(keep_settings: ServiceSettings, issuer: FakeIssuer) -> None:
    seed(issuer, keep_settings, expires_in=3600)
    result = Refresher(keep_settings).ensure_fresh()
    assert not result.refreshed and issuer.calls["grant:refresh_token"] == 0


def test_expired_is_renewed_and_forced_renewal_spends(
    keep_settings: ServiceSettings, issuer: FakeIssuer
) -> None:
    old = seed(issuer, keep_settings)
    result = Refresher(keep_settings).ensure_fresh()
    assert result.refreshed and result.credential.refresh_token != old.refresh_token
    on_disk = PiAuthFile(keep_settings.pi_auth_file).load()
    assert on_disk is not None and on_disk.refresh_token == result.credential.refresh_token
    forced = Refresher(keep_settings).ensure_fresh(force=True)
    assert forced.refreshed and issuer.calls["grant:refresh_token"] == 2


STAMPEDE = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    from service.refresher import Refresher
    from service.settings import ServiceSettings
    settings = ServiceSettings.model_validate_json(sys.argv[1])
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    results, errors = [], []
    def need_token():
        try:
            results.append(Refresher(settings).ensure_fresh().credential.access_token)
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=need_token) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"tokens": results, "errors": errors}))
    """
)


def test_stampede_of_64_callers_spends_the_token_once(
    keep_settings: ServiceSettings, issuer: FakeIssuer, tmp_path: Path
) -> None:
    old = seed(issuer, keep_settings)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", STAMPEDE, keep_settings.model_dump_json(), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(16)
    ]  # fmt: skip
    time.sleep(1.0)  # let all 16 interpreters boot and wait at the starting line
    go.touch()
    outputs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    tokens = [t for out in outputs for t in out["tokens"]]
    errors = [e for out in outputs for e in out["errors"]]
    assert errors == []
    assert len(tokens) == 64 and len(set(tokens)) == 1 and tokens[0] != old.access_token
    assert issuer.calls["grant:refresh_token"] == 1
    assert issuer.used_refresh_tokens == {old.refresh_token}  # no refresh_token_reused answer


def test_race_lost_to_another_writer_is_a_success(
    keep_settings: ServiceSettings, issuer: FakeIssuer
) -> None:
    """The issuer says refresh_token_reused because another process (one that does not use
    pi's lock) won and wrote a newer same-account credential: we end with theirs."""
    old = seed(issuer, keep_settings)
    winner = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))

    def someone_else_won(token: str) -> tuple[int, dict[str, Any]]:
        # Written past pi's lock, as codex does with its own.
        text = json.dumps({"openai-codex": winner.to_pi_entry()}, indent=2)
        keep_settings.pi_auth_file.write_text(text)
        return 401, {"error": {"code": "refresh_token_reused", "message": "used"}}

    issuer.refresh_hook = someone_else_won
    result = Refresher(keep_settings).ensure_fresh()
    assert result.adopted and not result.refreshed
    assert result.credential.refresh_token == winner.refresh_token != old.refresh_token


def test_a_permanent_failure_keeps_the_credential(
    keep_settings: ServiceSettings, issuer: FakeIssuer
) -> None:
    old = seed(issuer, keep_settings)
    issuer.used_refresh_tokens.add(old.refresh_token)
    issuer.refresh_tokens.pop(old.refresh_token)
    with pytest.raises(SkillError) as caught:
        Refresher(keep_settings).ensure_fresh()
    assert caught.value.code == "refresh_token_reused" and caught.value.permanent
    kept = PiAuthFile(keep_settings.pi_auth_file).load()
    assert kept is not None and kept.refresh_token == old.refresh_token


def test_waits_for_pi_holding_its_lock_then_adopts(
    keep_settings: ServiceSettings, issuer: FakeIssuer
) -> None:
    """A pi process holds auth.json.lock while it refreshes; we wait, re-read, adopt and
    spend nothing."""
    seed(issuer, keep_settings)
    theirs = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    script = textwrap.dedent(
        """
        import os, sys, time, json
        path = sys.argv[1]; lock = path + ".lock"
        os.mkdir(lock)                       # proper-lockfile's lock
        print("held", flush=True)
        end = time.monotonic() + 0.8
        while time.monotonic() < end:        # "refreshing", keeping the lock fresh
            os.utime(lock); time.sleep(0.05)
        with open(path, "w") as f: f.write(sys.argv[2])
        os.rmdir(lock)
        """
    )
    document = json.dumps({"openai-codex": theirs.to_pi_entry()}, indent=2)
    pi = subprocess.Popen([sys.executable, "-c", script, str(keep_settings.pi_auth_file), document],
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert pi.stdout is not None and pi.stdout.readline().strip() == "held"
    result = Refresher(keep_settings).ensure_fresh()
    assert pi.wait(5) == 0
    assert result.adopted and result.credential.refresh_token == theirs.refresh_token
    assert issuer.calls["grant:refresh_token"] == 0


def test_another_account_is_never_adopted(
    keep_settings: ServiceSettings, issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(issuer, keep_settings)
    refresher = Refresher(keep_settings)
    lock = refresher.pi.lock
    lock.acquire()
    worker_result: list[object] = []

    def run() -> None:
        try:
            worker_result.append(refresher.ensure_fresh())
        except SkillError as exc:
            worker_result.append(exc.code)

    waiting = threading.Event()
    judge = DirLock._take_over_if_stale

    def judging(self: DirLock) -> bool:  # the refresher found the lock held: it waits now
        waiting.set()
        return judge(self)

    monkeypatch.setattr(DirLock, "_take_over_if_stale", judging)
    worker = threading.Thread(target=run)
    worker.start()
    assert waiting.wait(10)  # it has read the old account and waits for the lock
    other = Credential.from_tokens(TokenSet.model_validate(
        issuer.seed_refresh_token(Account(account_id="acct-9999"))))  # fmt: skip
    PiAuthFile(keep_settings.pi_auth_file).save_locked(other)
    lock.release()
    worker.join(10)
    assert worker_result == ["account_mismatch"]
    assert issuer.calls["grant:refresh_token"] == 0


def test_a_rotation_cut_off_by_a_kill_during_its_fsync_is_finished_not_spent_again(
    keep_settings: ServiceSettings, issuer: FakeIssuer
) -> None:
    """A refresher killed while its write waits on the disk (seconds, on a busy one) holds the
    only copy of the rotated token in its temp file, and has left pi's lock behind. The next
    refresh takes the lock at once, finishes that write and spends nothing."""
    old = seed(issuer, keep_settings)
    ready, tell = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:

            def disk_that_never_finishes(fd: int) -> None:
                os.write(tell, b"x")
                time.sleep(60)

            os.fsync = disk_that_never_finishes
            Refresher(keep_settings).ensure_fresh()
        finally:
            os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"  # the issuer has answered; the write is under way
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    pi = PiAuthFile(keep_settings.pi_auth_file)
    on_disk = pi.load()
    assert on_disk is not None and on_disk.refresh_token == old.refresh_token  # never renamed
    assert old.refresh_token not in issuer.refresh_tokens  # and the issuer has retired it
    assert pi.lock.path.is_dir()
    result = Refresher(keep_settings).ensure_fresh()
    assert result.adopted and not result.refreshed
    assert issuer.calls["grant:refresh_token"] == 1
    assert result.credential.refresh_token in issuer.refresh_tokens
    on_disk = pi.load()
    assert on_disk is not None and on_disk.refresh_token == result.credential.refresh_token
    assert not list(keep_settings.pi_agent_dir.glob(".auth.json.*.tmp"))
