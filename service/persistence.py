"""The one owner of the stored copy: every read and write of it, and of ``service.json``.

The secrets store holds the one source of truth for a credential that several containers (each
running this service: a *holder*) share. What the record holds is in :mod:`service.record`;
what this module guarantees (``../shared/MANY-CONTAINERS.md``):

1. **Read before spending.** :meth:`Persistence.renew` reads the store first and adopts a newer
   copy instead of refreshing; a refresh token the store shows as rotated is never spent.
2. **One spender.** A refresh happens under a lease in the store. With compare-and-set (our
   reference server, the file store) taking it is exact; without (the seed's API) the lease is
   written, read back after a randomized wait longer than a write's round trip, and used only
   if it is still ours, which narrows the race to requests that stall for that long.
3. **Publish at once.** The rotated credential is stored (one PATCH that also ends the lease)
   right after it is on local disk; the lease says when the spending starts, so the others
   watch closely from then on and adopt within a poll.
4. **A lost race adopts.** After ``refresh_token_reused`` or ``invalid_grant`` the store is read
   again and a newer copy of the same account adopted before anything is declared dead.
5. **Logout is a tombstone** everyone honours, and :func:`service.record.decide` never lets an
   older copy back in.

Every write is one PATCH per change; ``service.json`` (:class:`~service.record.LocalState`) is
written only here, and only when what it says changes.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

from service.errors import ServiceError
from service.metrics import Metrics
from service.record import (
    CLOCK_SKEW,
    Beat,
    Decision,
    HolderView,
    Keys,
    Lease,
    LeaseView,
    LocalState,
    StoredEntry,
    StoredRecord,
    StoreView,
    Tombstone,
    decide,
    fingerprint,
    parsed,
    render_entry,
    sha,
)
from service.refresher import Refresher, refresh_due_at
from service.secrets import SecretsStore, Snapshot
from service.settings import ServiceSettings
from skill import statedir
from skill.apikey import take_back
from skill.authfiles import CodexAuthFile, PiAuthFile, auth_files
from skill.credentials import Credential
from skill.errors import SkillError
from skill.events import emit
from skill.files import ensure_private_dir, read_settled, write_private
from skill.lock import FlockLock
from skill.signout import clear_pending, read_pending
from skill.waiting import backoff

log = logging.getLogger(__name__)

T = TypeVar("T")
_WRITE_ATTEMPTS = 4  # compare-and-set retries (a heartbeat landing in between is the usual cause)
# A logout must win against every other holder's heartbeats and renewals, which keep writing
# while it retries: more attempts, spread out (a retry at once meets the same writers in step).
_LOGOUT_ATTEMPTS = 8
# A store's own text (Vault's "errors") is whatever answers at its address; status shows the
# agent ours. `chatgpt-login doctor` shows the operator the store's answer.
_WRITE_REFUSALS = {
    "secrets_rejected": "Vault refused the request: check the token's policy against "
    "service/vault-policy.hcl, and CHATGPT_LOGIN_VAULT_MOUNT and CHATGPT_LOGIN_VAULT_PATH. "
    "`chatgpt-login doctor` shows Vault's answer.",
}
SHOWN_HOLDERS = 20  # holders status lists, this one first, then the most recently seen
_FORGET_BACKOFF_CAP = 600.0  # seconds between tries to destroy a logout's older versions, at most
_VIEW_REFRESH = 10.0  # status says how old the last read is; refreshed at least this often


# The local state file -----------------------------------------------------------------------


class LocalStateFile:
    """``service.json``: read by every worker, changed under an ``flock``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> LocalState:
        try:
            found = read_settled(self.path, LocalState.model_validate_json, settle=0.1)
        except SkillError:
            return LocalState()  # unreadable: start over (the store still holds the truth)
        return found[1] if found else LocalState()

    @contextmanager
    def updating(self) -> Iterator[LocalState]:
        """The state to change in place; written back only if it changed."""
        ensure_private_dir(self.path.parent)
        with FlockLock(self.path, timeout=5):
            state = self.read()
            before = state.model_copy(deep=True)
            yield state
            if state != before:
                write_private(self.path, state.model_dump_json(indent=1).encode())


