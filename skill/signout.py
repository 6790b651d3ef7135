"""Signing out on this machine, and the note that the stored copy must go too.

:func:`sign_out_locally` does what needs no secrets store: cancel a live sign-in, revoke the
refresh token at the issuer (best effort, reported), and remove our entries from the credential
files (other providers' entries, and anything else in a file, stay). The service adds the last
step, replacing the stored copy with a tombstone so that no container keeps or restores it.
When the service is not running, ``chatgpt-login logout`` leaves a note (``logout.pending`` in
the state directory) and the service, or ``restore`` at the next container start, carries it
out: a copy stored from before the note is tombstoned, a sign-in made after it is kept.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError

from skill import statedir
from skill.errors import SkillError
from skill.files import read_settled, write_private
from skill.settings import Settings

if TYPE_CHECKING:
    from skill.credentials import Credential


@dataclass(frozen=True)
class LocalSignOut:
    account_id: str | None = None  # whose credential was here (None: there was none)
    revoked: bool = False
    revoke_error: str | None = None  # the error code when revoking failed
    removed: list[str] = field(default_factory=list)  # the files our entries were removed from
    moved_aside: list[str] = field(default_factory=list)  # unreadable files, moved (not deleted)


def sign_out_locally(settings: Settings, *, credential: Credential | None = None) -> LocalSignOut:
    """Cancel, revoke (``credential``, or the one in the files), remove our entries."""
    from skill.authfiles import auth_files  # noqa: PLC0415 - not on the start path
    from skill.runner import Runner  # noqa: PLC0415

    Runner(settings).cancel()
    files = auth_files(settings)
    for auth_file in files:
        with contextlib.suppress(SkillError):
            credential = credential or auth_file.load()
    revoked, revoke_error = False, None
    if credential is not None:
        from skill.oauth import OAuthClient  # noqa: PLC0415

        try:
            with OAuthClient(settings) as client:
                client.revoke(credential.refresh_token)
            revoked = True
        except SkillError as exc:
            revoke_error = exc.code
    from skill.apikey import take_back  # noqa: PLC0415

    take_back(settings)  # the API key a sign-in brought, if any: before the files are emptied
    results = [auth_file.remove() for auth_file in files]
    return LocalSignOut(
        account_id=credential.account_id if credential else None,
        revoked=revoked,
        revoke_error=revoke_error,
        removed=[str(r.path) for r in results if r.removed],
        moved_aside=[str(r.moved_aside) for r in results if r.moved_aside],
    )


class PendingLogout(BaseModel):
    """A logout the stored copy has not seen yet."""

    model_config = ConfigDict(defer_build=True)  # built when a logout is first read or noted

    at: datetime
    account_id: str | None = None


def pending_path(settings: Settings) -> Path:
    return settings.state_dir / statedir.LOGOUT_PENDING


def note_pending(settings: Settings, account_id: str | None) -> PendingLogout:
    """Remember that the stored copy must be signed out (the earliest such logout counts)."""
    note = read_pending(settings) or PendingLogout(at=datetime.now(UTC), account_id=account_id)
    write_private(pending_path(settings), note.model_dump_json().encode())
    return note


def read_pending(settings: Settings) -> PendingLogout | None:
    try:
        found = read_settled(pending_path(settings), json.loads, settle=0.1)
        return PendingLogout.model_validate(found[1]) if found else None
    except (SkillError, ValidationError):
        return None  # unreadable: nothing we can act on; the next logout writes a new one


def clear_pending(settings: Settings) -> None:
    pending_path(settings).unlink(missing_ok=True)
