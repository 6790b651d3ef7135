"""The service's part of the one settings object.

:class:`ServiceSettings` extends :class:`skill.settings.Settings` (same loader, same
environment names) with what only the service needs: the secrets API and the operator token.
Tokens come from the environment or from file secrets (compose's ``/run/secrets``); they are
hidden from ``repr`` and never logged.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from skill import statedir
from skill.settings import Settings

TINYFAT_SECRETS_URL = "https://tinyfat.com/api/agent/secrets"
_PRIVATE_SUFFIXES = (".internal", ".local", ".lan")


def _private_host(url: str) -> bool:
    """Whether an http:// address stays on a private network: loopback or private addresses,
    and the names a container network or a LAN gives (no dot, or a private suffix)."""
    import socket  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return False
    if not re.fullmatch(r"[a-z0-9.-]+|[0-9a-f:.]+", host):  # "%2e" and the like: urllib unquotes
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the forms the resolver reads as IPv4 too: 134744072, 0x08080808, 10.1
            address = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return "." not in host or host.endswith(_PRIVATE_SUFFIXES)
    return address.is_private or address.is_loopback


MIN_TOKEN_LENGTH = 16


class ServiceSettings(Settings):
    # The remote secrets API (PROTOCOL.md §8). With a token and no URL, the original remote.
    secrets_api_url: str | None = None
    secrets_api_token: str | None = Field(default=None, repr=False)
    secrets_key: str = "codex_credentials"
    secrets_timeout: float = Field(default=10.0, gt=0)  # per request
    secrets_attempts: int = Field(default=5, ge=1)
    secrets_deadline: float = Field(default=30.0, gt=0)  # all attempts together
    # Which store: "auto" is the secrets API when it has a token, else the file below.
    secrets_backend: Literal["auto", "http", "file", "vault"] = "auto"
    # Without a secrets API: a 0600 JSON file in the state directory.
    secrets_file: Path | None = None
    # How long one check of `chatgpt-login doctor` may take.
    doctor_deadline: float = Field(default=20.0, gt=0)
    # A command run (without a shell) after each change of the credential, the event as JSON on
    # stdin (service/hook.py), and how long it may run.
    on_change: str | None = None
    on_change_timeout: float = Field(default=10.0, gt=0)
    # Seconds between heartbeats on an idle event stream (GET /v1/events): they keep proxies
    # from closing it, and a write is how a stream learns that its client went away.
    events_heartbeat: float = Field(default=5.0, gt=0)

    # Whether the secrets API honours If-Match (compare-and-set): found out once ("auto"), or
    # told. With it, the refresh lease is exact; without it, a narrow race remains.
    secrets_cas: Literal["auto", "on", "off"] = "auto"

    # Vault/OpenBao KV version 2 (secrets_backend "vault"), named as Vault's own tools name them.
    # A token (VAULT_TOKEN or the vault_token secret), or AppRole's role and secret id (file
    # secrets); the service renews its token before it runs out. The document is the secret
    # at <vault_mount>/data/<vault_path>, by default chatgpt-login/<secrets_key>. After a
    # logout the older versions (they hold the signed-out credential) are destroyed.
    vault_addr: str | None = None
    vault_token: str | None = Field(default=None, repr=False)
    vault_namespace: str | None = None
    vault_cacert: Path | None = None
    vault_mount: str = Field(default="secret", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    vault_path: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    vault_role_id: str | None = Field(default=None, repr=False)
    vault_secret_id: str | None = Field(default=None, repr=False)
    vault_approle_mount: str = Field(default="approle", pattern=r"^[A-Za-z0-9_.-]+$")
    vault_destroy_on_logout: bool = True

    # Keep-alive: renew when the access token has less than min(refresh_window, half its
    # lifetime) left (codex renews at 5 minutes, so running CLIs rarely renew it themselves),
    # and never again within refresh_min_interval unless it has expired or was refused.
    refresh_window: float = Field(default=600.0, ge=0)
    refresh_min_interval: float = Field(default=60.0, ge=0)

    # One credential, many containers (README). Each service is a holder with a stable id (made
    # once per state directory unless set); it reads the stored copy every store_poll seconds,
    # says it is alive every holder_heartbeat seconds, and refreshes only under a lease in the
    # store that lasts lease_seconds (longer than one refresh round trip). It waits lease_settle
    # seconds after taking the lease, so the others see it coming (and, without
    # compare-and-set, to read the lease back before spending).
    holder_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    store_poll: float = Field(default=5.0, gt=0)
    holder_heartbeat: float = Field(default=60.0, gt=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    lease_settle: float = Field(default=0.5, ge=0)

    # `chatgpt-login restore` must be done within this (the container's entrypoint starts the
    # service after it anyway): its store, lock and issuer waits are cut to fit.
    restore_limit: float = Field(default=20.0, gt=0)

    # The operator API.
    bind: str = "127.0.0.1:8080"
    operator_token: str | None = Field(default=None, repr=False)

    # ``chatgpt-login secrets-server``, the reference secrets API: '<agent>:<token>' lines
    # (default: secrets_api_token for one agent) and its SQLite file (default in state_dir).
    secrets_server_tokens: str | None = Field(default=None, repr=False)
    secrets_server_db: Path | None = None

    @field_validator("operator_token", "secrets_api_token", "secrets_server_tokens",
                     "vault_token")  # fmt: skip
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        # A bearer token anyone could guess is none: the reference server wants 16 characters
        # too. A blank one is a mistake to point out, not a token to accept.
        if value is not None and len(value.strip()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"a token must be at least {MIN_TOKEN_LENGTH} characters (this one has "
                f"{len(value.strip())}); make one with `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'` (a Vault token: `bao token create`)"
            )
        return value

    @field_validator("vault_addr", "vault_token", "vault_namespace", "vault_cacert", "vault_path",
                     "vault_role_id", "vault_secret_id", mode="before")  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # VAULT_NAMESPACE= (set but empty) means "none", as Vault's own tools read it.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vault_mount", "vault_path", mode="before")
    @classmethod
    def _no_outer_slashes(cls, value: object) -> object:
        # "secret/" is how `bao secrets list` shows a mount.
        return value.strip().strip("/") if isinstance(value, str) else value

    @field_validator("on_change")
    @classmethod
    def _on_change_is_a_command(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            shlex.split(value)
        except ValueError as exc:  # "No closing quotation"
            raise ValueError(f"it is not a command line ({exc})") from None
        return value

    @field_validator("bind")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        # Checked before `serve` writes anything: gunicorn would fail only after the address
        # the agent's commands read was left in the state directory.
        host, colon, port = value.strip().rpartition(":")
        host_ok = re.fullmatch(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*", host)  # empty: every address
        if host_ok and re.fullmatch(r"[0-9.]+", host):  # an IPv4 address: a real one
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                host_ok = None
        if not colon or not host_ok or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{value!r} is not HOST:PORT with a port from 1 to 65535 (for example "
                "127.0.0.1:8080)"
            )
        return f"{host}:{int(port)}"

    @field_validator("secrets_api_url", "vault_addr")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # urllib would also open file:// and ftp:// addresses; only HTTP(S) is a store.
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL (http:// only on a private network)")
        if value is not None and value.startswith("http://") and not _private_host(value):
            # The store's token and every credential would cross the network in the clear.
            raise ValueError(
                f"{value!r} is plain http:// to a host that is not on a private network: use "
                "https:// (http:// is taken for loopback and private addresses, and for names "
                "without a dot or under .internal, .local or .lan, as a container network has)"
            )
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _defaults(self) -> ServiceSettings:
        if self.secrets_api_url is None and self.secrets_api_token:
            object.__setattr__(self, "secrets_api_url", TINYFAT_SECRETS_URL)
        if self.secrets_file is None:
            object.__setattr__(self, "secrets_file", self.state_dir / statedir.SECRETS_FILE)
        path = self.vault_path or f"chatgpt-login/{self.secrets_key}"
        object.__setattr__(self, "vault_path", path)
        if path.startswith(f"{self.vault_mount}/data/"):
            inside = path.removeprefix(f"{self.vault_mount}/data/")
            raise ValueError(f"CHATGPT_LOGIN_VAULT_PATH is the path inside the mount: {inside}, "
                             f"not {path}")  # fmt: skip
        if self.secrets_backend == "http" and not self.uses_secrets_api:
            raise ValueError("CHATGPT_LOGIN_SECRETS_BACKEND=http needs the secrets API's token "
                             "(FAT_TOOLS_TOKEN or the secrets_api_token secret)")  # fmt: skip
        if self.secrets_backend == "vault":
            if not self.vault_addr:
                raise ValueError("CHATGPT_LOGIN_SECRETS_BACKEND=vault needs VAULT_ADDR (Vault's "
                                 "address)")  # fmt: skip
            if not self.vault_token and not (self.vault_role_id and self.vault_secret_id):
                raise ValueError("CHATGPT_LOGIN_SECRETS_BACKEND=vault needs VAULT_TOKEN (or the "
                                 "vault_token secret), or AppRole's vault_role_id and "
                                 "vault_secret_id secrets")  # fmt: skip
        return self

    @property
    def uses_secrets_api(self) -> bool:
        return bool(self.secrets_api_url and self.secrets_api_token)

    @property
    def local_url(self) -> str:
        """Where this machine's commands reach a service listening on ``bind``."""
        host, port = self.bind.rsplit(":", 1)
        local = "127.0.0.1" if host.strip("[]") in ("", "0.0.0.0", "::") else host  # noqa: S104
        return f"http://{local}:{port}"

    @property
    def bind_host(self) -> str:
        return self.bind.rsplit(":", 1)[0].strip("[]")
