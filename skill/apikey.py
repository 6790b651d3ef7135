"""The OpenAI API key a sign-in can bring along (``CHATGPT_LOGIN_API_KEY_EXCHANGE``).

Our login program trades the sign-in's id_token for an API key, as the Codex CLI does, and
keeps it where codex reads one: ``OPENAI_API_KEY`` in ``$CODEX_HOME/auth.json``. That field may
also hold a key the user put there, which logout must leave alone; so the runner records the
SHA-256 of the key a sign-in brought (never the key) in the state directory, and logout takes
back that key and no other.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from skill import protocol, statedir
from skill.authfiles import CodexAuthFile
from skill.errors import SkillError
from skill.files import ensure_private_dir, write_private
from skill.settings import Settings


def note_api_key(settings: Settings) -> str:
    """Remember that the key now in codex's file came from this sign-in; the note for status."""
    key = _codex(settings).api_key()
    if key:
        ensure_private_dir(settings.state_dir)
        write_private(settings.state_dir / statedir.API_KEY_FINGERPRINT, _sha(key).encode())
    return protocol.API_KEY_SAVED.format(path=settings.codex_auth_file)


def take_back(settings: Settings) -> bool:
    """At logout: take the key out of codex's file if a sign-in put it there."""
    mark = settings.state_dir / statedir.API_KEY_FINGERPRINT
    try:
        ours = mark.read_text().strip()
    except OSError:
        return False
    codex = _codex(settings)
    taken = False
    with contextlib.suppress(SkillError):
        key = codex.api_key()
        if key and _sha(key) == ours:
            codex.set_api_key(None)
            taken = True
    mark.unlink(missing_ok=True)
    return taken


def api_key_view(settings: Settings) -> dict[str, Any] | None:
    """For status: whether codex's file holds a key, and whether a sign-in brought it."""
    if "codex" not in settings.credential_files and not settings.api_key_exchange:
        return None
    try:
        key = _codex(settings).api_key()
    except SkillError:  # a damaged file: status says so among the file problems
        key = None
    try:
        ours = (settings.state_dir / statedir.API_KEY_FINGERPRINT).read_text().strip()
    except OSError:
        ours = ""
    return {"available": key is not None, "path": str(settings.codex_auth_file),
            "from_sign_in": key is not None and _sha(key) == ours}  # fmt: skip


def _codex(settings: Settings) -> CodexAuthFile:
    return CodexAuthFile(settings.codex_auth_file, timeout=settings.lock_timeout)


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
