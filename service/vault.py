"""The document as a Vault/OpenBao KV version 2 secret: versions, check-and-set, a token kept alive.

The store's document is the secret's data at ``<mount>/data/<path>``; its KV version (0 while
there is none) is the version tag. Every write is a check-and-set (``options.cas``) of the
*whole* document: KV v2's own PATCH is a JSON merge patch, which would merge into a stored entry
instead of replacing it, so the document last read (kept with its version) is patched here and
written whole. A write with ``if_match`` fails with ``store_conflict`` when the secret moved on;
one without it reads again and retries. So the refresh lease is exact: of two containers that
read the same version, one write lands.

The token is ``VAULT_TOKEN`` (or the ``vault_token`` secret), or one AppRole logs in for. It is
looked up before first use, renewed when two thirds of its time are gone, and an AppRole token
that cannot be renewed is replaced by a new login; a plain token that runs out says so
(``vault_token_expired``), which ``status`` and ``/readyz`` show until the service is given a
new one and restarted.

Before the first request the mount is looked up: one that is not KV version 2 is refused, since
a KV v1 engine would take our writes as plain data without check-and-set. After a logout the
older versions are destroyed (:meth:`VaultSecretsStore.forget_history`).

Requests go through :class:`service.store_client.StoreClient`: the same deadlines, retries and
size limits as the secrets API. A sealed or standby-lagging Vault (503, 412) is retried; a token
it refuses is not.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.errors import ServiceError, unreachable
from service.secrets import Document, Snapshot, conflict
from service.settings import ServiceSettings
from service.store_client import StoreClient
from skill.outbound import Answer, AnswerError

log = logging.getLogger(__name__)

LABEL = "Vault"
_BLIND_WRITES = 5  # a write without if_match re-reads and retries this often on a race
_RENEW_AT = 2 / 3  # of the token's time to live
_RETRY_RENEW = 30.0  # seconds before trying again when a renewal failed and time remains
_RELOGIN_EVERY = 60.0  # seconds: the most often a refused AppRole token is replaced


@dataclass(frozen=True)
class _Version:
    number: int  # 0: no secret yet
    document: Document


class VaultToken:
    """The token to send, renewed before it runs out (one per process; its threads share it)."""

    def __init__(
        self,
        client: StoreClient,
        addr: str,
        *,
        token: str | None,
        role_id: str | None = None,
        secret_id: str | None = None,
        approle_mount: str = "approle",
        namespace: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.addr, self.namespace = client, addr, namespace
        self._static, self._role = token, (role_id, secret_id) if role_id and secret_id else None
        self._approle_mount = approle_mount
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._logged_in_at = float("-inf")
        self._renewable = False
        self._expires_at: float | None = None  # None: never (or not known)
        self._renew_at: float | None = None

    def headers(self) -> dict[str, str]:
        """The request headers: the token (obtained or renewed first when due), the namespace."""
        with self._lock:
            if self._token is None:
                self._obtain()
            elif self._renew_at is not None and self._clock() >= self._renew_at:
                self._renew()
            assert self._token is not None  # noqa: S101 - _obtain sets it or raises
            token = self._token
        headers = {"X-Vault-Token": token, "X-Vault-Request": "true"}
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        return headers

    @property
    def can_log_in(self) -> bool:
        """Whether a refused token may be replaced by a new login: with AppRole, and not again
        within a minute of the last (a refusal then is a policy, not an old token)."""
        return self._role is not None and self._clock() - self._logged_in_at > _RELOGIN_EVERY

    def forget(self) -> None:
        """Drop the token (Vault refused it): the next request logs in again."""
        with self._lock:
            self._token = None

    def _obtain(self) -> None:
        if self._role is not None:
            self._log_in()
            return
        self._token = self._static
        try:
            data = _object(self._call("GET", "auth/token/lookup-self").get("data"))
            self._schedule(_ttl(data.get("ttl")), bool(data.get("renewable")))
        except ServiceError as exc:
            if exc.code != "secrets_forbidden":
                self._token = None  # looked up again with the next request: it must be renewed
                raise
            # A policy without lookup-self: the token is used as it is, and a refusal later
            # says what is wrong.
            log.info("Vault token: its time to live cannot be looked up; not renewing it")
            self._schedule(0, False)

    def _log_in(self) -> None:
        assert self._role is not None  # noqa: S101 - only called with AppRole set
        role_id, secret_id = self._role
        answer = self._call("POST", f"auth/{self._approle_mount}/login",
                            {"role_id": role_id, "secret_id": secret_id}, login=True)  # fmt: skip
        auth = _object(answer.get("auth"))
        if not isinstance(auth.get("client_token"), str):
            raise _unexpected("an AppRole login answer without a token")
        self._token = auth["client_token"]
        self._logged_in_at = self._clock()
        self._schedule(_ttl(auth.get("lease_duration")), bool(auth.get("renewable")))
        log.info("Vault: logged in with AppRole (token lives %s s)", auth.get("lease_duration"))

    def _renew(self) -> None:
        now = self._clock()
        try:
            if not self._renewable:
                raise _expired("it is not renewable")
            auth = _object(self._call("POST", "auth/token/renew-self", {}).get("auth"))
            ttl = _ttl(auth.get("lease_duration"))
            if self._expires_at is not None and now + ttl <= self._expires_at:
                raise _expired("it reached its maximum time to live")
            self._schedule(ttl, bool(auth.get("renewable")))
            log.info("Vault token renewed (lives %d s)", ttl)
        except ServiceError as exc:
            if self._role is not None:
                self._log_in()
                return
            if self._expires_at is not None and now >= self._expires_at:
                why = ("Vault refused to renew it" if exc.code == "secrets_forbidden"
                       else exc.message)  # fmt: skip
                raise _expired(why) from None
            log.warning("Vault token not renewed (%s); trying again in %.0f s", exc.code,
                        _RETRY_RENEW)  # fmt: skip
            self._renew_at = now + _RETRY_RENEW

    def _schedule(self, ttl: int, renewable: bool) -> None:
        now = self._clock()
        self._renewable = renewable
        if ttl <= 0:  # a token that never expires (a root token)
            self._expires_at = self._renew_at = None
            return
        self._expires_at = now + ttl
        self._renew_at = now + ttl * _RENEW_AT

    def _call(
        self, method: str, path: str, body: Document | None = None, *, login: bool = False
    ) -> dict[str, Any]:
        headers = {"X-Vault-Request": "true"}
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        if not login:
            assert self._token is not None  # noqa: S101 - set before any other call
            headers["X-Vault-Token"] = self._token
        data = None if body is None else json.dumps(body).encode()
        found = self.client.request(
            method, f"{self.addr}/v1/{path}",
            lambda r: _judge(self.client, r, where=path, login=login),
            body=data, headers=headers,
        )  # fmt: skip
        if not isinstance(found, dict):
            raise _unexpected(f"no answer to {path}")
        return found


class VaultSecretsStore:
    """One KV v2 secret as the store's document."""

    name = "vault"

    def __init__(
        self,
        *,
        addr: str,
        token: VaultToken,
        client: StoreClient,
        mount: str = "secret",
        path: str,
        destroy_on_logout: bool = True,
    ) -> None:
        self.client, self.token = client, token
        self._data = f"{addr}/v1/{mount}/data/{path}"
        self._metadata = f"{addr}/v1/{mount}/metadata/{path}"
        self._destroy = f"{addr}/v1/{mount}/destroy/{path}"
        self.mount = mount
        self._capabilities_url = f"{addr}/v1/sys/capabilities-self"
        # What each path needs, as service/vault-policy.hcl grants it.
        self._needs: dict[str, tuple[str, ...]] = {
            f"{mount}/data/{path}": ("create", "read", "update")
        }
        if destroy_on_logout:
            self._needs |= {f"{mount}/metadata/{path}": ("read",),
                            f"{mount}/destroy/{path}": ("update",)}  # fmt: skip
        self._mount_checked = False  # whether the mount was looked at: is it KV version 2?
        self._mount_url = f"{addr}/v1/sys/internal/ui/mounts/{mount}"
        self.destroy_on_logout = destroy_on_logout
        self._lock = threading.Lock()
        self._last: _Version | None = None  # the version last read or written, and its data

    @classmethod
    def from_settings(cls, settings: ServiceSettings, **kwargs: Any) -> VaultSecretsStore:
        assert settings.vault_addr and settings.vault_path  # noqa: S101 - the settings check it
        client = StoreClient(
            label=LABEL, address_hint="VAULT_ADDR", timeout=settings.secrets_timeout,
            attempts=settings.secrets_attempts, deadline=settings.secrets_deadline,
            max_bytes=settings.answer_max_bytes, max_depth=settings.json_max_depth,
            cafile=settings.vault_cacert, cadata=settings.proxy_ca, **kwargs,
        )  # fmt: skip
        token = VaultToken(
            client, settings.vault_addr, token=settings.vault_token,
            role_id=settings.vault_role_id, secret_id=settings.vault_secret_id,
            approle_mount=settings.vault_approle_mount, namespace=settings.vault_namespace,
        )  # fmt: skip
        return cls(addr=settings.vault_addr, token=token, client=client,
                   mount=settings.vault_mount, path=settings.vault_path,
                   destroy_on_logout=settings.vault_destroy_on_logout)  # fmt: skip

    # The store interface ----------------------------------------------------------------------

    def read(self, *, if_none_match: str | None = None) -> Snapshot | None:
        found = self._get()
        if if_none_match is not None and if_none_match == str(found.number):
            return None
        return Snapshot(dict(found.document), str(found.number))

    def write(self, patch: Document, *, if_match: str | None = None) -> str | None:
        for _ in range(1 if if_match is not None else _BLIND_WRITES):
            base = self._base(if_match)
            document = {k: v for k, v in {**base.document, **patch}.items() if v is not None}
            try:
                return str(self._put(document, cas=base.number))
            except ServiceError as exc:
                if exc.code != "store_conflict" or if_match is not None:
                    raise
                with self._lock:
                    self._last = None
        raise conflict()

    def compare_and_set(self) -> bool:
        return True

    def forget_history(self) -> None:
        """Destroy every version but the current one (which holds the tombstone)."""
        if not self.destroy_on_logout:
            return
        data = self._request("GET", self._metadata)
        if data is None:
            return
        meta = _object(data.get("data"))
        current, versions = meta.get("current_version"), _object(meta.get("versions"))
        if not isinstance(current, int) or not isinstance(versions, dict):
            raise _unexpected("a metadata answer without current_version")
        older = sorted(
            int(v) for v, info in versions.items()
            if re.fullmatch(r"[0-9]{1,12}", v) and int(v) < current
            and not _object(info).get("destroyed")
        )  # fmt: skip
        if older:
            self._request("POST", self._destroy, {"versions": older})
            log.info("Vault: destroyed %d older version(s) of the stored copy", len(older))

    def missing_capabilities(self) -> dict[str, list[str]]:
        """What the token's policies lack of what this store does, by path ({} if nothing):
        Vault answers reads under a policy that refuses every write, so a read alone does not
        tell. Asks ``sys/capabilities-self`` (Vault's "default" policy allows it)."""
        answer = self._request("POST", self._capabilities_url, {"paths": list(self._needs)})
        granted = _object(_object(answer).get("data")) or _object(answer)
        missing: dict[str, list[str]] = {}
        for path, needs in self._needs.items():
            has = granted.get(path)
            if not isinstance(has, list):
                raise _unexpected("a capabilities answer without the paths asked about")
            lacking = [] if "root" in has else [c for c in needs if c not in has]
            if lacking:
                missing[path] = lacking
        return missing

    # KV v2 ------------------------------------------------------------------------------------

    def _base(self, if_match: str | None) -> _Version:
        """The version to write over: the last one seen if it is the one asked for."""
        with self._lock:
            last = self._last
        if last is not None and (if_match is None or if_match == str(last.number)):
            return last
        found = self._get()
        if if_match is not None and if_match != str(found.number):
            raise conflict()
        return found

    def _get(self) -> _Version:
        data = self._request("GET", self._data)
        found = _Version(0, {}) if data is None else _parse_read(data)
        with self._lock:
            self._last = found
        return found

    def _put(self, document: Document, *, cas: int) -> int:
        data = self._request("POST", self._data, {"options": {"cas": cas}, "data": document})
        version = _object(_object(data).get("data")).get("version")
        if not isinstance(version, int):
            raise _not_kv2(self.mount)
        with self._lock:
            self._last = _Version(version, document)
        return version

    def _request(self, method: str, url: str, body: Document | None = None) -> Any:
        """The answer's JSON (None for a 404 that means "no secret" or a deleted latest
        version); an AppRole token Vault refuses is replaced once."""
        data = None if body is None else json.dumps(body).encode()
        where = url.split("/v1/", 1)[1]  # the path refused, if it is: data, metadata or destroy
        for attempt in (1, 2):
            headers = {**self.token.headers(), "Accept": "application/json"}
            if not self._mount_checked:
                self._check_mount(headers)
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                return self.client.request(
                    method, url,
                    lambda r: _judge(self.client, r, where=where, mount=self.mount),
                    body=data, headers=headers,
                )  # fmt: skip
            except ServiceError as exc:
                if exc.code == "secrets_forbidden" and self.token.can_log_in and attempt == 1:
                    self.token.forget()
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_mount(self, headers: dict[str, str]) -> None:
        """Refuse a mount that is not KV version 2 before anything is written to it: a KV v1
        engine would take our writes as plain data, without check-and-set. Vault answers this
        for any token with a capability under the mount; a refusal leaves it to the writes."""
        try:
            found = self.client.request(
                "GET", self._mount_url, lambda r: _lenient(self.client, r), headers=headers
            )
        except ServiceError as exc:
            if exc.code != "secrets_unreachable":
                raise
            return  # asked again with the next request
        mount = _object(_object(found).get("data"))
        version = str(_object(mount.get("options")).get("version") or "1")
        if mount.get("type") in ("kv", "generic") and version != "2":
            raise _not_kv2(self.mount)  # and again at every request: nothing goes there
        self._mount_checked = True


