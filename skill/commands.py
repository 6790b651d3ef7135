"""The agent's commands: start, complete, wait, status, cancel, logout.

Each returns an exit code and prints either short human lines or, with ``--json``, one JSON
object (``{"ok": true, ...}`` or ``{"ok": false, "error": <code>, "message": ...}``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from skill.errors import ExitCode, SkillError
from skill.runner import Runner

if TYPE_CHECKING:
    from skill.attempt import Attempt
    from skill.credentials import Credential
    from skill.drivers import DriverName, Method
    from skill.settings import Settings


class Output:
    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, lines: list[str], data: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps({"ok": True, **data}, default=_json_value))
        else:
            for line in lines:
                print(line)

    def tick(self, elapsed: float) -> None:
        """On a terminal, show that a wait is alive."""
        if not self.as_json and sys.stderr.isatty():
            sys.stderr.write(f"\rWaiting for the login program... {elapsed:4.0f} s")
            sys.stderr.flush()

    def end_tick(self) -> None:
        if not self.as_json and sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 50 + "\r")


def _json_value(value: object) -> str:
    """Times as the API writes them (ISO 8601, UTC, ``Z``); anything else as text."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _public(attempt: Attempt) -> dict[str, Any]:
    data = attempt.public()
    data["redirect_port"] = attempt.redirect_port  # where `complete` relays (the agent's view)
    if data["auth_url"] is None:
        del data["auth_url"]
    return data


def start(
    settings: Settings,
    out: Output,
    *,
    method: Method | None,
    driver: DriverName | None,
    restart: bool,
) -> int:
    """Start a sign-in, or give the live one back. Asked for another method or login program
    than the live one's (a user on a phone who cannot copy the address), it replaces it."""
    runner = Runner(settings)
    live = runner.status()
    switch = (
        live is not None
        and live.live
        and ((method or live.method) != live.method or (driver or live.driver) != live.driver)
    )
    attempt, reused = runner.start(
        method=method or "browser", driver=driver or "native", restart=restart or switch
    )
    until = attempt.expires_at.strftime("%H:%M UTC")
    lead = "A sign-in is already in progress" if reused else f"Sign-in started ({attempt.driver})"
    if switch and live is not None and not reused:
        lead = f"Replaced the {live.method} sign-in in progress ({live.driver}). {lead}"
    if attempt.method == "device":
        lines = [
            f"{lead}. Ask the user to open {attempt.verification_url} and enter the code "
            f"{attempt.user_code} (valid until {until}), then run `chatgpt-login wait`."
        ]
    else:
        lines = [
            f"{lead}. Send the user this link:",
            attempt.auth_url or "",
            "Ask them to sign in, then copy the full address of the page that fails to load "
            f"(http://localhost:{attempt.redirect_port}/auth/callback?...) and paste it back. "
            f"It works until {until}.",
        ]
    from skill.drivers import DRIVERS  # noqa: PLC0415 - imported by the runner already

    ignored = DRIVERS[attempt.driver].ignored_settings(settings)
    notes = [f"The {attempt.driver} login program signs in at auth.openai.com and listens on "
             f"port 1455 whatever {' and '.join(ignored)} say."] if ignored else []  # fmt: skip
    if (already := signed_in_note(settings)) is not None:
        notes.append(already)
    lines += notes
    note = " ".join(notes) or None
    out.emit(lines, {**_public(attempt), "reused": reused, "replaced": bool(switch and not reused),
                     "note": note})  # fmt: skip
    return ExitCode.OK


def complete(settings: Settings, out: Output, *, url: str) -> int:
    try:
        attempt = Runner(settings).complete(url, on_tick=out.tick)
    finally:
        out.end_tick()
    return _signed_in(settings, out, attempt)


def wait(settings: Settings, out: Output, *, timeout: float | None) -> int:
    try:
        attempt = Runner(settings).wait(timeout=timeout, on_tick=out.tick)
    finally:
        out.end_tick()
    if attempt.status != "succeeded":
        from skill.runner import ended_error  # noqa: PLC0415

        raise ended_error(attempt)
    return _signed_in(settings, out, attempt)


