"""Many containers sharing one credential, played by real processes on this machine.

A :class:`Container` is one ``chatgpt-login serve`` (gunicorn, its workers, their keep-alive)
with its own HOME, state directory, port and holder id, started the way the container's
entrypoint starts it (``restore`` first). A :class:`Fleet` is several of them pointed at one
secrets store and one issuer. :class:`ReferenceStore` runs ``chatgpt-login secrets-server``, the
store with compare-and-set; the seed's API (without) is :class:`tests.fake_secrets.FakeSecretsAPI`.

:meth:`Fleet.sample` is what the tests and ``scripts/reliability.py`` count: whether each
container's pi file holds a refresh token the issuer would still take (``live``), and whether
its service says it needs a new sign-in. A follower holds a spent token from the moment the
issuer rotates it until it adopts the rotation (15-35 ms here, measured); sampling every 50 ms
measures that share of time twenty times as precisely as once a second, where a 45-sample run
would fail on one unlucky sample. Both figures are reported (:meth:`Fleet.live_ratio`), and
the longest such stretch (:meth:`Fleet.longest_dead`): in a 30-second run one stretch slowed to
0.3 s by a loaded machine is already 1% of it, so short runs bound the stretch, long ones the
share.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tests.canary import register
from tests.conftest import PYTHON, REPO, SWEEP, free_port, wait_until
from tests.fake_issuer import FakeIssuer
from tests.loopback import status_of

if TYPE_CHECKING:
    from service.secrets import SecretsStore

# Settings for a 20-second token lifetime: the store is read every second, holders beat every
# 5 s, a lease lasts 8 s, and nothing is renewed within 5 s of its issue.
FAST = {
    "CHATGPT_LOGIN_STORE_POLL": "1",
    "CHATGPT_LOGIN_HOLDER_HEARTBEAT": "5",
    "CHATGPT_LOGIN_LEASE_SECONDS": "8",
    "CHATGPT_LOGIN_LEASE_SETTLE": "0.4",
    "CHATGPT_LOGIN_REFRESH_MIN_INTERVAL": "5",
    "CHATGPT_LOGIN_CONNECT_TIMEOUT": "2",
    "CHATGPT_LOGIN_READ_TIMEOUT": "5",
    "CHATGPT_LOGIN_SECRETS_TIMEOUT": "2",
    "CHATGPT_LOGIN_SECRETS_ATTEMPTS": "3",
    "CHATGPT_LOGIN_SECRETS_DEADLINE": "4",
    "CHATGPT_LOGIN_LOCK_TIMEOUT": "5",
}


class ReferenceStore:
    """``chatgpt-login secrets-server`` under gunicorn, for one agent."""

    token = "fleet-store-token-5d1c0e7a9b"

    def __init__(self, root: Path) -> None:
        register(self.token, "reference store token")
        self.port = free_port()
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(root),
            "CHATGPT_LOGIN_SECRETS_DIR": str(root / "no-secrets"),
            "CHATGPT_LOGIN_SECRETS_SERVER_DB": str(root / "store" / "secrets.db"),
            "CHATGPT_LOGIN_SECRETS_SERVER_TOKENS": f"agent:{self.token}",
        }
        self.log = root / "logs" / "secrets-server.log"
        with _log_file(self.log) as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "service.cli", "secrets-server", "--bind", f"127.0.0.1:{self.port}"],
                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(lambda: _status(f"http://127.0.0.1:{self.port}/healthz") == 200, 20,
                   "the reference secrets server")  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/agent/secrets"

    def document(self) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            found = json.load(answer)
        return found if isinstance(found, dict) else {}

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        return self.log.read_text(errors="replace")


@dataclass
class Container:
    name: str
    root: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pi_file(self) -> Path:
        return self.root / "home" / ".pi" / "agent" / "auth.json"

    @property
    def state_dir(self) -> Path:
        return Path(self.env["CHATGPT_LOGIN_STATE_DIR"])

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [PYTHON, "-m", "service.cli", *args]
        return subprocess.run(argv, env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def start(self, *, restore: bool = True) -> None:
        """As the entrypoint does: restore, then the service."""
        if restore:
            self.cli("restore")
        with _log_file(self.log) as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{self.port}"],
                env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_up(self, timeout: float = 30) -> None:
        wait_until(lambda: _status(f"http://127.0.0.1:{self.port}/healthz") == 200, timeout,
                   f"{self.name} up")  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def log(self) -> Path:
        """What its service printed, every start of it (the canary sweep reads logs/)."""
        return self.root / "logs" / "serve.log"

    @property
    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def refresh_token(self) -> str | None:
        try:
            entry = json.loads(self.pi_file.read_text())["openai-codex"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return str(entry["refresh"]) if isinstance(entry, dict) and "refresh" in entry else None

    def local_state(self) -> dict[str, Any]:
        try:
            found = json.loads((self.state_dir / "service.json").read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def view(self) -> dict[str, Any]:
        """``GET /v1/credentials`` with the local token."""
        token = (self.state_dir / "service.token").read_text().strip()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/credentials",
                                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as answer:
            found = json.load(answer)
        return found if isinstance(found, dict) else {}

    def call(self, method: str, path: str) -> dict[str, Any]:
        token = (self.state_dir / "service.token").read_text().strip()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                found = json.load(answer)
        except urllib.error.HTTPError as answer:
            found = json.load(answer)
        return found if isinstance(found, dict) else {}


@dataclass
class Sample:
    at: float
    live: dict[str, bool]
    relogin: dict[str, bool]


@dataclass
class Fleet:
    issuer: FakeIssuer
    store_env: dict[str, str]  # how a container reaches the store (see http_store_env)
    extra_env: dict[str, str] = field(default_factory=dict)
    containers: list[Container] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    _roots: list[Path] = field(default_factory=list)

    def add(self, name: str | None = None, *, store_env: dict[str, str] | None = None) -> Container:
        # A short root: a tmux socket path in the state directory must stay under 108 bytes.
        root = Path(tempfile.mkdtemp(prefix="cgl-fleet-", dir="/tmp"))
        self._roots.append(root)
        name = name or f"c{len(self.containers)}"
        port = free_port()
        env = {
            "PATH": os.environ["PATH"],
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            "HOME": str(root / "home"),
            "PI_CODING_AGENT_DIR": str(root / "home" / ".pi" / "agent"),
            "CODEX_HOME": str(root / "home" / ".codex"),
            "CHATGPT_LOGIN_STATE_DIR": str(root / "state"),
            "CHATGPT_LOGIN_ISSUER": self.issuer.url,
            **self.store_env,
            **(store_env or {}),
            "CHATGPT_LOGIN_SECRETS_DIR": str(root / "no-secrets"),
            "CHATGPT_LOGIN_SERVICE_URL": f"http://127.0.0.1:{port}",
            "CHATGPT_LOGIN_HOLDER_ID": name,
            **FAST,
            **self.extra_env,
        }
        container = Container(name, root, env, port)
        self.containers.append(container)
        return container

    def sample(self) -> Sample:
        """One look at every running container."""
        live_tokens = self.issuer.refresh_tokens
        running = [c for c in self.containers if c.proc is not None]
        sample = Sample(
            at=time.monotonic(),
            live={c.name: (c.refresh_token() or "") in live_tokens for c in running},
            relogin={c.name: bool(c.local_state().get("needs_relogin")) for c in running},
        )
        self.samples.append(sample)
        return sample

    def run_for(self, seconds: float, *, every: float = 0.05) -> None:
        """Sample every ``every`` seconds for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            self.sample()
            time.sleep(max(0.0, every - (time.monotonic() - started)))

    def live_ratio(self, name: str, *, every: float | None = None) -> float:
        """The share of samples in which ``name`` held a live token; with ``every``, only of
        samples at least that many seconds apart (``every=1``: 1-second samples)."""
        seen, last = [], float("-inf")
        for sample in self.samples:
            if name in sample.live and (every is None or sample.at - last >= every):
                seen.append(sample.live[name])
                last = sample.at
        return sum(seen) / len(seen) if seen else 0.0

    def longest_dead(self, name: str) -> float:
        """The longest stretch, in seconds, in which ``name`` held a refresh token the issuer no
        longer takes: from the first sample that saw it so to the next that saw it live (a
        rotation made by another container, not yet adopted here)."""
        longest, since = 0.0, None
        for sample in self.samples:
            if name not in sample.live:
                continue
            if not sample.live[name] and since is None:
                since = sample.at
            elif sample.live[name] and since is not None:
                longest, since = max(longest, sample.at - since), None
        if since is not None:
            longest = max(longest, self.samples[-1].at - since)
        return longest

    def relogin_samples(self) -> int:
        return sum(any(s.relogin.values()) for s in self.samples)

    def stop(self) -> None:
        for container in self.containers:
            container.stop()
        for root in self._roots:
            if SWEEP.running:
                SWEEP.read_dir(root)
            subprocess.run(["tmux", "-S", str(root / "state" / "tmux.sock"), "kill-server"],
                           capture_output=True, check=False)  # fmt: skip
            shutil.rmtree(root, ignore_errors=True)


