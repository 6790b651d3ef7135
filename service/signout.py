"""Logging out everywhere: the one implementation behind ``DELETE /v1/credentials`` and
``chatgpt-login logout`` (which asks the service, and does :mod:`skill.signout`'s part itself
only when the service is not running).

Order matters: the stored copy is replaced with a tombstone first, then this machine's entries
go, so the keep-alive never finds the local file empty beside a live stored copy (it would
restore it). When the store cannot be reached, the logout is noted as pending instead, which
keeps the keep-alive and ``restore`` from bringing the credential back until it is carried out.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Literal

from service.errors import ServiceError
from service.persistence import Persistence
from skill.authfiles import auth_files
from skill.errors import SkillError
from skill.signout import LocalSignOut, note_pending, sign_out_locally

Stored = Literal["tombstoned", "pending", "other_account"]


@dataclass(frozen=True)
class SignOut:
    local: LocalSignOut
    stored: Stored
    # Why the stored copy's sign-out is pending: the store's error code (it was unreachable, or
    # it kept changing under the other holders' writes).
    pending_why: str | None = None
    already: bool = False  # the stored copy was a tombstone before this logout: a repeat
    history_problem: str | None = None  # why its older versions are not destroyed yet

    @property
    def message(self) -> str:
        tombstoned = (
            "the stored copy was already signed out by an earlier logout, and no restart "
            "restores it" if self.already else "the stored copy is replaced with a tombstone, "
            "so every container signs out within seconds and no restart restores it"
        )  # fmt: skip
        stored = {
            "tombstoned": tombstoned,
            "pending": f"{self._pending_cause()}, so signing out the stored copy is pending (it "
            "is retried until the store takes it; until then nothing restores it here)",
            "other_account": "the stored copy belongs to another account and was left as it is",
        }[self.stored]
        if self.local.account_id is None:
            revoked = "there was no sign-in here to revoke"
        elif self.local.revoked:
            revoked = "the sign-in is revoked"
        else:
            revoked = f"revoking failed ({self.local.revoke_error}); it ends when it expires"
        removed = "local entries removed" if self.local.removed else "no local entries"
        moved = "".join(
            f" {path} could not be read; it was moved aside to {path}.corrupt-*, not deleted."
            for path in self.local.moved_aside
        )
        history = (
            f" The stored copy's older versions, which hold the signed-out credential, are not "
            f"destroyed yet; the service keeps trying: {self.history_problem}"
            if self.history_problem
            else ""
        )
        return f"Signed out: {removed}; {stored}; {revoked}.{moved}{history}"

    def _pending_cause(self) -> str:
        if self.pending_why == "store_conflict":
            return "the stored copy kept changing under other holders' writes"
        return "the secrets store could not be reached"


def sign_out(persistence: Persistence) -> SignOut:
    settings = persistence.settings
    local = persistence.local()
    account = local.account_id if local else None
    held = _files_holding_ours(persistence)
    stored: Stored
    why = None
    started = persistence.now()
    try:
        tombstone = persistence.log_out(account)
        stored = "tombstoned" if tombstone is not None else "other_account"
        already = tombstone is not None and tombstone.at < started  # it kept the one it found
    except ServiceError as exc:
        note_pending(settings, account)
        stored, why, already = "pending", exc.code, False
    # The credential read before the tombstone: the keep-alive may drop it meanwhile (it saw
    # the tombstone), so what was removed is what held it before, whoever removed it.
    done = sign_out_locally(settings, credential=local)
    gone = [path for path in held if path not in _files_holding_ours(persistence)]
    removed = sorted(set(done.removed) | set(gone))
    state = persistence.state.read()
    history = state.history_problem if state.history_pending else None
    return SignOut(replace(done, removed=removed), stored, why, already, history)


def _files_holding_ours(persistence: Persistence) -> list[str]:
    held = []
    for auth_file in auth_files(persistence.settings):
        with contextlib.suppress(SkillError):
            if auth_file.load() is not None:
                held.append(str(auth_file.path))
    return held
