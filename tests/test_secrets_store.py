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
PATCH = {"codex_credentials": ENTRY}


def document(secrets: HttpSecretsStore | FileSecretsStore) -> dict[str, object]:
    found = secrets.read()
    assert found is not None
    return found.document


def store(api: FakeSecretsAPI, **kwargs: object) -> HttpSecretsStore:
    options: dict[str, object] = {"timeout": 0.5, "attempts": 4, "deadline": 5.0}
    options.update(kwargs)
    return HttpSecretsStore(url=api.url, token=api.token, **options)  # type: ignore[arg-type]


def test_round_trip_and_delete(api: FakeSecretsAPI) -> None:
    secrets = store(api)
    assert document(secrets) == {}
    assert secrets.write(PATCH) is None  # the seed's API gives no versions
    assert api.record == PATCH
    assert document(secrets) == PATCH
    api.record["other_secret"] = {"keep": True}
    secrets.write({"codex_credentials": None})
    assert api.record == {"other_secret": {"keep": True}}


def test_a_store_without_versions_is_found_out_and_never_sent_if_match(
    api: FakeSecretsAPI,
) -> None:
    """The seed's API ignores If-Match: the one-time probe (an empty patch) finds that out and
    changes nothing."""
    api.record["k"] = 1
    secrets = store(api)
    assert secrets.compare_and_set() is False
    assert api.record == {"k": 1}
    assert api.requests == ["PATCH"]
    assert secrets.compare_and_set() is False and api.requests == ["PATCH"]  # asked once


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
    secrets.write(PATCH)
    assert time.monotonic() - started < 5
    assert api.record["codex_credentials"] == ENTRY


def test_not_ok_is_not_success(api: FakeSecretsAPI) -> None:
    api.faults.append("not_ok")
    with pytest.raises(ServiceError) as caught:
        store(api).write(PATCH)
    assert caught.value.code == "secrets_rejected"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried(api: FakeSecretsAPI, status: int) -> None:
    api.faults.append(f"status:{status}")
    with pytest.raises(ServiceError) as caught:
        store(api).write(PATCH)
    assert caught.value.code == "secrets_forbidden" and "FAT_TOOLS_TOKEN" in caught.value.message
    assert api.requests == ["PATCH"]
    wrong = HttpSecretsStore(url=api.url, token="wrong", timeout=0.5, attempts=3)
    with pytest.raises(ServiceError):
        wrong.read()
    assert TOKEN not in caught.value.message


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_neither_followed_nor_retried(api: FakeSecretsAPI, status: int) -> None:
    """The token would go wherever a redirect points; asking again brings the same redirect."""
    api.faults.append(f"status:{status}")
    with pytest.raises(ServiceError) as caught:
        store(api).read()
    assert caught.value.code == "secrets_bad_response" and f"HTTP {status}" in caught.value.message
    assert api.requests == ["GET"]


def test_a_lasting_outage_ends_within_the_deadline(api: FakeSecretsAPI) -> None:
    api.faults.extend(["status:503"] * 50)
    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        store(api, attempts=50, deadline=1.5).write(PATCH)
    assert caught.value.code == "secrets_unreachable" and caught.value.transient
    assert time.monotonic() - started < 2.5
    assert 2 <= len(api.requests) < 50


def test_retry_after_is_honoured(api: FakeSecretsAPI) -> None:
    waits: list[float] = []
    api.faults.append("retry_after:0.7")
    store(api, sleep=waits.append).write(PATCH)
    assert waits == [0.7]


def test_down_is_reported(tmp_path: Path) -> None:
    from tests.conftest import free_port  # noqa: PLC0415

    dead = HttpSecretsStore(url=f"http://127.0.0.1:{free_port()}/x", token="t", attempts=2,
                            deadline=2, sleep=lambda _: None)  # fmt: skip
    with pytest.raises(ServiceError) as caught:
        dead.read()
    assert caught.value.code == "secrets_unreachable"
    assert "Nothing was changed for it" in caught.value.message


def test_file_store(tmp_path: Path) -> None:
    """Versions and compare-and-set under a lock, as the reference server has them."""
    secrets = FileSecretsStore(tmp_path / "state" / "secrets.json")
    first = secrets.read()
    assert first is not None and first.document == {}
    tag = secrets.write(PATCH, if_match=first.etag)
    assert document(secrets) == PATCH
    assert stat.S_IMODE((tmp_path / "state" / "secrets.json").stat().st_mode) == 0o600
    assert secrets.read(if_none_match=tag) is None  # unchanged
    with pytest.raises(ServiceError) as caught:
        secrets.write({"codex_credentials": None}, if_match=first.etag)
    assert caught.value.code == "store_conflict" and document(secrets) == PATCH
    secrets.write({"codex_credentials": None}, if_match=tag)
    assert document(secrets) == {}
    assert secrets.compare_and_set()


HOSTILE = ["drip", "drip_headers", "huge", "nested"]


@pytest.mark.parametrize("fault", HOSTILE)
def test_a_hostile_answer_is_cut_off_within_the_deadline(api: FakeSecretsAPI, fault: str) -> None:
    """Every attempt meets the hostile answer: the store gives up within its deadline (a byte
    at a time does not stretch it), reads no more than its cap, and says so with its own code."""
    api.faults.extend([fault] * 10)
    secrets = store(api, timeout=1.0, attempts=3, deadline=2.5)
    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        secrets.read()
    took = time.monotonic() - started
    assert took < 4, f"{fault}: {took:.1f} s"
    expected = {"drip": "secrets_unreachable", "drip_headers": "secrets_unreachable",
                "huge": "secrets_bad_response", "nested": "secrets_bad_response"}  # fmt: skip
    assert caught.value.code == expected[fault], caught.value.message
    assert "Traceback" not in caught.value.message
    if fault in ("huge", "nested"):
        assert api.requests.count("GET") == 1, "not asked again: the answer would be the same"


def test_wrong_types_in_a_readable_answer_are_refused_as_such(api: FakeSecretsAPI) -> None:
    """A write's answer whose ok is not true is no acknowledgement; a document whose record is
    not an object is the owner module's to judge (tests/test_hostile.py)."""
    api.faults.append("wrong_types")
    with pytest.raises(ServiceError) as caught:
        store(api).write(PATCH)
    assert caught.value.code == "secrets_rejected"


def test_a_document_larger_than_the_limit_says_what_to_remove(api: FakeSecretsAPI) -> None:
    """Keys of other tools (or left by a bug) can outgrow what this tool reads: that is not a
    wrong address, and the message says what to do."""
    api.record["someone_elses"] = "x" * (300 * 1024)
    with pytest.raises(ServiceError) as caught:
        HttpSecretsStore(url=api.url, token=TOKEN, timeout=2, attempts=1, deadline=3).read()
    assert caught.value.code == "secrets_bad_response" and not caught.value.transient
    assert "larger than" in caught.value.message and "remove the keys" in caught.value.message
    assert "CHATGPT_LOGIN_ANSWER_MAX_BYTES" in caught.value.message


def test_a_write_to_a_wrong_path_is_said_at_once_as_a_wrong_address(api: FakeSecretsAPI) -> None:
    """A 404 to a write is no outage to wait out: the service would retry a typo for ever."""
    api.faults.extend(["status:404", "status:404", "status:404"])
    with pytest.raises(ServiceError) as caught:
        store(api).write(PATCH)
    assert not caught.value.transient and "CHATGPT_LOGIN_SECRETS_API_URL" in caught.value.message
    assert len(api.faults) == 2, "asked once, not retried"
