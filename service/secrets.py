"""Where the credential is kept between container lives: one interface, two backends.

- :class:`HttpSecretsStore`: the remote secrets API (PROTOCOL.md §8). ``PATCH <url>`` with
  ``{"<key>": <pi entry>}`` and a bearer token succeeds only on 2xx with ``{"ok": true}``;
  ``GET <url>`` returns an object holding the key (absent or 404: nothing stored); deleting is
  ``PATCH {"<key>": null}``. Network errors, 5xx and 429 are retried with exponential backoff and
  jitter (``Retry-After`` honoured), bounded by attempts and a total deadline; 401/403 are not.
  Every request here is idempotent (a PATCH sets the same value again), so retrying after a
  timeout is safe. TLS verification is always on (``SSL_CERT_FILE`` for a custom CA).

  It is built on the standard library's ``urllib`` rather than httpx: ``chatgpt-login restore``
  runs before the agent on every container start, and importing httpx and loading certifi's CA
  bundle cost more than 0.1 s of its 0.2 s budget. urllib reads the same environment (proxies,
  ``NO_PROXY``, ``SSL_CERT_FILE`` through OpenSSL) and the store needs nothing more: one short
  request at a time, no streaming, no redirects.
- :class:`FileSecretsStore`: a 0600 JSON file in the state directory, for when no secrets API
  is configured, so that everything works out of the box.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPException
from pathlib import Path
from typing import Any, Protocol

from service.errors import ServiceError, unreachable
from service.settings import ServiceSettings
from skill.files import ensure_private_dir, read_settled, write_private
from skill.lock import FlockLock

log = logging.getLogger(__name__)

Entry = dict[str, Any]
_BACKOFF_BASE, _BACKOFF_CAP = 0.25, 5.0


class SecretsStore(Protocol):
    name: str

    def get(self) -> Entry | None: ...
    def put(self, entry: Entry) -> None: ...
    def delete(self) -> None: ...


def secrets_store(settings: ServiceSettings, **kwargs: Any) -> SecretsStore:
    """The configured backend."""
    url, token = settings.secrets_api_url, settings.secrets_api_token
    if url and token:
        return HttpSecretsStore(
            url=url,
            token=token,
            key=settings.secrets_key,
            timeout=settings.secrets_timeout,
            attempts=settings.secrets_attempts,
            deadline=settings.secrets_deadline,
            **kwargs,
        )
    path = settings.secrets_file or settings.state_dir / "secrets.json"
    return FileSecretsStore(path, key=settings.secrets_key)


class HttpSecretsStore:
    name = "http"

    def __init__(
        self,
        *,
        url: str,
        token: str,
        key: str = "codex_credentials",
        timeout: float = 10.0,
        attempts: int = 5,
        deadline: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.startswith(("https://", "http://")):  # ServiceSettings checks this too
            raise ValueError("the secrets API URL must be an http(s) URL")
        self.url, self.key = url, key
        self.timeout, self.attempts, self.deadline = timeout, attempts, deadline
        self._sleep = sleep
        self._token = token
        # Proxies from the environment as urllib reads them; certificates are always verified
        # (the default HTTPS context). Redirects are refused: the bearer token must not follow
        # an answer to another address.
        self._opener = urllib.request.build_opener(_RefuseRedirects())

    def get(self) -> Entry | None:
        body = self._request("GET")
        entry = body.get(self.key) if body is not None else None
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise ServiceError(
                "secrets_bad_record",
                f"The secrets API holds a {self.key} that is not an object. Sign in again to "
                "replace it.",
                status=502,
            )
        return entry

    def put(self, entry: Entry) -> None:
        self._patch({self.key: entry})

    def delete(self) -> None:
        self._patch({self.key: None})

    def _patch(self, body: dict[str, Any]) -> None:
        answer = self._request("PATCH", body)
        if answer is None or answer.get("ok") is not True:
            raise ServiceError(
                "secrets_rejected",
                'The secrets API did not confirm the write (no "ok": true). It will be retried.',
                status=502,
                transient=True,
            )

    def _request(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The answer's JSON object (None: a GET found nothing), with bounded retries on network
        errors, 5xx, 429 and answers cut short or unreadable."""
        deadline = time.monotonic() + self.deadline
        error: ServiceError = unreachable("no attempt made")
        for attempt in range(1, self.attempts + 1):
            retry_after: float | None = None
            try:
                response = self._send(method, body)
            except (OSError, HTTPException, ValueError) as exc:  # timeouts, resets, TLS, truncation
                error = unreachable(_reason(exc))
            else:
                status = response.status
                if status in (401, 403):
                    raise ServiceError(
                        "secrets_forbidden",
                        f"The secrets API refused the token (HTTP {status}). Check "
                        "FAT_TOOLS_TOKEN (or the secrets_api_token secret).",
                        status=502,
                    )
                if status == 404 and method == "GET":
                    return None
                if status != 429 and status < 500:
                    try:
                        return _json_object(response)
                    except ServiceError as exc:  # e.g. a body cut short by the network
                        error = exc
                else:
                    error = unreachable(f"HTTP {status}")
                    retry_after = _retry_after(response)
            delay = retry_after if retry_after is not None else _backoff(attempt)
            if attempt == self.attempts or time.monotonic() + delay > deadline:
                break
            log.info(
                "secrets API %s failed (attempt %d), retrying in %.2fs", method, attempt, delay
            )
            self._sleep(delay)
        raise error

    def _send(self, method: str, body: dict[str, Any] | None) -> _Response:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url, data=data, method=method)  # noqa: S310 - http(s) only, checked in __init__
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                return _Response(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as answer:  # a non-2xx answer is still an answer
            with answer:
                return _Response(answer.code, answer.headers, answer.read())


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Message
    body: bytes


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then handled as an ordinary (non-2xx) answer


def _reason(exc: BaseException) -> str:
    """A short cause for the error message: the innermost reason urllib wraps."""
    if isinstance(exc, TimeoutError):
        return "it did not answer in time"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _reason(reason)
    if isinstance(reason, str) and reason:
        return reason
    return type(exc).__name__


class FileSecretsStore:
    """The same record in ``{"<key>": <entry>}`` form, in a 0600 file."""

    name = "file"

    def __init__(self, path: Path, *, key: str = "codex_credentials") -> None:
        self.path, self.key = path, key

    def get(self) -> Entry | None:
        found = read_settled(self.path, json.loads)
        if found is None or not isinstance(found[1], dict):
            return None
        entry = found[1].get(self.key)
        return entry if isinstance(entry, dict) else None

    def put(self, entry: Entry) -> None:
        self._update(entry)

    def delete(self) -> None:
        self._update(None)

    def _update(self, entry: Entry | None) -> None:
        ensure_private_dir(self.path.parent)
        with FlockLock(self.path):
            found = read_settled(self.path, json.loads)
            document = found[1] if found and isinstance(found[1], dict) else {}
            if entry is None:
                document.pop(self.key, None)
            else:
                document[self.key] = entry
            write_private(self.path, json.dumps(document, indent=2).encode())


def _json_object(response: _Response) -> dict[str, Any]:
    try:
        body = json.loads(response.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServiceError(
            "secrets_bad_response",
            f"The secrets API sent an unreadable answer (HTTP {response.status}). It will be "
            "retried; if it persists, check the secrets API.",
            status=502,
            transient=True,
        )
    return body


def _retry_after(response: _Response) -> float | None:
    value = response.headers.get("Retry-After") or ""
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    jitter = 0.5 + random.random()  # noqa: S311 - spreading retries, not cryptography
    return float(min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** (attempt - 1)) * jitter)
