"""Several token lifetimes end to end: our keep-alive and the real pi-ai refresh code take turns
renewing, every rotation reaches the store, and a restart into an empty HOME comes back signed
in with a refresh token that still works. No refresh token is ever presented twice."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from service.keepalive import KeepAlive
from service.refresher import Refresher
from service.restore import restore_and_refresh
from service.secrets import HttpSecretsStore
from service.settings import ServiceSettings
from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.conftest import NPM_BIN, REPO, wait_until
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI

pytestmark = pytest.mark.npm
PI_REFRESH = REPO / "tests" / "npm" / "pi_refresh.mjs"


def settings_for(home: Path, issuer: FakeIssuer, api: FakeSecretsAPI) -> ServiceSettings:
    return ServiceSettings(
        issuer=issuer.url, pi_agent_dir=home / ".pi" / "agent", codex_home=home / ".codex",
        state_dir=home / "state", secrets_api_url=api.url, secrets_api_token=api.token,
        refresh_window=2.0, connect_timeout=2, read_timeout=5,
    )  # fmt: skip


def stored_refresh(api: FakeSecretsAPI) -> str | None:
    entry = api.record.get("codex_credentials")
    return str(entry["refresh"]) if isinstance(entry, dict) else None


def _local_refresh(settings: ServiceSettings) -> str | None:
    local = PiAuthFile(settings.pi_auth_file).load()
    return local.refresh_token if local else None


def test_lifetimes_with_pi_then_restart(
    tmp_path: Path, issuer: FakeIssuer, api: FakeSecretsAPI
) -> None:
    assert (NPM_BIN.parent / "@mariozechner" / "pi-ai").is_dir(), "run scripts/test"
    issuer.expires_in = 3  # a token lifetime of 3 s; the loop renews at 2 s left
    settings = settings_for(tmp_path / "home", issuer, api)
    signed_in = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    PiAuthFile(settings.pi_auth_file).save(signed_in)
    store = HttpSecretsStore(url=api.url, token=api.token)
    stop = KeepAlive(settings, store, tick=0.2).start()
    try:
        for lifetime in range(4):
            before = issuer.calls["grant:refresh_token"]
            wait_until(lambda b=before: issuer.calls["grant:refresh_token"] > b, 10, "our refresh")
            if lifetime % 2:  # every other lifetime, pi renews too, under its own lock
                argv = ["node", str(PI_REFRESH), str(NPM_BIN.parent),
                        str(settings.pi_auth_file), issuer.url]  # fmt: skip
                pi = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
                assert pi.returncode == 0, pi.stderr
                renewed_by_pi = pi.stdout.strip()
                wait_until(
                    lambda r=renewed_by_pi: stored_refresh(api) == r, 3, "pi's rotation stored"
                )
        wait_until(
            lambda: stored_refresh(api) == _local_refresh(settings), 3, "last rotation stored"
        )
    finally:
        stop.set()
        time.sleep(0.5)  # let the loop finish its tick before the restart
    assert issuer.calls["grant:refresh_token"] >= 6
    assert issuer.calls["refresh_token_reused"] == 0

    # The container restarts: a new, empty HOME; the startup hook restores.
    fresh = settings_for(tmp_path / "new-home", issuer, api)
    result = restore_and_refresh(fresh, store)
    assert result.action == "restored"
    restored = PiAuthFile(fresh.pi_auth_file).load()
    assert restored is not None and restored.refresh_token == stored_refresh(api)
    working = Refresher(fresh).ensure_fresh(force=True)  # the restored refresh token still works
    assert working.refreshed and issuer.calls["refresh_token_reused"] == 0
