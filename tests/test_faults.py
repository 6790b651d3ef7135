"""Network faults from a real TCP proxy (tests/fault_proxy.py) between us and the secrets API,
and between us and the issuer, through persist, restore, sync-back and refresh.

Also the login program's code exchange with the issuer, through the same proxy.

What is counted as a loss: the credential on disk gone, unreadable or replaced by an older one;
the store left without an acknowledged credential or going back to an older one.
``scripts/reliability.py`` runs this module and reports the counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import ServiceError
from service.keepalive import KeepAlive
from service.persistence import Persistence
from service.refresher import Refresher
from service.restore import restore
from service.secrets import HttpSecretsStore
from service.settings import ServiceSettings
from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.errors import SkillError
from skill.runner import Runner
from skill.settings import Settings
from skill.tokens import TokenSet
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI
from tests.fault_proxy import FaultProxy

FAULTS = ["latency", "timeout", "reset", "truncate", "slow_close", "down"]


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/", maxsplit=1)[0])


@pytest.fixture
def store_proxy(api: FakeSecretsAPI) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port=_port(api.url)).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def issuer_proxy(issuer: FakeIssuer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port=_port(issuer.url)).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def fault_settings(
    tmp_path: Path, issuer_proxy: FaultProxy, store_proxy: FaultProxy, api: FakeSecretsAPI
) -> ServiceSettings:
    return ServiceSettings(
        issuer=issuer_proxy.url, pi_agent_dir=tmp_path / "pi", codex_home=tmp_path / "codex",
        state_dir=tmp_path / "state", secrets_api_url=f"{store_proxy.url}/api/agent/secrets",
        secrets_api_token=api.token, secrets_timeout=0.5, secrets_attempts=4,
        secrets_deadline=6, connect_timeout=1, read_timeout=1, lock_timeout=5,
    )  # fmt: skip


def persist(settings: ServiceSettings, store: HttpSecretsStore) -> None:
    Persistence(settings, store).persist()


def store_for(settings: ServiceSettings) -> HttpSecretsStore:
    assert settings.secrets_api_url and settings.secrets_api_token
    return HttpSecretsStore(url=settings.secrets_api_url, token=settings.secrets_api_token,
                            timeout=settings.secrets_timeout, attempts=settings.secrets_attempts,
                            deadline=settings.secrets_deadline, cas="off")  # fmt: skip


def signed_in(issuer: FakeIssuer, settings: ServiceSettings, *, expired: bool = False) -> bytes:
    """Write a credential as a sign-in would; returns the file's bytes."""
    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    if expired:
        credential = credential.model_copy(update={"expires_ms": credential.expires_ms - 7200_000})
    PiAuthFile(settings.pi_auth_file).save(credential)
    return settings.pi_auth_file.read_bytes()


def on_disk(settings: ServiceSettings) -> tuple[str, str, int]:
    """(access token, refresh token, expiry) of the credential on disk; fails if it is gone."""
    found = PiAuthFile(settings.pi_auth_file).load()
    assert found is not None, "the credential on disk is gone"
    return found.access_token, found.refresh_token, found.expires_ms


def key(credential: Credential) -> tuple[str, str, int]:
    return credential.access_token, credential.refresh_token, credential.expires_ms


@pytest.mark.parametrize("fault", FAULTS)
def test_persist_through_a_fault(fault: str, fault_settings: ServiceSettings,
                                 issuer: FakeIssuer, api: FakeSecretsAPI,
                                 store_proxy: FaultProxy) -> None:  # fmt: skip
    before = signed_in(issuer, fault_settings)
    store_proxy.faults = [fault]
    persist(fault_settings, store_for(fault_settings))
    assert store_proxy.seen[0] == fault
    assert api.record["codex_credentials"]["refresh"] == on_disk(fault_settings)[1]
    assert fault_settings.pi_auth_file.read_bytes() == before


@pytest.mark.parametrize("fault", FAULTS)
def test_restore_through_a_fault(fault: str, fault_settings: ServiceSettings,
                                 issuer: FakeIssuer, api: FakeSecretsAPI,
                                 store_proxy: FaultProxy) -> None:  # fmt: skip
    stored = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    api.record["codex_credentials"] = stored.to_pi_entry()
    store_proxy.faults = [fault]
    result = restore(fault_settings, store_for(fault_settings))
    assert result.action == "restored", result.message
    assert on_disk(fault_settings) == key(stored)
    assert api.record["codex_credentials"] == stored.to_pi_entry()


