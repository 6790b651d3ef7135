"""The stored copy of the credential and this machine's knowledge of it, as types.

The secrets document holds, for the configured key ``K`` (``codex_credentials``):

- ``K``: the pi entry (PROTOCOL.md §8: always a valid pi entry or ``null``, because the
  platform itself may write it into ``auth.json``) plus fields pi tolerates: ``generation``
  (grows by one with every change, whoever makes it), ``lastRefresh``, ``signedInAt`` (when the
  sign-in this credential descends from happened), ``holder`` (who wrote it) and, when known,
  ``idToken`` (a codex file needs it).
- ``K_lease``: the one holder that may spend the refresh token, until when.
- ``K_tombstone``: the last logout. An entry counts only while its generation is above the
  tombstone's, so a logout wins over any copy written from before it.
- ``K_holder_<id>``: one per holder, its heartbeat. One key each because the seed's API merges
  top-level keys only: holders sharing one map would erase each other's beats.

:func:`decide` is the rule that brings this machine and the store together; it is pure, and
:mod:`service.persistence` carries out what it says.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from skill.claims import Claims
from skill.credentials import ACCOUNT_ID, Credential
from skill.errors import SkillError

# What a record read from the store may hold. Whoever can write there (another holder, a bug, an
# attacker) must not be able to plant a value this machine accepts and then fails on: a number
# or a time it cannot write back (after a refresh had spent the token), or text that drives a
# terminal or speaks to the agent where status shows it.

# Generations: within what every JSON reader holds exactly (2**53 - 1). One at or above
# IMPLAUSIBLE (a rotation a second for 68 years) was not reached by the rule: a record holding
# one is replaced whole, from generation 1, since every write would take the next one and soon
# pass any bound.
MAX_GENERATION = 2**53 - 1
IMPLAUSIBLE = 2**31
_EARLIEST, _LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)
# How far apart two holders' clocks may be: a time further ahead than this was not written by
# the rule (a clock far off, or a forged record) and is not acted on.
CLOCK_SKEW = timedelta(minutes=5)
# An access token living longer than this was not made by ChatGPT's issuer (its tokens live
# days): taken as it says, it would stop every holder renewing until then.
LONGEST_TOKEN = timedelta(days=365)


def _utc_in_range(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time without a time zone")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("a time out of range") from None
    if not _EARLIEST <= value < _LATEST:
        raise ValueError("a time out of range")
    return value


def _name(value: object) -> object:
    """A holder's id or host as status may show it: the characters of a host name only (others
    become "?"), 64 at most."""
    if not isinstance(value, str):
        return value
    return re.sub(r"[^A-Za-z0-9_.:-]", "?", value[:64])


Time = Annotated[datetime, AfterValidator(_utc_in_range)]
Generation = Annotated[int, Field(ge=0, le=MAX_GENERATION)]
Name = Annotated[str, BeforeValidator(_name)]


class Lease(BaseModel):
    """Who may spend the refresh token of ``generation``, until ``until``. The holder spends
    it no sooner than ``spend_after``: others watch the store closely from then on."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    holder: Name
    host: Name = ""
    generation: Generation = 0
    until: Time
    spend_after: Time | None = None
    nonce: str = Field(default="", max_length=64)

    def live(self, now: datetime) -> bool:
        return now < self.until


class Tombstone(BaseModel):
    """A logout: every copy of ``accountId`` from before ``at`` (generation at most
    ``generation``) is signed out."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    generation: Generation
    at: Time
    holder: Name = ""
    host: Name = ""
    accountId: str | None = Field(default=None, pattern=ACCOUNT_ID)  # noqa: N815 - as pi's


class Beat(BaseModel):
    """A holder's last "still here"."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    host: Name = ""
    seen: Time
    generation: Generation = 0


