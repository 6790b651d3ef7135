"""The one settings object.

Built once and handed down: ``Settings.from_env()`` in the CLI and the service, ``Settings(...)``
with explicit values in tests. Nothing else in the project reads ``os.environ``. Every field can
be set with an environment variable ``CHATGPT_LOGIN_<FIELD>``; the credential directories also
honour the variables the real clients use (``PI_CODING_AGENT_DIR``, ``CODEX_HOME``). Lists are
comma-separated; mappings are JSON.

Why not pydantic-settings: importing it costs 0.1-0.2 s (it loads asyncio and every settings
source) on each CLI call, more than half of ``chatgpt-login start``'s 0.3 s budget. Reading
prefixed variables into a pydantic model is the few lines of :meth:`Settings.from_env`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skill.errors import SkillError

# The Codex CLI's public PKCE client (no secret). Reusing it is what every third-party tool
# does; it is unofficial (see README).
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
DEFAULT_ISSUER = "https://auth.openai.com"

CredentialFormat = Literal["pi", "codex"]

# What a login program may inherit from our environment: locale, proxies and CAs. Nothing else
# (an agent's environment can hold other secrets).
PASSTHROUGH_ENV = (
    "PATH", "LANG", "LC_ALL", "TZ",
    "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY",
    "https_proxy", "http_proxy", "all_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE",
)  # fmt: skip


def _file_secret(directory: Path, name: str, alias: str | None) -> str | None:
    for candidate in (name, alias.lower() if alias else None):
        if candidate:
            try:
                return (directory / candidate).read_text().strip()
            except (FileNotFoundError, NotADirectoryError):
                continue  # no such secret (or no secrets directory at all)
            except PermissionError:
                # Silently going on without it would run the service without its token.
                raise _unusable_secret(directory / candidate, (
                    f"is there but this user (uid {os.getuid()}) may not read it. Make it "
                    "readable by that user (with compose: run scripts/make-secrets as root, or "
                    "chown the file to that uid)")) from None  # fmt: skip
            except IsADirectoryError:
                raise _unusable_secret(directory / candidate, (
                    "is a directory, not a file (docker makes one where a secret's source file "
                    "is missing): create that file, or remove the secret")) from None  # fmt: skip
            except OSError as exc:  # a symlink loop, an I/O error: not to be taken for absent
                raise _unusable_secret(
                    directory / candidate, f"cannot be read ({exc.strerror or exc})"
                ) from None
    return None


def _unusable_secret(path: Path, why: str) -> Exception:
    from skill.errors import SkillError  # noqa: PLC0415 - settings load before the errors

    return SkillError("invalid_setting", f"The file secret {path} {why}, then start again.")


def http_address_problem(url: str) -> str | None:
    """What is wrong with an http(s)://HOST[:PORT] address, or None."""
    from urllib.parse import urlsplit  # noqa: PLC0415 - most commands never need it

    try:
        parts = urlsplit(url.strip())
        port = parts.port  # ValueError when it is not a number from 0 to 65535
    except ValueError:
        return f"{url!r} is not an address: its port must be a number from 1 to 65535"
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return f"{url!r} is not an http:// address with a host and a port from 1 to 65535"
    return None


def _passthrough_env() -> dict[str, str]:
    return {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}


