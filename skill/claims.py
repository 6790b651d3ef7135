"""What the ChatGPT tokens say about the account (PROTOCOL.md §6).

Clients never verify signatures (they hold no key); they decode the payload. We do the same,
with base64url decoding that accepts ``-`` and ``_`` (pi's ``atob`` does not).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from skill.errors import SkillError

AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"


def decode_jwt_payload(token: str) -> dict[str, Any]:
    """The JSON payload of a JWT, or ``credentials_invalid`` if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SkillError("credentials_invalid", "A token is not a JWT. Sign in again.")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError) as exc:
        raise SkillError("credentials_invalid", "A token's payload is unreadable.") from exc
    if not isinstance(data, dict):
        raise SkillError("credentials_invalid", "A token's payload is not an object.")
    return data


class Claims(BaseModel):
    """The account facts we show and check. No token values."""

    model_config = ConfigDict(defer_build=True)

    account_id: str | None = None
    plan_type: str | None = None
    email: str | None = None
    user_id: str | None = None
    expires_at: datetime | None = None
    issued_at: datetime | None = None  # the access token's iat: when this credential was made
    organization_id: str | None = None  # an OpenAI API organization (id_token only)
    project_id: str | None = None

    @classmethod
    def from_tokens(cls, *, access_token: str, id_token: str | None = None) -> Claims:
        """Merge the claims of both tokens; the id_token wins for identity, the access
        token for ``exp`` (that is the token whose lifetime matters)."""
        access = decode_jwt_payload(access_token)
        ident = decode_jwt_payload(id_token) if id_token else {}
        auth = {**_obj(access.get(AUTH_CLAIM)), **_obj(ident.get(AUTH_CLAIM))}
        profile = {**_obj(access.get(PROFILE_CLAIM)), **_obj(ident.get(PROFILE_CLAIM))}
        exp, iat = access.get("exp"), access.get("iat")
        return cls(
            account_id=_str(auth.get("chatgpt_account_id")),
            plan_type=_str(auth.get("chatgpt_plan_type")),
            email=_str(ident.get("email")) or _str(profile.get("email")),
            user_id=_str(auth.get("chatgpt_user_id")) or _str(auth.get("user_id")),
            expires_at=_time(exp),
            issued_at=_time(iat),
            organization_id=_str(auth.get("organization_id")),
            project_id=_str(auth.get("project_id")),
        )


def _time(value: object) -> datetime | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):  # a claim no clock can hold
        return None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