class StoredEntry(BaseModel):
    """The stored entry: pi's fields (kept as pi writes them) and ours."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    generation: Generation = 0
    lastRefresh: Time | None = None  # noqa: N815
    signedInAt: Time | None = None  # noqa: N815
    holder: Name | None = None
    idToken: str | None = Field(default=None, repr=False)  # noqa: N815


@dataclass(frozen=True)
class Keys:
    """The document's keys for one credential."""

    entry: str

    @property
    def lease(self) -> str:
        return f"{self.entry}_lease"

    @property
    def tombstone(self) -> str:
        return f"{self.entry}_tombstone"

    @property
    def holder_prefix(self) -> str:
        return f"{self.entry}_holder_"

    def holder(self, holder_id: str) -> str:
        return self.holder_prefix + holder_id


@dataclass(frozen=True)
class StoredRecord:
    """One read of the document, parsed. Anything malformed under our keys counts as absent,
    except the entry itself, which is reported (``invalid``)."""

    credential: Credential | None = None
    entry: StoredEntry | None = None
    invalid: bool = False
    lease: Lease | None = None
    tombstone: Tombstone | None = None
    holders: dict[str, Beat] = field(default_factory=dict)
    etag: str | None = None
    implausible: bool = False  # a generation no holder reached: replaced whole on the next write

    @classmethod
    def parse(
        cls, document: dict[str, Any], keys: Keys, etag: str | None, *, now: datetime
    ) -> StoredRecord:
        raw = document.get(keys.entry)
        credential, entry = _entry(raw, now)
        holders = {
            name[len(keys.holder_prefix) :]: beat
            for name, value in document.items()
            if name.startswith(keys.holder_prefix)
            and _HOLDER_ID.fullmatch(name[len(keys.holder_prefix) :])
            and (beat := parsed(Beat, value)) is not None
            and beat.seen <= now + CLOCK_SKEW  # dated ahead: never stale, and never shown
        }
        tombstone = parsed(Tombstone, document.get(keys.tombstone))
        if tombstone is not None and tombstone.at > now + CLOCK_SKEW:
            # Dated after now, it would sign out every sign-in made until then, this machine's
            # newest too: a logout from a clock far ahead, or a forged one, is not acted on.
            tombstone = None
        lease = parsed(Lease, document.get(keys.lease))
        if any(part is not None and part.generation >= IMPLAUSIBLE
               for part in (entry, tombstone, lease)):  # fmt: skip
            return cls(invalid=True, holders=holders, etag=etag, implausible=True)
        return cls(
            credential=credential,
            entry=entry,
            invalid=raw is not None and credential is None,
            lease=lease,
            tombstone=tombstone,
            holders=holders,
            etag=etag,
        )

    def lease_in_force(self, now: datetime, longest: timedelta) -> Lease | None:
        """The lease while it binds the other holders: not run out, for the generation stored
        now (a holder that stored its rotation is done with it), and ending no later than a
        lease taken now would (``longest`` and the clocks' skew). One further out was not taken
        by the rule and would stop every renewal until then."""
        lease = self.lease
        if lease is None or not lease.live(now) or lease.generation != self.generation:
            return None
        return lease if lease.until <= now + longest + CLOCK_SKEW else None

    @property
    def generation(self) -> int:
        """The highest generation the store has seen: a new write takes the next one."""
        stored = self.entry.generation if self.entry else 0
        return max(stored, self.tombstone.generation if self.tombstone else 0)

    @property
    def live(self) -> Credential | None:
        """The stored credential unless a later logout of its account (or of an account not
        named) covers it. A logout of another account covers nothing here: taken as covering
        it, every holder stopped renewing and every new container restored nothing."""
        if self.credential is None or self.entry is None:
            return None
        tombstone = self.tombstone
        if (
            tombstone is not None
            and tombstone.generation >= self.entry.generation
            and tombstone.accountId in (None, self.credential.account_id)
        ):
            return None
        return self.credential

    @property
    def logged_out(self) -> bool:
        return self.tombstone is not None and self.live is None


