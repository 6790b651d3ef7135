"""Interop with the real clients: the pi-ai 0.73.1 library and the codex 0.169.0 CLI, installed
pinned from npm by scripts/test into .cache/npm. Missing installs fail these tests (never skip)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from skill.authfiles import CodexAuthFile, PiAuthFile
from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.conftest import NPM_BIN, REPO
from tests.fake_issuer import FakeIssuer
from tests.process import Program

pytestmark = pytest.mark.npm

NODE_MODULES = NPM_BIN.parent
PI_SCRIPT = REPO / "tests" / "npm" / "pi_get_api_key.mjs"


def require_npm_clients() -> None:
    assert (NODE_MODULES / "@mariozechner" / "pi-ai").is_dir() and (NPM_BIN / "codex").exists(), (
        "the pinned pi-ai and codex are not installed: run scripts/test"
    )


def pi_api_key(auth_file: Path, issuer: FakeIssuer) -> dict[str, object]:
    require_npm_clients()
    done = subprocess.run(
        ["node", str(PI_SCRIPT), str(NODE_MODULES), str(auth_file), issuer.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def codex_status(codex_home: Path) -> str:
    require_npm_clients()
    done = subprocess.run(
        [str(NPM_BIN / "codex"), "-c", 'cli_auth_credentials_store="file"', "login", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "CODEX_HOME": str(codex_home),
            "HOME": str(codex_home.parent),
            "PATH": "/usr/bin:/bin",
        },
        check=False,
    )
    return done.stdout + done.stderr


def test_pi_ai_accepts_the_file_our_login_program_writes(
    login_env: dict[str, str], issuer: FakeIssuer, tmp_path: Path
) -> None:
    program = Program(["oauth-login"], login_env)
    program.type(issuer.sign_in(program.authorize_url()))
    assert program.finish() == 0
    auth_file = tmp_path / "pi" / "auth.json"
    result = pi_api_key(auth_file, issuer)
    assert result["apiKey"] == json.loads(auth_file.read_text())["openai-codex"]["access"]
    assert issuer.calls["grant:refresh_token"] == 0


def test_pi_ai_refreshes_an_expired_file_through_the_issuer(
    issuer: FakeIssuer, tmp_path: Path
) -> None:
    fresh = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    expired = fresh.model_copy(update={"expires_ms": int(time.time() * 1000) - 1000})
    auth_file = tmp_path / "auth.json"
    PiAuthFile(auth_file).save(expired)
    result = pi_api_key(auth_file, issuer)
    new = result["newCredentials"]
    assert isinstance(new, dict)
    assert issuer.calls["grant:refresh_token"] == 1
    assert new["refresh"] != expired.refresh_token and new["accountId"] == expired.account_id
    assert result["apiKey"] == issuer.issued_access[-1] != expired.access_token


def test_codex_accepts_our_codex_file(issuer: FakeIssuer, tmp_path: Path) -> None:
    codex_home = tmp_path / "codex"
    codex_home.mkdir(mode=0o700)
    assert "Not logged in" in codex_status(codex_home)  # the check can fail
    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    CodexAuthFile(codex_home / "auth.json").save(credential)
    assert "Logged in using ChatGPT" in codex_status(codex_home)
