"""``/v1/credentials``: status, persist, restore and log out. Never a token value."""

from __future__ import annotations

import time
from datetime import datetime
from hashlib import sha256
from pathlib import Path

from flask import Blueprint, Response, jsonify

from service.app import context
from service.errors import ServiceError
from service.models import CredentialStatus, Outcome
from service.sync import local_credential, persist, restore_and_refresh
from skill.authfiles import auth_files
from skill.errors import SkillError

bp = Blueprint("credentials", __name__)


def persist_now() -> bool:
    """Store the local credential; on failure remember that a persist is pending."""
    ctx = context()
    try:
        ctx.metrics.timed("secrets_api", lambda: persist(ctx.settings, ctx.store))
    except ServiceError:
        ctx.metrics.count("persists", "failed")
        ctx.persist_state.mark(persisted=False)
        return False
    ctx.metrics.count("persists", "ok")
    ctx.persist_state.mark(persisted=True)
    return True


# The status view is what the operator API serves most, and it only changes when one of two
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
    key = _identity(ctx.settings.pi_auth_file, ctx.persist_state.path)
    cached = _cache
    if cached is not None and cached[0] == key and time.monotonic() - cached[1] < _CACHE_SECONDS:
        return jsonify(cached[2])
    view = _status_view()
    _cache = (key, time.monotonic(), view)
    return jsonify(view)


def _status_view() -> dict[str, object]:
    ctx = context()
    credential = local_credential(ctx.settings)
    state = ctx.persist_state.read()
    if credential is None:
        view = CredentialStatus(status="not_logged_in")
    else:
        claims = credential.claims()
        last = state.get("last_persisted_at")
        # A permanent refresh failure counts only while that same refresh token is on disk.
        dead = state.get("dead_refresh") == sha256(credential.refresh_token.encode()).hexdigest()
        reason = state.get("needs_relogin") if dead else None
        view = CredentialStatus(
            status="needs_relogin" if reason else "logged_in",
            reason=reason,
            account_id=credential.account_id,
            email=claims.email,
            plan=claims.plan_type,
            expires_at=credential.expires_at,
            last_refresh=credential.last_refresh,
            last_persisted_at=datetime.fromisoformat(last) if last else None,
            persist_pending=bool(state.get("persist_pending")),
        )
    return view.model_dump(mode="json")


@bp.post("/persist")
def persist_route() -> Response:
    ctx = context()
    if local_credential(ctx.settings) is None:
        raise ServiceError("credentials_missing", "No ChatGPT credential on this machine to "
                           "persist. Sign in first (POST /v1/logins).", status=409)  # fmt: skip
    if not persist_now():
        raise ServiceError("secrets_unreachable", "The secrets store did not take the credential; "
                           "it stays on this machine and the persist is pending. Retry later.",
                           status=503)  # fmt: skip
    return jsonify(Outcome(action="persisted", message="Credential stored.").model_dump())


@bp.post("/refresh")
def refresh_route() -> Response:
    """Renew now (the refresh token is spent under pi's lock), then store the result."""
    from service.keepalive import KeepAlive  # noqa: PLC0415

    ctx = context()
    keep = KeepAlive(ctx.settings, ctx.store)
    try:
        renewed = keep.refresher.ensure_fresh(force=True)
    except SkillError as exc:
        ctx.metrics.count("refreshes", exc.code)
        if exc.permanent:
            credential = local_credential(ctx.settings)
            if credential is not None:
                keep.mark_relogin(credential, exc)
        raise
    ctx.metrics.count("refreshes", "ok")
    persisted = persist_now()
    message = "Renewed." + ("" if persisted else " Storing it is pending.")
    return jsonify(Outcome(action="refreshed" if renewed.refreshed else "adopted",
                           message=message).model_dump())  # fmt: skip


@bp.post("/restore")
def restore_route() -> Response:
    ctx = context()
    result = restore_and_refresh(ctx.settings, ctx.store)
    ctx.metrics.count("restores", result.action)
    message = " ".join([result.message, *result.notes])
    outcome = Outcome(ok=not result.failed, action=result.action, message=message)
    return jsonify(outcome.model_dump())


@bp.delete("")
def logout() -> Response:
    """Revoke at the issuer (best effort, reported), remove the local entries, delete the copy."""
    ctx = context()
    credential = local_credential(ctx.settings)
    revoked = "nothing to revoke"
    if credential is not None:
        from skill.oauth import OAuthClient  # noqa: PLC0415

        try:
            with OAuthClient(ctx.settings) as client:
                client.revoke(credential.refresh_token)
            revoked = "revoked"
        except SkillError as exc:
            revoked = f"not revoked ({exc.code})"
    for auth_file in auth_files(ctx.settings):
        auth_file.remove()
    ctx.store.delete()
    ctx.persist_state.mark(persisted=True)
    message = f"Signed out: local entries removed, stored copy deleted, sign-in {revoked}."
    return jsonify(Outcome(action="logged_out", message=message).model_dump())
