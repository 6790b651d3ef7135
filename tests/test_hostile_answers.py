"""A secrets API that answers in bad faith, through every path that reads it: restore (a whole
process, its peak memory measured), persist (the API), sync-back (the keep-alive) and /readyz.

Kinds (tests/fake_secrets.py): a valid answer a byte every half second (``drip``), the headers
that way (``drip_headers``), 300 MB (``huge``), JSON nested 100000 deep (``nested``), a record
that is not an object and an ``ok`` that is not ``true`` (``wrong_types``), a string of 240 KB
that never closes (``unclosed``). Each path must end
within its deadline plus a margin, with one of our error codes and no traceback, hold no more
than a bounded amount of memory, and leave the local credential as it was.

``scripts/reliability.py`` reports the ``HOSTILE`` lines these print.
"""

from __future__ import annotations

import subprocess
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from service.app import create_app
from service.keepalive import KeepAlive
from service.settings import ServiceSettings
from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.conftest import PYTHON, REPO, http_store
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI

KINDS = ["drip", "drip_headers", "huge", "nested", "wrong_types", "unclosed"]
DEADLINE = 3.0  # secrets_deadline in these tests
MARGIN = 2.5  # one attempt's timeout may start just before the deadline
MEMORY = 64 * 2**20  # in-process peak (tracemalloc), far below a 300 MB answer
RSS = 64 * 2**20  # a whole restore process's peak resident memory (about 34 MiB here)


@pytest.fixture
def hostile(tmp_path: Path, issuer: FakeIssuer, api: FakeSecretsAPI) -> ServiceSettings:
    settings = ServiceSettings(
        issuer=issuer.url, pi_agent_dir=tmp_path / "pi", codex_home=tmp_path / "codex",
        state_dir=tmp_path / "state", secrets_api_url=api.url, secrets_api_token=api.token,
        secrets_timeout=1.0, secrets_attempts=3, secrets_deadline=DEADLINE, secrets_cas="off",
        operator_token="operator-hostile-0123456789",
    )  # fmt: skip
    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    PiAuthFile(settings.pi_auth_file).save(credential)
    return settings


def measured(call: Callable[[], object]) -> tuple[object, float, int]:
    """(result or exception, seconds, peak bytes allocated) of ``call``."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        result: object = call()
    except Exception as exc:
        result = exc
    took = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, took, peak


def report(path: str, kind: str, took: float, peak: int, traceback: bool) -> None:
    print(f"\nHOSTILE path={path} kind={kind} seconds={took:.1f} peak_mib={peak / 2**20:.1f} "
          f"traceback={int(traceback)}")  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_restore(kind: str, hostile: ServiceSettings, api: FakeSecretsAPI,
                 login_env: dict[str, str]) -> None:  # fmt: skip
    api.faults.extend([kind] * 20)
    before = hostile.pi_auth_file.read_bytes()
    env = {**login_env, "PI_CODING_AGENT_DIR": str(hostile.pi_agent_dir),
           "CHATGPT_LOGIN_STATE_DIR": str(hostile.state_dir),
           "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
           "CHATGPT_LOGIN_SECRETS_TIMEOUT": "1", "CHATGPT_LOGIN_SECRETS_DEADLINE": str(DEADLINE),
           "CHATGPT_LOGIN_SECRETS_CAS": "off",
           "CHATGPT_LOGIN_SECRETS_DIR": str(hostile.state_dir / "none")}  # fmt: skip
    output = hostile.state_dir.parent / "restore.out"
    peak = hostile.state_dir.parent / "restore.rss"
    # GNU time forks the restore from a small process and reads its peak from wait4 (a child
    # forked from this big pytest process would count the parent's pages, shared until exec).
    argv = ["/usr/bin/time", "-f", "%M", "-o", str(peak), PYTHON, "-m", "service.cli", "restore"]
    started = time.monotonic()
    with output.open("w") as sink:
        done = subprocess.run(argv, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                              timeout=60, check=False)  # fmt: skip
    took = time.monotonic() - started
    rss = int(peak.read_text().split()[-1]) * 1024
    text = output.read_text()
    report("restore", kind, took, rss, "Traceback" in text)
    assert "Traceback" not in text and done.returncode == 0, text
    assert took < 2 * DEADLINE + MARGIN, f"{took:.1f} s"  # a read and a write, each bounded
    assert rss < RSS, f"{rss / 2**20:.0f} MiB"
    assert hostile.pi_auth_file.read_bytes() == before


@pytest.mark.parametrize("kind", KINDS)
def test_persist(kind: str, hostile: ServiceSettings, api: FakeSecretsAPI) -> None:
    client = create_app(hostile).test_client()
    headers = {"Authorization": "Bearer operator-hostile-0123456789"}
    api.faults.extend([kind] * 20)
    answer, took, peak = measured(lambda: client.post("/v1/credentials/persist", headers=headers))
    body = getattr(answer, "json", None) or {}
    report("persist", kind, took, peak, not isinstance(body, dict) or "error" not in body)
    assert getattr(answer, "status_code", 500) in (502, 503), body
    assert body["error"] in ("secrets_unreachable", "secrets_bad_response", "secrets_rejected")
    assert took < 2 * DEADLINE + MARGIN and peak < MEMORY


@pytest.mark.parametrize("kind", KINDS)
def test_sync_back(kind: str, hostile: ServiceSettings, api: FakeSecretsAPI) -> None:
    keep = KeepAlive(hostile, http_store(hostile))
    api.faults.extend([kind] * 20)
    tick, took, peak = measured(keep.run_once)
    report("sync-back", kind, took, peak, isinstance(tick, Exception))
    assert not isinstance(tick, Exception), tick
    assert getattr(tick, "error", None) in ("secrets_unreachable", "secrets_bad_response",
                                            "secrets_rejected")  # fmt: skip
    assert took < 2 * DEADLINE + MARGIN and peak < MEMORY


@pytest.mark.parametrize("kind", KINDS)
def test_readyz(kind: str, hostile: ServiceSettings, api: FakeSecretsAPI) -> None:
    client = create_app(hostile).test_client()
    api.faults.extend([kind] * 20)
    answer, took, peak = measured(lambda: client.get("/readyz"))
    body = getattr(answer, "json", None) or {}
    report("readyz", kind, took, peak, "checks" not in body)
    assert getattr(answer, "status_code", 500) in (200, 503), body
    store = body["checks"]["secrets_store"]
    if kind != "wrong_types":  # a readable document: the store answered
        assert store.startswith(("secrets_unreachable", "secrets_bad_response")), store
    assert took < DEADLINE + MARGIN and peak < MEMORY
    assert api.token not in str(body)
