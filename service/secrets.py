"""Where the credential is kept between container lives: one interface, three backends.

A store holds one JSON *document* (the agent's secrets) and knows two operations: read it
(optionally only if it changed since a version tag, an ``ETag``) and merge a patch into it
(optionally only if it is still at a version: compare-and-set). What the document's keys mean
is :mod:`service.persistence`'s business, not the store's.

- :class:`HttpSecretsStore`: the remote secrets API (PROTOCOL.md §8). ``GET <url>`` returns the
  document (404: empty); ``PATCH <url>`` merges top-level keys (``null`` deletes one) and must
  answer ``{"ok": true}``. The seed's API has nothing more. Our reference server
  (``chatgpt-login secrets-server``) adds versions: an ``ETag`` on every answer, ``304`` to a
  ``GET`` with a matching ``If-None-Match`` (a cheap poll), and ``412`` to a ``PATCH`` whose
  ``If-Match`` is no longer current. Whether a server honours ``If-Match`` is found out once, by
  patching nothing (``{}``) with a version no server has: a ``412`` says it does.
  Requests go through :class:`service.store_client.StoreClient` (deadlines, retries, size and
  depth limits); 401/403 are not retried. A PATCH without ``If-Match`` sets the same keys
  again, so retrying it is safe; one with ``If-Match`` that landed before its answer was lost
  comes back as a conflict, and the caller reads the document to see whose write it holds.
- :class:`service.vault.VaultSecretsStore`: the document as a Vault/OpenBao KV version 2
  secret; its KV version is the version tag, ``cas`` the compare-and-set.
- :class:`FileSecretsStore`: the same document in a 0600 JSON file, for when no secrets API is
  configured. Writes happen under an ``flock``, so compare-and-set is exact even when several
  services share the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from service.errors import ServiceError, unreachable
from service.settings import ServiceSettings
from service.store_client import StoreClient
from skill import statedir
from skill.files import ensure_private_dir, read_settled, write_private
from skill.lock import FlockLock
from skill.outbound import (
    MAX_ANSWER_BYTES,
    MAX_JSON_DEPTH,
    Answer,
    AnswerError,
)

log = logging.getLogger(__name__)

Document = dict[str, Any]
CasMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class Snapshot:
    """The document as read, and the store's version tag for it (None: the store has none)."""

    document: Document
    etag: str | None = None


class SecretsStore(Protocol):
    name: str

    def read(self, *, if_none_match: str | None = None) -> Snapshot | None:
        """The document; None when ``if_none_match`` still names its version."""
        ...

    def write(self, patch: Document, *, if_match: str | None = None) -> str | None:
        """Merge ``patch`` (top-level keys; None deletes one); returns the new version tag if
        the store gives one. With ``if_match``, only if the document is still at that version:
        otherwise ``store_conflict``."""
        ...

    def compare_and_set(self) -> bool:
        """Whether :meth:`write` honours ``if_match``."""
        ...

    def forget_history(self) -> None:
        """Destroy older versions of the document where the store keeps them (after a logout:
        they hold the signed-out credential)."""
        ...


def secrets_store(settings: ServiceSettings, **kwargs: Any) -> SecretsStore:
    """The configured backend: ``secrets_backend``, or by default the secrets API when it has a
    token and the file otherwise."""
    backend = settings.secrets_backend
    if backend == "vault":
        from service.vault import VaultSecretsStore  # noqa: PLC0415 - only its users pay for it

        return VaultSecretsStore.from_settings(settings, **kwargs)
    url, token = settings.secrets_api_url, settings.secrets_api_token
    if url and token and backend in ("http", "auto"):  # the settings insist on both for http
        return HttpSecretsStore(
            url=url,
            token=token,
            timeout=settings.secrets_timeout,
            attempts=settings.secrets_attempts,
            deadline=settings.secrets_deadline,
            cas=settings.secrets_cas,
            max_bytes=settings.answer_max_bytes,
            max_depth=settings.json_max_depth,
            cadata=settings.proxy_ca,
            **kwargs,
        )
    return FileSecretsStore(settings.secrets_file or settings.state_dir / statedir.SECRETS_FILE)


def conflict() -> ServiceError:
    return ServiceError(
        "store_conflict",
        "The stored copy changed while this write was on its way; read it again and retry.",
        status=409,
        transient=True,
    )


