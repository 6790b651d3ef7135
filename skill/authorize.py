"""The sign-in link and its redirect URI.

Kept apart from :mod:`skill.oauth` (its client, its models) so the login program can print the
link before importing anything more.
"""

from __future__ import annotations

from urllib.parse import urlencode

from skill.pkce import Pkce
from skill.settings import Settings

AUTHORIZE_PATH = "/oauth/authorize"
CALLBACK_PATH = "/auth/callback"


def redirect_uri(settings: Settings, port: int) -> str:
    """``http://localhost:<port>/auth/callback`` (host from settings)."""
    return f"http://{settings.callback_host}:{port}{CALLBACK_PATH}"


def authorize_url(settings: Settings, *, pkce: Pkce, state: str, redirect: str) -> str:
    """The link the user opens: every parameter PROTOCOL.md §2 lists."""
    query = {
        "response_type": "code",
        "client_id": settings.client_id,
        "redirect_uri": redirect,
        "scope": settings.scope,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "state": state,
        "id_token_add_organizations": "true",
        "codex_cli_simplified_flow": "true",
        "originator": settings.originator,
    }
    return f"{settings.issuer}{AUTHORIZE_PATH}?{urlencode(query)}"
