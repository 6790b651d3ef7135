"""The secrets store against a real fake secrets API with faults, and the file backend."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from service.errors import ServiceError
from service.secrets import FileSecretsStore, HttpSecretsStore
from tests.fake_secrets import TOKEN, FakeSecretsAPI

ENTRY = {"type": "oauth", "access": "a", "refresh": "r", "expires": 1, "accountId": "acct"}


def store(api: FakeSecretsAPI, **kwargs: object) -> HttpSecretsStore:
    options: dict[str, object] = {"timeout": 0.5, "attempts": 4, "deadline": 5.0}
    options.update(kwargs)
    return HttpSecretsStore(url=api.url, token=api.token, **options)  # type: ignore[arg-type]


def test_round_trip_and_delete(api: FakeSecretsAPI) -> None:
    secrets = store(api)
    assert secrets.get() is None
    secrets.put(ENTRY)
    assert api.record == {"codex_credentials": ENTRY}
    assert secrets.get() == ENTRY
    api.record["other_secret"] = {"keep": True}
    secrets.delete()
    assert api.record == {"other_secret": {"keep": True}}
    assert secrets.get() is None


@pytest.mark.parametrize(
    "fault",
    ["delay", "reset", "truncated", "malformed", "status:500", "status:503", "retry_after:0.1"],
)
def test_one_fault_is_retried_away(api: FakeSecretsAPI, fault: str) -> None:
    secrets = store(api)
    api.faults.append(fault)
    started = time.monotonic()
    # "malformed" too: a 2xx whose body cannot be read may have been cut short on the way, and
    # every request here is idempotent, so it is sent again.
    secrets.put(ENTRY)
    assert time.monotonic() - started < 5
    assert api.record["codex_credentials"] == ENTRY


def test_not_ok_is_not_success(api: FakeSecretsAPI) -> None:
    api.faults.append("not_ok")
    with pytest.raises(ServiceError) as caught:
        store(api).put(ENTRY)
    assert caught.value.code == "secrets_rejected"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried(api: FakeSecretsAPI, status: int) -> None:
    api.faults.append(f"status:{status}")
    with pytest.raises(ServiceError) as caught:
        store(api).put(ENTRY)
    assert caught.value.code == "secrets_forbidden" and "FAT_TOOLS_TOKEN" in caught.value.message
    assert api.requests == ["PATCH"]
    wrong = HttpSecretsStore(url=api.url, token="wrong", timeout=0.5, attempts=3)
    with pytest.raises(ServiceError):
        wrong.get()
    assert TOKEN not in caught.value.message


def test_a_lasting_outage_ends_within_the_deadline(api: FakeSecretsAPI) -> None:
    api.faults.extend(["status:503"] * 50)
    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        store(api, attempts=50, deadline=1.5).put(ENTRY)
    assert caught.value.code == "secrets_unreachable" and caught.value.transient
    assert time.monotonic() - started < 2.5
    assert 2 <= len(api.requests) < 50


def test_retry_after_is_honoured(api: FakeSecretsAPI) -> None:
    waits: list[float] = []
    api.faults.append("retry_after:0.7")
    store(api, sleep=waits.append).put(ENTRY)
    assert waits == [0.7]


def test_down_is_reported(tmp_path: Path) -> None:
    from tests.conftest import free_port  # noqa: PLC0415

    dead = HttpSecretsStore(url=f"http://127.0.0.1:{free_port()}/x", token="t", attempts=2,
                            deadline=2, sleep=lambda _: None)  # fmt: skip
    with pytest.raises(ServiceError) as caught:
        dead.get()
    assert caught.value.code == "secrets_unreachable"
    assert "stays on this machine" in caught.value.message


def test_file_store(tmp_path: Path) -> None:
    secrets = FileSecretsStore(tmp_path / "state" / "secrets.json")
    assert secrets.get() is None
    secrets.put(ENTRY)
    assert secrets.get() == ENTRY
    assert stat.S_IMODE((tmp_path / "state" / "secrets.json").stat().st_mode) == 0o600
    secrets.delete()
    assert secrets.get() is None