class HttpSecretsStore:
    name = "http"

    def __init__(
        self,
        *,
        url: str,
        token: str,
        timeout: float = 10.0,
        attempts: int = 5,
        deadline: float = 30.0,
        cas: CasMode = "auto",
        max_bytes: int = MAX_ANSWER_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
        until: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        cadata: str | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):  # ServiceSettings checks this too
            raise ValueError("the secrets API URL must be an http(s) URL")
        self.url = url
        self.client = StoreClient(
            label="The secrets API", address_hint="CHATGPT_LOGIN_SECRETS_API_URL",
            timeout=timeout, attempts=attempts, deadline=deadline, max_bytes=max_bytes,
            max_depth=max_depth, until=until, sleep=sleep, cadata=cadata,
        )  # fmt: skip
        self._cas: bool | None = {"on": True, "off": False}.get(cas)
        self._token = token

    def read(self, *, if_none_match: str | None = None) -> Snapshot | None:
        headers = {"If-None-Match": if_none_match} if if_none_match else {}
        answer = self._request("GET", headers=headers)
        if answer.status == 304:
            return None
        return Snapshot(answer.body, answer.etag)

    def write(self, patch: Document, *, if_match: str | None = None) -> str | None:
        headers = {"If-Match": if_match} if if_match else {}
        answer = self._request("PATCH", patch, headers=headers)
        if answer.status == 412:
            raise conflict()
        if answer.body.get("ok") is not True:
            raise ServiceError(
                "secrets_rejected",
                'The secrets API did not confirm the write (no "ok": true). It will be retried.',
                status=502,
                transient=True,
            )
        return answer.etag

    def compare_and_set(self) -> bool:
        if self._cas is None:
            # An empty merge patch changes nothing anywhere; only a server that checks If-Match
            # refuses it, since no document is ever at this made-up version.
            probe = f'"chatgpt-login-probe-{secrets.token_hex(8)}"'
            answer = self._request("PATCH", {}, headers={"If-Match": probe})
            self._cas = answer.status == 412
            log.info("secrets API compare-and-set: %s", "yes" if self._cas else "no")
        return self._cas

    def forget_history(self) -> None:
        """The secrets API keeps no older versions."""

    def _request(
        self, method: str, body: Document | None = None, *, headers: dict[str, str]
    ) -> _Answer:
        """The final answer (2xx with a JSON object, 304, 412, or 404 to a GET as an empty
        document)."""
        headers = {**headers, "Authorization": f"Bearer {self._token}",
                   "Accept": "application/json"}  # fmt: skip
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        return self.client.request(
            method, self.url, lambda response: self._judge(method, response), body=data,
            headers=headers,
        )  # fmt: skip

    def _judge(self, method: str, response: Answer) -> _Answer | ServiceError:
        """The answer to return, or the error to retry on; raises what is not retried."""
        status, etag = response.status, response.headers.get("ETag")
        if status in (401, 403):
            raise ServiceError(
                "secrets_forbidden",
                f"The secrets API refused the token (HTTP {status}). Check FAT_TOOLS_TOKEN (or "
                "the secrets_api_token secret).",
                status=502,
            )
        if status in (304, 412) or (status == 404 and method == "GET"):
            return _Answer(status, etag, {})
        if 300 <= status < 400:  # not followed (the token would go along); asking again won't help
            raise ServiceError(
                "secrets_bad_response",
                f"The secrets API answered with a redirect (HTTP {status}), which is not followed. "
                "Check its address (CHATGPT_LOGIN_SECRETS_API_URL): it may need https:// or a "
                "path it moved to.",
                status=502,
            )
        if status == 429 or status >= 500:
            return unreachable(f"HTTP {status}")
        if method != "GET" and 400 <= status < 500 and status != 409:
            # Nothing there takes a write (a wrong path: 404, 405): asking again will not help.
            raise ServiceError(
                "secrets_bad_response",
                f"The secrets API refused the write (HTTP {status}). Check its address "
                "(CHATGPT_LOGIN_SECRETS_API_URL): the path of the secrets API itself, such as "
                "https://tinyfat.com/api/agent/secrets.",
                status=502,
            )
        document = self.client.json(response)
        if isinstance(document, ServiceError):
            return document
        if not isinstance(document, dict):
            return self.client.bad_answer(AnswerError("not a JSON object"), transient=True)
        if method == "GET" and document.get("ok") is False:
            # The API's answers say "ok": true; a read answered "ok": false was refused, and
            # taking it for an empty store would tell the user to sign in again.
            raise ServiceError(
                "secrets_rejected",
                'The secrets API answered the read with "ok": false (refused). Check '
                "FAT_TOOLS_TOKEN (or the secrets_api_token secret) and "
                "CHATGPT_LOGIN_SECRETS_API_URL.",
                status=502,
            )
        return _Answer(status, etag, document)


@dataclass(frozen=True)
class _Answer:
    status: int
    etag: str | None
    body: Document


class FileSecretsStore:
    """The document in a 0600 file; its version is a hash of the file's bytes."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, *, if_none_match: str | None = None) -> Snapshot | None:
        raw, document = self._load()
        etag = _etag(raw)
        return None if if_none_match == etag else Snapshot(document, etag)

    def write(self, patch: Document, *, if_match: str | None = None) -> str | None:
        ensure_private_dir(self.path.parent)
        with FlockLock(self.path):
            raw, document = self._load()
            if if_match is not None and if_match != _etag(raw):
                raise conflict()
            for key, value in patch.items():
                if value is None:
                    document.pop(key, None)
                else:
                    document[key] = value
            data = json.dumps(document, indent=2).encode()
            write_private(self.path, data)
            return _etag(data)

    def compare_and_set(self) -> bool:
        return True

    def forget_history(self) -> None:
        """The file keeps no older versions."""

    def _load(self) -> tuple[bytes, Document]:
        found = read_settled(self.path, json.loads)
        if found is None or not isinstance(found[1], dict):
            return (found[0] if found else b""), {}
        return found[0], found[1]


def _etag(raw: bytes) -> str:
    return '"' + hashlib.sha256(raw).hexdigest()[:20] + '"'
