"""The OpenAI Codex OAuth client: authorize URL, code exchange, refresh, revoke, device code.

Protocol facts are in skill/PROTOCOL.md §2-5. Rules this module keeps:

- Every call has explicit connect and read timeouts, and a deadline for the whole of it
  (``request_deadline``: :class:`skill.outbound.Watchdog` shuts the socket down, so an answer
  dripping in a byte at a time is cut off); an answer is read up to ``answer_max_bytes`` and
  parsed as JSON only within that and ``json_max_depth``. Each call opens its own connection, so
  the watchdog always has the socket.
- A request is retried only when the connection failed before anything was sent: a code is
  single use and a refresh token rotates on use, so a request the server may have seen is
  never sent twice.
- Requests go through :class:`skill.outbound.Outbound`, the one client for other machines:
  environment proxies (never for loopback), a proxy's CA beside the system's, no redirects.
- Errors are :class:`~skill.errors.SkillError` with a stable code; no token value ever appears
  in a message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.client import HTTPException
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skill.errors import SkillError
from skill.outbound import (
    Answer,
    AnswerError,
    NotSentError,
    Outbound,
    ProxySettingError,
    parse_json,
)
from skill.settings import Settings
from skill.tokens import TokenSet
from skill.waiting import backoff

log = logging.getLogger(__name__)

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a password
REVOKE_PATH = "/oauth/revoke"
DEVICE_USERCODE_PATH = "/api/accounts/deviceauth/usercode"
DEVICE_TOKEN_PATH = "/api/accounts/deviceauth/token"  # noqa: S105 - a URL path
DEVICE_VERIFY_PATH = "/codex/device"
DEVICE_REDIRECT_PATH = "/deviceauth/callback"
# The device code lives 15 minutes on the server; polling longer is pointless.
DEVICE_CODE_LIFETIME = 15 * 60.0

PERMANENT_REFRESH_CODES = frozenset(
    {"refresh_token_reused", "refresh_token_expired", "refresh_token_invalidated", "invalid_grant"}
)
_CONNECT_ATTEMPTS = 3


class DeviceCode(BaseModel):
    """A device-code attempt: show ``verification_url`` and ``user_code`` to the user."""

    model_config = ConfigDict(defer_build=True)

    device_auth_id: str = Field(repr=False)
    user_code: str
    interval: float
    verification_url: str


class DeviceGrant(BaseModel):
    """The approved device attempt: a code plus the PKCE pair the server made."""

    model_config = ConfigDict(defer_build=True)

    authorization_code: str = Field(repr=False)
    code_verifier: str = Field(repr=False)


def outbound(settings: Settings) -> Outbound:
    """The client for the issuer: our timeouts, answer cap and proxy CA."""
    try:
        return Outbound(
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            max_bytes=settings.answer_max_bytes, cadata=settings.proxy_ca,
        )  # fmt: skip
    except ProxySettingError as exc:
        raise SkillError("invalid_setting", str(exc)) from None


class OAuthClient:
    """Talks to the issuer named by ``settings.issuer``."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._outbound = outbound(settings)
        self._sleep = sleep

    def close(self) -> None:
        """Nothing to close (no connection outlives its request); kept for ``with``."""

    def __enter__(self) -> OAuthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Browser flow ---------------------------------------------------------------------------

    def exchange_code(self, *, code: str, verifier: str, redirect_uri: str) -> TokenSet:
        """Trade an authorization code for tokens (form-encoded, PROTOCOL.md §3)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.settings.client_id,
            "code_verifier": verifier,
        }
        response = self._post(TOKEN_PATH, form=form)
        if response.status != 200:
            raise _exchange_error(response)
        tokens = _token_set(response)
        if not tokens.refresh_token or not tokens.id_token:
            raise SkillError(
                "invalid_response",
                "The sign-in server's answer lacks the id or refresh token. Try signing in again.",
            )
        return tokens

    def exchange_api_key(self, id_token: str) -> str:
        """Trade the sign-in's id_token for an OpenAI API key (OAuth token exchange, as the
        Codex CLI does after a sign-in, PROTOCOL.md §3). The key, never logged or printed."""
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "client_id": self.settings.client_id,
            "requested_token": "openai-api-key",
            "subject_token": id_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        }
        response = self._post(TOKEN_PATH, form=form)
        if response.status != 200:
            raise _status_error(response, "The sign-in server gave no API key.")
        key = _json_object(response).get("access_token")
        if not isinstance(key, str) or not key:
            raise SkillError("invalid_response", status=response.status)
        return key

    # Refresh and revoke ---------------------------------------------------------------------

    def refresh(self, refresh_token: str) -> TokenSet:
        """Spend ``refresh_token`` for new tokens.

        The answer may omit ``id_token`` or ``refresh_token``; the caller keeps its old values
        for those. Permanent failures raise a ``permanent`` SkillError.
        """
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self.settings.client_id,
        }
        response = self._post(TOKEN_PATH, form=form)
        if response.status != 200:
            raise _refresh_error(response)
        return _token_set(response)

    def revoke(self, refresh_token: str) -> None:
        body = {
            "token": refresh_token,
            "token_type_hint": "refresh_token",
            "client_id": self.settings.client_id,
        }
        response = self._post(REVOKE_PATH, json_body=body)
        if response.status >= 400:
            raise _status_error(response, "The sign-in server refused to revoke the token.")

    # Device-code flow -----------------------------------------------------------------------

    def request_device_code(self) -> DeviceCode:
        response = self._post(
            DEVICE_USERCODE_PATH, json_body={"client_id": self.settings.client_id}
        )
        if response.status == 404:
            raise SkillError("device_auth_disabled", status=404)
        if response.status != 200:
            raise _status_error(response, "Could not start a device-code sign-in.")
        body = _json_object(response)
        try:
            return DeviceCode(
                device_auth_id=str(body["device_auth_id"]),
                user_code=str(body.get("user_code") or body["usercode"]),
                # The server sends the interval as a string of seconds.
                interval=max(1.0, float(body.get("interval") or 5)),
                verification_url=self.settings.issuer + DEVICE_VERIFY_PATH,
            )
        except (KeyError, ValueError, ValidationError) as exc:
            raise SkillError("invalid_response") from exc

    def wait_for_device_approval(
        self, device: DeviceCode, *, timeout: float, cancel: threading.Event | None = None
    ) -> DeviceGrant:
        """Poll at the server's interval until approved, expired (15 minutes) or canceled."""
        cancel = cancel or threading.Event()
        deadline = time.monotonic() + min(timeout, DEVICE_CODE_LIFETIME)
        body = {"device_auth_id": device.device_auth_id, "user_code": device.user_code}
        while time.monotonic() < deadline:
            try:
                response = self._post(DEVICE_TOKEN_PATH, json_body=body)
            except SkillError as exc:
                if not exc.transient:
                    raise
                log.info("device poll failed transiently (%s); polling on", exc.code)
            else:
                if response.status == 200:
                    return _device_grant(response)
                if response.status not in (403, 404) and response.status < 500:
                    raise _status_error(response, "The device-code sign-in failed.")
            if cancel.wait(min(device.interval, max(0.0, deadline - time.monotonic()))):
                raise SkillError("canceled")
        raise SkillError("device_code_expired")

    def exchange_device_grant(self, grant: DeviceGrant) -> TokenSet:
        return self.exchange_code(
            code=grant.authorization_code,
            verifier=grant.code_verifier,
            redirect_uri=self.settings.issuer + DEVICE_REDIRECT_PATH,
        )

    # Transport ------------------------------------------------------------------------------

    def _post(
        self,
        path: str,
        *,
        form: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> Answer:
        """POST, retrying only connections that failed before the request was sent; each
        attempt over within ``request_deadline``, its answer read up to ``answer_max_bytes``."""
        if form is not None:
            body, kind = urlencode(form).encode(), "application/x-www-form-urlencoded"
        else:
            body, kind = json.dumps(json_body or {}).encode(), "application/json"
        headers = {"Content-Type": kind, "Accept": "application/json"}
        url = self.settings.issuer + path
        for attempt in range(1, _CONNECT_ATTEMPTS + 1):
            try:
                return self._outbound.send("POST", url, body=body, headers=headers,
                                           seconds=self.settings.request_deadline)  # fmt: skip
            except NotSentError as exc:
                log.info("connect to %s failed (attempt %d): %s", path, attempt, exc)
                if attempt < _CONNECT_ATTEMPTS:
                    self._sleep(backoff(attempt, base=0.25, cap=2.0))
            except TimeoutError as exc:
                raise SkillError("response_timeout") from exc
            except AnswerError as exc:
                raise SkillError(
                    "invalid_response",
                    f"The sign-in server sent an answer this tool does not take ({exc.reason}).",
                ) from None
            except (OSError, HTTPException, ValueError) as exc:
                raise SkillError("network_error") from exc
        raise SkillError("network_error")


def _json_object(response: Answer) -> dict[str, Any]:
    """The body as a dict; accepts form-encoded answers too (some servers send them)."""
    text = response.text
    try:
        body = parse_json(response.body)
    except AnswerError:
        body = dict(parse_qsl(text)) if "=" in text and "[" not in text else None
    if not isinstance(body, dict):
        raise SkillError("invalid_response", status=response.status)
    return body


def _token_set(response: Answer) -> TokenSet:
    body = _json_object(response)
    expires_in = body.get("expires_in")
    try:
        return TokenSet(
            access_token=body.get("access_token") or "",
            refresh_token=body.get("refresh_token") or None,
            id_token=body.get("id_token") or None,
            expires_in=int(expires_in) if expires_in not in (None, "") else None,
        )
    except (ValueError, TypeError, ValidationError) as exc:
        raise SkillError("invalid_response", status=response.status) from exc


def _device_grant(response: Answer) -> DeviceGrant:
    body = _json_object(response)
    try:
        return DeviceGrant(
            authorization_code=body["authorization_code"], code_verifier=body["code_verifier"]
        )
    except (KeyError, ValidationError) as exc:
        raise SkillError("invalid_response", status=response.status) from exc


def error_code_of(response: Answer) -> str | None:
    """The machine code in an OAuth error body: ``{"error": {"code"}}`` or ``{"error": str}``."""
    try:
        body = parse_json(response.body)
    except AnswerError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("code") or error.get("type")
    # Only short identifier-like codes: free text from a server could echo a token.
    if isinstance(error, str) and error.replace("_", "").isalnum() and len(error) <= 64:
        return error
    return None


def _status_error(response: Answer, what: str) -> SkillError:
    status = response.status
    if status == 429:
        return SkillError("rate_limited", status=status)
    if status >= 500:
        return SkillError("server_error", status=status)
    code = error_code_of(response)
    detail = f" ({code})" if code else ""
    return SkillError(
        "server_error", f"{what} The server answered HTTP {status}{detail}.", status=status
    )


def _refresh_error(response: Answer) -> SkillError:
    code = error_code_of(response)
    status = response.status
    if code in PERMANENT_REFRESH_CODES:
        return SkillError(code or "refresh_rejected", status=status)
    if status == 401:
        return SkillError("refresh_rejected", status=status)
    return _status_error(response, "Renewing the sign-in failed; it will be retried.")


def _exchange_error(response: Answer) -> SkillError:
    status = response.status
    if status == 429 or status >= 500:
        return _status_error(response, "")
    return SkillError("code_rejected", status=status)
