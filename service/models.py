"""The operator API's request and response bodies. Requests forbid unknown fields; no response
model has a field for a token value."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from service.record import HolderView, LeaseView
from skill.attempt import PUBLIC_FIELDS, Attempt
from skill.drivers import DRIVERS, known_driver

# Every model here is built when first used, not when the service starts: each costs the
# worker memory for as long as it lives (BENCHMARKS.md, service memory), and most are used
# rarely (a sign-in's, a logout's) or never (the documentation's).
_DEFERRED = ConfigDict(defer_build=True)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class LoginRequest(Request):
    method: Literal["browser", "device"] = "browser"
    driver: Annotated[str, AfterValidator(known_driver)] = Field(
        default="native", description=f"a login program: {', '.join(DRIVERS)}"
    )


class RedirectRequest(Request):
    url: str = Field(
        min_length=1,
        max_length=16384,
        description="what the user wrote back: the address, or their whole message with it",
    )


# A sign-in as the API shows it: the user-facing fields of the runner's own record, so the
# two cannot drift apart.
Login = create_model(
    "Login",
    __config__=_DEFERRED,
    **{name: (Attempt.model_fields[name].annotation, Attempt.model_fields[name])
       for name in PUBLIC_FIELDS},
)  # type: ignore[call-overload]  # fmt: skip
# Starting one: the sign-in, and what it would replace.
StartedLogin = create_model(
    "StartedLogin",
    __base__=Login,
    note=(str | None, Field(default=None, description="this machine is signed in already: "
                            "completing the sign-in replaces that credential")),
)  # fmt: skip
# Relaying the pasted address: the sign-in, and whether the copy kept for restarts took it.
RelayedLogin = create_model(
    "RelayedLogin",
    __base__=Login,
    persisted=(bool, Field(default=False, description="stored in the secrets store")),
    persist_error=(str | None, Field(default=None, description="why not, when the store "
                                     "refused the service (an operator must act)")),
    persist_message=(str | None, None),
    next=(str | None, Field(default=None, description="tell_user with persist_error")),
)  # fmt: skip


class CredentialStatus(BaseModel):
    model_config = _DEFERRED

    status: Literal["not_logged_in", "logged_in", "needs_relogin", "logged_out"]
    account_id: str | None = None
    email: str | None = None
    plan: str | None = None
    expires_at: datetime | None = None
    last_refresh: datetime | None = None
    last_persisted_at: datetime | None = None
    persist_pending: bool = False
    reason: str | None = None
    logout_pending: bool = Field(
        default=False, description="a logout is waiting to reach the stored copy"
    )
    conflict: str | None = Field(
        default=None, description="the other account the stored copy belongs to"
    )
    holder: str = Field(description="this service's holder id")
    generation: int = Field(default=0, description="the stored generation this machine holds")
    holders: list[HolderView] = Field(
        default_factory=list,
        description="the services sharing this credential, seen recently (20 at most: this "
        "one and the most recent)",
    )
    holders_total: int = Field(default=0, description="how many were seen recently in all")
    lease: LeaseView | None = Field(default=None, description="who is renewing it right now")
    store_read_at: datetime | None = Field(default=None, description="the last read of the store")
    store_error: str | None = Field(default=None, description="the last read's error code")
    store_problem: str | None = Field(default=None, description="and what to do about it")
    store_write_error: str | None = Field(
        default=None, description="the last write's error code, while the store refuses writes"
    )
    store_write_problem: str | None = Field(default=None, description="and what to do about it")
    history_problem: str | None = Field(
        default=None,
        description="why a logout's older stored versions (they hold the signed-out credential) "
        "are not destroyed yet",
    )


class Outcome(BaseModel):
    model_config = _DEFERRED

    ok: bool = True
    action: str
    message: str


class SignedOut(Outcome):
    revoked: bool = False
    removed: list[str] = Field(default_factory=list, description="files our entries left")
    moved_aside: list[str] = Field(
        default_factory=list, description="unreadable files, moved aside (never deleted)"
    )
    stored: Literal["tombstoned", "pending", "other_account"] = Field(
        description="what became of the stored copy"
    )


class Health(BaseModel):
    model_config = _DEFERRED

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    model_config = _DEFERRED

    error: str
    message: str
    next: str | None = Field(
        default=None,
        description="what a caller does next: ask_user, send_current_link, start_again, retry, "
        "tell_user or report",
    )
    auth_url: str | None = Field(default=None, description="with send_current_link: the link")
