"""What the routes share, in its own module so that blueprints never import the app factory
(flaskr's layout): the settings, the secrets store, the accepted tokens, and helpers for reading
a request body."""

from __future__ import annotations

import secrets
import threading
from typing import Any

from flask import current_app, request

from service.errors import ServiceError
from service.metrics import Metrics
from service.persistence import Holder, LocalStateFile, Persistence, holder_of
from service.secrets import SecretsStore
from service.settings import ServiceSettings
from skill import statedir
from skill.files import ensure_private_dir, write_private
from skill.lock import FlockLock

EXTENSION = "chatgpt_login"
LOCAL_TOKEN_LENGTH = 43  # secrets.token_urlsafe(32)


class Context:
    """Built once per app (per gunicorn worker)."""

    def __init__(self, settings: ServiceSettings, store: SecretsStore) -> None:
        self.settings = settings
        self.store = store
        self.state = LocalStateFile(settings.state_dir / statedir.SERVICE_STATE)
        self.metrics = Metrics(settings.state_dir / statedir.METRICS)
        self.holder: Holder = holder_of(settings)
        self.tokens = [t.encode() for t in (settings.operator_token, local_token(settings)) if t]
        # /readyz's own look at the store, when the keep-alive has not read it lately: one at a
        # time, its result kept (monotonic time, result) for a while.
        self.store_checking = threading.Lock()
        self.store_check: tuple[float, str] | None = None
        self.state_dir_check: tuple[float, str] | None = None

    def persistence(self) -> Persistence:
        """The owner of the stored copy, for one request."""
        return Persistence(self.settings, self.store, metrics=self.metrics, holder=self.holder)


def context() -> Context:
    found: Context = current_app.extensions[EXTENSION]
    return found


def local_token(settings: ServiceSettings, *, new: bool = False) -> str:
    """The token local callers (the agent's commands) read from the state directory. ``serve``
    makes a new one at every start (``new``), so a token that ever leaked dies with the
    service that issued it; its workers then read that one."""
    path = settings.state_dir / statedir.SERVICE_TOKEN
    ensure_private_dir(settings.state_dir)
    with FlockLock(path, timeout=10):  # every gunicorn worker must end up with the same one
        try:
            token = "" if new else path.read_text().strip()
        except OSError:
            token = ""
        if len(token) < LOCAL_TOKEN_LENGTH:  # none yet, or not one we made: a new one
            token = secrets.token_urlsafe(32)
            write_private(path, token.encode())
    return token


def body(model: type[Any]) -> Any:
    """The request's JSON body validated by ``model`` (an empty body means all defaults)."""
    raw = request.get_data(cache=True)
    if raw and not request.is_json:
        raise ServiceError(
            "unsupported_media_type", "Send the body as JSON (Content-Type: application/json).",
            status=415,
        )  # fmt: skip
    return model.model_validate_json(raw or b"{}")
