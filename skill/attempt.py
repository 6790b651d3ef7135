"""The state of the one live sign-in, shared by separate processes through a 0600 file.

``start`` and ``complete`` run as separate processes (and the service sees the same login), so
the attempt lives in ``<state_dir>/login.json``: id, driver, method, its link's OAuth state
(``oauth_state``) and redirect port, its tmux session, times and status. Changes happen under an
exclusive ``flock``. Once the attempt ends, its OAuth state and sign-in link are scrubbed from
the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from skill import statedir
from skill.drivers import Method, known_driver
from skill.errors import SkillError
from skill.files import ensure_private_dir, read_settled, write_private
from skill.lock import FlockLock

Status = Literal["waiting", "completing", "succeeded", "failed", "canceled", "expired"]
LIVE: frozenset[Status] = frozenset({"waiting", "completing"})


# What a user (the CLI's --json, the API's Login) is shown of an attempt: never its `state`,
# its session or pids; the sign-in link only while it is live.
PUBLIC_FIELDS = (
    "id", "driver", "method", "status", "started_at", "expires_at", "finished_at", "auth_url",
    "verification_url", "user_code", "error", "message", "saved", "notes",
)  # fmt: skip


class Attempt(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built on the first attempt read or made

    id: str
    driver: Annotated[str, AfterValidator(known_driver)]
    method: Method
    status: Status
    # Our tmux server's session the login program runs in (a file written before this name
    # spelled it `session`).
    tmux_session: str = Field(validation_alias=AliasChoices("tmux_session", "session"))
    started_at: datetime
    expires_at: datetime
    auth_url: str | None = Field(default=None, repr=False,
                                 description="while waiting: the link for the user")  # fmt: skip
    # The sign-in link's OAuth `state`, which a pasted address must carry (a file written
    # before this name spelled it `state`).
    oauth_state: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("oauth_state", "state")
    )
    redirect_port: int | None = None
    verification_url: str | None = None
    user_code: str | None = None
    finished_at: datetime | None = None
    error: str | None = None
    message: str | None = None
    saved: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list,
                             description="e.g. an unreadable file moved aside")  # fmt: skip
    signed_in_as: str | None = None  # "<email> (<plan> plan)": for messages, not a secret
    code_sha256: str | None = None  # which pasted code finished it (for a repeated complete)
    state_sha256: str | None = None  # and its state, kept past the end for the same reason
    pane_pid: int | None = None

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def public(self) -> dict[str, Any]:
        """What a user is shown of it (:data:`PUBLIC_FIELDS`)."""
        shown = self.model_dump(include=set(PUBLIC_FIELDS))
        if not self.live:
            shown["auth_url"] = None  # the link died with the attempt
        return shown

    @property
    def expired_now(self) -> bool:
        return self.live and datetime.now(UTC) >= self.expires_at

    def ended(
        self, status: Status, *, error: str | None = None, message: str | None = None
    ) -> Attempt:
        """The same attempt, ended: secrets scrubbed, outcome recorded."""
        return self.model_copy(
            update={
                "status": status,
                "finished_at": datetime.now(UTC),
                "error": error,
                "message": message,
                "auth_url": None,
                "oauth_state": None,
            }
        )


class AttemptFile:
    """``login.json`` and its lock in the private state directory."""

    def __init__(self, state_dir: Path, *, timeout: float = 30.0) -> None:
        self.dir = state_dir
        self.path = state_dir / statedir.LOGIN
        self.timeout = timeout

    @contextmanager
    def locked(self, *, timeout: float | None = None) -> Iterator[None]:
        ensure_private_dir(self.dir)
        with FlockLock(self.path, timeout=self.timeout if timeout is None else timeout):
            yield

    def load(self) -> Attempt | None:
        try:
            found = read_settled(self.path, json.loads)
        except SkillError:
            return None  # a damaged state file means no usable attempt; start writes a new one
        if found is None:
            return None
        try:
            return Attempt.model_validate(found[1])
        except ValidationError:
            return None

    def save(self, attempt: Attempt) -> None:
        write_private(self.path, attempt.model_dump_json(indent=2).encode())