def _signed_in(settings: Settings, out: Output, attempt: Attempt) -> int:
    who = f" as {attempt.signed_in_as}" if attempt.signed_in_as else ""
    from skill.service_client import request_persist  # noqa: PLC0415

    persisted = request_persist(settings)
    if not persisted.persisted and (stored := _stored_since(settings, attempt)) is not None:
        # Asked again (a repeated complete or wait) while the service is down: it did store
        # this sign-in before, and saying "pending" would have the agent tell the user wrong.
        persisted = replace(persisted, persisted=True, message="Credentials persisted to the "
                            f"secrets store at {stored:%H:%M:%S} UTC (the service is not "
                            "answering now).")  # fmt: skip
    lines = [f"Signed in{who}."]
    lines += [f"Credentials saved to {path}" for path in attempt.saved]
    lines += [f"Note: {note}" for note in attempt.notes]
    lines.append(persisted.message)
    data = {**_public(attempt), "persisted": persisted.persisted,
            "persist_message": persisted.message}  # fmt: skip
    if persisted.refused:  # still exit 10 (signed in here), with what the agent must pass on
        data |= {"persist_error": "store_misconfigured", "next": "tell_user"}
    out.emit(lines, data)
    return ExitCode.OK if persisted.persisted else ExitCode.PERSIST_PENDING


def _stored_since(settings: Settings, attempt: Attempt) -> datetime | None:
    """When the service stored the sign-in ``attempt`` made, by the event journal; None when it
    has not (or a logout came after)."""
    from skill.events import since  # noqa: PLC0415

    if attempt.finished_at is None:
        return None
    stored = None
    for event in since(settings.state_dir, 0):
        try:
            at = datetime.fromisoformat(event.at)
        except ValueError:  # a line not of ours: the journal's file can be edited
            continue
        if at.tzinfo is None or at < attempt.finished_at:
            continue
        if event.type == "credential.persisted" and event.body.get("reason") == "sign-in":
            stored = stored or at
        elif event.type in ("credential.logged_out", "login.started"):
            stored = None  # what was stored is gone, or belongs to the sign-in after
    return stored


def status(settings: Settings, out: Output) -> int:
    """The credential first (now), then the service's view, then the last attempt (history)."""
    from skill.service_client import credential_view  # noqa: PLC0415
    from skill.signout import read_pending  # noqa: PLC0415

    attempt = Runner(settings).status()
    credential, problems = _credential_and_problems(settings)
    service = credential_view(settings)
    pending = read_pending(settings)
    lines: list[str] = []
    data: dict[str, Any] = {"credential": None, "service": service,
                            "logout_pending": pending is not None}  # fmt: skip
    if credential is not None:
        claims = credential.claims()
        at = f"{credential.expires_at:%Y-%m-%d %H:%M} UTC"
        token = (f"access token expired at {at} (the service renews it when it runs)"
                 if credential.expired() else f"access token valid until {at}")  # fmt: skip
        lines.append(
            f"Signed in on this machine as {claims.email or 'unknown'} ({claims.plan_type} plan); "
            f"{token}."
        )
        data["credential"] = {
            "account_id": credential.account_id,
            "email": claims.email,
            "plan": claims.plan_type,
            "expires_at": credential.expires_at,
            "expired": credential.expired(),
        }
    elif service is not None and service.get("status") == "logged_out":
        lines.append("Signed out (logged out everywhere). Sign in with `chatgpt-login start`.")
    else:
        lines.append("Not signed in on this machine.")
    lines += problems
    data["file_problems"] = problems
    from skill.apikey import api_key_view  # noqa: PLC0415

    data["api_key"] = api_key = api_key_view(settings)
    if api_key is not None and api_key["available"]:
        source = "from this sign-in" if api_key["from_sign_in"] else "not from a sign-in here"
        lines.append(f"An OpenAI API key is set ({source}): OPENAI_API_KEY in {api_key['path']}.")
    elif settings.api_key_exchange:
        lines.append("No OpenAI API key: the last sign-in's note says why.")
    lines += _service_lines(service, pending is not None, signed_in=credential is not None)
    if attempt is not None:
        lines.append(_describe(attempt))
    data["login"] = _public(attempt) if attempt else None
    out.emit(lines, data)
    return ExitCode.OK


