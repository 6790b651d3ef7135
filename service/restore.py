"""What a waking container runs before the agent starts: ``chatgpt-login restore``.

It brings this machine and the stored copy together by the one rule every holder follows
(:func:`service.record.decide`): the newer copy of the same account wins (a newer local one is
pushed up), another account's copy is never adopted, a malformed stored record is replaced, and
a credential logged out elsewhere is removed here, never restored. A logout made while the
service was down is carried out first. If the access token has expired, it is renewed once,
under the store's lease like every refresh, and stored.

No Flask here, and nothing heavy: it runs on every container start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from service.errors import ServiceError
from service.persistence import Persistence
from service.record import Decision
from service.refresher import Refresher
from service.secrets import SecretsStore
from service.settings import ServiceSettings
from skill.errors import SkillError

log = logging.getLogger(__name__)

Action = Literal[
    "restored", "pushed_local", "in_sync", "nothing_stored", "unreachable", "misconfigured",
    "conflict", "invalid_record", "logged_out", "not_written",
]  # fmt: skip

# Why a restore failed, as a stable code of every command's errors (skill.errors: its exit
# code and the agent's next step come with it).
FAILURES: dict[Action, str] = {
    "unreachable": "store_unavailable",  # did not answer, or answered nonsense: try again
    "misconfigured": "store_misconfigured",  # refused us (the token, the address): tell someone
    "conflict": "account_mismatch",
    "invalid_record": "credentials_invalid",
    "not_written": "lock_timeout",
}

_ACTIONS: dict[Decision, Action] = {
    "adopt": "restored",
    "push": "pushed_local",
    "in_sync": "in_sync",
    "nothing": "nothing_stored",
    "conflict": "conflict",
    "drop": "logged_out",
    "logged_out": "logged_out",
}

MESSAGES: dict[Action, str] = {
    "restored": "Restored the credential from the secrets store.",
    "pushed_local": "This machine's credential is newer than the stored one; pushed it up.",
    "in_sync": "This machine and the store hold the same credential.",
    "nothing_stored": "Nothing is stored and nothing is on this machine: sign in.",
    "conflict": "The stored credential is for another ChatGPT account than this machine's; both "
    "were left as they are. Log out (`chatgpt-login logout`) to switch accounts.",
    "invalid_record": "The stored credential is malformed or its token names another account; "
    "it was ignored. Sign in again to replace it.",
    "logged_out": "The credential was logged out (a tombstone is stored); nothing was restored "
    "and this machine's copy, if any, was removed. Sign in again to use ChatGPT.",
    "not_written": "The stored credential was not written here: the credential file changed or "
    "stayed locked meanwhile. The service brings them together when it runs.",
}


@dataclass
class RestoreResult:
    action: Action
    message: str
    refreshed: bool = False
    notes: list[str] = field(default_factory=list)
    stored_generation: int = 0
    error: str | None = None  # the code of what went wrong, when it is more exact than FAILURES'

    @property
    def failed(self) -> bool:
        return self.action in FAILURES

    @property
    def code(self) -> str | None:
        """The stable code of the failure (None when it did not fail)."""
        return (self.error or FAILURES[self.action]) if self.failed else None


def within_limit(settings: ServiceSettings) -> ServiceSettings:
    """The settings a restore runs with: every wait cut to fit inside ``restore_limit``, the
    time the container's entrypoint gives it before starting the service anyway."""
    limit = settings.restore_limit
    return settings.model_copy(
        update={
            "secrets_deadline": min(settings.secrets_deadline, 0.3 * limit),
            "secrets_timeout": min(settings.secrets_timeout, 0.15 * limit),
            "lock_timeout": min(settings.lock_timeout, 0.2 * limit),
            "request_deadline": min(settings.request_deadline, 0.25 * limit),
        }
    )


def restore(settings: ServiceSettings, store: SecretsStore) -> RestoreResult:
    """Bring the local file and the store to the newer copy. Never raises for a store fault:
    the result says ``unreachable`` (or ``misconfigured``, when the store refused us) and the
    local file is left as it was."""
    persistence = Persistence(settings, store)
    persistence.adopting_as = "restored"  # what the credential.updated event says
    try:
        # A rotation a killed process left in its temp file is the newest local copy.
        persistence.pi.finish_interrupted_write()
    except SkillError as exc:
        log.warning("could not finish an interrupted credential write: %s", exc.code)
    try:
        persistence.carry_out_pending_logout()
        synced = persistence.sync()
    except ServiceError as exc:  # asking again may help, or someone must fix a setting
        return RestoreResult("unreachable" if exc.transient else "misconfigured", exc.message)
    except SkillError as exc:  # a credential file or its lock in the way: nothing was written
        return RestoreResult("not_written", f"{MESSAGES['not_written']} ({exc.message})",
                             error=exc.code)  # fmt: skip
    action = _ACTIONS[synced.decision] if synced.written else "not_written"
    if synced.record.invalid and action == "nothing_stored":
        action = "invalid_record"
    return RestoreResult(
        action,
        MESSAGES[action],
        notes=synced.notes,
        stored_generation=synced.record.generation,
    )


def refresh_if_expired(settings: ServiceSettings, store: SecretsStore) -> bool:
    """After a restore: if the local access token has expired, renew it as every holder does
    (read the store first, then under the lease) and store it. True if this call renewed it."""
    persistence = Persistence(settings, store)
    credential = persistence.local()
    if credential is None or not credential.expired():
        return False
    renewed = persistence.renew(Refresher(settings))
    if renewed.outcome == "busy":
        raise ServiceError(
            "refresh_busy",
            "Another container is renewing this sign-in right now; it is adopted as soon as "
            "it is stored.",
            status=503,
            transient=True,
        )
    return renewed.outcome == "refreshed"


def restore_and_refresh(settings: ServiceSettings, store: SecretsStore) -> RestoreResult:
    """:func:`restore`, then :func:`refresh_if_expired` if half the time limit is left (else the
    service renews it when it starts); refresh failures become notes (the credential is kept:
    the user may need to sign in again)."""
    started = time.monotonic()
    result = restore(settings, store)
    if result.failed or result.action == "logged_out":
        return result
    if time.monotonic() - started > settings.restore_limit / 2:
        result.notes.append("Renewing an expired access token is left to the service.")
        return result
    try:
        result.refreshed = refresh_if_expired(settings, store)
    except (SkillError, ServiceError) as exc:
        result.notes.append(f"The access token has expired and renewing it failed: {exc.message}")
    return result
