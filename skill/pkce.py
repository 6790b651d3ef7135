"""PKCE (RFC 7636, S256) and ``state`` values for one sign-in attempt."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field


def b64url(data: bytes) -> str:
    """Base64url without padding, as OAuth uses it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def challenge_for(verifier: str) -> str:
    """The S256 code challenge for ``verifier``."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_state() -> str:
    """43 base64url characters (32 random bytes), like codex."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, repr=False)
class Pkce:
    """A verifier and its challenge. ``repr`` hides the verifier so logs cannot leak it."""

    verifier: str = field(default_factory=lambda: b64url(secrets.token_bytes(64)))

    @property
    def challenge(self) -> str:
        return challenge_for(self.verifier)

    def __repr__(self) -> str:
        return "Pkce(verifier=<hidden>)"
