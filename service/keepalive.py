"""Keeping the credential alive: one loop per container, one refresher per credential.

Every gunicorn worker starts a :class:`KeepAlive` thread, but only the one holding the leader
lock (an exclusive ``flock`` on ``<state>/keepalive.lock``) works; the others keep trying, so
when the leader's worker dies (its fd closes, the flock goes) another takes over.

Each step of the leader (:meth:`KeepAlive.run_once`), through :mod:`service.persistence`:

1. **Finish** a credential write a killed process left in its temp file, and carry out a logout
   made while the service was down.
2. **Sync** with the store every ``store_poll`` seconds, at once when this machine's credential
   changed (our refresh, pi's or codex's, a new sign-in, a restore), and every
   :data:`WATCH_POLL` while another holder's lease says its rotation is due: adopt a newer
   stored copy, push a newer local one, drop a credential logged out elsewhere.
3. **Renew** when :func:`~service.refresher.refresh_due_at` says so, as the one holder with the
   lease; the others adopt its result. Transient failures back off with jitter while the
   still-valid access token keeps serving; a permanent one (after the store had nothing newer)
   marks ``needs_relogin`` and makes no further attempt until the credential changes.
4. **Heartbeat** every ``holder_heartbeat`` seconds, so status shows who shares the credential.

The loop sleeps until the next of these is due, never longer than :data:`TICK`: a local change
is stored within a second or two.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import ServiceError
from service.hook import OnChangeHook
from service.persistence import Persistence, Synced, dead_refresh_token
from service.record import Lease, fingerprint
from service.refresher import Refresher, refresh_due_at
from service.secrets import SecretsStore
from service.settings import ServiceSettings
from skill import statedir
from skill.attempt import AttemptFile
from skill.credentials import Credential
from skill.errors import SkillError
from skill.events import last_id, since
from skill.files import ensure_private_dir
from skill.lock import FlockLock
from skill.waiting import backoff

log = logging.getLogger(__name__)

TICK = 0.5  # a local change is stored within 2 s
# While another holder rotates the token, how often to look for its result: very often right
# after it said it would spend it (its result comes within milliseconds, and until then this
# machine holds a spent token), then less, for WATCH_LIMIT seconds at most.
WATCH_POLL, WATCH_POLL_LATER, WATCH_CLOSE = 0.005, 0.05, 0.5
WATCH_LIMIT = 10.0
WATCH_NEAR = 60.0  # seconds before this holder's own renewal from which a lease is watched
_BACKOFF_CAP = 60.0  # the issuer failing
_STORE_BACKOFF_CAP = 10.0  # the store failing
_JITTER = 0.25  # holders due at the same moment start within this many seconds of each other


@dataclass
class Tick:
    refreshed: bool = False
    pushed: bool = False
    adopted: bool = False
    dropped: bool = False
    busy: bool = False  # another holder had the lease
    error: str | None = None


class KeepAlive:
    def __init__(
        self,
        settings: ServiceSettings,
        store: SecretsStore,
        *,
        refresher: Refresher | None = None,
        tick: float = TICK,
        clock: Callable[[], float] = time.time,
        persistence: Persistence | None = None,
    ) -> None:
        self.settings, self.tick_seconds = settings, tick
        self.clock = clock  # wall time for expiry decisions; tests inject one
        self.refresher = refresher or Refresher(settings, clock=clock)
        self.persistence = persistence or Persistence(settings, store, clock=clock)
        self._next_sync = 0.0  # monotonic
        self._next_beat = 0.0
        self._watch: tuple[float, float] | None = None  # (from, until), monotonic
        self._watched: tuple[str, str, int] | None = None  # the lease watched last
        self._jitter = random.random() * _JITTER  # noqa: S311 - spreading holders, not crypto
        self._retry_at = 0.0
        self._failures = 0
        self._due: float | None = None  # wall time the credential is next due for renewal
        self._past_due_since: float | None = None  # monotonic; see next_wait
        self._leader: FlockLock | None = None
        self._unreadable: str | None = None  # the credential last found unreadable (said once)
        self._events_seen = 0
        self.hook = OnChangeHook(settings, self.persistence.metrics)

    # One step (the tests drive this directly) ------------------------------------------------

    def run_once(self) -> Tick:
        result = Tick()
        mono = time.monotonic()
        if mono < self._retry_at:
            return result
        p = self.persistence
        try:
            # A rotation a killed process (a CLI refresh, say) left in its temp file: finish it
            # before anyone spends the refresh token it replaced, and push it like any change.
            p.pi.finish_interrupted_write()
        except SkillError as exc:  # the lock stayed busy: next step
            log.warning("could not finish an interrupted credential write: %s", exc.code)
        local: Credential | None = None
        try:
            p.carry_out_pending_logout()
            p.finish_forgetting()
            local = p.local()
            due = self._renewal_due(local)
            if due or mono >= self._next_sync or self._watching(mono) or self._changed(local):
                synced = self._sync(result, local)
                local = synced.credential
                if self._renewal_due(local) and not result.busy:
                    self._renew(result, synced)
            if mono >= self._next_beat:
                p.heartbeat()
                self._next_beat = mono + self.settings.holder_heartbeat
        except SkillError as exc:
            result.error = exc.code
            if exc.permanent and local is not None:
                p.mark_relogin(local, exc)
                p.metrics.count("refreshes", exc.code)
            else:
                self._back_off(exc.code)
        except ServiceError as exc:
            result.error = exc.code
            # The store came back? Look again soon: a container cut off adopts on return.
            self._back_off(exc.code, cap=_STORE_BACKOFF_CAP)
        else:
            self._failures = 0
        finally:
            self._due = self._due_at(p.local())
            p.metrics.flush(every=2.0)
        return result

    def _sync(self, result: Tick, local: Credential | None) -> Synced:
        synced = self.persistence.sync(local=local)
        self._next_sync = time.monotonic() + self.settings.store_poll
        result.pushed = synced.decision == "push"
        result.adopted = synced.decision == "adopt" and synced.written
        result.dropped = synced.decision == "drop"
        lease = self.persistence.lease_in_force(synced.record)
        if lease is not None and lease.holder != self.persistence.holder.id:
            result.busy = True  # its result is coming: watch for it, spend nothing
            self._watch_lease(lease)
        else:
            self._watch = None
        return synced

    def _renew(self, result: Tick, synced: Synced) -> None:
        renewed = self.persistence.renew(self.refresher, synced=synced)
        result.refreshed = renewed.outcome == "refreshed"
        result.pushed = result.pushed or result.refreshed  # renew stores what it spent at once
        result.adopted = result.adopted or renewed.outcome == "adopted"
        result.busy = renewed.outcome == "busy"
        if renewed.outcome == "busy" and renewed.busy_with is not None:
            self._watch_lease(renewed.busy_with)
        if renewed.outcome in ("refreshed", "adopted"):
            self.persistence.clear_relogin()

    def _watch_lease(self, lease: Lease) -> None:
        """Look at the store every WATCH_POLL from when the other holder spends the token
        until its result is adopted (or WATCH_LIMIT passes). Once per lease: every look at the
        store while it is in force would start the window again, and a holder that died
        holding it (or a lease planted in the store) would be watched at 150 looks a second
        until it ran out; after its window this holder looks as any holder past due does."""
        key = (lease.holder, lease.nonce, lease.generation)
        if key == self._watched or not self._renewal_near():
            return
        self._watched = key
        spend_after = lease.spend_after.timestamp() if lease.spend_after else self.clock()
        start = time.monotonic() + max(0.0, spend_after - self.clock())
        self._watch = (start, start + WATCH_LIMIT)

    def _renewal_near(self) -> bool:
        """Whether this holder's own renewal is due within WATCH_NEAR: every holder's is within
        a fraction of a second of the others' (one credential, one expiry), so a lease taken
        then is the renewal it would make. Further off, the rotation is adopted at the next
        store_poll, long before this holder would spend the token; watching closely then would
        let anyone who writes the store (a fresh lease every moment) set every holder reading
        it hundreds of times a second."""
        return self._due is not None and self._due - self.clock() <= WATCH_NEAR

    def _watching(self, mono: float) -> bool:
        if self._watch is None:
            return False
        if mono > self._watch[1]:
            self._watch = None
            return False
        return mono >= self._watch[0]

    def _changed(self, local: Credential | None) -> bool:
        """This machine's credential is not what was last in step with the store."""
        return local is not None and fingerprint(local) != self.persistence.state.read().synced

    def _renewal_due(self, local: Credential | None) -> bool:
        due = self._due_at(local)
        return due is not None and self.clock() >= due

    def _due_at(self, local: Credential | None) -> float | None:
        """When ``local`` is due for renewal (wall time, with this holder's jitter); None when
        it is not to be renewed here (none, or its refresh token failed for good)."""
        if local is None or dead_refresh_token(self.persistence.state.read(), local):
            return None
        try:
            return refresh_due_at(local, self.settings) + self._jitter
        except SkillError as exc:  # an access token that is not a JWT: its expiry is unknown
            if self._unreadable != local.refresh_token:
                self._unreadable = local.refresh_token
                log.warning("the credential cannot be renewed on schedule: %s", exc.message)
            return None

    def _back_off(self, code: str, *, cap: float = _BACKOFF_CAP) -> None:
        self._failures += 1
        delay = backoff(self._failures, base=1.0, cap=cap)
        self._retry_at = time.monotonic() + delay
        log.info("keep-alive step failed (%s); retrying in %.1fs", code, delay)

    def next_wait(self) -> float:
        """Seconds until the next step is due: a tick, the renewal time, or a watch poll."""
        mono = time.monotonic()
        wait = self.tick_seconds
        if self._watch is not None and mono > self._watch[1]:
            self._watch = None  # over (run_once does not look when the renewal is due)
        if self._watch is not None:
            close = mono < self._watch[0] + WATCH_CLOSE
            poll = WATCH_POLL if close else WATCH_POLL_LATER
            wait = min(wait, max(poll, self._watch[0] - mono))
        if self._due is None or self._due > self.clock():
            self._past_due_since = None
            if self._due is not None:
                wait = min(wait, self._due - self.clock())
        else:
            # Past due and not renewed here: another holder has the lease (or is about to take
            # it) and this machine will hold a spent token from its spend until it adopts. Look
            # as often as while watching a lease, for as long.
            if self._past_due_since is None:
                self._past_due_since = mono
            if mono - self._past_due_since < WATCH_LIMIT:
                wait = min(wait, WATCH_POLL_LATER)
        return max(wait, self._retry_at - mono, 0.005)

    def hook_changes(self) -> None:
        """Run the on-change hook for every credential event since the last look (whoever
        wrote it: this service, or a command beside it), once each, without waiting for it."""
        for event in since(self.settings.state_dir, self._events_seen):
            self._events_seen = event.id
            self.hook(event)

    def watch_login(self) -> None:
        """A sign-in nobody waits on (a device code approved after an API start) still ends:
        the leader looks at a waiting attempt every tick, the runner concludes it once its
        program has succeeded, and the credential it wrote is stored like any local change."""
        waiting = AttemptFile(self.settings.state_dir).load()
        if waiting is None or waiting.status != "waiting":
            return
        from skill.runner import Runner  # noqa: PLC0415 - only while a sign-in is waiting

        settled = Runner(self.settings).status()
        if settled is not None and settled.id == waiting.id and not settled.live:
            log.info("sign-in %s ended by itself: %s", settled.id, settled.status)

    # Leadership and the loop ------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Become the leader if no one is; True while we are."""
        if self._leader is not None:
            return True
        ensure_private_dir(self.settings.state_dir)
        lock = FlockLock(self.settings.state_dir / statedir.KEEPALIVE_LOCK, timeout=0.0)
        try:
            lock.acquire()
        except SkillError:
            return False
        self._leader = lock
        # Hooks run for what came since the last leader's last hook, and all that comes next.
        self._events_seen = self.hook.resume_after(last_id(self.settings.state_dir))
        return True

    def run_forever(self, stop: threading.Event) -> None:
        broken = 0  # ticks in a row that failed unexpectedly
        while not stop.is_set():
            wait = self.tick_seconds
            try:
                if self.try_lead():
                    self.run_once()
                    self.watch_login()
                    self.hook_changes()
                    self.persistence.metrics.count_journal(self.settings.state_dir)
                    wait = self.next_wait()
                broken = 0
            except Exception as exc:  # the loop must outlive any one bad tick
                # A fault that repeats (something in the store no check foresaw) is traced
                # once, then said in a line, and tried less often: not a traceback twice a
                # second for ever.
                broken += 1
                wait = backoff(broken, base=self.tick_seconds, cap=_BACKOFF_CAP)
                if broken == 1:
                    log.exception("keep-alive tick failed")
                else:
                    log.error("keep-alive tick failed again (%s, %d in a row); next try in "
                              "%.0f s", type(exc).__name__, broken, wait)  # fmt: skip
            stop.wait(wait)
        if self._leader is not None:
            self._leader.release()
            self._leader = None

    def start(self) -> threading.Event:
        stop = threading.Event()
        threading.Thread(
            target=self.run_forever, args=(stop,), name="keepalive", daemon=True
        ).start()
        return stop
