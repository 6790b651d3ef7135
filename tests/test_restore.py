"""Startup restore: never downgrade, never adopt another account, never touch the local file
when the store cannot be reached; renew an expired access token once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from service.restore import restore, restore_and_refresh
from service.settings import ServiceSettings
from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.conftest import PYTHON, REPO, free_port, http_store
from tests.fake_issuer import Account, FakeIssuer
from tests.fake_secrets import FakeSecretsAPI


@pytest.fixture
def service_settings(tmp_path: Path, issuer: FakeIssuer, api: FakeSecretsAPI) -> ServiceSettings:
    return ServiceSettings(
        issuer=issuer.url, pi_agent_dir=tmp_path / "pi", codex_home=tmp_path / "codex",
        state_dir=tmp_path / "state", secrets_api_url=api.url, secrets_api_token=api.token,
        secrets_timeout=0.5, secrets_attempts=2, secrets_deadline=2,
    )  # fmt: skip


def local_credential(settings: ServiceSettings) -> Credential | None:
    return PiAuthFile(settings.pi_auth_file).load()


def credential(
    issuer: FakeIssuer, *, account: str = "acct-1111", expires_in: float = 3600
) -> Credential:
    """A credential whose token lives ``expires_in`` seconds (expiring when its token says)."""
    answer = issuer.seed_refresh_token(Account(account_id=account), expires_in=int(expires_in))
    made = Credential.from_tokens(TokenSet.model_validate({**answer, "expires_in": 0}))
    exp = made.claims().expires_at
    assert exp is not None
    return made.model_copy(update={"expires_ms": int(exp.timestamp() * 1000)})


def same(a: Credential | None, b: Credential) -> bool:
    """The same credential; ``last_refresh`` aside, which the pi format does not carry."""
    keys = ("access_token", "refresh_token", "account_id", "expires_ms")
    return a is not None and all(getattr(a, k) == getattr(b, k) for k in keys)


def stored(api: FakeSecretsAPI, cred: Credential) -> None:
    api.record["codex_credentials"] = cred.to_pi_entry()


def test_missing_local_is_restored(service_settings: ServiceSettings, issuer: FakeIssuer,
                                   api: FakeSecretsAPI) -> None:  # fmt: skip
    remote = credential(issuer)
    stored(api, remote)
    result = restore(service_settings, http_store(service_settings))
    assert result.action == "restored"
    local = local_credential(service_settings)
    assert local is not None and local.refresh_token == remote.refresh_token
    assert stat.S_IMODE(service_settings.pi_auth_file.stat().st_mode) == 0o600


def test_corrupt_local_is_moved_aside_and_restored(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    stored(api, credential(issuer))
    service_settings.pi_auth_file.parent.mkdir(parents=True)
    service_settings.pi_auth_file.write_text("{broken")
    result = restore(service_settings, http_store(service_settings))
    assert result.action == "restored" and "moved aside" in " ".join(result.notes)
    assert list(service_settings.pi_agent_dir.glob("auth.json.corrupt-*"))


def test_older_local_is_replaced_newer_local_is_pushed(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    old, new = credential(issuer, expires_in=600), credential(issuer, expires_in=3600)
    pi = PiAuthFile(service_settings.pi_auth_file)
    pi.save(old)
    stored(api, new)
    assert restore(service_settings, http_store(service_settings)).action == "restored"
    assert same(local_credential(service_settings), new)
    newest = credential(issuer, expires_in=7200)
    pi.save(newest)
    assert restore(service_settings, http_store(service_settings)).action == "pushed_local"
    assert api.record["codex_credentials"]["refresh"] == newest.refresh_token
    assert restore(service_settings, http_store(service_settings)).action == "in_sync"


def test_another_account_is_never_adopted(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    mine = credential(issuer, expires_in=600)
    PiAuthFile(service_settings.pi_auth_file).save(mine)
    theirs = credential(issuer, account="acct-2222", expires_in=9000)
    stored(api, theirs)
    result = restore(service_settings, http_store(service_settings))
    assert result.action == "conflict" and result.failed
    assert same(local_credential(service_settings), mine)
    assert api.record["codex_credentials"]["accountId"] == "acct-2222"


def test_a_record_whose_token_names_another_account_is_ignored(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    entry = credential(issuer).to_pi_entry()
    entry["accountId"] = "acct-forged"
    api.record["codex_credentials"] = entry
    assert restore(service_settings, http_store(service_settings)).action == "invalid_record"
    assert local_credential(service_settings) is None


@pytest.mark.parametrize("expires", [10**30, 300_000_000_000_000, -1])
def test_a_record_with_an_expiry_no_clock_holds_is_not_adopted(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI, expires: int
) -> None:
    """Adopted, it would fail every status and /v1/credentials after (OverflowError). Ignored
    where nothing is here; replaced by this machine's copy where one is."""
    entry = {**credential(issuer).to_pi_entry(), "expires": expires, "generation": 9}
    api.record["codex_credentials"] = entry
    assert restore(service_settings, http_store(service_settings)).action == "invalid_record"
    assert local_credential(service_settings) is None
    mine = credential(issuer)
    PiAuthFile(service_settings.pi_auth_file).save(mine)
    assert restore(service_settings, http_store(service_settings)).action == "pushed_local"
    assert api.record["codex_credentials"]["refresh"] == mine.refresh_token


