"""The operator API: a Flask application factory.

``create_app(settings)`` wires the blueprints (logins, credentials, health) to one settings
object and one secrets store. Every endpoint but ``/healthz`` and ``/readyz`` needs
``Authorization: Bearer <token>``: the configured operator token, or the local token the service
writes to ``<state_dir>/service.token`` (0600) so the agent's own commands can ask it to persist
without ever holding the secrets API token. Errors are ``{"error": code, "message": text}``.
"""

from __future__ import annotations

import hmac
import logging
import traceback

from flask import Flask, Response, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from service.context import EXTENSION, Context, context
from service.errors import ServiceError
from service.secrets import SecretsStore, secrets_store
from service.settings import ServiceSettings
from skill.errors import SkillError, from_os_error

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
PUBLIC = frozenset({"health.healthz", "health.readyz"})
RETRY_AFTER = 2  # seconds, on a 503 that passes (a busy store, every stream slot taken)


def create_app(settings: ServiceSettings, *, store: SecretsStore | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions[EXTENSION] = Context(settings, store or secrets_store(settings))

    from service.routes import credentials, events, health, logins  # noqa: PLC0415

    app.register_blueprint(logins.bp, url_prefix="/v1/logins")
    app.register_blueprint(credentials.bp, url_prefix="/v1/credentials")
    app.register_blueprint(events.bp, url_prefix="/v1/events")
    app.register_blueprint(health.bp)
    app.before_request(_authenticate)
    app.after_request(_no_store)
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(SkillError, lambda exc: _service_error(ServiceError.from_skill(exc)))
    app.register_error_handler(ValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def _authenticate() -> Response | None:
    if request.endpoint in PUBLIC:
        return None
    header = request.headers.get("Authorization", "")
    given = header[7:].encode() if header.startswith("Bearer ") else b""
    # Compare against every accepted token, always, in constant time.
    matches = [hmac.compare_digest(given, token) for token in context().tokens]
    if given and any(matches):
        g.authenticated = True
        return None
    response = jsonify(error="unauthorized", message="Send Authorization: Bearer <operator token> "
                       "(or the local token in the state directory's service.token).")  # fmt: skip
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="chatgpt-login"'
    return response


def _no_store(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _service_error(exc: ServiceError) -> tuple[Response, int]:
    extra = {"next": exc.next, **exc.details} if exc.next else dict(exc.details)
    answer = jsonify(error=exc.code, message=exc.message, **extra)
    if exc.status == 503 and exc.transient:  # HTTP clients (and proxies) know this header
        answer.headers["Retry-After"] = str(RETRY_AFTER)
    return answer, exc.status


def _validation_error(exc: ValidationError) -> tuple[Response, int]:
    # include_input=False: a rejected body may hold a pasted URL; never echo it.
    problems = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)
    )
    return jsonify(error="invalid_request", message=f"Invalid request body ({problems})."), 400


def _unexpected(exc: Exception) -> tuple[Response, int]:
    """The one boundary of every route: a file problem, or anything unforeseen, is one of our
    error bodies. The log gets the frames but not the exception's text, which could quote a
    request (a pasted address) or a value read from a file."""
    if isinstance(exc, HTTPException):  # handled by _http_error; here only if re-raised
        return _http_error(exc)
    if isinstance(exc, OSError):
        return _service_error(ServiceError.from_skill(from_os_error(exc)))
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unexpected %s in %s:\n%s", type(exc).__name__, request.endpoint, frames)
    return _service_error(ServiceError(
        "internal", f"Something unexpected went wrong ({type(exc).__name__}). Report it; the "
        "service's log has where.", status=500, next="report",
    ))  # fmt: skip


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
            415: "unsupported_media_type"}.get(status, "http_error")  # fmt: skip
    message = {
        404: "No such endpoint. See /v1/openapi.json.",
        413: f"The request body is larger than {MAX_BODY} bytes.",
    }.get(status, exc.description or exc.name)
    return jsonify(error=code, message=message), status
