"""The one settings object: environment names, list parsing, defaults, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from skill.errors import ExitCode
from skill.settings import Settings
from tests.conftest import PYTHON, REPO
from tests.process import Program


def test_defaults_match_the_real_clients(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PI_CODING_AGENT_DIR", "CODEX_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings.from_env()
    assert settings.issuer == "https://auth.openai.com"
    assert settings.client_id == "app_EMoamEEZ73f0CkXaXp7hrann"
    assert settings.callback_ports == (1455, 1457)
    assert settings.pi_auth_file == tmp_path / ".pi" / "agent" / "auth.json"
    assert settings.codex_auth_file == tmp_path / ".codex" / "auth.json"
    assert settings.state_dir == tmp_path / ".local" / "state" / "chatgpt-login"
    assert settings.credential_files == frozenset({"pi"})
    assert settings.refused_plans == frozenset({"free"})


def test_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHATGPT_LOGIN_ISSUER", "http://127.0.0.1:9/")
    monkeypatch.setenv("CHATGPT_LOGIN_CALLBACK_PORTS", "2455, 2457")
    monkeypatch.setenv("CHATGPT_LOGIN_CREDENTIAL_FILES", "pi,codex")
    monkeypatch.setenv("CHATGPT_LOGIN_REFUSED_PLANS", "free,go")
    monkeypatch.setenv("PI_CODING_AGENT_DIR", str(tmp_path / "pi"))
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "cx"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    settings = Settings.from_env()
    assert settings.issuer == "http://127.0.0.1:9"
    assert settings.callback_ports == (2455, 2457)
    assert settings.credential_files == frozenset({"pi", "codex"})
    assert settings.refused_plans == frozenset({"free", "go"})
    assert settings.pi_agent_dir == tmp_path / "pi"
    assert settings.codex_home == tmp_path / "cx"
    assert settings.state_dir == tmp_path / "xdg" / "chatgpt-login"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("issuer", "auth.openai.com"),
        ("callback_ports", "0"),
        ("credential_files", "pi,keychain"),
        ("read_timeout", "-1"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    monkeypatch.setenv(f"CHATGPT_LOGIN_{field.upper()}", value)
    with pytest.raises(ValidationError):
        Settings.from_env()


def test_cli_reports_a_bad_setting_without_echoing_it(login_env: dict[str, str]) -> None:
    env = {**login_env, "CHATGPT_LOGIN_ISSUER": "not-a-url-secretvalue"}
    program = Program(["oauth-login"], env)
    assert program.finish() == 2
    assert "Error: Invalid setting CHATGPT_LOGIN_ISSUER: issuer must be" in program.stderr
    assert "secretvalue" not in program.stderr


@pytest.mark.parametrize(
    "variable",
    ["CHATGPT_LOGIN_OPERATOR_TOKEN", "FAT_TOOLS_TOKEN", "CHATGPT_LOGIN_SECRETS_API_TOKEN"],
)
@pytest.mark.parametrize("value", ["", "   ", "x", "fifteen-chars-x"])
def test_a_short_token_is_refused_at_start(tmp_path: Path, variable: str, value: str) -> None:
    """Every bearer token the service takes has at least 16 characters; serve says which one
    is short (never its value) and exits 2 before listening."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "CHATGPT_LOGIN_SECRETS_DIR": str(tmp_path / "none"), variable: value}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--bind", "127.0.0.1:9"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "at least 16 characters" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    if len(value.strip()) > 3:
        assert value not in done.stderr


def test_a_file_secret_it_may_not_read_is_named_not_skipped(
    login_env: dict[str, str], tmp_path: Path
) -> None:
    """Skipping an unreadable secret would run the service without its operator token (and
    then keep the API on loopback, or store nothing), with nothing said."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "operator_token").write_text("an-operator-token-of-32-characters\n")
    (secrets / "operator_token").chmod(0o600)
    os.chown(secrets / "operator_token", 65534, 65534)  # as root in a user namespace: unmapped
    env = {**login_env, "CHATGPT_LOGIN_SECRETS_DIR": str(secrets),
           "CHATGPT_LOGIN_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", PYTHON, "-m", "service.cli", "restore",
         "--strict"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: The file secret {secrets / 'operator_token'} is there but this user (uid 0) may "
        "not read it. Make it readable by that user (with compose: run scripts/make-secrets as "
        "root, or chown the file to that uid), then start again."
    ]


def test_a_file_secret_that_is_a_directory_is_named_not_skipped(
    login_env: dict[str, str], tmp_path: Path
) -> None:
    """Docker makes a directory where a secret's source file is missing: with the store's token
    taken for absent, the service would keep the credential in a local file instead."""
    secrets = tmp_path / "secrets"
    (secrets / "secrets_api_token").mkdir(parents=True)
    env = {**login_env, "CHATGPT_LOGIN_SECRETS_DIR": str(secrets),
           "CHATGPT_LOGIN_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    argv = [PYTHON, "-m", "service.cli", "restore", "--strict"]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "secrets_api_token is a directory, not a file" in done.stderr


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:99999", "127.0.0.1:http", "garbage", "a host:80", "999.1.1.1:80"]
)
def test_a_bind_address_without_a_usable_port_is_refused_before_anything_is_written(
    tmp_path: Path, bind: str
) -> None:
    """gunicorn would fail only after `serve` left the address for the agent's commands, and
    every one of them then broke on it (a review found `logout` among them)."""
    state = tmp_path / "state"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CHATGPT_LOGIN_STATE_DIR": str(state),
           "CHATGPT_LOGIN_SECRETS_DIR": str(tmp_path / "none"),
           "CHATGPT_LOGIN_OPERATOR_TOKEN": "an-operator-token-long-enough"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--bind", bind],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    assert done.returncode == 2 and "is not HOST:PORT" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (state / "service.url").exists()


def test_an_address_left_damaged_in_the_state_directory_is_taken_for_none(tmp_path: Path) -> None:
    from skill.service_client import DEFAULT_URL, service_url  # noqa: PLC0415

    settings = Settings(state_dir=tmp_path)
    (tmp_path / "service.url").write_text("http://127.0.0.1:99999")
    assert service_url(settings) == DEFAULT_URL
    (tmp_path / "service.url").write_text("http://127.0.0.1:8123")
    assert service_url(settings) == "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("url", "taken"),
    [("http://127.0.0.1:8090/api", True), ("http://secrets-api:8090/api", True),
     ("http://10.1.2.3/api", True), ("http://vault.internal:8200", True),
     ("https://secrets.example.com/api", True), ("http://secrets.example.com/api", False),
     ("http://8.8.8.8/api", False), ("http://evil%2ecom/api", False),  # urllib unquotes it
     ("http://134744072/api", False), ("http://0x08080808/api", False)],  # both are 8.8.8.8
)  # fmt: skip
def test_a_store_over_plain_http_is_taken_only_on_a_private_network(url: str, taken: bool) -> None:
    """The store's token and every credential would cross the internet in the clear."""
    from service.settings import ServiceSettings  # noqa: PLC0415

    if taken:
        assert ServiceSettings(secrets_api_url=url, vault_addr=url).secrets_api_url
    else:
        with pytest.raises(ValidationError, match="not on a private network"):
            ServiceSettings(secrets_api_url=url)