def test_a_read_the_store_answers_with_ok_false_is_a_refusal_not_an_empty_store(
    service_settings: ServiceSettings, api: FakeSecretsAPI
) -> None:
    api.record.clear()
    api.record["ok"] = False
    result = restore(service_settings, http_store(service_settings))
    assert result.action == "misconfigured" and result.code == "store_misconfigured"
    assert '"ok": false' in result.message and api.requests.count("GET") == 1  # not retried


def test_expired_after_restore_is_renewed_once_and_stored(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    expired = credential(issuer, expires_in=-60)
    stored(api, expired)
    result = restore_and_refresh(service_settings, http_store(service_settings))
    assert result.action == "restored" and result.refreshed
    assert issuer.calls["grant:refresh_token"] == 1
    local = local_credential(service_settings)
    assert local is not None and not local.expired()
    assert (
        api.record["codex_credentials"]["refresh"] == local.refresh_token != expired.refresh_token
    )


def test_expired_with_a_dead_refresh_token_keeps_the_credential(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    expired = credential(issuer, expires_in=-60)
    issuer.used_refresh_tokens.add(expired.refresh_token)
    stored(api, expired)
    result = restore_and_refresh(service_settings, http_store(service_settings))
    assert result.action == "restored" and not result.refreshed
    assert "already used" in " ".join(result.notes)
    assert same(local_credential(service_settings), expired)


def restore_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "service.cli", "restore", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_cli_unreachable_store_touches_nothing_and_exits_0(
    service_settings: ServiceSettings, issuer: FakeIssuer, login_env: dict[str, str]
) -> None:
    mine = credential(issuer)
    PiAuthFile(service_settings.pi_auth_file).save(mine)
    before = service_settings.pi_auth_file.stat()
    env = {**login_env, "PI_CODING_AGENT_DIR": str(service_settings.pi_agent_dir),
           "CHATGPT_LOGIN_SECRETS_API_URL": f"http://127.0.0.1:{free_port()}/api/agent/secrets",
           "FAT_TOOLS_TOKEN": "fat-canary-0000000000", "CHATGPT_LOGIN_SECRETS_DEADLINE": "1",
           "CHATGPT_LOGIN_SECRETS_DIR": str(service_settings.state_dir / "none")}  # fmt: skip
    done = restore_cli(env)
    assert done.returncode == 0 and len(done.stdout.strip().splitlines()) == 1
    assert "could not be reached" in done.stdout
    assert "fat-canary-0000000000" not in done.stdout + done.stderr
    after = service_settings.pi_auth_file.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert restore_cli(env, "--strict").returncode == 4
    told = restore_cli(env, "--strict", "--json")
    assert told.returncode == 4
    assert json.loads(told.stdout) | {"message": None, "notes": None} == {
        "ok": False, "action": "unreachable", "refreshed": False, "message": None, "notes": None,
        "error": "store_unavailable", "next": "retry",
    }  # fmt: skip


def test_cli_a_store_that_refuses_the_token_is_a_setting_to_fix(
    service_settings: ServiceSettings, api: FakeSecretsAPI, login_env: dict[str, str]
) -> None:
    """Not "unreachable, try again" (exit 4): nothing changes until someone fixes the token."""
    env = {**login_env, "PI_CODING_AGENT_DIR": str(service_settings.pi_agent_dir),
           "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": "wrong-token-0123456789",
           "CHATGPT_LOGIN_SECRETS_DIR": str(service_settings.state_dir / "none")}  # fmt: skip
    assert restore_cli(env).returncode == 0  # the entrypoint goes on without it
    told = restore_cli(env, "--strict", "--json")
    answer = json.loads(told.stdout)
    assert told.returncode == 2 and answer["action"] == "misconfigured", told.stdout
    assert answer["error"] == "store_misconfigured" and answer["next"] == "tell_user"
    assert "refused the token" in answer["message"] and "wrong-token" not in told.stdout


def test_cli_new_home_gets_its_credential_back(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI,
    login_env: dict[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    remote = credential(issuer)
    stored(api, remote)
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "fat_tools_token").write_text(api.token + "\n")  # as compose mounts it
    home = tmp_path / "fresh-home"
    env = {**login_env, "HOME": str(home), "CHATGPT_LOGIN_SECRETS_API_URL": api.url,
           "CHATGPT_LOGIN_SECRETS_DIR": str(secrets)}  # fmt: skip
    env.pop("PI_CODING_AGENT_DIR")
    done = restore_cli(env, "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    restored = json.loads((home / ".pi" / "agent" / "auth.json").read_text())["openai-codex"]
    assert restored["refresh"] == remote.refresh_token
    assert oct(os.stat(home / ".pi" / "agent" / "auth.json").st_mode & 0o777) == "0o600"


def test_a_rotation_a_killed_writer_left_in_its_temp_file_is_kept_and_pushed(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    """Killed during the fsync of a refresh's write: on waking, that rotation (the only live
    token) wins over both the file it was replacing and the stored copy."""
    old = credential(issuer, expires_in=600)
    PiAuthFile(service_settings.pi_auth_file).save(old)
    stored(api, old)
    rotated = credential(issuer, expires_in=3600)
    temp = service_settings.pi_auth_file.with_name(".auth.json.0123456789ab.tmp")
    temp.write_text(json.dumps({"openai-codex": rotated.to_pi_entry()}))
    result = restore(service_settings, http_store(service_settings))
    assert result.action == "pushed_local"
    assert same(local_credential(service_settings), rotated)
    assert api.record["codex_credentials"]["refresh"] == rotated.refresh_token
    assert not temp.exists()


def test_cli_strict_says_so_when_the_lock_keeps_it_from_writing(
    service_settings: ServiceSettings, issuer: FakeIssuer, api: FakeSecretsAPI,
    login_env: dict[str, str],
) -> None:  # fmt: skip
    """pi holds its lock on auth.json past the time restore has (its waits are cut to fit
    CHATGPT_LOGIN_RESTORE_LIMIT, the entrypoint's bound): nothing is written, --strict exits 7
    and says why, within the limit; it never says restored."""

    from skill.lock import DirLock  # noqa: PLC0415

    stored(api, credential(issuer))
    service_settings.pi_agent_dir.mkdir(parents=True)
    env = {**login_env, "PI_CODING_AGENT_DIR": str(service_settings.pi_agent_dir),
           "CHATGPT_LOGIN_STATE_DIR": str(service_settings.state_dir),
           "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
           "CHATGPT_LOGIN_SECRETS_CAS": "off", "CHATGPT_LOGIN_RESTORE_LIMIT": "4",
           "CHATGPT_LOGIN_SECRETS_DIR": str(service_settings.state_dir / "none")}  # fmt: skip
    with DirLock(service_settings.pi_auth_file, timeout=5):  # as pi holds it
        started = time.monotonic()
        done = restore_cli(env, "--strict")
        took = time.monotonic() - started
    assert done.returncode == 7, done.stdout + done.stderr
    assert "not written" in done.stdout and "Restored the credential" not in done.stdout
    assert took < 4, f"{took:.1f} s"
    assert local_credential(service_settings) is None