@pytest.mark.parametrize("fault", FAULTS)
def test_sync_back_through_faults(fault: str, fault_settings: ServiceSettings,
                                  issuer: FakeIssuer, api: FakeSecretsAPI,
                                  store_proxy: FaultProxy) -> None:  # fmt: skip
    """Every attempt of the first keep-alive step meets the fault; the step after that pushes."""
    keep = KeepAlive(fault_settings, store_for(fault_settings))
    signed_in(issuer, fault_settings)
    store_proxy.faults = [fault] * fault_settings.secrets_attempts
    first = keep.run_once()
    if fault in ("latency", "slow_close"):  # slow, not broken: it still gets through
        assert first.pushed
    else:
        assert first.error in ("secrets_unreachable", "secrets_bad_response"), first.error
        assert not first.pushed
        keep._retry_at = 0.0  # skip the back-off wait
        assert keep.run_once().pushed
    assert api.record["codex_credentials"]["refresh"] == on_disk(fault_settings)[1]
    assert api.record["codex_credentials"]["generation"] == 1


def test_a_store_that_stays_down_loses_nothing(fault_settings: ServiceSettings,
                                               issuer: FakeIssuer, api: FakeSecretsAPI,
                                               store_proxy: FaultProxy) -> None:  # fmt: skip
    """Down for longer than the whole retry deadline: a clear error; the local credential and
    the record already stored are untouched."""
    signed_in(issuer, fault_settings)
    persist(fault_settings, store_for(fault_settings))
    earlier = dict(api.record["codex_credentials"])
    newer = signed_in(issuer, fault_settings)
    store_proxy.down_for(fault_settings.secrets_deadline + 2)
    with pytest.raises(ServiceError) as caught:
        persist(fault_settings, store_for(fault_settings))
    assert caught.value.code == "secrets_unreachable"
    assert "could not be reached" in caught.value.message
    assert fault_settings.pi_auth_file.read_bytes() == newer
    assert api.record["codex_credentials"] == earlier


@pytest.mark.parametrize("fault", FAULTS)
def test_refresh_through_a_fault(fault: str, fault_settings: ServiceSettings,
                                 issuer: FakeIssuer, issuer_proxy: FaultProxy) -> None:  # fmt: skip
    """The refresh token is sent at most once per attempt and never resent after a timeout.
    Where the issuer never saw the request, the next attempt succeeds. Where it answered but
    the answer was cut (``truncate``), the rotation is gone for every client alike: the error
    says so and the credential stays on disk for the user to sign in again."""
    signed_in(issuer, fault_settings, expired=True)
    old = PiAuthFile(fault_settings.pi_auth_file).load()
    assert old is not None
    issuer_proxy.faults = [fault]
    try:
        Refresher(fault_settings).ensure_fresh()
    except SkillError as exc:
        assert fault not in ("latency", "slow_close"), exc.code
        assert on_disk(fault_settings) == key(old)  # a failed attempt changes nothing on disk
    if fault == "truncate":
        with pytest.raises(SkillError) as caught:
            Refresher(fault_settings).ensure_fresh()
        assert caught.value.code == "refresh_token_reused" and caught.value.permanent
        assert on_disk(fault_settings) == key(old)  # kept, never deleted
        return
    renewed = Refresher(fault_settings).ensure_fresh().credential
    assert renewed.refresh_token != old.refresh_token
    assert on_disk(fault_settings) == key(renewed)
    assert issuer.calls["refresh_token_reused"] == 0


@pytest.mark.parametrize("fault", FAULTS)
def test_sign_in_through_a_fault(fault: str, runner_settings: Settings, issuer: FakeIssuer,
                                 issuer_proxy: FaultProxy) -> None:  # fmt: skip
    """The login program's code exchange meets the fault. Either it signs in, or ``complete``
    says what went wrong (a network error, not "bad paste") and the attempt stays open: the
    same address works again if the issuer never saw the code; if it did (an answer cut short),
    the issuer refuses the spent code and the same link signs in anew. No credential file is
    ever half-written, and the code is never resent by itself."""
    settings = runner_settings.model_copy(update={"issuer": issuer_proxy.url, "read_timeout": 2})
    state, _ = Runner(settings).start()
    callback = issuer.sign_in(state.auth_url or "")  # the browser's visit passes untouched
    issuer_proxy.faults = [fault]
    exchanges = issuer.calls["grant:authorization_code"]
    try:
        done = Runner(settings).complete(callback)
    except SkillError as exc:
        assert fault not in ("latency", "slow_close"), exc.message
        assert exc.code in ("network_error", "response_timeout", "invalid_response"), exc.code
        assert not settings.pi_auth_file.exists()
        assert issuer.calls["grant:authorization_code"] - exchanges <= 1  # never resent
        live = Runner(settings).status()
        assert live is not None and live.live, "the attempt stays open for another try"
        try:
            done = Runner(settings).complete(callback)  # the user pastes the same address
        except SkillError as again:
            assert fault == "truncate" and again.code == "code_rejected", again.code
            done = Runner(settings).complete(issuer.sign_in(state.auth_url or ""))
    assert done.status == "succeeded"
    assert PiAuthFile(settings.pi_auth_file).load() is not None