def _service_lines(
    service: dict[str, Any] | None, logout_pending: bool, *, signed_in: bool
) -> list[str]:
    lines = []
    if logout_pending:
        who = ("the service does it when it runs" if service is None else
               "the secrets store has not taken it yet, and the service keeps trying")  # fmt: skip
        lines.append(
            f"Signing out the copy kept for restarts is pending: {who} (until then nothing "
            "restores it); a sign-in made since the logout is kept."
        )
    if service is None:
        lines.append(
            "The chatgpt-login service is not running here: until it starts, the sign-in is not "
            "renewed, and a change to it is not saved for restarts."
            if signed_in
            else "The chatgpt-login service is not running here: a sign-in made now is saved "
            "for restarts only once it starts."
        )
        return lines
    if service.get("status") == "needs_relogin":
        lines.append(f"Needs a new sign-in ({service.get('reason')}): run `chatgpt-login start`.")
    elif service.get("persist_pending"):
        lines.append("Storing the credential in the secrets store is pending.")
    elif (
        service.get("status") == "logged_in"
        and service.get("generation")
        and not any(service.get(key) for key in ("conflict", "store_error", "store_write_error"))
    ):  # said plainly, or a user cannot tell a running service from a stopped one
        lines.append(f"The service renews it and keeps it in the secrets store for restarts "
                     f"(stored generation {service['generation']}).")  # fmt: skip
    if service.get("store_error"):
        error = service["store_error"]
        what = "did not answer" if error == "secrets_unreachable" else "refused the service"
        lines.append(
            f"The store of the copy kept for restarts {what} "
            f"({error}): {service.get('store_problem') or ''}".rstrip()
        )
    write_error = service.get("store_write_error")
    if write_error and write_error != service.get("store_error"):
        lines.append(
            f"The store of the copy kept for restarts refused the service's last write "
            f"({write_error}): {service.get('store_write_problem') or ''}".rstrip()
        )
    if service.get("history_problem"):
        lines.append(
            "A logout's older stored versions, which hold the signed-out credential, are not "
            f"destroyed yet; the service keeps trying: {service['history_problem']}"
        )
    if service.get("conflict"):
        lines.append(
            f"The stored copy belongs to another account ({service['conflict']}): log out to "
            "switch accounts."
        )
    others = [h for h in service.get("holders") or [] if isinstance(h, dict) and not h.get("me")]
    if others and service.get("status") != "logged_out":
        names = ", ".join(f"{h.get('host') or h.get('id')} ({h.get('id')})" for h in others)
        when = " when the store was last read" if service.get("store_error") else ""
        total, shown = service.get("holders_total"), service.get("holders") or []
        me = any(isinstance(h, dict) and h.get("me") for h in shown)
        count = max(total - me, len(others)) if isinstance(total, int) else len(others)
        more = f" (the {len(others)} most recent)" if count > len(others) else ""
        lines.append(f"Shared with {count} other container(s){when}{more}: {names}.")
    lease = service.get("lease")
    if isinstance(lease, dict):
        mine = lease.get("holder") == service.get("holder")
        who = "this container" if mine else f"{lease.get('host') or lease.get('holder')}"
        lines.append(f"Being renewed right now by {who}.")
    return lines


def cancel(settings: Settings, out: Output) -> int:
    attempt = Runner(settings).cancel()
    if attempt is None:
        out.emit(["No sign-in was in progress."], {"canceled": False})
    else:
        out.emit(["Canceled the sign-in."], {"canceled": True, "login": _public(attempt)})
    return ExitCode.OK


