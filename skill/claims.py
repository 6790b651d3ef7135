"""What the ChatGPT tokens say about the account (PROTOCOL.md §6).

Clients never verify signatures (they hold no key); they decode the payload. We do the same,
with base64url decoding that accepts ``-`` and ``_`` (pi's ``atob`` does not).
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from skill.errors import SkillError

AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"


# ChatGPT's tokens are a few KiB. A token is anyone's to make (a stored copy can be planted):
# a huge one, or one nesting thousands of levels (json raises RecursionError, which no caller
# expects), is not one.
MAX_TOKEN_LENGTH = 64 * 1024


def decode_jwt_payload(token: str) -> dict[str, Any]:
    """The JSON payload of a JWT, or ``credentials_invalid`` if it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN_LENGTH:
        raise SkillError("credentials_invalid", "A token is not a JWT. Sign in again.")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError, RecursionError) as exc:
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
            plan_type=_str(auth.get("chatgpt_plan_type"), _ID),
            email=_str(ident.get("email"), _EMAIL) or _str(profile.get("email"), _EMAIL),
            user_id=_str(auth.get("chatgpt_user_id"), _ID) or _str(auth.get("user_id"), _ID),
            expires_at=_time(exp),
            issued_at=_time(iat),
            organization_id=_str(auth.get("organization_id"), _ID),
            project_id=_str(auth.get("project_id"), _ID),
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


# What status and the agent are shown of a token: a token is anyone's to make (a stored copy
# can be planted by whoever writes the store), so a claim that is not an address or an id as
# the issuer makes them (escape sequences that drive a terminal, prose for the agent) is taken
# as absent. The account id is checked where the credential is made (ACCOUNT_ID).
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9.-]{1,190}")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _str(value: object, shape: re.Pattern[str] | None = None) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value if shape is None or shape.fullmatch(value) else None