def _entry(raw: object, now: datetime) -> tuple[Credential | None, StoredEntry | None]:
    """The credential in a stored entry, if it is a valid one whose token names its account."""
    if raw is None:
        return None, None
    try:
        entry = StoredEntry.model_validate(raw)
        credential = Credential.from_pi_entry(raw)
        claims = Claims.from_tokens(access_token=credential.access_token)
    except (SkillError, ValidationError, ValueError):
        return None, None
    if claims.account_id != credential.account_id:
        return None, None
    if claims.expires_at is None or claims.expires_at > now + LONGEST_TOKEN:
        return None, None  # nothing bounds the stored expiry: renewal could stop for good
    # The token's own expiry, by the issuer's clock, bounds the one its writer computed (give or
    # take the clocks' skew): a writer's clock far ahead, or a forged entry, would stop every
    # holder renewing it.
    exp_ms = int(claims.expires_at.timestamp() * 1000)
    if credential.expires_ms > exp_ms + CLOCK_SKEW.total_seconds() * 1000:
        credential = credential.model_copy(update={"expires_ms": exp_ms})
    if entry.idToken and _same_account(entry.idToken, credential):
        credential = credential.model_copy(update={"id_token": entry.idToken})
    # A sign-in or refresh dated ahead did not happen yet: a signedInAt kept from the future
    # would put every sign-in, and so every logout, before it (a logout left it alone).
    ahead = {name: None for name in ("signedInAt", "lastRefresh")
             if (when := getattr(entry, name)) is not None and when > now + CLOCK_SKEW}  # fmt: skip
    entry = entry.model_copy(update=ahead) if ahead else entry
    if entry.lastRefresh:
        credential = credential.model_copy(update={"last_refresh": entry.lastRefresh})
    return credential, entry


def _same_account(id_token: str, credential: Credential) -> bool:
    """Whether a stored id_token is one, of the credential's account (or naming none): it is
    written into codex's file, whose reader trusts its claims. One that is not is dropped."""
    try:
        claims = Claims.from_tokens(access_token=credential.access_token, id_token=id_token)
    except SkillError:
        return False
    return claims.account_id in (None, credential.account_id)


_HOLDER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # as the holder_id setting allows

M = TypeVar("M", bound=BaseModel)


def parsed(model: type[M], value: object) -> M | None:
    """``value`` as a ``model``, or None if it is not one."""
    if not isinstance(value, dict):
        return None
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def render_entry(
    credential: Credential, *, generation: int, signed_in_at: datetime | None, holder: str
) -> dict[str, Any]:
    """The stored entry for ``credential``: pi's fields first, then ours."""
    entry = credential.to_pi_entry()
    # Every field of ours is always there, null when unknown: a store that merges nested
    # objects (RFC 7396, like our reference server) must not keep an older value of it.
    entry.update(
        generation=generation,
        lastRefresh=credential.last_refresh.astimezone(UTC).isoformat(),
        signedInAt=signed_in_at.astimezone(UTC).isoformat() if signed_in_at else None,
        holder=holder,
        idToken=credential.id_token,
    )
    return entry


def fingerprint(credential: Credential) -> str:
    """Identifies a credential's tokens without holding them (a hash, safe to store)."""
    entry = credential.to_pi_entry()
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# This machine's side ------------------------------------------------------------------------


class HolderView(BaseModel):
    model_config = ConfigDict(defer_build=True)

    id: str
    host: str = ""
    seen: datetime
    me: bool = False


class LeaseView(BaseModel):
    model_config = ConfigDict(defer_build=True)

    holder: str
    host: str = ""
    until: datetime


class StoreView(BaseModel):
    """What the last read of the store showed, for status (never a token)."""

    model_config = ConfigDict(defer_build=True)

    generation: int = 0
    holders: list[HolderView] = Field(default_factory=list)  # the most recent, at most 20
    holders_total: int = 0  # all seen recently
    lease: LeaseView | None = None


