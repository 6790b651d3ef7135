"""``/v1/credentials``: status, persist, refresh, restore and log out. Never a token value.

Every change of the stored copy goes through :mod:`service.persistence`. A restore and a logout
through the API are rare (a container restores before the service starts; a logout ends the
sign-in): their modules are imported when first asked for, not held by the worker from its start
(BENCHMARKS.md, service memory)."""

from __future__ import annotations

import time
from pathlib import Path

from flask import Blueprint, Response, jsonify

from service.context import context
from service.errors import ServiceError
from service.models import CredentialStatus, Outcome, SignedOut
from service.persistence import Renewed, dead_refresh_token
from service.refresher import Refresher
from skill.errors import SkillError
from skill.signout import pending_path

bp = Blueprint("credentials", __name__)

# How long a forced refresh waits for another container's rotation before giving up.
_BUSY_WAIT = 15.0


def persist_now() -> ServiceError | None:
    """Store the local credential as a new sign-in; None when stored, else why not (the persist
    is then pending and the keep-alive retries), in the words the caller passes on: a store that
    did not answer takes it by itself later; one that refused the service (its token, its
    address) does so only once an operator fixes that."""
    ctx = context()
    try:
        ctx.persistence().persist()
    except ServiceError as exc:
        if exc.transient:
            return ServiceError("secrets_unreachable", "The secrets store did not take the "
                                "credential; it stays on this machine, and the service stores "
                                "it by itself as soon as the store takes it.", status=503,
                                transient=True)  # fmt: skip
        # In our words only: this goes to the user through the agent, and a store's own text
        # (Vault's "errors") is whatever answers at its address. `doctor` shows the operator
        # the store's answer.
        refusals = _VAULT_REFUSALS if ctx.store.name == "vault" else _REFUSALS
        why = refusals.get(exc.code, "the secrets store refused the service's request")
        return ServiceError(exc.code, f"{why[:1].upper()}{why[1:]} ({exc.code}). The credential "
                            "stays on this machine, and is not saved for restarts or shared with "
                            "other containers until an operator fixes that (`chatgpt-login "
                            "doctor` on this machine says what is wrong); then the service "
                            "stores it by itself (a changed setting counts once the service "
                            "restarts).", status=exc.status,
                            next="tell_user")  # fmt: skip
    return None


_REFUSALS = {
    "secrets_forbidden": "the secrets store refused the service's token (FAT_TOOLS_TOKEN or the "
    "secrets_api_token secret)",
    "secrets_bad_response": "the secrets store refused the write or answered in a way the "
    "service cannot use: check its address (CHATGPT_LOGIN_SECRETS_API_URL)",
}
_VAULT_REFUSALS = {
    "secrets_forbidden": "Vault refused the service's token for the credential's path "
    "(VAULT_TOKEN, the vault_token secret or AppRole, and the token's policy)",
    "vault_token_expired": "the Vault token of the service has expired",
    "secrets_bad_response": "Vault answered in a way the service cannot use: check VAULT_ADDR",
    "secrets_rejected": "Vault refused the request: check the path and the token's policy",
}


# The status view is what the operator API serves most, and it only changes when one of three
# files does. Each worker keeps the last view with the files' identities (inode, mtime, size),
# for at most a second: a rewrite in place within the kernel's timestamp granularity that keeps
# the size cannot hide for longer than that.
_CACHE_SECONDS = 1.0
_cache: tuple[object, float, dict[str, object]] | None = None


