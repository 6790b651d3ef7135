"""Renewing the access token without ever spending a refresh token twice.

ChatGPT refresh tokens rotate on every use, and presenting a used one fails and may revoke the
whole family (PROTOCOL.md §4). So every refresh is one critical section across processes, under
pi's own ``auth.json.lock`` (the pi agent takes the same lock for its refreshes):

1. take the lock; finish a write a killed process left in its temp file; re-read the file;
2. if another process already renewed it (a different, still-valid credential for the same
   account), adopt that without calling the issuer; never adopt another account;
3. otherwise spend the refresh token (one HTTP call, bounded by connect and read timeouts),
   write the rotated credential, release.

A permanent failure (``refresh_token_reused`` and friends) gets one more guarded re-read: if a
writer that does not use pi's lock (codex keeps its own) stored a newer credential meanwhile,
that one is adopted. Otherwise the failure stands and the credential is kept, never deleted.

Across containers the same rule needs the store: :meth:`service.persistence.Persistence.renew`
takes the store's lease and then calls :meth:`Refresher.renew` here. :func:`refresh_due_at` is
the schedule both follow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.settings import ServiceSettings
from skill.authfiles import CodexAuthFile, PiAuthFile
from skill.credentials import Credential
from skill.errors import SkillError

if TYPE_CHECKING:
    from skill.oauth import OAuthClient

log = logging.getLogger(__name__)


def refresh_due_at(credential: Credential, settings: ServiceSettings) -> float:
    """When (epoch seconds) to renew ``credential``: once less than ``min(refresh_window, half
    its lifetime)`` is left, but not within ``refresh_min_interval`` of its issue unless it has
    expired by then. A token shorter-lived than the window is so renewed twice per lifetime,
    not on every tick; one that lives for days, once, ten minutes before it ends."""
    expires = credential.expires_ms / 1000
    lifetime = credential.lifetime()
    threshold = (
        settings.refresh_window if lifetime is None else min(settings.refresh_window, lifetime / 2)
    )
    due = expires - threshold
    issued = credential.issued_at()
    # With no minimum interval there is no floor: the issuer's ``iat`` may be a little ahead of
    # our clock, and a token already inside its window must not wait for it.
    if issued is not None and settings.refresh_min_interval > 0:
        due = max(due, min(issued + settings.refresh_min_interval, expires))
    return due


@dataclass(frozen=True)
class Refreshed:
    credential: Credential
    refreshed: bool = False  # we spent the refresh token
    adopted: bool = False  # another process had renewed it; we took theirs


class Refresher:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        client: Callable[[], OAuthClient] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock  # what "expires soon" is judged against (tests move it)
        self._client = client or (lambda: _oauth_client(settings))
        self.pi = PiAuthFile(
            settings.pi_auth_file, stale=settings.lock_stale, timeout=settings.lock_timeout
        )

    def ensure_fresh(self, *, window: float | None = None, force: bool = False) -> Refreshed:
        """A credential valid for at least ``window`` seconds (default: the refresh window);
        with ``force``, renewed now whatever its expiry."""
        margin = self.settings.refresh_window if window is None else window
        seen = self._load()
        if not force and not seen.expired(margin=margin, now=self.clock()):
            return Refreshed(seen)
        return self.renew(seen, margin=0 if force else margin)

    def renew(self, seen: Credential, *, margin: float = 0.0) -> Refreshed:
        """Spend the refresh token of ``seen`` now, unless another process of this machine
        renewed it meanwhile (a different credential for the same account, valid for at least
        ``margin`` seconds): that one is taken instead."""
        with self.pi.lock:
            # A rotation a killed writer left half-saved would otherwise be lost, and its
            # refresh token spent a second time by us.
            self.pi.finish_interrupted_write_locked()
            latest = self._load()
            if latest.account_id != seen.account_id:
                raise SkillError("account_mismatch")
            renewed_elsewhere = latest.refresh_token != seen.refresh_token
            if renewed_elsewhere and not latest.expired(margin=margin, now=self.clock()):
                return Refreshed(latest, adopted=True)
            return self._spend(latest)

    def _spend(self, current: Credential) -> Refreshed:
        """Call the issuer and write the result; the caller holds pi's lock."""
        try:
            with self._client() as client:
                tokens = client.refresh(current.refresh_token)
        except SkillError as exc:
            if exc.permanent:
                again = self._load_or_none()
                if (
                    again is not None
                    and again.account_id == current.account_id
                    and again.refresh_token != current.refresh_token
                ):
                    log.info("refresh failed (%s) but a newer credential is on disk", exc.code)
                    return Refreshed(again, adopted=True)
            raise
        rotated = Credential.from_tokens(tokens, previous=current)
        self.pi.save_locked(rotated)
        if "codex" in self.settings.credential_files and rotated.id_token:
            CodexAuthFile(self.settings.codex_auth_file, timeout=self.settings.lock_timeout).save(
                rotated
            )
        return Refreshed(rotated, refreshed=True)

    def _load(self) -> Credential:
        credential = self._load_or_none()
        if credential is None:
            raise SkillError("credentials_missing")
        return credential

    def _load_or_none(self) -> Credential | None:
        return self.pi.load()


def _oauth_client(settings: ServiceSettings) -> OAuthClient:
    # The OAuth client and its models are imported only when a refresh is spent.
    from skill.oauth import OAuthClient  # noqa: PLC0415

    return OAuthClient(settings)
