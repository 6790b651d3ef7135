"""The API key exchange after a sign-in (``CHATGPT_LOGIN_API_KEY_EXCHANGE``), with the real
runner and our login program against the fake issuer: a key for an account with an API
organization, none (said plainly) for one without, none when the issuer refuses; the sign-in
succeeds every time, the key never appears in any output, and logout takes back the key a
sign-in brought but never one the user put there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from skill.commands import Output, status
from skill.runner import Runner
from skill.settings import Settings
from skill.signout import sign_out_locally
from tests.fake_issuer import Account, FakeIssuer


@pytest.fixture
def key_settings(runner_settings: Settings) -> Settings:
    return runner_settings.model_copy(
        update={"credential_files": frozenset({"pi", "codex"}), "api_key_exchange": True}
    )


def sign_in(settings: Settings, issuer: FakeIssuer) -> Any:
    runner = Runner(settings)
    state, _ = runner.start()
    assert state.auth_url
    return runner.complete(issuer.sign_in(state.auth_url))


def codex_document(settings: Settings) -> dict[str, Any]:
    found = json.loads(settings.codex_auth_file.read_text())
    assert isinstance(found, dict)
    return found


def status_lines(settings: Settings) -> tuple[list[str], dict[str, Any]]:
    captured: dict[str, Any] = {}

    class Capture(Output):
        def emit(self, lines: list[str], data: dict[str, Any]) -> None:
            captured["lines"], captured["data"] = lines, data

    status(settings, Capture(as_json=False))
    return captured["lines"], captured["data"]


def test_an_account_with_an_organization_gets_a_key(
    key_settings: Settings, issuer: FakeIssuer
) -> None:
    issuer.account = Account(organization_id="org-123", project_id="proj-456")
    done = sign_in(key_settings, issuer)
    assert done.status == "succeeded"
    assert issuer.calls["grant:urn:ietf:params:oauth:grant-type:token-exchange"] == 1
    assert codex_document(key_settings)["OPENAI_API_KEY"] == issuer.api_keys[0]
    assert done.notes == [f"API key saved as OPENAI_API_KEY in {key_settings.codex_auth_file}."]
    lines, data = status_lines(key_settings)
    assert data["api_key"] == {"available": True, "from_sign_in": True,
                               "path": str(key_settings.codex_auth_file)}  # fmt: skip
    assert any(line.startswith("An OpenAI API key is set (from this sign-in)") for line in lines)
    assert issuer.api_keys[0] not in "\n".join(lines) + json.dumps(data, default=str)
    sign_out_locally(key_settings)
    assert not key_settings.codex_auth_file.exists()  # the key went with the tokens


def test_logout_leaves_a_key_the_user_put_there(key_settings: Settings, issuer: FakeIssuer) -> None:
    issuer.account = Account(organization_id="org-123", project_id="proj-456")
    assert sign_in(key_settings, issuer).status == "succeeded"
    document = codex_document(key_settings)
    document["OPENAI_API_KEY"] = "sk-the-users-own-key-0123456789abcdef"
    key_settings.codex_auth_file.write_text(json.dumps(document))
    assert status_lines(key_settings)[1]["api_key"]["from_sign_in"] is False
    sign_out_locally(key_settings)
    kept = codex_document(key_settings)
    assert kept["OPENAI_API_KEY"] == "sk-the-users-own-key-0123456789abcdef"
    assert "tokens" not in kept


@pytest.mark.parametrize(
    ("organization", "fault", "said"),
    [
        (None, None, "this account has no OpenAI API organization and project"),
        ("org-123", (500, {"error": "server_error"}), "the exchange failed (server_error"),
        ("org-123", (403, {"error": {"code": "forbidden", "message": "no"}}),
         "the exchange failed (server_error: The sign-in server gave no API key. The server "
         "answered HTTP 403 (forbidden)"),
    ],
    ids=["no organization", "issuer error", "issuer refuses"],
)  # fmt: skip
def test_no_key_is_said_plainly_and_the_sign_in_stands(
    key_settings: Settings, issuer: FakeIssuer, organization: str | None,
    fault: tuple[int, dict[str, Any]] | None, said: str,
) -> None:  # fmt: skip
    issuer.account = Account(organization_id=organization, project_id="proj-456")
    issuer.api_key_fault = fault
    done = sign_in(key_settings, issuer)
    assert done.status == "succeeded" and key_settings.pi_auth_file.exists()
    assert codex_document(key_settings)["OPENAI_API_KEY"] is None
    assert len(done.notes) == 1 and said in done.notes[0], done.notes
    assert done.notes[0].endswith("The sign-in itself works.")
    lines, data = status_lines(key_settings)
    assert data["api_key"]["available"] is False
    assert "No OpenAI API key: the last sign-in's note says why." in lines


def test_the_exchange_needs_the_codex_file() -> None:
    with pytest.raises(ValueError, match="add codex to CHATGPT_LOGIN_CREDENTIAL_FILES"):
        Settings(api_key_exchange=True)


def test_a_key_the_user_had_is_kept_through_a_sign_in_and_its_logout(
    key_settings: Settings, issuer: FakeIssuer
) -> None:
    key_settings.codex_auth_file.parent.mkdir(parents=True)
    key_settings.codex_auth_file.write_text(
        json.dumps({"auth_mode": "apikey", "OPENAI_API_KEY": "sk-the-users-own-key-0123456789"})
    )
    issuer.account = Account(organization_id="org-123", project_id="proj-456")
    done = sign_in(key_settings, issuer)
    assert done.status == "succeeded" and issuer.api_keys == []  # not even asked for
    assert "holds one already, left as it is" in done.notes[0]
    assert codex_document(key_settings)["OPENAI_API_KEY"] == "sk-the-users-own-key-0123456789"
    sign_out_locally(key_settings)
    assert codex_document(key_settings)["OPENAI_API_KEY"] == "sk-the-users-own-key-0123456789"


def test_a_logout_elsewhere_takes_the_key_too(
    key_settings: Settings, issuer: FakeIssuer, tmp_path: Path
) -> None:
    """Another container of the user logs out: this one signs out when it sees the tombstone,
    and the API key this sign-in brought goes with the tokens."""
    from service.persistence import Persistence  # noqa: PLC0415
    from service.secrets import secrets_store  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415

    issuer.account = Account(organization_id="org-123", project_id="proj-456")
    assert sign_in(key_settings, issuer).status == "succeeded"
    shared = tmp_path / "shared-store.json"
    here = ServiceSettings(**{**key_settings.model_dump(), "secrets_file": shared})
    there = ServiceSettings(**{**here.model_dump(), "state_dir": tmp_path / "other-state"})
    Persistence(here, secrets_store(here)).persist()
    Persistence(there, secrets_store(there)).log_out(None)
    assert Persistence(here, secrets_store(here)).sync().decision == "drop"
    assert not key_settings.codex_auth_file.exists()