class LocalState(BaseModel):
    """``<state dir>/service.json``: what this service knows of its credential and the store.
    Written by :mod:`service.persistence` only; read by every worker."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    generation: int = 0  # the stored generation this machine's credential is
    synced: str | None = None  # fingerprint of the credential last in step with the store
    signed_in_at: datetime | None = None  # when its sign-in happened
    persist_pending: bool = False
    last_persisted_at: datetime | None = None
    needs_relogin: str | None = None  # the error code of a refresh that failed for good
    dead_refresh: str | None = None  # sha256 of that refresh token
    logged_out: Tombstone | None = None  # the logout this machine carried out or honoured
    history_pending: bool = False  # a logout's older versions are still to be destroyed
    history_problem: str | None = None  # why they are not yet (the last try's message)
    conflict: str | None = None  # the store holds another account (its id) than this machine
    store: StoreView | None = None
    store_read_at: datetime | None = None  # the last read the store answered
    store_tried_at: datetime | None = None  # the last read, answered or not
    store_error: str | None = None  # the last read's error code, None when it answered
    store_problem: str | None = None  # and its message (what to do), for status
    # The last write's error code and message, None once a write is taken. Kept apart from the
    # read's: a store may answer every read and refuse every write (a policy without "update").
    store_write_error: str | None = None
    store_write_problem: str | None = None


# Bringing the two together --------------------------------------------------------------------

Decision = Literal[
    "in_sync",  # same credential on both sides
    "adopt",  # the store's is newer: write it here
    "push",  # this machine's is newer: store it
    "drop",  # logged out elsewhere: remove it here
    "logged_out",  # logged out, and nothing here
    "conflict",  # another account is stored: touch neither
    "nothing",  # nothing anywhere
]


def decide(  # noqa: PLR0911 - one return per case of the rule reads best
    local: Credential | None, record: StoredRecord, state: LocalState
) -> Decision:
    """What to do so that this machine and the store agree. Newer means a higher generation;
    when both sides changed since they last agreed, the later expiry (never downgrade)."""
    changed = local is not None and fingerprint(local) != state.synced
    if record.logged_out and record.tombstone is not None:
        if local is None:
            return "logged_out"
        if record.tombstone.accountId not in (None, local.account_id):
            # Another account was logged out, and nothing live is stored: ours replaces it
            # (above the tombstone), as when nothing at all is stored. Taken as a conflict, the
            # credential here was neither stored nor renewed, and nothing said so.
            return "push"
        if not changed and state.synced is not None:
            # Agreed with the store after the logout (a later sign-in): the tombstone does not
            # cover it, and its entry is what went missing or bad there. Put it back.
            return "push" if state.generation > record.tombstone.generation else "drop"
        issued = local.issued_at()
        after = issued is not None and issued > record.tombstone.at.timestamp()
        return "push" if changed and after else "drop"  # a sign-in made after the logout
    stored = record.live
    if stored is None:  # nothing (valid) stored: ours replaces it
        return "push" if local is not None else "nothing"
    if local is None:
        return "adopt"
    if stored.account_id != local.account_id:
        return "conflict"
    if stored.refresh_token == local.refresh_token:
        return "in_sync"
    generation = record.entry.generation if record.entry else 0
    if not changed:
        if generation >= state.generation:  # only the store moved
            return "adopt"
        # The store went back (restored from a backup, or a malformed record replaced from
        # generation 1): the later expiry wins, as below. Taking ours for the newer because it
        # was once agreed at a higher generation would put a spent token over a fresh one.
        return "push" if local.expires_ms > stored.expires_ms else "adopt"
    if state.synced is not None and generation <= state.generation:  # only this machine moved
        # Forward (a refresh or a sign-in made here) or back (a home restored from a backup, a
        # program writing back the tokens it held): an older copy's refresh token is spent, and
        # pushed it would sign every holder out. The later expiry wins here too.
        return "push" if local.expires_ms >= stored.expires_ms else "adopt"
    # Both moved, or this machine never agreed with the store (a new container whose file came
    # from elsewhere): the later expiry wins, so nothing is ever downgraded.
    return "push" if local.expires_ms > stored.expires_ms else "adopt"
