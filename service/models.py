"""The operator API's request and response bodies. Requests forbid unknown fields; no response
model has a field for a token value."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(Request):
    method: Literal["browser", "device"] = "browser"
    driver: Literal["native", "pi-ai", "codex"] = "native"


class RedirectRequest(Request):
    url: str = Field(min_length=1, max_length=16384, description="the address the user pasted")


class Login(BaseModel):
    id: str
    status: Literal["waiting", "completing", "succeeded", "failed", "canceled", "expired"]
    driver: str
    method: str
    started_at: datetime
    expires_at: datetime
    finished_at: datetime | None = None
    auth_url: str | None = Field(default=None, description="while waiting: the link for the user")
    verification_url: str | None = None
    user_code: str | None = None
    error: str | None = None
    message: str | None = None
    saved: list[str] = Field(default_factory=list)


class CredentialStatus(BaseModel):
    status: Literal["not_logged_in", "logged_in", "needs_relogin"]
    account_id: str | None = None
    email: str | None = None
    plan: str | None = None
    expires_at: datetime | None = None
    last_refresh: datetime | None = None
    last_persisted_at: datetime | None = None
    persist_pending: bool = False
    reason: str | None = None


class Outcome(BaseModel):
    ok: bool = True
    action: str
    message: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: str
    message: str