def logout(settings: Settings, out: Output) -> int:
    """Log out everywhere: through the service, which also replaces the stored copy with a
    tombstone; when it is not running, here, with that last step noted as pending."""
    from skill.service_client import CREDENTIALS_PATH, call, json_body  # noqa: PLC0415
    from skill.signout import note_pending, sign_out_locally  # noqa: PLC0415

    try:
        answer = call(settings, "DELETE", CREDENTIALS_PATH, timeout=90.0)
    except SkillError:  # service_unavailable
        answer = None
    if answer is not None and answer.status == 200:
        done = json_body(answer)
        message = str(done.get("message") or "Signed out.")
        data = {key: done.get(key) for key in ("removed", "moved_aside", "revoked", "stored")}
        out.emit([message], {**data, "message": message})
        return ExitCode.OK
    credential = _local_credential(settings)
    note_pending(settings, credential.account_id if credential else None)
    local = sign_out_locally(settings, credential=credential)
    if credential is not None or local.removed:
        from skill.events import emit  # noqa: PLC0415

        emit(settings.state_dir, "credential.logged_out", by="this holder", stored="pending")
    lines = ["Signed out on this machine." if local.removed else "No local ChatGPT credential."]
    lines += [f"{path} could not be read: moved aside, not deleted." for path in local.moved_aside]
    if credential is not None:
        lines.append("The sign-in was revoked." if local.revoked else "Could not revoke the "
                     "sign-in at OpenAI (offline?); it ends when it expires.")  # fmt: skip
    if answer is None:
        lines.append(
            "The chatgpt-login service is not running: the copy kept for restarts is signed out "
            "when it starts (or at the next `chatgpt-login restore` here), and until then the "
            "user's other containers stay signed in."
        )
    else:  # it answered, with an error: the logout waits for it as for a service not running
        said = json_body(answer).get("error") or f"HTTP {answer.status}"
        lines.append(
            f"The chatgpt-login service failed to sign out the copy kept for restarts ({said}): "
            "that is noted as pending, and the service tries it again by itself (as does the "
            "next `chatgpt-login restore` here); until then the user's other containers stay "
            "signed in. `chatgpt-login doctor` says what is wrong."
        )
    out.emit(lines, {"removed": local.removed, "moved_aside": local.moved_aside,
                     "revoked": local.revoked, "stored": "pending",
                     "message": " ".join(lines)})  # fmt: skip
    return ExitCode.OK


def signed_in_note(settings: Settings) -> str | None:
    """What a new sign-in would replace, if this machine is signed in: said when one starts (an
    operator's API start, or an agent that skipped looking first)."""
    credential = _local_credential(settings)
    if credential is None:
        return None
    who = credential.claims().email or credential.account_id
    return f"Already signed in on this machine as {who}: completing this sign-in replaces that."


def _local_credential(settings: Settings) -> Credential | None:
    return _credential_and_problems(settings)[0]


def _credential_and_problems(settings: Settings) -> tuple[Credential | None, list[str]]:
    """The credential on this machine, and what is wrong with the files it could be in."""
    from skill.authfiles import auth_files  # noqa: PLC0415 - not on the start path

    found, problems = None, []
    for auth_file in auth_files(settings):
        try:
            credential = auth_file.load()
        except SkillError as exc:
            problems.append(
                f"{auth_file.path} cannot be read ({exc.code}); the next sign-in or restore "
                "moves it aside (it is never deleted)."
            )
            continue
        found = found or credential
    return found, problems


def _describe(attempt: Attempt) -> str:
    if attempt.live:
        waiting = "the pasted address" if attempt.method == "browser" else "device approval"
        left = max(0, int((attempt.expires_at - datetime.now(UTC)).total_seconds() / 60))
        return f"Sign-in {attempt.id} ({attempt.driver}) is waiting for {waiting}; {left} min left."
    when = f" at {attempt.finished_at:%Y-%m-%d %H:%M} UTC" if attempt.finished_at else ""
    what = {"succeeded": "succeeded", "failed": "failed", "canceled": "was canceled",
            "expired": "expired"}.get(attempt.status, attempt.status)  # fmt: skip
    detail = f" ({attempt.message})" if attempt.message and attempt.status != "succeeded" else ""
    return f"The last sign-in attempt ({attempt.id}, {attempt.driver}) {what}{when}{detail}."
