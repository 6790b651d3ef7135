"""Shared fixtures: a strict fake issuer on 127.0.0.1 and settings that point at it."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from service.secrets import HttpSecretsStore
from skill.settings import Settings
from tests.canary import Sweep, register
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI

if TYPE_CHECKING:
    from tests.openbao import OpenBao

REPO = Path(__file__).resolve().parent.parent
NPM_BIN = REPO / ".cache" / "npm" / "node_modules" / ".bin"


# The canary sweep (tests/canary.py) watches the whole run; CANARY_SWEEP=0 turns it off.
SWEEP = Sweep()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CANARY_SWEEP", "1") != "0":
        SWEEP.start()


@pytest.fixture(autouse=True)
def _sweep_test_dirs(request: pytest.FixtureRequest) -> Iterator[None]:
    """The sweep names the running test in each find; its directory's log files go to the
    sweep when it ends."""
    SWEEP.current = request.node.nodeid
    yield
    tmp = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if SWEEP.running and isinstance(tmp, Path):
        SWEEP.read_dir(tmp)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not SWEEP.running:
        return
    SWEEP.stop()
    # Under pytest-xdist a worker's own summary and exit status reach no one: it hands its finds
    # to the controller (pytest_testnodedown), which reports every worker's and fails the run.
    handed = getattr(session.config, "workeroutput", None)
    if handed is not None:
        handed["canary"] = {"summary": SWEEP.summary(), "leaks": SWEEP.leaks()}
    elif SWEEP.leaks() or any(found["leaks"] for found in FROM_WORKERS):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


FROM_WORKERS: list[dict[str, Any]] = []  # what each xdist worker's sweep found


@pytest.hookimpl(optionalhook=True)  # an xdist hook: known only when xdist is loaded
def pytest_testnodedown(node: Any, error: object) -> None:
    found = getattr(node, "workeroutput", {}).get("canary")
    if found is not None:
        FROM_WORKERS.append(found)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SWEEP.thread is None or hasattr(terminalreporter.config, "workeroutput"):
        return
    terminalreporter.write_sep("=", "canary sweep")
    leaks = list(SWEEP.leaks())
    terminalreporter.write_line(f"{SWEEP.summary()}; leaks: {len(leaks)}")
    for n, found in enumerate(FROM_WORKERS, start=1):
        terminalreporter.write_line(f"worker {n}: {found['summary']}; leaks: {len(found['leaks'])}")
        leaks += found["leaks"]
    for leak in leaks[:50]:
        terminalreporter.write_line(f"LEAK: {leak}", red=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when no socket listens on ``port``, read from the kernel's socket tables.

    Not "can I bind it": a connection the program just closed lingers on the port for a moment
    (seen under load) without anything listening, and would make a bind probe fail.
    """
    from skill.procs import listener_inodes  # noqa: PLC0415

    return not listener_inodes(port)


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    fake = FakeIssuer().start()
    yield fake
    fake.stop()


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def settings(tmp_path: Path, issuer: FakeIssuer, ports: tuple[int, int]) -> Settings:
    return Settings(
        issuer=issuer.url,
        callback_ports=ports,
        pi_agent_dir=tmp_path / "pi",
        codex_home=tmp_path / "codex",
        state_dir=tmp_path / "state",
        connect_timeout=2,
        read_timeout=5,
        login_timeout=60,
        lock_timeout=5,
    )


@pytest.fixture
def login_env(tmp_path: Path, issuer: FakeIssuer, ports: tuple[int, int]) -> dict[str, str]:
    """Environment for running the real CLI as a separate process against the fake issuer."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "CHATGPT_LOGIN_ISSUER": issuer.url,
        "CHATGPT_LOGIN_CALLBACK_PORTS": f"{ports[0]},{ports[1]}",
        "PI_CODING_AGENT_DIR": str(tmp_path / "pi"),
        "CODEX_HOME": str(tmp_path / "codex"),
        "CHATGPT_LOGIN_CONNECT_TIMEOUT": "2",
        "CHATGPT_LOGIN_READ_TIMEOUT": "5",
    }


PYTHON = sys.executable


def wait_until(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail with ``what`` at the deadline."""
    import time  # noqa: PLC0415

    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short private state directory (a tmux socket path must stay under 108 bytes); its
    tmux server is killed afterwards."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    path = Path(tempfile.mkdtemp(prefix="cgl-", dir="/tmp"))
    yield path
    if SWEEP.running:
        SWEEP.read_dir(path)
    subprocess.run(
        ["tmux", "-S", str(path / "tmux.sock"), "kill-server"], capture_output=True, check=False
    )
    shutil.rmtree(path, ignore_errors=True)


# A proxy whose URL carries a password, handed to every login program the runner starts (the
# issuer is on loopback, so nothing goes through it): the canary sweep then shows that the
# password reaches no process's argument list, log or output.
PROXY_PASSWORD = "proxy-pw-canary-3b8e"
register(PROXY_PASSWORD, "proxy password")


@pytest.fixture
def runner_settings(settings: Settings, state_dir: Path) -> Settings:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HTTPS_PROXY": f"http://agent:{PROXY_PASSWORD}@127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return settings.model_copy(update={"state_dir": state_dir, "child_env": env})


@pytest.fixture
def api() -> Iterator[FakeSecretsAPI]:
    """The fake secrets API on 127.0.0.1 (faults on demand)."""
    fake = FakeSecretsAPI().start()
    yield fake
    fake.stop()


def http_store(settings: Settings) -> HttpSecretsStore:
    """The http store for ``settings``, with the short bounds tests want. The fake is the seed's
    API, which has no compare-and-set: told so, the store sends no probe (fault tests count
    requests)."""
    url, token = (
        getattr(settings, "secrets_api_url", None),
        getattr(settings, "secrets_api_token", None),
    )
    assert url and token, "these settings name no secrets API"
    return HttpSecretsStore(url=url, token=token, timeout=2, attempts=2, deadline=3, cas="off")


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """One real OpenBao dev server for the session (tests use paths of their own)."""
    from tests.openbao import OpenBao  # noqa: PLC0415 - only where Vault is tested

    server = OpenBao().start()
    yield server
    server.stop()