@dataclass(frozen=True)
class Holder:
    id: str
    host: str


def holder_of(settings: ServiceSettings) -> Holder:
    """This service's holder id: the setting, or one made once per state directory."""
    host = socket.gethostname()
    if settings.holder_id:
        return Holder(settings.holder_id, host)
    path = settings.state_dir / statedir.HOLDER_ID
    ensure_private_dir(settings.state_dir)
    with FlockLock(path, timeout=10):  # every worker must end up with the same one
        try:
            made = path.read_text().strip()
        except OSError:
            made = ""
        if not made:
            made = secrets.token_hex(6)
            write_private(path, made.encode())
    return Holder(made, host)


# What the operations report -------------------------------------------------------------------


@dataclass
class Synced:
    decision: Decision
    record: StoredRecord
    credential: Credential | None  # this machine's credential afterwards
    notes: list[str] = field(default_factory=list)
    written: bool = True  # False: an adoption found the file changed meanwhile and left it


@dataclass
class Renewed:
    outcome: Literal["refreshed", "adopted", "busy", "not_needed"]
    credential: Credential | None
    busy_with: Lease | None = None  # another holder's lease, when busy


class Persistence:
    def __init__(
        self,
        settings: ServiceSettings,
        store: SecretsStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        metrics: Metrics | None = None,
        holder: Holder | None = None,
    ) -> None:
        self.settings, self.store = settings, store
        self.keys = Keys(settings.secrets_key)
        self.holder = holder or holder_of(settings)
        self.state = LocalStateFile(settings.state_dir / statedir.SERVICE_STATE)
        self.metrics = metrics or Metrics(settings.state_dir / statedir.METRICS)
        self.pi = PiAuthFile(
            settings.pi_auth_file, stale=settings.lock_stale, timeout=settings.lock_timeout
        )
        self._clock, self._sleep = clock, sleep
        # What an adoption is, in the credential.updated event: "restored" for restore.
        self.adopting_as = "adopted"
        self._snapshot: Snapshot | None = None  # the last read, for conditional reads
        self._cas: bool | None = None
        self._forget_failures, self._forget_retry_at = 0, 0.0  # destroying older versions

    # Reading ----------------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def local(self) -> Credential | None:
        """This machine's credential (the pi file); None when missing or unreadable."""
        try:
            return self.pi.load()
        except SkillError:
            return None

    def pull(self) -> StoredRecord:
        """Read the store (a conditional read when it gives versions: unchanged is cheap)."""
        etag = self._snapshot.etag if self._snapshot else None
        try:
            snapshot = self._call("GET", lambda: self.store.read(if_none_match=etag))
        except ServiceError as exc:
            self._note_read(None, exc)
            raise
        if snapshot is None and self._snapshot is not None:
            snapshot = self._snapshot  # not modified
        self._snapshot = snapshot or Snapshot({})
        return StoredRecord.parse(
            self._snapshot.document, self.keys, self._snapshot.etag, now=self.now()
        )

    def compare_and_set(self) -> bool:
        if self._cas is None:
            # A probe, not a write (Vault answers without a request): it says nothing of
            # whether the store takes writes.
            self._cas = self._call("PATCH", self.store.compare_and_set, write=False)
        return self._cas

    # Bringing this machine and the store together --------------------------------------------

    def sync(self, *, local: Credential | None = None) -> Synced:
        """Read the store and make this machine and it agree (at most one write)."""
        current = self.local() if local is None else local
        try:
            record = self.pull()
        except ServiceError:
            if current is not None and fingerprint(current) != self.state.read().synced:
                self._pending(True)  # a change here waits for the store
            raise
        decision = decide(current, record, self.state.read())
        synced = self._carry_out(decision, current, record)
        self._note_read(record, None)  # after: an adoption must not wait for status bookkeeping
        return synced

    def persist(self) -> Synced:
        """Store this machine's credential as a new sign-in (the newest sign-in wins)."""
        local = self.local()
        if local is None:
            raise ServiceError(
                "credentials_missing",
                "No ChatGPT credential on this machine to persist. Sign in first "
                "(`chatgpt-login start`).",
                status=409,
                next="start_again",  # as every credentials_missing (skill/errors.py)
            )
        try:
            record = self.pull()
        except ServiceError:
            self._pending(True)
            self.metrics.count("persists", "failed")
            raise
        if record.live is not None and record.live.refresh_token == local.refresh_token:
            self.metrics.count("persists", "ok")
            return self._carry_out("in_sync", local, record)
        state = self.state.read()
        if record.live is not None and fingerprint(local) == state.synced:
            # Not a sign-in: the copy this machine agreed on last (a repeated `complete` after
            # another container renewed it). Pushed as the newest sign-in, its spent refresh
            # token would go over the one every holder renews; the rule decides instead (it
            # adopts). Only this machine's own record tells: an issue time in the store's copy
            # is whatever its writer put there, and would let it pin its copy over every
            # sign-in to come.
            return self._carry_out(decide(local, record, state), local, record)
        stored = self.push(local, record, reason="sign_in")
        return Synced("push", stored, local)

    def _carry_out(
        self, decision: Decision, local: Credential | None, record: StoredRecord
    ) -> Synced:
        replaced = record.invalid and decision == "push"
        notes = ["The stored copy was malformed; it was replaced."] if replaced else []
        written = True
        if decision == "adopt" and record.live is not None and record.entry is not None:
            moved = self._adopt(record.live, record.entry, seen=local)
            written = moved is not None  # None: the file changed meanwhile; looked at again later
            notes += [
                f"{path} was unreadable; moved aside to {aside}." for path, aside in moved or []
            ]
        elif decision == "push" and local is not None:
            record = self.push(local, record, reason="sync")
        elif decision == "drop" and local is not None and record.tombstone is not None:
            self._drop(local, record.tombstone)
        else:
            self._agree(decision, local, record)
        return Synced(decision, record, self.local(), notes, written)

    def _agree(self, decision: Decision, local: Credential | None, record: StoredRecord) -> None:
        """Record what a decision without writes found (only what changed is written)."""
        with self.state.updating() as state:
            if decision == "in_sync" and local is not None and record.entry is not None:
                state.generation = record.entry.generation
                state.synced = fingerprint(local)
                state.signed_in_at = record.entry.signedInAt or state.signed_in_at
                state.persist_pending = False
                state.last_persisted_at = state.last_persisted_at or self.now()  # it is there
                state.conflict = None
                state.logged_out = None
            elif decision == "conflict" and record.live is not None:
                state.conflict = record.live.account_id
            elif decision == "logged_out" and record.tombstone is not None:
                state.logged_out = record.tombstone
                state.generation = record.tombstone.generation

    def _adopt(
        self, stored: Credential, entry: StoredEntry, *, seen: Credential | None
    ) -> list[tuple[Path, Path]] | None:
        """Write the stored credential here, unless this machine's changed since ``seen``
        (None then); returns the unreadable files it moved aside."""
        ensure_private_dir(self.pi.path.parent)  # the lock directory lives there
        with self.pi.lock:
            with contextlib.suppress(SkillError):  # corrupt: the save moves it aside
                if _key(self.pi.load()) != _key(seen):
                    return None
            results = [self.pi.save_locked(stored)]
        if "codex" in self.settings.credential_files and stored.id_token:
            codex = CodexAuthFile(self.settings.codex_auth_file, timeout=self.settings.lock_timeout)
            results.append(codex.save(stored))
        with self.state.updating() as state:
            state.generation, state.synced = entry.generation, fingerprint(stored)
            state.signed_in_at = entry.signedInAt
            state.persist_pending = False
            state.conflict = state.logged_out = None
        self.metrics.add("adoptions", account=stored.account_id)
        log.info("adopted generation %d (written by %s)", entry.generation, entry.holder)
        emit(self.settings.state_dir, "credential.updated", why=self.adopting_as,
             generation=entry.generation)  # fmt: skip
        return [(r.path, r.moved_aside) for r in results if r.moved_aside is not None]

    def _drop(self, local: Credential, tombstone: Tombstone) -> None:
        """Logged out elsewhere: remove our entries here (if they are still ``local``)."""
        if _key(self.local()) == _key(local):
            take_back(self.settings)  # the API key this sign-in brought goes with it
            for auth_file in auth_files(self.settings):
                auth_file.remove()
        with self.state.updating() as state:
            _forget(state, tombstone)
        log.info("signed out here: logged out by %s", tombstone.holder or "another holder")
        emit(self.settings.state_dir, "credential.logged_out", by="another holder")

    # Writing ----------------------------------------------------------------------------------

    def push(
        self,
        credential: Credential,
        record: StoredRecord,
        *,
        reason: Literal["sign_in", "refresh", "sync"],
        lease: Lease | None = None,
    ) -> StoredRecord:
        """Store ``credential`` as the next generation (ending ``lease``); returns the record as
        stored. A new sign-in overwrites whatever is there. A change found here is stored only
        while :func:`decide` still says so; a refresh steps back when another sign-in was stored
        meanwhile (that one wins, and is adopted)."""
        signed_in_at = self.now() if reason == "sign_in" else self._lineage(credential, record)
        for _ in range(_WRITE_ATTEMPTS):
            if _step_back(reason, credential, record, signed_in_at, self.state.read()):
                return record
            generation = record.generation + 1
            entry = render_entry(
                credential, generation=generation, signed_in_at=signed_in_at,
                holder=self.holder.id,
            )  # fmt: skip
            patch: dict[str, object] = {self.keys.entry: entry}
            if lease is not None or (record.lease and record.lease.holder == self.holder.id):
                patch[self.keys.lease] = None
            if record.implausible:  # replaced whole: no part of it may count any more
                patch[self.keys.lease] = patch[self.keys.tombstone] = None
            try:
                record = self._write(patch, record)
            except ServiceError as exc:
                if exc.code != "store_conflict":
                    self._pending(True)
                    self.metrics.count("persists", "failed")
                    raise
                record = self.pull()
                if (
                    record.live is not None
                    and record.live.refresh_token == credential.refresh_token
                ):
                    break  # our write landed before its answer was lost
                continue
            break
        else:
            self._pending(True)
            raise ServiceError(
                "store_conflict",
                "The stored copy kept changing while this one was being stored. It is retried.",
                status=503,
                transient=True,
            )
        with self.state.updating() as state:
            state.generation = record.entry.generation if record.entry else generation
            state.synced = fingerprint(credential)
            state.signed_in_at = signed_in_at
            state.persist_pending = False
            state.last_persisted_at = self.now()
            state.conflict = state.logged_out = None
        self.metrics.count("persists", "ok")
        emit(self.settings.state_dir, "credential.persisted", reason=reason.replace("_", "-"),
             generation=state.generation)  # fmt: skip
        return record

    def _lineage(self, credential: Credential, record: StoredRecord) -> datetime | None:
        """When the sign-in ``credential`` descends from happened, as far as anyone knows."""
        state = self.state.read()
        if state.signed_in_at is not None and state.logged_out is None:
            return state.signed_in_at
        stored = record.live
        if stored is not None and record.entry and stored.account_id == credential.account_id:
            return record.entry.signedInAt
        issued = credential.issued_at()
        return datetime.fromtimestamp(issued, UTC) if issued else None

    def _write(self, patch: dict[str, object], record: StoredRecord) -> StoredRecord:
        """Write ``patch`` over ``record`` (compare-and-set on its version when the store can);
        returns the record as it now stands."""
        if_match = record.etag if self.compare_and_set() else None
        etag = self._call("PATCH", lambda: self.store.write(patch, if_match=if_match))
        document = dict(self._snapshot.document if self._snapshot else {})
        for key, value in patch.items():  # mirror the merge (top-level keys; None deletes)
            if value is None:
                document.pop(key, None)
            else:
                document[key] = value
        self._snapshot = Snapshot(document, etag)
        return StoredRecord.parse(document, self.keys, etag, now=self.now())

    def _pending(self, pending: bool) -> None:
        with self.state.updating() as state:
            state.persist_pending = pending

    # Renewing ---------------------------------------------------------------------------------

    def renew(
        self, refresher: Refresher, *, force: bool = False, synced: Synced | None = None
    ) -> Renewed:
        """Renew the credential as the one holder allowed to, or adopt the one who did.

        Reads the store first (a newer copy is adopted instead; ``synced``: a sync just made);
        renews only when due (or ``force``), under the lease; stores the result at once,
        ending the lease."""
        synced = synced or self.sync()
        local = synced.credential
        if synced.decision == "adopt" and local is not None:  # unwritten: the next look
            return Renewed("adopted" if synced.written else "not_needed", local)
        if local is None or synced.decision in ("drop", "logged_out"):
            raise SkillError("credentials_missing")
        if synced.decision == "conflict":
            raise SkillError("account_mismatch", _CONFLICT)
        if not force and self._clock() < refresh_due_at(local, self.settings):
            return Renewed("not_needed", local)
        leased = self.take_lease(synced.record)
        if leased is None:  # another holder has it, or has just stored its rotation
            again = self.sync()
            if again.decision == "adopt" and again.credential is not None:
                return Renewed("adopted", again.credential)
            return Renewed("busy", local, busy_with=again.record.lease)
        lease, record = leased
        try:
            renewed = refresher.renew(local)
        except SkillError as exc:
            self.metrics.add("issuer_calls", account=local.account_id, outcome=exc.code)
            self.release(lease)
            if exc.permanent:
                again = self.sync()  # whoever won the race has stored its rotation by now
                if again.decision == "adopt" and again.credential is not None:
                    self.metrics.add("adopted_after_reuse", account=local.account_id)
                    return Renewed("adopted", again.credential)
            raise
        if renewed.refreshed:  # written here already: said before it is stored, as it happened
            self.metrics.add("issuer_calls", account=local.account_id, outcome="ok")
            emit(self.settings.state_dir, "credential.updated", why="refresh")
        # Stored against the record as the lease left it: no read between the issuer's answer
        # and the push, which is the time the other holders hold a spent token.
        self.push(renewed.credential, record, reason="refresh", lease=lease)
        return Renewed("refreshed" if renewed.refreshed else "adopted", renewed.credential)

    def take_lease(self, record: StoredRecord) -> tuple[Lease, StoredRecord] | None:
        """The refresh lease for ``record``'s generation and the record with it, or None when
        another holder has it or the store moved past that generation (adopt instead)."""
        generation = record.generation
        settle = self.settings.lease_settle * (1 + 0.5 * random.random())  # noqa: S311
        if not self.compare_and_set():
            record = self.pull()  # the race is between this read and the write: keep it short
        for _ in range(_WRITE_ATTEMPTS):
            now = self.now()
            lease = self.lease_in_force(record)
            taken = lease is not None and lease.holder != self.holder.id
            if taken or record.generation != generation:
                return None
            lease = Lease(
                holder=self.holder.id, host=self.holder.host, generation=generation,
                until=now + timedelta(seconds=self.settings.lease_seconds),
                spend_after=now + timedelta(seconds=settle), nonce=secrets.token_hex(8),
            )  # fmt: skip
            try:
                record = self._write({self.keys.lease: lease.model_dump(mode="json")}, record)
            except ServiceError as exc:
                if exc.code != "store_conflict":
                    raise
                record = self.pull()
                if record.lease is not None and record.lease.nonce == lease.nonce:
                    break  # ours landed before its answer was lost
                continue
            break
        else:
            return None
        self._sleep(settle)  # the others see the lease coming before anything is spent
        if not self.compare_and_set():
            # Without compare-and-set the last writer holds the lease, and only while nothing
            # was stored since it read the record: a holder slow between its read and its write
            # would otherwise take a lease after the winner had already stored the rotation.
            record = self.pull()
            if record.lease is None or record.lease.nonce != lease.nonce:
                self.metrics.add("leases", outcome="lost")
                return None
            if record.generation != generation:
                self.metrics.add("leases", outcome="stale")
                self.release(lease)
                return None
        self.metrics.add("leases", outcome="taken")
        return lease, record

    def lease_in_force(self, record: StoredRecord) -> Lease | None:
        """``record``'s lease while it binds this holder (StoredRecord.lease_in_force)."""
        return record.lease_in_force(self.now(), timedelta(seconds=self.settings.lease_seconds))

    def release(self, lease: Lease) -> None:
        """End ``lease`` early (after a failed refresh), if it is still ours."""
        with contextlib.suppress(ServiceError):
            record = self.pull()
            if record.lease is not None and record.lease.nonce == lease.nonce:
                self._write({self.keys.lease: None}, record)

    def mark_relogin(self, credential: Credential, exc: SkillError) -> None:
        """A refresh failed for good (and the store had nothing newer): no more attempts with
        this refresh token; status says to sign in again."""
        log.warning("refresh failed permanently (%s): sign-in needed", exc.code)
        with self.state.updating() as state:
            fresh = state.dead_refresh != sha(credential.refresh_token)
            state.needs_relogin, state.dead_refresh = exc.code, sha(credential.refresh_token)
        if fresh:  # once per dead credential, however often it is looked at
            emit(self.settings.state_dir, "credential.needs_relogin", reason=exc.code)

    def clear_relogin(self) -> None:
        if self.state.read().needs_relogin:
            with self.state.updating() as state:
                state.needs_relogin = state.dead_refresh = None

    # Logging out ------------------------------------------------------------------------------

    def log_out(
        self, account_id: str | None, *, at: datetime | None = None, announce: bool = True
    ) -> Tombstone | None:
        """Replace the stored copy with a tombstone; None when another account is stored, or,
        for a logout made earlier (``at``: one noted while the service was down), a sign-in
        made since; either is left alone. ``announce``: emit the logout event (not for a logout
        made earlier, which was announced when it was made)."""
        # A logout made now covers whatever this account has stored: a sign-in dated a little
        # ahead by another holder's clock (CLOCK_SKEW) is not one made after it.
        earlier = at is not None
        at = at or self.now()
        for attempt in range(_LOGOUT_ATTEMPTS):
            if attempt:
                time.sleep(backoff(attempt, base=0.05, cap=0.5))
            record = self.pull()
            stored, entry = record.live, record.entry
            if stored is not None and account_id is not None and stored.account_id != account_id:
                return None
            if (
                earlier
                and entry is not None
                and stored is not None
                and entry.signedInAt
                and entry.signedInAt > at
            ):
                return None
            if record.logged_out and record.tombstone is not None and stored is None:
                tombstone = record.tombstone  # already logged out
                break
            tombstone = Tombstone(
                generation=record.generation + 1, at=at, holder=self.holder.id,
                host=self.holder.host, accountId=account_id or (stored and stored.account_id),
            )  # fmt: skip
            patch: dict[str, object] = {
                self.keys.entry: None,
                self.keys.lease: None,
                self.keys.tombstone: tombstone.model_dump(mode="json"),
            }
            try:
                self._write(patch, record)
            except ServiceError as exc:
                if exc.code != "store_conflict":
                    raise
                continue
            break
        else:
            raise ServiceError("store_conflict", "The stored copy kept changing (other holders "
                               "writing) while the logout tried to replace it. Run "
                               "`chatgpt-login logout` again.", status=503,
                               transient=True)  # fmt: skip
        with self.state.updating() as state:
            _forget(state, tombstone)
        self._forget_history()
        if announce:
            emit(self.settings.state_dir, "credential.logged_out", by="this holder")
        return tombstone

    def _forget_history(self) -> None:
        """Older versions of the stored copy hold the signed-out credential: where the store
        keeps versions, destroy them. The logout stands either way; if this fails, the
        keep-alive tries again (:meth:`finish_forgetting`), less often each time, until it is
        done."""
        try:
            self.store.forget_history()
        except ServiceError as exc:
            self._forget_failures += 1
            why = _WRITE_REFUSALS.get(exc.code, exc.message)
            delay = backoff(self._forget_failures, base=1.0, cap=_FORGET_BACKOFF_CAP)
            self._forget_retry_at = time.monotonic() + delay
            log.warning("the stored copy's older versions (they hold the signed-out credential) "
                        "were not destroyed yet (%s): %s Trying again in %.0f s.", exc.code, why,
                        delay)  # fmt: skip
            with self.state.updating() as state:
                state.history_pending = True
                state.history_problem = f"{why} ({exc.code})"
            return
        self._forget_failures = 0
        if self.state.read().history_pending:
            with self.state.updating() as state:
                state.history_pending, state.history_problem = False, None

    def finish_forgetting(self) -> None:
        """Destroy the older versions a logout could not (the store was away, or refused)."""
        if self.state.read().history_pending and time.monotonic() >= self._forget_retry_at:
            self._forget_history()

    def carry_out_pending_logout(self) -> bool:
        """A logout made while the service was down: sign out the stored copy now. True if
        there was one (it is then done)."""
        pending = read_pending(self.settings)
        if pending is None:
            return False
        self.log_out(pending.account_id, at=pending.at, announce=False)
        local = self.local()
        issued = local.issued_at() if local else None
        if local is not None and (issued is None or issued <= pending.at.timestamp()):
            for auth_file in auth_files(self.settings):  # restored meanwhile: it goes too
                auth_file.remove()
            emit(self.settings.state_dir, "credential.logged_out", by="this holder")
        # A sign-in made since is newer than the logout: it stays, and nothing is announced.
        clear_pending(self.settings)
        return True

    # Presence ---------------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Say this holder is alive; forget holders silent for a day (or ten beats), and beats
        dated ahead (no holder's clock wrote them: they would never go stale)."""
        now = self.now()
        beat = Beat(host=self.holder.host, seen=now, generation=self.state.read().generation)
        mine = self.keys.holder(self.holder.id)
        patch: dict[str, object] = {mine: beat.model_dump(mode="json")}
        forget = timedelta(seconds=max(86400.0, 10 * self.settings.holder_heartbeat))
        document = self._snapshot.document if self._snapshot is not None else {}
        for key, value in document.items():
            if key.startswith(self.keys.holder_prefix) and key != mine:
                other = parsed(Beat, value)
                if other is not None and not -CLOCK_SKEW <= now - other.seen <= forget:
                    patch[key] = None
        self._call("PATCH", lambda: self.store.write(patch))

    # Bookkeeping ------------------------------------------------------------------------------

    def _call(self, method: str, call: Callable[[], T], *, write: bool = True) -> T:
        self.metrics.add("secrets_api_requests", method=method)
        if method == "GET" or not write:
            return self.metrics.timed("secrets_api", call)
        try:
            answer = self.metrics.timed("secrets_api", call)
        except ServiceError as exc:
            if exc.code != "store_conflict":  # someone else wrote first: the rule's business
                self._note_write(exc)
            raise
        self._note_write(None)
        return answer

    def _note_write(self, failed: ServiceError | None) -> None:
        """Keep the last write's outcome for status and /readyz, and say in the log when writes
        start failing and when they are taken again: a store may answer every read and refuse
        every write (a Vault policy without "update"), and nothing else would show it."""
        error = failed.code if failed else None
        if error == self.state.read().store_write_error:
            return
        problem = None
        if failed is not None:
            problem = _WRITE_REFUSALS.get(failed.code, failed.message)
            log.warning("the secrets store did not take a write (%s): %s", error, problem)
        else:
            log.warning("the secrets store takes writes again")
        with self.state.updating() as state:
            state.store_write_error, state.store_write_problem = error, problem

    def _note_read(self, record: StoredRecord | None, failed: ServiceError | None) -> None:
        """Keep the status view of the store current (written only when it changes, or to say
        how old it is at most every _VIEW_REFRESH seconds). A read that failed counts as a look
        too: /readyz reports it rather than asking a failing store itself."""
        state = self.state.read()
        view = self._view(record) if record is not None else state.store
        error = failed.code if failed else None
        now = self.now()
        stale = (
            state.store_tried_at is None
            or (now - state.store_tried_at).total_seconds() > _VIEW_REFRESH
        )
        if view == state.store and error == state.store_error and not stale:
            return
        with self.state.updating() as fresh:
            fresh.store, fresh.store_error, fresh.store_tried_at = view, error, now
            fresh.store_problem = failed.message if failed else None
            if error is None:
                fresh.store_read_at = now

    def _view(self, record: StoredRecord) -> StoreView:
        now = self.now()
        recent = timedelta(seconds=3 * self.settings.holder_heartbeat)
        holders = sorted(
            (HolderView(id=i, host=b.host, seen=b.seen, me=i == self.holder.id)
             for i, b in record.holders.items() if now - b.seen <= recent),
            key=lambda h: (not h.me, now - h.seen, h.id),
        )  # fmt: skip
        lease = self.lease_in_force(record)
        return StoreView(
            generation=record.generation,
            # The most recent few: status must stay small however many beats the store holds
            # (whoever writes it can add any number; past 64 KiB status showed nothing).
            holders=sorted(holders[:SHOWN_HOLDERS], key=lambda h: h.id),
            holders_total=len(holders),
            lease=LeaseView(holder=lease.holder, host=lease.host, until=lease.until)
            if lease is not None
            else None,
        )


_CONFLICT = (
    "The stored credential is for another ChatGPT account than this machine's; neither is "
    "renewed here. Log out (`chatgpt-login logout`) and sign in again to switch accounts."
)


def _step_back(
    reason: str,
    credential: Credential,
    record: StoredRecord,
    signed_in_at: datetime | None,
    state: LocalState,
) -> bool:
    """Whether a push for ``reason`` must give way to what the store holds now."""
    if reason == "sign_in":
        return False
    if reason == "sync":  # stored only while the rule still says this machine's is newer
        return decide(credential, record, state) != "push"
    entry, stored = record.entry, record.live
    if entry is None or stored is None:
        return False
    other_sign_in = entry.signedInAt is not None and entry.signedInAt != signed_in_at
    return stored.account_id != credential.account_id or (
        other_sign_in and entry.generation > state.generation
    )


def _key(credential: Credential | None) -> tuple[str, str] | None:
    return (credential.refresh_token, credential.access_token) if credential else None


def _forget(state: LocalState, tombstone: Tombstone) -> None:
    state.logged_out = tombstone
    state.generation = tombstone.generation
    state.synced = state.signed_in_at = None
    state.persist_pending = False
    state.needs_relogin = state.dead_refresh = state.conflict = None


def dead_refresh_token(state: LocalState, credential: Credential) -> str | None:
    """The permanent refresh failure recorded for ``credential``'s token, if any."""
    if state.needs_relogin and state.dead_refresh == sha(credential.refresh_token):
        return state.needs_relogin
    return None
