"""``/v1/logins``: start, inspect, complete and cancel the sign-in, through the same runner as
the CLI (a login started from either is visible and completable from the other)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from service.context import body, context
from service.errors import ServiceError
from service.models import Login, LoginRequest, RedirectRequest
from service.routes.credentials import persist_now
from skill.attempt import Attempt, AttemptFile

if TYPE_CHECKING:
    from skill.runner import Runner

bp = Blueprint("logins", __name__)


def view(attempt: Attempt) -> BaseModel:
    return Login.model_validate(attempt.public())


def _runner() -> Runner:
    # Imported on the first sign-in, not at start: a container signs in a few times in its life
    # and the runner brings tmux, the drivers and the login program's protocol (0.4 MiB).
    from skill.runner import Runner  # noqa: PLC0415

    return Runner(context().settings)


def _live(login_id: str) -> Attempt:
    attempt = _runner().status()
    if attempt is None or attempt.id != login_id:
        raise ServiceError("not_found", f"No sign-in {login_id!r} here: the current one has "
                           "another id (POST /v1/logins answers with it) or none was started.",
                           status=404)  # fmt: skip
    return attempt


@bp.post("")
def start() -> tuple[Response, int]:
    request = body(LoginRequest)
    attempt, reused = _runner().start(method=request.method, driver=request.driver)
    if reused:  # a new one is counted from the journal, as those the CLI starts
        context().metrics.count("logins_started", "reused")
    from skill.commands import signed_in_note  # noqa: PLC0415 - with the runner, on first use

    data = view(attempt).model_dump(mode="json")
    data["note"] = signed_in_note(context().settings)
    return jsonify(data), 409 if reused else 201


@bp.get("/<login_id>")
def show(login_id: str) -> Response:
    return jsonify(view(_live(login_id)).model_dump(mode="json"))


@bp.post("/<login_id>/redirect")
def redirect(login_id: str) -> Response:
    pasted = body(RedirectRequest).url
    _live(login_id)
    try:
        attempt = _runner().complete(pasted)
    except Exception:
        # Counted here only while the sign-in goes on: one this paste ended is counted from the
        # journal, with how it ended.
        still = AttemptFile(context().settings.state_dir).load()
        if still is not None and still.id == login_id and still.live:
            context().metrics.count("pastes", "refused")
        raise
    data = view(attempt).model_dump(mode="json")
    problem = persist_now() if attempt.status == "succeeded" else None
    data["persisted"] = attempt.status == "succeeded" and problem is None
    if problem is not None:  # signed in here; why the copy kept for restarts is not stored yet
        data |= {"persist_error": problem.code, "persist_message": problem.message,
                 "next": problem.next}  # fmt: skip
    return jsonify(data)


@bp.delete("/<login_id>")
def cancel(login_id: str) -> Response:
    _live(login_id)
    attempt = _runner().cancel()
    if attempt is None:  # it had ended: a cancel repeated (a lost answer) is answered the same
        attempt = _live(login_id)
        if attempt.status != "canceled":
            raise ServiceError("login_ended", f"That sign-in already ended ({attempt.status}); "
                               "there is nothing to cancel. POST /v1/logins starts a new one.",
                               status=409, next="start_again")  # fmt: skip
    return jsonify(view(attempt).model_dump(mode="json"))
