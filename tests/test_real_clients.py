"""The skill runner driving the real pi-ai 0.73.1 and codex 0.169.0 CLIs (pinned in
tests/npm, installed by scripts/test), against the fake issuer served as https://auth.openai.com
inside a private network namespace (see tests/netns.py). Missing tools fail, never skip."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NPM_BIN, REPO
from tests.netns import CertAuthority, make_ca, network_namespace

pytestmark = pytest.mark.npm


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def netns() -> Iterator[str]:
    with network_namespace() as name:
        yield name


def sign_in(netns: str, ca: CertAuthority, tmp_path: Path, **spec: str) -> dict[str, Any]:
    assert (NPM_BIN / "pi-ai").exists() and (NPM_BIN / "codex").exists(), "run scripts/test"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({
        **spec, "work": str(tmp_path), "npm_bin": str(NPM_BIN), "ca_cert": str(ca.ca_cert),
        "server_cert": str(ca.server_cert), "server_key": str(ca.server_key),
    }))  # fmt: skip
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.netns_flow", str(spec_file)],
        capture_output=True, text=True, timeout=240, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    assert result["sessions_left"] == [] and result["listeners_left"] == []
    assert result["work_left"] == [] and result["logs_left"] == []
    return result


def test_pi_ai_relayed_over_its_listener(
    netns: str, test_ca: CertAuthority, tmp_path: Path
) -> None:
    result = sign_in(netns, test_ca, tmp_path, driver="pi-ai", method="browser", scenario="ok")
    assert result["status"] == "succeeded", result
    assert result["auth_url_host"] == "auth.openai.com"
    assert result["pi_mode"] == "0o600"
    assert result["pi_entry"]["accountId"] == "acct-1111"
    assert result["saved"] == [str(tmp_path / "pi" / "auth.json")]
    assert result["issuer_calls"]["grant:authorization_code"] == 1


def test_pi_ai_paste_prompt_is_typed(netns: str, test_ca: CertAuthority, tmp_path: Path) -> None:
    result = sign_in(netns, test_ca, tmp_path, driver="pi-ai", method="browser",
                     scenario="paste_prompt")  # fmt: skip
    assert result["status"] == "succeeded", result
    assert result["pi_entry"]["accountId"] == "acct-1111"


def test_pi_ai_failure_reports_its_own_error(
    netns: str, test_ca: CertAuthority, tmp_path: Path
) -> None:
    result = sign_in(netns, test_ca, tmp_path, driver="pi-ai", method="browser",
                     scenario="exchange_fails")  # fmt: skip
    assert result["status"] == "error" and result["error"] == "program_failed", result
    assert "token exchange failed (400)" in result["message"]
    assert result["final_status"] == "failed"
    assert "pi_entry" not in result


def test_pi_ai_free_plan_is_refused(netns: str, test_ca: CertAuthority, tmp_path: Path) -> None:
    result = sign_in(netns, test_ca, tmp_path, driver="pi-ai", method="browser",
                     scenario="free_plan")  # fmt: skip
    assert result["error"] == "plan_not_supported", result
    assert "pi_entry" not in result


def test_codex_browser_follows_its_success_redirect(
    netns: str, test_ca: CertAuthority, tmp_path: Path
) -> None:
    result = sign_in(netns, test_ca, tmp_path, driver="codex", method="browser", scenario="ok")
    assert result["status"] == "succeeded", result
    assert result["redirect_host"].startswith("127.0.0.1:")  # codex 0.169 uses 127.0.0.1
    assert result["pi_entry"]["accountId"] == "acct-1111"
    assert result["pi_mode"] == "0o600"


def test_codex_failure_reports_its_own_error(
    netns: str, test_ca: CertAuthority, tmp_path: Path
) -> None:
    result = sign_in(netns, test_ca, tmp_path, driver="codex", method="browser",
                     scenario="exchange_fails")  # fmt: skip
    assert result["status"] == "error" and result["error"] == "program_failed", result
    assert "codex login program failed" in result["message"]


def test_codex_device_code(netns: str, test_ca: CertAuthority, tmp_path: Path) -> None:
    result = sign_in(netns, test_ca, tmp_path, driver="codex", method="device", scenario="ok")
    assert result["status"] == "succeeded", result
    assert result["pi_entry"]["accountId"] == "acct-1111"