def _split_list(value: object) -> object:
    """Accept ``"pi,codex"`` from the environment as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


ENV_PREFIX = "CHATGPT_LOGIN_"
# Variables of other tools that set a field too (the prefixed name wins).
ENV_ALIASES = {
    "pi_agent_dir": "PI_CODING_AGENT_DIR",
    "codex_home": "CODEX_HOME",
    "xdg_state_home": "XDG_STATE_HOME",
    "secrets_api_token": "FAT_TOOLS_TOKEN",
    # Vault's own variables, as its CLI and agent read them.
    "vault_addr": "VAULT_ADDR",
    "vault_token": "VAULT_TOKEN",
    "vault_namespace": "VAULT_NAMESPACE",
    "vault_cacert": "VAULT_CACERT",
}
# Where file secrets live (compose mounts them there); one file per field, named after the
# field (``operator_token``) or its variable in lower case (``fat_tools_token``).
DEFAULT_SECRETS_DIR = Path("/run/secrets")


class Settings(BaseModel):
    """Everything configurable, with the defaults a container user needs."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    # OAuth issuer and client (PROTOCOL.md §1-2).
    issuer: str = DEFAULT_ISSUER
    client_id: str = CODEX_CLIENT_ID
    originator: str = "codex_cli_rs"
    scope: str = "openid profile email offline_access"
    # Ports our login program tries, in order; the redirect_uri names the one it got.
    callback_ports: tuple[int, ...] = (1455, 1457)
    callback_host: str = "localhost"

    # Timeouts in seconds. Every outbound call has explicit connect and read limits, and a
    # deadline for the whole of it (skill/outbound.py): answers are read up to a size and
    # parsed as JSON up to a nesting depth.
    connect_timeout: float = Field(default=10.0, gt=0)
    # A TLS-intercepting proxy's CA (PEM text; the file secret proxy_ca, which compose mounts
    # from secrets/proxy_ca.pem), trusted beside the system's CAs by every outbound client.
    proxy_ca: str | None = Field(default=None, repr=False)
    read_timeout: float = Field(default=30.0, gt=0)
    request_deadline: float = Field(default=60.0, gt=0)
    answer_max_bytes: int = Field(default=256 * 1024, ge=4096)
    json_max_depth: int = Field(default=32, ge=4)
    login_timeout: float = Field(default=600.0, gt=0)
    device_timeout: float = Field(default=900.0, gt=0)

    # Plans refused right after the exchange: they cannot use Codex models this way.
    refused_plans: frozenset[str] = frozenset({"free"})

    # Which credential files a login writes, and where they live.
    credential_files: frozenset[CredentialFormat] = frozenset({"pi"})
    # After a sign-in, also trade the id_token for an OpenAI API key (as the Codex CLI does),
    # kept as OPENAI_API_KEY in codex's auth.json: so codex must be among the files.
    api_key_exchange: bool = False
    pi_agent_dir: Path = Field(default_factory=lambda: Path.home() / ".pi" / "agent")
    codex_home: Path = Field(default_factory=lambda: Path.home() / ".codex")

    # pi's proper-lockfile considers a lock stale after 30 s; we must agree with it.
    lock_stale: float = Field(default=30.0, gt=0)
    lock_timeout: float = Field(default=60.0, gt=0)

    # Private state (tmux socket, login state, logs). Default $XDG_STATE_HOME/chatgpt-login.
    xdg_state_home: Path | None = None
    state_dir: Path = Path()

    # The skill runner: the login programs it drives and how long it waits for them.
    start_timeout: float = Field(default=60.0, gt=0)  # npx may have to download pi-ai first
    complete_timeout: float = Field(default=90.0, gt=0)
    python_executable: str = sys.executable
    pi_ai_command: str = "pi-ai"  # not on PATH: npx -y @mariozechner/pi-ai@0.73.1
    codex_command: str = "codex"
    child_env: dict[str, str] = Field(default_factory=_passthrough_env)

    # The service the agent's commands ask to persist credentials. Unset: the address `serve`
    # last listened on (it leaves it in the state directory), else http://127.0.0.1:8080.
    service_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Self:
        """Settings from ``environ`` (default: the process environment), then file secrets
        (``CHATGPT_LOGIN_SECRETS_DIR``, default /run/secrets); ``overrides`` win over both."""
        env = os.environ if environ is None else environ
        secrets_dir = Path(env.get(ENV_PREFIX + "SECRETS_DIR", DEFAULT_SECRETS_DIR))
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            alias = ENV_ALIASES.get(name)
            raw = next((env[k] for k in (ENV_PREFIX + name.upper(), alias) if k and k in env), None)
            if raw is None:
                raw = _file_secret(secrets_dir, name, alias)
            if raw is not None and field.annotation == dict[str, str]:
                try:
                    values[name] = json.loads(raw)
                except ValueError:
                    raise SkillError("invalid_setting", f"Invalid setting {ENV_PREFIX}"
                                     f"{name.upper()}: not a JSON object. Fix it and retry."
                                     ) from None  # fmt: skip
            elif raw is not None:
                values[name] = raw
        return cls.model_validate({**values, **overrides})

    @field_validator("callback_ports", "refused_plans", "credential_files", mode="before")
    @classmethod
    def _lists_from_env(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("issuer")
    @classmethod
    def _issuer_is_base_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("issuer must be an http(s) URL such as https://auth.openai.com")
        return value.rstrip("/")

    @field_validator("callback_ports")
    @classmethod
    def _ports_in_range(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 0 < port < 65536 for port in value):
            raise ValueError("callback_ports must list TCP ports between 1 and 65535")
        return value

    @field_validator("service_url")
    @classmethod
    def _service_url_is_http(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        problem = http_address_problem(value)
        if problem:
            raise ValueError(problem)
        return value.rstrip("/")

    @field_validator("proxy_ca")
    @classmethod
    def _proxy_ca_is_pem(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # an empty secret file: no proxy
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("it is not a PEM certificate (-----BEGIN CERTIFICATE----- ...)")
        return value

    @model_validator(mode="after")
    def _api_key_has_a_home(self) -> Settings:
        if self.api_key_exchange and "codex" not in self.credential_files:
            raise ValueError(
                "CHATGPT_LOGIN_API_KEY_EXCHANGE keeps the key where codex does (OPENAI_API_KEY "
                "in ~/.codex/auth.json): add codex to CHATGPT_LOGIN_CREDENTIAL_FILES"
            )
        return self

    @model_validator(mode="after")
    def _default_state_dir(self) -> Settings:
        if self.state_dir == Path():
            base = self.xdg_state_home or Path.home() / ".local" / "state"
            object.__setattr__(self, "state_dir", base / "chatgpt-login")
        return self

    @model_validator(mode="after")
    def _state_dir_is_ours(self) -> Settings:
        # Its owner could plant what the commands and the service trust (the attempt, the
        # journal, the hook's process group), and root would otherwise make it its own (0700).
        try:
            owner = self.state_dir.stat().st_uid
        except OSError:
            return self  # not made yet; or unreadable, which is said where it is used
        if owner != os.geteuid():
            raise ValueError(
                f"the state directory {self.state_dir} belongs to another user (uid {owner}): "
                "use one of this user's (CHATGPT_LOGIN_STATE_DIR), or run as its owner"
            )
        return self

    @property
    def pi_auth_file(self) -> Path:
        return self.pi_agent_dir / "auth.json"

    @property
    def credential_paths(self) -> list[Path]:
        """The credential files a sign-in writes, pi first (skill.authfiles has their logic)."""
        chosen = {"pi": self.pi_auth_file, "codex": self.codex_auth_file}
        return [path for name, path in chosen.items() if name in self.credential_files]

    @property
    def codex_auth_file(self) -> Path:
        return self.codex_home / "auth.json"
