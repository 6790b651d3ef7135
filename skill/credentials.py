"""The ChatGPT credential and its two on-disk shapes (PROTOCOL.md §7).

:class:`Credential` is our one in-memory form. It converts to and from:

- the pi agent entry ``{"type": "oauth", "access", "refresh", "expires" (epoch ms), "accountId"}``
  stored under the ``openai-codex`` key of ``~/.pi/agent/auth.json``;
- the codex file ``{"auth_mode": "chatgpt", "OPENAI_API_KEY": null, "tokens": {...},
  "last_refresh": <RFC 3339>}``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skill.claims import Claims
from skill.errors import SkillError
from skill.tokens import TokenSet

PI_PROVIDER_KEY = "openai-codex"
# Expiry times, in milliseconds, are bounded by what a datetime holds (9999-12-31): a larger one
# (from another machine's file or the store) would fail wherever it is shown or compared.
LATEST_EXPIRY_MS = 253_402_300_799_000
# An account id as ChatGPT makes them (a UUID; the tests' "acct-1111"): it is shown in messages,
# so a file or a store holding one with other characters (escapes, prose) holds no credential.
ACCOUNT_ID = r"^[A-Za-z0-9_.:-]{1,128}$"


class PiEntry(BaseModel):
    """pi's ``openai-codex`` entry. Unknown keys are kept."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    type: Literal["oauth"] = "oauth"
    access: str = Field(min_length=1, repr=False)
    refresh: str = Field(min_length=1, repr=False)
    expires: int = Field(ge=0, le=LATEST_EXPIRY_MS)
    accountId: str = Field(pattern=ACCOUNT_ID)  # noqa: N815 - pi's field name


class CodexTokens(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)

    id_token: str = Field(min_length=1, repr=False)
    access_token: str = Field(min_length=1, repr=False)
    refresh_token: str = Field(min_length=1, repr=False)
    account_id: str | None = None


class CodexAuth(BaseModel):
    """The whole codex ``auth.json``. Unknown keys are kept."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    auth_mode: str | None = "chatgpt"
    OPENAI_API_KEY: str | None = Field(default=None, repr=False)
    tokens: CodexTokens | None = None
    last_refresh: datetime | None = None


class Credential(BaseModel):
    """A signed-in ChatGPT account: tokens plus the facts needed to keep them alive."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    access_token: str = Field(min_length=1, repr=False)
    refresh_token: str = Field(min_length=1, repr=False)
    id_token: str | None = Field(default=None, repr=False)
    account_id: str = Field(pattern=ACCOUNT_ID)
    expires_ms: int = Field(ge=0, le=LATEST_EXPIRY_MS)
    last_refresh: datetime

    @classmethod
    def from_tokens(cls, tokens: TokenSet, *, previous: Credential | None = None) -> Credential:
        """Build from a token answer; fields the answer omits keep ``previous``'s values."""
        refresh = tokens.refresh_token or (previous.refresh_token if previous else None)
        id_token = tokens.id_token or (previous.id_token if previous else None)
        if not refresh:
            raise SkillError("invalid_response", "The sign-in server sent no refresh token.")
        claims = Claims.from_tokens(access_token=tokens.access_token, id_token=id_token)
        account_id = claims.account_id or (previous.account_id if previous else None)
        if not account_id:
            raise SkillError(
                "invalid_response", "The tokens name no ChatGPT account. Try signing in again."
            )
        now = time.time()
        if tokens.expires_in is not None:
            expires_ms = int((now + tokens.expires_in) * 1000)
        elif claims.expires_at is not None:
            expires_ms = int(claims.expires_at.timestamp() * 1000)
        else:
            raise SkillError("invalid_response", "The sign-in server sent no token lifetime.")
        return cls(
            access_token=tokens.access_token,
            refresh_token=refresh,
            id_token=id_token,
            account_id=account_id,
            expires_ms=expires_ms,
            last_refresh=datetime.fromtimestamp(now, UTC),
        )

    # The pi agent entry ---------------------------------------------------------------------

    @classmethod
    def from_pi_entry(cls, entry: object, *, last_refresh: datetime | None = None) -> Credential:
        try:
            pi = PiEntry.model_validate(entry)
        except ValidationError as exc:
            raise SkillError("credentials_invalid") from exc
        return cls(
            access_token=pi.access,
            refresh_token=pi.refresh,
            account_id=pi.accountId,
            expires_ms=pi.expires,
            last_refresh=last_refresh or datetime.now(UTC),
        )

    def to_pi_entry(self, existing: dict[str, Any] | None = None) -> dict[str, Any]:
        """The pi entry, keeping unknown keys of ``existing`` and pi's key order."""
        entry = dict(existing or {})
        entry.update(
            type="oauth",
            access=self.access_token,
            refresh=self.refresh_token,
            expires=self.expires_ms,
            accountId=self.account_id,
        )
        return entry

    # The codex file -------------------------------------------------------------------------

    @classmethod
    def from_codex(cls, document: object) -> Credential:
        try:
            auth = CodexAuth.model_validate(document)
        except ValidationError as exc:
            raise SkillError("credentials_invalid") from exc
        if auth.tokens is None:
            raise SkillError("credentials_missing")
        tokens = auth.tokens
        claims = Claims.from_tokens(access_token=tokens.access_token, id_token=tokens.id_token)
        account_id = tokens.account_id or claims.account_id
        if not account_id or claims.expires_at is None:
            raise SkillError("credentials_invalid")
        return cls(
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            id_token=tokens.id_token,
            account_id=account_id,
            expires_ms=int(claims.expires_at.timestamp() * 1000),
            last_refresh=auth.last_refresh or datetime.now(UTC),
        )

    def to_codex(self, existing: dict[str, Any] | None = None) -> dict[str, Any]:
        """The codex document, keeping unknown keys (e.g. ``tokens.oauth_provenance``)."""
        if not self.id_token:
            raise SkillError(
                "credentials_invalid",
                "The codex file needs an id_token, which this credential lacks (it came from a pi "
                "file). Sign in again with the codex file enabled.",
            )
        document = dict(existing or {})
        tokens = dict(document.get("tokens") or {})
        tokens.update(
            id_token=self.id_token,
            access_token=self.access_token,
            refresh_token=self.refresh_token,
            account_id=self.account_id,
        )
        document.update(auth_mode="chatgpt", tokens=tokens)
        document.setdefault("OPENAI_API_KEY", None)
        document["last_refresh"] = self.last_refresh.astimezone(UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        return document

    # Facts ----------------------------------------------------------------------------------

    def claims(self) -> Claims:
        return Claims.from_tokens(access_token=self.access_token, id_token=self.id_token)

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires_ms / 1000, UTC)

    def lifetime(self) -> float | None:
        """Seconds the access token was issued for (its ``exp - iat``), if it says."""
        claims = self.claims()
        if claims.issued_at is None or claims.expires_at is None:
            return None
        seconds = (claims.expires_at - claims.issued_at).total_seconds()
        return seconds if seconds > 0 else None

    def issued_at(self) -> float | None:
        """When the access token was issued (epoch seconds), if it says."""
        issued = self.claims().issued_at
        return issued.timestamp() if issued else None

    def expired(self, *, margin: float = 0.0, now: float | None = None) -> bool:
        """True when less than ``margin`` seconds are left at ``now`` (default: the clock)."""
        return (time.time() if now is None else now) + margin >= self.expires_ms / 1000
