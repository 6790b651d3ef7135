"""``/healthz`` (process up), ``/readyz`` (tmux, state directory, secrets store), ``/metrics``
and the OpenAPI document."""

from __future__ import annotations

import shutil
import tempfile

from flask import Blueprint, Response, jsonify

from service.context import context
from service.errors import ServiceError
from service.models import Health
from skill.files import ensure_private_dir

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(Health(status="ok").model_dump())


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    ctx = context()
    checks = {"tmux": "ok" if shutil.which("tmux") else "missing: install tmux"}
    try:
        ensure_private_dir(ctx.settings.state_dir)
        with tempfile.NamedTemporaryFile(dir=ctx.settings.state_dir):
            pass
        checks["state_dir"] = "ok"
    except OSError as exc:
        checks["state_dir"] = f"not writable ({type(exc).__name__})"
    try:
        ctx.store.read()
        checks["secrets_store"] = f"ok ({ctx.store.name})"
    except ServiceError as exc:
        checks["secrets_store"] = exc.code
    ready = all(value.startswith("ok") for value in checks.values())
    health = Health(status="ok" if ready else "unavailable", checks=checks)
    return jsonify(health.model_dump()), 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    return Response(context().metrics.render(), mimetype="text/plain; version=0.0.4")


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    from service.openapi import document  # noqa: PLC0415

    return jsonify(document())