def _identity(*paths: Path) -> object:
    found: list[object] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            found.append((path, None))
        else:
            found.append((path, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(found)


@bp.get("")
def status() -> Response:
    global _cache  # noqa: PLW0603 - one view per worker, replaced whole (no partial updates)
    ctx = context()
    key = _identity(ctx.settings.pi_auth_file, ctx.state.path, pending_path(ctx.settings))
    cached = _cache
    if cached is not None and cached[0] == key and time.monotonic() - cached[1] < _CACHE_SECONDS:
        return jsonify(cached[2])
    view = _status_view()
    _cache = (key, time.monotonic(), view)
    return jsonify(view)


def _status_view() -> dict[str, object]:
    ctx = context()
    credential = ctx.persistence().local()
    state = ctx.state.read()
    store = state.store
    shared = {
        "holder": ctx.holder.id,
        "generation": state.generation,
        "holders": store.holders if store else [],
        "holders_total": store.holders_total if store else 0,
        "lease": store.lease if store else None,
        "store_read_at": state.store_read_at,
        "store_error": state.store_error,
        "store_problem": state.store_problem,
        "store_write_error": state.store_write_error,
        "store_write_problem": state.store_write_problem,
        "history_problem": state.history_problem if state.history_pending else None,
        "logout_pending": pending_path(ctx.settings).exists(),
        "conflict": state.conflict,
    }
    if credential is None:
        gone = "logged_out" if state.logged_out is not None else "not_logged_in"
        return CredentialStatus(status=gone, **shared).model_dump(mode="json")
    claims = credential.claims()
    # A permanent refresh failure counts only while that same refresh token is on disk.
    reason = dead_refresh_token(state, credential)
    view = CredentialStatus(
        status="needs_relogin" if reason else "logged_in",
        reason=reason,
        account_id=credential.account_id,
        email=claims.email,
        plan=claims.plan_type,
        expires_at=credential.expires_at,
        last_refresh=credential.claims().issued_at,  # when this token was issued
        last_persisted_at=state.last_persisted_at,
        persist_pending=state.persist_pending,
        **shared,
    )
    return view.model_dump(mode="json")


@bp.post("/persist")
def persist_route() -> Response:
    ctx = context()
    if ctx.persistence().local() is None:
        raise ServiceError("credentials_missing", "No ChatGPT credential on this machine to "
                           "persist. Sign in first (POST /v1/logins).", status=409,
                           next="start_again")  # fmt: skip
    problem = persist_now()
    if problem is not None:
        raise problem
    return jsonify(Outcome(action="persisted", message="Credential stored.").model_dump())


@bp.post("/refresh")
def refresh_route() -> Response:
    """Renew now, as the one holder allowed to (the store's lease), or adopt the rotation of
    the holder that is renewing it right now."""
    ctx = context()
    persistence = ctx.persistence()
    try:
        renewed = persistence.renew(Refresher(ctx.settings), force=True)
        deadline = time.monotonic() + _BUSY_WAIT
        while renewed.outcome == "busy" and time.monotonic() < deadline:
            time.sleep(0.2)
            if persistence.sync().decision == "adopt":
                renewed = Renewed("adopted", persistence.local())
    except SkillError as exc:
        ctx.metrics.count("refreshes", exc.code)
        if exc.permanent and (credential := persistence.local()) is not None:
            persistence.mark_relogin(credential, exc)
        raise
    if renewed.outcome == "busy":
        raise ServiceError("refresh_busy", "Another container is renewing this sign-in and has "
                           "not stored the result yet. Retry in a minute.", status=503,
                           transient=True)  # fmt: skip
    ctx.metrics.count("refreshes", "ok" if renewed.outcome == "refreshed" else "adopted")
    message = {
        "refreshed": "Renewed and stored.",
        "adopted": "Another container had just renewed it; using that.",
    }.get(renewed.outcome, "Renewed.")
    outcome = "refreshed" if renewed.outcome == "refreshed" else "adopted"
    return jsonify(Outcome(action=outcome, message=message).model_dump())


@bp.post("/restore")
def restore_route() -> Response:
    from service.restore import restore_and_refresh  # noqa: PLC0415 - rare: see the docstring

    ctx = context()
    result = restore_and_refresh(ctx.settings, ctx.store)
    ctx.metrics.count("restores", result.action)
    message = " ".join([result.message, *result.notes])
    outcome = Outcome(ok=not result.failed, action=result.action, message=message)
    return jsonify(outcome.model_dump())


@bp.delete("")
def logout() -> Response:
    """Log out everywhere: tombstone the stored copy, revoke (best effort), remove our entries."""
    from service.signout import sign_out  # noqa: PLC0415 - rare: see the docstring

    done = sign_out(context().persistence())
    context().metrics.count("logouts", done.stored)
    body = SignedOut(action="logged_out", message=done.message, revoked=done.local.revoked,
                     removed=done.local.removed, moved_aside=done.local.moved_aside,
                     stored=done.stored)  # fmt: skip
    return jsonify(body.model_dump())
