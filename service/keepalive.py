"""Keeping the credential alive: the refresh loop and sync-back, once per container.

Every gunicorn worker starts a :class:`KeepAlive` thread, but only the one holding the leader
lock (an exclusive ``flock`` on ``<state>/keepalive.lock``) works; the others keep trying, so
when the leader's worker dies (its fd closes, the flock goes) another takes over.

Each tick of the leader:

1. **Refresh** ahead of expiry (``refresh_window``) through :class:`~service.refresher.Refresher`.
   Transient failures back off with jitter while the still-valid access token keeps serving; a
   permanent one marks ``needs_relogin`` with the reason and makes no further network attempt
   until the credential changes (a new sign-in, a restore, another client's refresh).
2. **Sync-back**: whenever the local credential differs from what was last stored (our refresh,
   pi's or codex's own, a new sign-in, a restore), push it, retrying until acknowledged. What was
   pushed is remembered in ``service.json``, so a push still pending when the service crashed is
   made after the restart. Each stored record carries a ``generation`` that only grows and the
   time of the last refresh.

On becoming leader it first reconciles local and stored copies (the newer wins, as in restore).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from service.errors import ServiceError
from service.refresher import Refresher
from service.secrets import SecretsStore
from service.settings import ServiceSettings
from service.state import Metrics, PersistState
from service.sync import local_credential, restore
from skill.credentials import Credential
from skill.errors import SkillError
from skill.files import ensure_private_dir
from skill.lock import FlockLock

log = logging.getLogger(__name__)

TICK = 0.5  # sync-back must land within 2 s of a change
_BACKOFF_CAP = 60.0


@dataclass
class Tick:
    refreshed: bool = False
    pushed: bool = False
    error: str | None = None


def fingerprint(credential: Credential) -> str:
    """Identifies a credential's content without holding it (a hash, safe to store)."""
    entry = credential.to_pi_entry()
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


class KeepAlive:
    def __init__(
        self,
        settings: ServiceSettings,
        store: SecretsStore,
        *,
        refresher: Refresher | None = None,
        tick: float = TICK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.store, self.tick_seconds = settings, store, tick
        self.clock = clock  # wall time for expiry decisions; tests inject one
        self.refresher = refresher or Refresher(settings, clock=clock)
        self.state = PersistState(settings.state_dir / "service.json")
        self.metrics = Metrics(settings.state_dir / "metrics.json")
        self._retry_at = 0.0
        self._failures = 0
        self._leader: FlockLock | None = None

    # One step (the tests drive this directly) ------------------------------------------------

    def run_once(self) -> Tick:
        result = Tick()
        if time.monotonic() < self._retry_at:
            return result
        try:
            # A rotation a killed process (a CLI refresh, say) left in its temp file: finish it
            # before anyone spends the refresh token it replaced, and push it like any change.
            self.refresher.pi.finish_interrupted_write()
        except SkillError as exc:  # the lock stayed busy: next tick
            log.warning("could not finish an interrupted credential write: %s", exc.code)
        credential = local_credential(self.settings)
        if credential is None:
            return result
        try:
            if self._should_refresh(credential):
                refreshed = self.refresher.ensure_fresh()
                result.refreshed = refreshed.refreshed
                credential = refreshed.credential
                self._clear_relogin()
            result.pushed = self._sync_back(credential)
        except SkillError as exc:
            result.error = exc.code
            if exc.permanent:
                self.mark_relogin(credential, exc)
            else:
                self._back_off(exc.code)
        except ServiceError as exc:
            result.error = exc.code
            self._back_off(exc.code)
        else:
            self._failures = 0
        return result

    def _should_refresh(self, credential: Credential) -> bool:
        if not credential.expired(margin=self.settings.refresh_window, now=self.clock()):
            return False
        dead = self.state.read().get("dead_refresh")
        # A refresh token that failed permanently is not tried again; a changed one is.
        return dead != _sha(credential.refresh_token)

    def _sync_back(self, credential: Credential) -> bool:
        seen = fingerprint(credential)
        known = self.state.read()
        if known.get("pushed") == seen:
            return False
        generation = int(known.get("generation", 0)) + 1
        entry = {
            **credential.to_pi_entry(),
            "generation": generation,
            "lastRefresh": credential.last_refresh.isoformat(),
        }
        try:
            self.metrics.timed("secrets_api", lambda: self.store.put(entry))
        except ServiceError:
            self.state.mark(persisted=False)
            self.metrics.count("sync_backs", "failed")
            raise
        with self.state.updating() as data:
            data.update(pushed=seen, generation=generation, persist_pending=False,
                        last_persisted_at=datetime.now(UTC).isoformat())  # fmt: skip
        self.metrics.count("sync_backs", "ok")
        return True

    def mark_relogin(self, credential: Credential, exc: SkillError) -> None:
        log.warning("refresh failed permanently (%s): sign-in needed", exc.code)
        with self.state.updating() as data:
            data.update(needs_relogin=exc.code, dead_refresh=_sha(credential.refresh_token))
        self.metrics.count("refreshes", exc.code)

    def _clear_relogin(self) -> None:
        if self.state.read().get("needs_relogin"):
            with self.state.updating() as data:
                data.pop("needs_relogin", None)
                data.pop("dead_refresh", None)

    def _back_off(self, code: str) -> None:
        self._failures += 1
        delay = min(_BACKOFF_CAP, 0.5 * 2 ** min(self._failures, 8)) * (0.5 + random.random())  # noqa: S311
        self._retry_at = time.monotonic() + delay
        log.info("keep-alive step failed (%s); retrying in %.1fs", code, delay)

    # Leadership and the loop ------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Become the leader if no one is; True while we are."""
        if self._leader is not None:
            return True
        ensure_private_dir(self.settings.state_dir)
        lock = FlockLock(self.settings.state_dir / "keepalive", timeout=0.0)
        try:
            lock.acquire()
        except SkillError:
            return False
        self._leader = lock
        self.reconcile()
        return True

    def reconcile(self) -> None:
        """On taking over: newer of local and stored wins; the loop then pushes if needed."""
        result = restore(self.settings, self.store)
        log.info("keep-alive reconcile: %s", result.action)
        credential = local_credential(self.settings)
        with self.state.updating() as data:
            data["generation"] = max(int(data.get("generation", 0)), result.stored_generation)
            # Both sides now hold this credential (restore wrote it, or it was already stored);
            # "pushed_local" stored it without a generation, so leave that one to the loop.
            if credential is not None and result.action in ("in_sync", "restored"):
                data["pushed"] = fingerprint(credential)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if self.try_lead():
                    self.run_once()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("keep-alive tick failed")
            stop.wait(self.tick_seconds)
        if self._leader is not None:
            self._leader.release()
            self._leader = None

    def start(self) -> threading.Event:
        stop = threading.Event()
        threading.Thread(
            target=self.run_forever, args=(stop,), name="keepalive", daemon=True
        ).start()
        return stop


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
