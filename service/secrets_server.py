"""A reference implementation of the remote secrets API (PROTOCOL.md §8), for local runs and
self-hosting: ``chatgpt-login secrets-server``.

- ``GET /api/agent/secrets``: the calling agent's document, a JSON object (``{}`` when empty).
- ``PATCH /api/agent/secrets``: a JSON merge patch (RFC 7396: ``null`` deletes a key, objects
  merge, anything else replaces) applied atomically; answers ``{"ok": true}``.
- ``GET /healthz``: up and the database opens.

Every document has a revision that grows with each PATCH, sent as its ``ETag`` (``"<rev>"``).
A ``GET`` whose ``If-None-Match`` names the current one answers ``304`` with no body (a cheap
poll); a ``PATCH`` whose ``If-Match`` does not answers ``412`` and changes nothing
(compare-and-set, what makes the refresh lease of many containers exact). Without those
headers it behaves as the seed's API, which has none of this.

Each agent has its own bearer token and its own document. Tokens come from the
``secrets_server_tokens`` setting (one ``<agent>:<token>`` per line, usually a file secret),
or, when that is unset, the ``secrets_api_token`` the agents use, for one agent named
``agent``. They are compared in constant time. Documents live in SQLite (WAL, 0600 files);
nothing of a document or a token is ever logged, and error bodies never echo a request.

The ``http`` secrets store works against it unchanged, as it does against the original remote.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
import traceback
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from service.errors import ServiceError
from service.settings import ServiceSettings
from skill.files import ensure_private_dir
from skill.outbound import AnswerError, parse_json

MAX_BODY = 256 * 1024
# A whole document, as GET returns it, stays within what every client reads (skill.outbound's
# answer cap is the same 256 KiB): PATCHes that each fit could otherwise grow it past that, and
# no client could read it again, or clean it up.
MAX_DOCUMENT = MAX_BODY - 1024
MAX_DEPTH = 32
DEFAULT_AGENT = "agent"
ROUTE = "/api/agent/secrets"


def parse_tokens(text: str) -> dict[str, bytes]:
    """``<agent>:<token>`` lines (blank lines and ``#`` comments skipped) -> agent -> token."""
    tokens: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        agent, sep, token = line.partition(":")
        if not sep or not agent.strip() or len(token.strip()) < 16:
            raise ValueError(
                f"secrets_server_tokens line {number} is not '<agent>:<token>' with a token of "
                "at least 16 characters"
            )
        tokens[agent.strip()] = token.strip().encode()
    return tokens


def server_tokens(settings: ServiceSettings) -> dict[str, bytes]:
    if settings.secrets_server_tokens:
        return parse_tokens(settings.secrets_server_tokens)
    if settings.secrets_api_token:
        return {DEFAULT_AGENT: settings.secrets_api_token.encode()}
    return {}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class Documents:
    """One JSON document per agent in SQLite. A connection per call: cheap for SQLite, and
    safe across gunicorn's threads and workers; writes take the database's write lock first
    (``BEGIN IMMEDIATE``) so concurrent patches serialise instead of losing one another."""

    def __init__(self, path: Path) -> None:
        self.path = path
        ensure_private_dir(path.parent)
        previous = os.umask(0o077)  # the database and its -wal/-shm files: 0600
        try:
            with closing(self._connect()) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS documents (agent TEXT PRIMARY KEY, "
                    "body TEXT NOT NULL, updated REAL NOT NULL, rev INTEGER NOT NULL DEFAULT 0)"
                )
                columns = {row[1] for row in db.execute("PRAGMA table_info(documents)")}
                if "rev" not in columns:  # a database from before revisions
                    db.execute("ALTER TABLE documents ADD COLUMN rev INTEGER NOT NULL DEFAULT 0")
        finally:
            os.umask(previous)
        path.chmod(0o600)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def get(self, agent: str) -> tuple[dict[str, Any], int]:
        """The agent's document and its revision (0: none yet)."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT body, rev FROM documents WHERE agent = ?", (agent,)).fetchone()
        found = json.loads(row[0]) if row else {}
        return (found if isinstance(found, dict) else {}), (int(row[1]) if row else 0)

    def revision(self, agent: str) -> int:
        with closing(self._connect()) as db:
            row = db.execute("SELECT rev FROM documents WHERE agent = ?", (agent,)).fetchone()
        return int(row[0]) if row else 0

    def patch(self, agent: str, patch: dict[str, Any], *, if_rev: int | None = None) -> int | None:
        """Merge ``patch``; the new revision, or None when ``if_rev`` is not the current one."""
        with self._transaction() as db:
            row = db.execute("SELECT body, rev FROM documents WHERE agent = ?", (agent,)).fetchone()
            rev = int(row[1]) if row else 0
            if if_rev is not None and if_rev != rev:
                return None
            merged = merge_patch(json.loads(row[0]) if row else {}, patch)
            body = json.dumps(merged, separators=(",", ":"))
            if len(body.encode()) > MAX_DOCUMENT and len(body) >= len(row[0] if row else ""):
                raise ServiceError(
                    "document_too_large",
                    f"The document would be larger than {MAX_DOCUMENT} bytes, more than a "
                    "client reads back. Remove keys nothing uses (PATCH them to null) first.",
                    status=413,
                )
            db.execute(
                "INSERT INTO documents (agent, body, updated, rev) "
                "VALUES (?, ?, julianday('now'), ?) "
                "ON CONFLICT (agent) DO UPDATE "
                "SET body = excluded.body, updated = excluded.updated, rev = excluded.rev",
                (agent, body, rev + 1),
            )
            return rev + 1

    def ping(self) -> None:
        with closing(self._connect()) as db:
            db.execute("SELECT 1").fetchone()


def create_secrets_app(settings: ServiceSettings) -> Flask:
    tokens = server_tokens(settings)
    if not tokens:
        raise ValueError(
            "no tokens: set secrets_server_tokens ('<agent>:<token>' lines) or secrets_api_token"
        )
    documents = Documents(settings.secrets_server_db or settings.state_dir / "secrets-server.db")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.before_request
    def authenticate() -> Response | None:
        if request.endpoint == "healthz":
            return None
        header = request.headers.get("Authorization", "")
        given = header[7:].encode() if header.startswith("Bearer ") else b""
        # Every token is compared, always, so timing says nothing about which one came close.
        matched = [agent for agent, token in tokens.items() if hmac.compare_digest(given, token)]
        if given and matched:
            g.agent = matched[0]
            return None
        response = jsonify(error="unauthorized", message="Send Authorization: Bearer <token>.")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="secrets"'
        return response

    @app.get(ROUTE)
    def read() -> Response:
        if (wanted := request.headers.get("If-None-Match")) is not None:
            rev = documents.revision(g.agent)
            if _matches(wanted, rev):
                return _versioned(Response(status=304), rev)
        document, rev = documents.get(g.agent)
        return _versioned(jsonify(document), rev)

    @app.patch(ROUTE)
    def write() -> Response:
        if not request.is_json:
            raise ServiceError(
                "unsupported_media_type",
                "Send a JSON object (Content-Type: application/json).",
                status=415,
            )
        try:
            patch = parse_json(request.get_data(cache=False), max_depth=MAX_DEPTH)
        except AnswerError:  # not JSON, or nested deeper than any secrets document
            patch = None
        if not isinstance(patch, dict):
            raise ServiceError(
                "invalid_request",
                f"The body must be a JSON object (a merge patch) nested at most {MAX_DEPTH} deep.",
                status=400,
            )
        if_rev = None
        if (wanted := request.headers.get("If-Match")) is not None:
            if_rev = _revision(wanted)
            if if_rev is None:  # "*" (any existing document) or a tag we never gave out
                current = documents.revision(g.agent)
                if_rev = current if wanted.strip() == "*" and current > 0 else -1
        rev = documents.patch(g.agent, patch, if_rev=if_rev)
        if rev is None:
            raise ServiceError(
                "precondition_failed",
                "The document changed since the version in If-Match; read it again and retry.",
                status=412,
            )
        return _versioned(jsonify(ok=True), rev)

    @app.get("/healthz")
    def healthz() -> Response:
        documents.ping()
        return jsonify(status="ok")

    @app.errorhandler(ServiceError)
    def refused(exc: ServiceError) -> tuple[Response, int]:
        return jsonify(error=exc.code, message=exc.message), exc.status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        if isinstance(exc, HTTPException):
            return http_error(exc)
        # The frames, not the exception's text (it could quote a request).
        app.logger.error("unexpected %s:\n%s", type(exc).__name__,
                         "".join(traceback.format_tb(exc.__traceback__)))  # fmt: skip
        return jsonify(error="internal", message="Something unexpected went wrong. Report it; "
                       "the server's log has where."), 500  # fmt: skip

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        message = {
            404: f"No such endpoint; the secrets API is {ROUTE}.",
            405: f"{ROUTE} answers GET and PATCH.",
            413: f"The request body is larger than {MAX_BODY} bytes.",
        }.get(status, exc.name)
        return jsonify(error=exc.name.lower().replace(" ", "_"), message=message), status

    return app


def _versioned(response: Response, rev: int) -> Response:
    response.headers["ETag"] = f'"{rev}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _revision(tag: str) -> int | None:
    """The revision an entity tag of ours names (weak tags compare as strong: one writer)."""
    text = tag.strip().removeprefix("W/").strip('"')
    # isdigit() alone takes "²" and other digits int() refuses.
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _matches(header: str, rev: int) -> bool:
    """Whether an If-None-Match list names ``rev`` (or is ``*`` for an existing document)."""
    tags = [tag.strip() for tag in header.split(",")]
    return any((tag == "*" and rev > 0) or _revision(tag) == rev for tag in tags)


def wsgi() -> Flask:
    """gunicorn's entry: ``service.secrets_server:wsgi()``."""
    return create_secrets_app(ServiceSettings.from_env())