def _lenient(client: StoreClient, response: Answer) -> Any | ServiceError:
    """The mount lookup's JSON, or {} for an answer that says nothing (403, 404, not JSON)."""
    if response.status == 429 or response.status >= 500:
        return unreachable(f"HTTP {response.status}", LABEL)
    parsed = client.json(response) if response.status == 200 else {}
    return parsed if isinstance(parsed, dict) else {}


def _ttl(value: Any) -> int:
    """A time to live in seconds as Vault gives it, checked (ten years at most)."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10 * 365 * 86400:
        raise _unexpected("a token answer with an unusable time to live")
    return value


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _parse_read(answer: Any) -> _Version:
    data = answer.get("data") if isinstance(answer, dict) else None
    meta = data.get("metadata") if isinstance(data, dict) else None
    version = meta.get("version") if isinstance(meta, dict) else None
    document = data.get("data") if isinstance(data, dict) else None
    if not isinstance(version, int) or not isinstance(document, dict | None):
        raise _unexpected("a read answer without data and metadata.version")
    return _Version(version, document or {})


def _judge(
    client: StoreClient,
    response: Answer,
    *,
    where: str,
    mount: str | None = None,
    login: bool = False,
) -> Any | ServiceError:
    """What an answer means: its JSON (None for "no such secret"), or the error to retry on;
    raises what is not retried."""
    status = response.status
    if 200 <= status < 300:
        if status == 204 or not response.body:
            return {}
        parsed = client.json(response)
        if not isinstance(parsed, ServiceError | dict):
            return client.bad_answer(AnswerError("not a JSON object"), transient=True)
        return parsed
    if status in (412, 429) or status >= 500:  # 412: a standby not caught up yet
        sealed = "sealed" in _errors(client, response)
        return unreachable("it is sealed" if sealed else f"HTTP {status}", LABEL)
    errors = _errors(client, response)
    if status == 404:
        if "no handler for route" in errors:
            raise _not_kv2(mount or where.split("/", 1)[0])
        parsed = client.json(response)
        if isinstance(parsed, dict) and isinstance(_object(parsed.get("data")).get("metadata"),
                                                     dict):  # fmt: skip
            return parsed  # the latest version was deleted: its metadata, no data
        return None
    if status == 400 and "check-and-set" in errors:
        raise conflict()
    if 300 <= status < 400:  # a standby that redirects instead of forwarding
        raise ServiceError(
            "secrets_rejected",
            f"Vault answered with a redirect (HTTP {status}), which is not followed (the token "
            "would go along). Point VAULT_ADDR at the active node or at a load balancer.",
            status=502,
        )
    if status in (400, 401, 403) and login:
        raise ServiceError("secrets_forbidden", f"Vault refused the AppRole login at {where} "
                           f"(HTTP {status}). Check the vault_role_id and vault_secret_id "
                           "secrets, and CHATGPT_LOGIN_VAULT_APPROLE_MOUNT.",
                           status=502)  # fmt: skip
    if status in (401, 403):
        raise ServiceError(
            "secrets_forbidden",
            f"Vault refused the token for {where} (HTTP {status}). Check VAULT_TOKEN (or the "
            "vault_token secret) and that its policy allows that path (as "
            "service/vault-policy.hcl does): `chatgpt-login doctor` names what the policy lacks.",
            status=502,
        )
    raise ServiceError(
        "secrets_rejected",
        f"Vault refused the request (HTTP {status}: {errors[:120] or 'no reason given'}). "
        "Check the Vault settings (CHATGPT_LOGIN_VAULT_MOUNT, CHATGPT_LOGIN_VAULT_PATH).",
        status=502,
    )


def _errors(client: StoreClient, response: Answer) -> str:
    """Vault's error strings, printable and on one line (they never hold our data)."""
    parsed = client.json(response) if response.body else None
    found = parsed.get("errors") if isinstance(parsed, dict) else None
    if not isinstance(found, list):
        return ""
    text = "; ".join(str(e) for e in found if isinstance(e, str))
    text = "".join(c if c.isprintable() else " " for c in text)
    # Quoted to the user: a server that echoes what it was sent must not put a token there.
    return re.sub(r"[A-Za-z0-9_.+/=-]{16,}", "[...]", text)


def _not_kv2(mount: str) -> ServiceError:
    return ServiceError(
        "secrets_rejected",
        f"Vault has no KV version 2 secrets engine at {mount}/. Enable one (`bao secrets enable "
        f"-version=2 -path={mount} kv`) or set CHATGPT_LOGIN_VAULT_MOUNT to the path of one.",
        status=502,
    )


def _unexpected(what: str) -> ServiceError:
    return ServiceError(
        "secrets_bad_response",
        f"Vault sent {what}. Check that VAULT_ADDR points at Vault or OpenBao.",
        status=502,
    )


def _expired(why: str) -> ServiceError:
    return ServiceError(
        "vault_token_expired",
        f"The Vault token could not be renewed ({why}) and has run out. Give the service a new "
        "one (VAULT_TOKEN or the vault_token secret) or AppRole credentials, then restart it.",
        status=502,
    )
