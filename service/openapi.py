"""The OpenAPI 3.1 document, generated from the pydantic models.

The route table below is the API's contract; ``tests/test_service.py`` checks that it names
exactly the routes the app serves.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from service.models import (
    CredentialStatus,
    ErrorBody,
    Health,
    Login,
    LoginRequest,
    Outcome,
    RedirectRequest,
    RelayedLogin,
    SignedOut,
    StartedLogin,
)
from service.record import HolderView, LeaseView

MODELS: list[type[BaseModel]] = [
    LoginRequest, RedirectRequest, Login, StartedLogin, RelayedLogin, CredentialStatus,
    HolderView, LeaseView, Outcome, SignedOut, Health, ErrorBody,
]  # fmt: skip

# (method, path, summary, request model, {status: response model or None for plain text})
ROUTES: list[tuple[str, str, str, type[BaseModel] | None, dict[int, type[BaseModel] | None]]] = [
    ("post", "/v1/logins", "Start a sign-in", LoginRequest, {201: StartedLogin, 409: StartedLogin}),
    ("get", "/v1/logins/{login_id}", "Show a sign-in", None, {200: Login, 404: ErrorBody}),
    ("post", "/v1/logins/{login_id}/redirect", "Relay the pasted address", RedirectRequest,
     {200: RelayedLogin, 400: ErrorBody, 404: ErrorBody}),
    ("delete", "/v1/logins/{login_id}", "Cancel a sign-in", None,
     {200: Login, 404: ErrorBody, 409: ErrorBody}),
    ("get", "/v1/credentials", "Credential status (never a token)", None, {200: CredentialStatus}),
    ("post", "/v1/credentials/persist", "Store the local credential", None,
     {200: Outcome, 409: ErrorBody, 502: ErrorBody, 503: ErrorBody}),
    ("post", "/v1/credentials/refresh", "Renew the access token now (under the store's lease)",
     None, {200: Outcome, 409: ErrorBody, 503: ErrorBody}),
    ("post", "/v1/credentials/restore", "Restore from the secrets store", None, {200: Outcome}),
    ("delete", "/v1/credentials", "Log out everywhere (a tombstone replaces the stored copy)",
     None, {200: SignedOut}),
    ("get", "/v1/events", "Follow changes as Server-Sent Events (Last-Event-ID resumes)",
     None, {200: None, 400: ErrorBody, 503: ErrorBody}),
    ("get", "/healthz", "Process is up", None, {200: Health}),
    ("get", "/readyz", "Ready: tmux, state directory, secrets store", None,
     {200: Health, 503: Health}),
    ("get", "/metrics", "Prometheus metrics", None, {200: None}),
    ("get", "/v1/openapi.json", "This document", None, {200: None}),
]  # fmt: skip
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
# Where a stream resumes: the last event id its client saw (either; the header wins). An id
# past the newest means the journal started over: the stream sends it all.
EVENTS_PARAMETERS = [
    {"name": "Last-Event-ID", "in": "header", "required": False,
     "schema": {"type": "integer", "minimum": 0}},
    {"name": "after", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0}},
]  # fmt: skip


def document() -> dict[str, Any]:
    schemas = {m.__name__: m.model_json_schema(ref_template="#/components/schemas/{model}")
               for m in MODELS}  # fmt: skip
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, responses in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": method + "_" + re.sub(r"[^a-z0-9]+", "_", path).strip("_"),
            "responses": {str(s): _response(m) for s, m in responses.items()},
        }
        if path not in PUBLIC_PATHS:
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = _response(ErrorBody)
        if "{login_id}" in path:
            operation["parameters"] = [{"name": "login_id", "in": "path", "required": True,
                                        "schema": {"type": "string"}}]  # fmt: skip
        if path == "/v1/events":
            operation["parameters"] = EVENTS_PARAMETERS
            operation["responses"]["200"] = {
                "description": "A stream of events: `id`, `event` (the type) and `data` (the "
                "event as JSON: id, type, at, body) per event, a comment line as heartbeat",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}}  # fmt: skip
        if request is not None:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{request.__name__}"}}},
            }  # fmt: skip
            operation["responses"]["400"] = _response(ErrorBody)
            operation["responses"]["415"] = _response(ErrorBody)
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatgpt-login operator API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _response(model: type[BaseModel] | None) -> dict[str, Any]:
    if model is None:
        return {"description": "OK"}
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"description": model.__name__, "content": {"application/json": {"schema": ref}}}
