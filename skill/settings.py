"""The one settings object.

Built once (``Settings()`` reads the environment; tests pass values directly) and handed down.
Nothing else in the project reads ``os.environ``. Every field can be set with an environment
variable ``CHATGPT_LOGIN_<FIELD>``; the credential directories also honour the variables the
real clients use (``PI_CODING_AGENT_DIR``, ``CODEX_HOME``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The Codex CLI's public PKCE client (no secret). Reusing it is what every third-party tool
# does; it is unofficial (see README).
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
DEFAULT_ISSUER = "https://auth.openai.com"

CredentialFormat = Literal["pi", "codex"]


def _split_list(value: object) -> object:
    """Accept ``"pi,codex"`` from the environment as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything configurable, with the defaults a container user needs."""

    model_config = SettingsConfigDict(
        env_prefix="CHATGPT_LOGIN_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # OAuth issuer and client (PROTOCOL.md §1-2).
    issuer: str = DEFAULT_ISSUER
    client_id: str = CODEX_CLIENT_ID
    originator: str = "codex_cli_rs"
    scope: str = "openid profile email offline_access"
    # Ports our login program tries, in order; the redirect_uri names the one it got.
    callback_ports: Annotated[tuple[int, ...], NoDecode] = (1455, 1457)
    callback_host: str = "localhost"

    # Timeouts in seconds. Every outbound call has explicit connect and read limits.
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    login_timeout: float = Field(default=600.0, gt=0)
    device_timeout: float = Field(default=900.0, gt=0)

    # Plans refused right after the exchange: they cannot use Codex models this way.
    refused_plans: Annotated[frozenset[str], NoDecode] = frozenset({"free"})

    # Which credential files a login writes, and where they live.
    credential_files: Annotated[frozenset[CredentialFormat], NoDecode] = frozenset({"pi"})
    pi_agent_dir: Path = Field(
        default_factory=lambda: Path.home() / ".pi" / "agent",
        validation_alias=AliasChoices("CHATGPT_LOGIN_PI_AGENT_DIR", "PI_CODING_AGENT_DIR"),
    )
    codex_home: Path = Field(
        default_factory=lambda: Path.home() / ".codex",
        validation_alias=AliasChoices("CHATGPT_LOGIN_CODEX_HOME", "CODEX_HOME"),
    )

    # pi's proper-lockfile considers a lock stale after 30 s; we must agree with it.
    lock_stale: float = Field(default=30.0, gt=0)
    lock_timeout: float = Field(default=60.0, gt=0)

    # Private state (tmux socket, login state, logs). Default $XDG_STATE_HOME/chatgpt-login.
    xdg_state_home: Path | None = Field(default=None, validation_alias="XDG_STATE_HOME")
    state_dir: Path = Path()

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

    @model_validator(mode="after")
    def _default_state_dir(self) -> Settings:
        if self.state_dir == Path():
            base = self.xdg_state_home or Path.home() / ".local" / "state"
            object.__setattr__(self, "state_dir", base / "chatgpt-login")
        return self

    @property
    def pi_auth_file(self) -> Path:
        return self.pi_agent_dir / "auth.json"

    @property
    def codex_auth_file(self) -> Path:
        return self.codex_home / "auth.json"