def _log_file(path: Path) -> IO[bytes]:
    """A process's output goes to a file: a pipe nobody reads until the end fills up (64 KiB
    of access log) and then stops the process at its next write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _status(url: str) -> int:
    return status_of(url, timeout=1)


def http_store_env(url: str, token: str) -> dict[str, str]:
    """A container's settings for a secrets API (the seed's or the reference server)."""
    return {"CHATGPT_LOGIN_SECRETS_API_URL": url, "FAT_TOOLS_TOKEN": token}


def vault_store_env(addr: str, token: str, path: str) -> dict[str, str]:
    """A container's settings for a Vault/OpenBao KV v2 secret."""
    return {"CHATGPT_LOGIN_SECRETS_BACKEND": "vault", "VAULT_ADDR": addr, "VAULT_TOKEN": token,
            "CHATGPT_LOGIN_VAULT_PATH": path}  # fmt: skip


def seed_store(issuer: FakeIssuer, store: SecretsStore, key: str = "codex_credentials") -> str:
    """Store a signed-in credential as a sign-in would (generation 1); returns its refresh token."""
    from service.record import render_entry  # noqa: PLC0415
    from skill.credentials import Credential  # noqa: PLC0415
    from skill.tokens import TokenSet  # noqa: PLC0415

    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    entry = render_entry(credential, generation=1, signed_in_at=credential.last_refresh,
                         holder="seed")  # fmt: skip
    store.write({key: entry})
    return credential.refresh_token
