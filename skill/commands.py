"""The agent's commands: start, complete, wait, status, cancel, logout.

Each returns an exit code and prints either short human lines or, with ``--json``, one JSON
object (``{"ok": true, ...}`` or ``{"ok": false, "error": <code>, "message": ...}``).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from skill.errors import ExitCode, SkillError
from skill.runner import Runner

if TYPE_CHECKING:
    from skill.credentials import Credential
    from skill.drivers import DriverName, Method
    from skill.loginstate import LoginState
    from skill.settings import Settings


class Output:
    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, lines: list[str], data: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps({"ok": True, **data}, default=str))
        else:
            for line in lines:
                print(line)

    def error(self, exc: SkillError) -> int:
        if self.as_json:
            print(json.dumps({"ok": False, "error": exc.code, "message": exc.message}))
        else:
            print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code

    def tick(self, elapsed: float) -> None:
        """On a terminal, show that a wait is alive."""
        if not self.as_json and sys.stderr.isatty():
            sys.stderr.write(f"\rWaiting for the login program... {elapsed:4.0f} s")
            sys.stderr.flush()

    def end_tick(self) -> None:
        if not self.as_json and sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 50 + "\r")


def _public(state: LoginState) -> dict[str, Any]:
    data = state.model_dump(
        include={"id", "driver", "method", "status", "started_at", "expires_at", "finished_at",
                 "verification_url", "user_code", "error", "message", "saved", "redirect_port"}
    )  # fmt: skip
    if state.live and state.auth_url:
        data["auth_url"] = state.auth_url  # the user needs it; it dies with the attempt
    return data


def start(
    settings: Settings, out: Output, *, method: Method, driver: DriverName, restart: bool
) -> int:
    state, reused = Runner(settings).start(method=method, driver=driver, restart=restart)
    until = state.expires_at.strftime("%H:%M UTC")
    lead = "A sign-in is already in progress" if reused else f"Sign-in started ({state.driver})"
    if state.method == "device":
        lines = [
            f"{lead}. Ask the user to open {state.verification_url} and enter the code "
            f"{state.user_code} (valid 15 minutes), then run `chatgpt-login wait`."
        ]
    else:
        lines = [
            f"{lead}. Send the user this link:",
            state.auth_url or "",
            "Ask them to sign in, then copy the full address of the page that fails to load "
            f"(http://localhost:{state.redirect_port}/auth/callback?...) and paste it back. "
            f"It works until {until}.",
        ]
    out.emit(lines, {**_public(state), "reused": reused})
    return ExitCode.OK


def complete(settings: Settings, out: Output, *, url: str) -> int:
    try:
        state = Runner(settings).complete(url, on_tick=out.tick)
    finally:
        out.end_tick()
    return _signed_in(settings, out, state)


def wait(settings: Settings, out: Output, *, timeout: float | None) -> int:
    try:
        state = Runner(settings).wait(timeout=timeout, on_tick=out.tick)
    finally:
        out.end_tick()
    if state.status != "succeeded":
        raise SkillError(
            "login_ended", f"The sign-in {state.status}: {state.message or ''}".strip()
        )
    return _signed_in(settings, out, state)


def _signed_in(settings: Settings, out: Output, state: LoginState) -> int:
    who = f" as {state.signed_in_as}" if state.signed_in_as else ""
    from skill.persist import request_persist  # noqa: PLC0415 - httpx only when needed

    persisted = request_persist(settings)
    lines = [f"Signed in{who}."]
    lines += [f"Credentials saved to {path}" for path in state.saved]
    lines.append(persisted.message)
    out.emit(lines, {**_public(state), "persisted": persisted.persisted,
                     "persist_message": persisted.message})  # fmt: skip
    return ExitCode.OK if persisted.persisted else ExitCode.PERSIST_PENDING


def status(settings: Settings, out: Output) -> int:
    state = Runner(settings).status()
    credential = _local_credential(settings)
    lines = [_describe(state)]
    data: dict[str, Any] = {"login": _public(state) if state else None, "credential": None}
    if credential is not None:
        claims = credential.claims()
        valid = "valid" if not credential.expired() else "expired, renewable"
        lines.append(
            f"Signed in on this machine as {claims.email or 'unknown'} ({claims.plan_type} plan); "
            f"access token {valid} until {credential.expires_at:%Y-%m-%d %H:%M} UTC."
        )
        data["credential"] = {
            "account_id": credential.account_id,
            "email": claims.email,
            "plan": claims.plan_type,
            "expires_at": credential.expires_at,
            "expired": credential.expired(),
        }
    else:
        lines.append("Not signed in on this machine.")
    service = _service_view(settings)
    data["service"] = service
    if service is None:
        lines.append("The chatgpt-login service is not running: nothing is kept in sync.")
    elif service.get("status") == "needs_relogin":
        lines.append(f"Needs a new sign-in ({service.get('reason')}): run `chatgpt-login start`.")
    elif service.get("persist_pending"):
        lines.append("Storing the credential in the secrets store is pending.")
    out.emit(lines, data)
    return ExitCode.OK


def _service_view(settings: Settings) -> dict[str, Any] | None:
    """The service's GET /v1/credentials (needs_relogin, persistence), or None if it is down."""
    from skill.relay import loopback_request  # noqa: PLC0415

    try:
        token = (settings.state_dir / "service.token").read_text().strip()
        answer = loopback_request(
            "GET", settings.service_url.rstrip("/") + "/v1/credentials", timeout=2.0,
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        view = answer.json() if answer.status == 200 else None
    except (OSError, ValueError, SkillError):
        return None
    return view if isinstance(view, dict) else None


def cancel(settings: Settings, out: Output) -> int:
    state = Runner(settings).cancel()
    if state is None:
        out.emit(["No sign-in was in progress."], {"canceled": False})
    else:
        out.emit(["Canceled the sign-in."], {"canceled": True, "login": _public(state)})
    return ExitCode.OK


def logout(settings: Settings, out: Output) -> int:
    """Cancel any live sign-in, revoke the refresh token (best effort), remove local entries."""
    Runner(settings).cancel()
    credential = _local_credential(settings)
    revoked = False
    if credential is not None:
        from skill.oauth import OAuthClient  # noqa: PLC0415

        try:
            with OAuthClient(settings) as client:
                client.revoke(credential.refresh_token)
            revoked = True
        except SkillError:
            revoked = False
    from skill.authfiles import auth_files  # noqa: PLC0415

    removed = [str(f.path) for f in auth_files(settings) if f.remove()]
    lines = ["Signed out." if removed else "No local ChatGPT credential to remove."]
    if credential is not None:
        lines.append("The sign-in was revoked." if revoked else "Could not revoke the sign-in "
                     "at OpenAI (offline?); it ends when it expires.")  # fmt: skip
    out.emit(lines, {"removed": removed, "revoked": revoked})
    return ExitCode.OK


def _local_credential(settings: Settings) -> Credential | None:
    from skill.authfiles import auth_files  # noqa: PLC0415 - not on the start path

    for auth_file in auth_files(settings):
        try:
            credential = auth_file.load()
        except SkillError:
            continue
        if credential is not None:
            return credential
    return None


def _describe(state: LoginState | None) -> str:
    if state is None:
        return "No sign-in has been started."
    if state.live:
        waiting = "the pasted address" if state.method == "browser" else "device approval"
        left = max(0, int((state.expires_at - datetime.now(UTC)).total_seconds() / 60))
        return f"Sign-in {state.id} ({state.driver}) is waiting for {waiting}; {left} min left."
    detail = f": {state.message}" if state.message else "."
    return f"The last sign-in {state.id} ({state.driver}) {state.status}{detail}"
