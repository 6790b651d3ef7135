"""Where the credential is kept between container lives: one interface, two backends.

- :class:`HttpSecretsStore`: the remote secrets API (PROTOCOL.md §8). ``PATCH <url>`` with
  ``{"<key>": <pi entry>}`` and a bearer token succeeds only on 2xx with ``{"ok": true}``;
  ``GET <url>`` returns an object holding the key (absent or 404: nothing stored); deleting is
  ``PATCH {"<key>": null}``. Network errors, 5xx and 429 are retried with exponential backoff and
  jitter (``Retry-After`` honoured), bounded by attempts and a total deadline; 401/403 are not.
  Every request here is idempotent (a PATCH sets the same value again), so retrying after a
  timeout is safe. TLS verification is always on (``SSL_CERT_FILE`` for a custom CA).
- :class:`FileSecretsStore`: a 0600 JSON file in the state directory, for when no secrets API
  is configured, so that everything works out of the box.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

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
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url, self.key = url, key
        self.attempts, self.deadline = attempts, deadline
        self._sleep = sleep
        self._auth = {"Authorization": f"Bearer {token}"}
        # verify stays on: trust_env adds SSL_CERT_FILE/HTTPS_PROXY, never disables checks.
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            trust_env=transport is None,
        )

    def get(self) -> Entry | None:
        response = self._request("GET")
        if response.status_code == 404:
            return None
        body = _json_object(response)
        entry = body.get(self.key)
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
        response = self._request("PATCH", body)
        answer = _json_object(response)
        if answer.get("ok") is not True:
            raise ServiceError(
                "secrets_rejected",
                'The secrets API did not confirm the write (no "ok": true). It will be retried.',
                status=502,
                transient=True,
            )

    def _request(self, method: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """Send with bounded retries on network errors, 5xx and 429."""
        deadline = time.monotonic() + self.deadline
        error: ServiceError = unreachable("no attempt made")
        for attempt in range(1, self.attempts + 1):
            retry_after: float | None = None
            try:
                response = self._http.request(method, self.url, json=body, headers=self._auth)
            except httpx.TimeoutException:
                error = unreachable("it did not answer in time")
            except httpx.HTTPError as exc:
                error = unreachable(type(exc).__name__)
            else:
                status = response.status_code
                if status in (401, 403):
                    raise ServiceError(
                        "secrets_forbidden",
                        f"The secrets API refused the token (HTTP {status}). Check "
                        "FAT_TOOLS_TOKEN (or the secrets_api_token secret).",
                        status=502,
                    )
                if status != 429 and status < 500:
                    return response
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


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServiceError(
            "secrets_bad_response",
            f"The secrets API sent an unreadable answer (HTTP {response.status_code}). It will be "
            "retried; if it persists, check the secrets API.",
            status=502,
            transient=True,
        )
    return body


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    jitter = 0.5 + random.random()  # noqa: S311 - spreading retries, not cryptography
    return float(min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** (attempt - 1)) * jitter)
