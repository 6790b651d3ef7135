"""Moving the credential between this machine and the secrets store.

- :func:`persist`: read the local credential, validate it, store it (idempotent).
- :func:`restore`: what a waking container runs before the agent starts. It never downgrades:
  the newer of the local and stored copies (same account, later expiry) wins; a newer local copy
  is pushed up instead of being overwritten; a copy for another account is never adopted.

No Flask here: ``chatgpt-login restore`` must be quick.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from service.errors import ServiceError
from service.secrets import SecretsStore
from service.settings import ServiceSettings
from skill.authfiles import PiAuthFile, auth_files
from skill.claims import Claims
from skill.credentials import Credential
from skill.errors import SkillError

log = logging.getLogger(__name__)

Action = Literal[
    "restored", "pushed_local", "in_sync", "nothing_stored", "unreachable", "conflict",
    "invalid_record",
]  # fmt: skip


@dataclass
class RestoreResult:
    action: Action
    message: str
    refreshed: bool = False
    notes: list[str] = field(default_factory=list)
    stored_generation: int = 0

    @property
    def failed(self) -> bool:
        return self.action in ("unreachable", "conflict", "invalid_record")


def local_credential(settings: ServiceSettings) -> Credential | None:
    """The pi file's credential; None when missing or unreadable (corrupt counts as missing:
    writing moves it aside)."""
    try:
        return _pi_file(settings).load()
    except SkillError:
        return None


def persist(settings: ServiceSettings, store: SecretsStore) -> Credential:
    """Store the local credential. Raises ``credentials_missing`` when there is none."""
    credential = local_credential(settings)
    if credential is None:
        raise ServiceError(
            "credentials_missing",
            "No ChatGPT credential on this machine to persist. Sign in first "
            "(`chatgpt-login start`).",
            status=409,
        )
    store.put(credential.to_pi_entry())
    return credential


MESSAGES: dict[Action, str] = {
    "restored": "Restored the credential from the secrets store.",
    "pushed_local": "This machine's credential is newer than the stored one; pushed it up.",
    "in_sync": "This machine and the store hold the same credential.",
    "nothing_stored": "Nothing is stored and nothing is on this machine: sign in.",
    "conflict": "The stored credential is for another ChatGPT account than this machine's; both "
    "were left as they are. Log out (`chatgpt-login logout`) to switch accounts.",
    "invalid_record": "The stored credential is malformed or its token names another account; "
    "it was ignored. Sign in again to replace it.",
}


def restore(settings: ServiceSettings, store: SecretsStore) -> RestoreResult:
    """Bring the local file and the store to the newer copy. Never raises for a store fault:
    the result says ``unreachable`` and the local file is left as it was."""
    try:
        # A rotation a killed process left in its temp file is the newest local copy.
        _pi_file(settings).finish_interrupted_write()
    except SkillError as exc:
        log.warning("could not finish an interrupted credential write: %s", exc.code)
    try:
        stored = store.get()
    except ServiceError as exc:
        return RestoreResult("unreachable", exc.message)
    local = local_credential(settings)
    remote = _validated(stored) if stored is not None else None
    action = _compare(local, remote, stored_something=stored is not None)
    if action == "pushed_local" and local is not None:
        try:
            store.put(local.to_pi_entry())
        except ServiceError as exc:
            return RestoreResult("unreachable", exc.message)
    notes = _write_local(settings, remote) if action == "restored" and remote else []
    generation = stored.get("generation") if stored else 0
    return RestoreResult(
        action,
        MESSAGES[action],
        notes=notes,
        stored_generation=generation if isinstance(generation, int) else 0,
    )


def _compare(
    local: Credential | None, remote: Credential | None, *, stored_something: bool
) -> Action:
    """Which copy wins. Newer means the same account with a later expiry."""
    if remote is None:
        if stored_something:
            return "invalid_record"
        return "pushed_local" if local is not None else "nothing_stored"
    if local is None:
        return "restored"
    if local.account_id != remote.account_id:
        return "conflict"
    if local.expires_ms > remote.expires_ms:
        return "pushed_local"
    return "in_sync" if local.expires_ms == remote.expires_ms else "restored"


def refresh_if_expired(settings: ServiceSettings, store: SecretsStore) -> bool:
    """After a restore: if the local access token has expired, spend the refresh token once,
    write the rotated credential and store it. True if it refreshed.

    Runs before the agent starts, so nothing else is spending the token; the network call is
    made outside any file lock (the writes take their own).
    """
    credential = local_credential(settings)
    if credential is None or not credential.expired():
        return False
    from skill.oauth import OAuthClient  # noqa: PLC0415

    with OAuthClient(settings) as client:
        tokens = client.refresh(credential.refresh_token)
    rotated = Credential.from_tokens(tokens, previous=credential)
    _write_local(settings, rotated)
    store.put(rotated.to_pi_entry())
    return True


def _validated(entry: dict[str, object]) -> Credential | None:
    try:
        credential = Credential.from_pi_entry(entry)
        claims = Claims.from_tokens(access_token=credential.access_token)
    except SkillError:
        return None
    return credential if claims.account_id == credential.account_id else None


def _write_local(settings: ServiceSettings, credential: Credential) -> list[str]:
    notes = []
    for auth_file in auth_files(settings):
        try:
            result = auth_file.save(credential)
        except SkillError as exc:
            notes.append(f"{auth_file.path}: {exc.message}")
            continue
        if result.moved_aside:
            notes.append(f"{result.path} was unreadable; moved aside to {result.moved_aside}.")
    return notes


def _pi_file(settings: ServiceSettings) -> PiAuthFile:
    return PiAuthFile(
        settings.pi_auth_file, stale=settings.lock_stale, timeout=settings.lock_timeout
    )


def restore_and_refresh(settings: ServiceSettings, store: SecretsStore) -> RestoreResult:
    """:func:`restore`, then :func:`refresh_if_expired`; refresh failures become notes (the
    credential is kept: the user may need to sign in again)."""
    result = restore(settings, store)
    if result.action in ("unreachable", "conflict"):
        return result
    try:
        result.refreshed = refresh_if_expired(settings, store)
    except (SkillError, ServiceError) as exc:
        result.notes.append(f"The access token has expired and renewing it failed: {exc.message}")
    return result
