"""``/healthz`` (process up), ``/readyz`` (tmux, state directory, secrets store), ``/metrics``
and the OpenAPI document.

``/readyz`` answers anyone, so it must not be a way to make the service call out: it reports
the store as the keep-alive last read it, answered or not (how long ago is in the answer).
Only when no such read is recent (the keep-alive is not running, say) does it ask the store
itself, one request at a time and at most every :data:`CHECK_EVERY` seconds per worker;
meanwhile it answers with the last result.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify

from service.context import Context, context
from service.errors import ServiceError
from service.models import Health
from skill.files import ensure_private_dir

bp = Blueprint("health", __name__)

CHECK_EVERY = 10.0


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(Health(status="ok").model_dump())


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    ctx = context()
    checks = {"tmux": "ok" if shutil.which("tmux") else "missing: install tmux"}
    checks["state_dir"] = _state_dir(ctx)
    checks["secrets_store"] = _store(ctx)
    ready = all(value.startswith("ok") for value in checks.values())
    health = Health(status="ok" if ready else "unavailable", checks=checks)
    return jsonify(health.model_dump()), 200 if ready else 503


def _state_dir(ctx: Context) -> str:
    """Whether a file can be made in the state directory, looked at once per CHECK_EVERY."""
    last = ctx.state_dir_check
    if last is not None and time.monotonic() - last[0] < CHECK_EVERY:
        return last[1]
    try:
        ensure_private_dir(ctx.settings.state_dir)
        with tempfile.NamedTemporaryFile(dir=ctx.settings.state_dir):
            pass
        result = "ok"
    except OSError as exc:
        result = f"not writable ({type(exc).__name__})"
    ctx.state_dir_check = (time.monotonic(), result)
    return result


def _store(ctx: Context) -> str:
    state = ctx.state.read()
    if state.store_write_error and not state.store_error:
        # Answering reads and refusing writes is not ready: nothing would be stored. Cleared
        # by the next write the store takes (the keep-alive's heartbeat, at the latest).
        return f"{state.store_write_error} (on the last write; reads are answered)"
    fresh = max(3 * ctx.settings.store_poll, 90.0)
    if state.store_tried_at is not None:
        age = (datetime.now(UTC) - state.store_tried_at).total_seconds()
        if age <= fresh:
            result = state.store_error or f"ok ({ctx.store.name})"
            done = "tried" if state.store_error else "read"  # a failed read is no read
            return f"{result}, {done} {age:.0f} s ago by the keep-alive"
    return _checked_here(ctx)


def _checked_here(ctx: Context) -> str:
    last = ctx.store_check
    if last is not None and time.monotonic() - last[0] < CHECK_EVERY:
        return f"{last[1]}, checked {time.monotonic() - last[0]:.0f} s ago"
    if not ctx.store_checking.acquire(blocking=False):  # another request is checking now
        return f"{last[1]}, checked {time.monotonic() - last[0]:.0f} s ago" if last else "checking"
    try:
        try:
            ctx.store.read()
            result = f"ok ({ctx.store.name})"
        except ServiceError as exc:
            result = exc.code
        ctx.store_check = (time.monotonic(), result)
    finally:
        ctx.store_checking.release()
    return f"{result}, checked just now"


@bp.get("/metrics")
def metrics() -> Response:
    ctx = context()
    ctx.metrics.count_journal(ctx.settings.state_dir)  # sign-ins ended a moment ago count too
    return Response(ctx.metrics.render(), mimetype="text/plain; version=0.0.4")


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    from service.openapi import document  # noqa: PLC0415

    return jsonify(document())
