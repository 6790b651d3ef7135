"""What the token endpoint returns, kept apart from the HTTP client so that modules which only
handle tokens (credential files, the runner) do not load the client."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TokenSet(BaseModel):
    """What the token endpoint returned. Token fields are hidden from ``repr``."""

    model_config = ConfigDict(defer_build=True)

    access_token: str = Field(min_length=1, repr=False)
    refresh_token: str | None = Field(default=None, repr=False)
    id_token: str | None = Field(default=None, repr=False)
    # A lifetime of over ten years is no access token's (and would overflow an expiry time).
    expires_in: int | None = Field(default=None, ge=0, le=10 * 365 * 86400)
