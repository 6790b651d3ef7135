"""A strict fake of auth.openai.com, served over real HTTP on 127.0.0.1.

Strict where the real issuer is strict (PROTOCOL.md §2-5): PKCE S256 is verified, codes are
single use and short lived, the exchange's redirect_uri must equal the authorize one, the client
id must match, refresh tokens rotate and a used one answers 401 ``refresh_token_reused``.
Device codes stay pending until approved. Plan, expiry and faults are configurable.

``sign_in(url)`` plays the user's browser: it opens the authorize URL and returns the callback
address the browser would land on (and fail to load, in a container).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import ssl
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests import loopback
from tests.canary import MARK, register

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any], *, pi_safe: bool = True) -> str:
    """An unsigned-looking JWT. With ``pi_safe`` the payload's base64url avoids ``-`` and ``_``,
    because pi decodes with ``atob`` and fails on them (PROTOCOL.md §6)."""
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = dict(claims)
    for nonce in range(10_000):
        payload = b64url(json.dumps(body, separators=(",", ":")).encode())
        if not pi_safe or ("-" not in payload and "_" not in payload):
            break
        body["n"] = nonce
    return f"{header}.{payload}.{MARK}{b64url(secrets.token_bytes(32))}"


@dataclass
class Account:
    account_id: str = "acct-1111"
    email: str = "user@example.com"
    plan: str = "plus"
    user_id: str = "user-abc"
    # An OpenAI API organization and project (in the id_token): what the API key exchange needs.
    organization_id: str | None = None
    project_id: str | None = None


@dataclass
class _Code:
    challenge: str
    redirect_uri: str
    client_id: str
    expires: float
    account: Account
    used: bool = False


@dataclass
class _Device:
    user_code: str
    approved: bool = False
    polls: int = 0


@dataclass
class FakeIssuer(loopback.LoopbackFake):
    """Configure the fields, then ``start()``; ``url`` is the issuer base URL."""

    account: Account = field(default_factory=Account)
    expires_in: int = 3600
    code_ttl: float = 60.0
    deny: str | None = None  # e.g. "access_denied" or "missing_codex_entitlement"
    device_enabled: bool = True
    device_interval: str = "1"
    refresh_omits_id_token: bool = False
    pi_safe: bool = True
    # Faults: each entry (status, body) answers the next token-endpoint call instead.
    token_faults: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    token_delay: float = 0.0
    # A hostile token endpoint: "drip" (the answer a byte every 0.5 s), "huge" (300 MB),
    # "nested" (JSON nested 100000 deep).
    token_hostile: str | None = None
    # The API key exchange: the keys handed out, and an answer (status, body) to give instead.
    api_keys: list[str] = field(default_factory=list)
    api_key_fault: tuple[int, dict[str, Any]] | None = None
    # Called with the refresh token before a refresh is processed; an answer it returns is sent
    # instead (for races: "another process won").
    refresh_hook: Any = None

    calls: Counter[str] = field(default_factory=Counter)
    codes: dict[str, _Code] = field(default_factory=dict)
    refresh_tokens: dict[str, Account] = field(default_factory=dict)
    used_refresh_tokens: set[str] = field(default_factory=set)
    revoked: list[str] = field(default_factory=list)
    devices: dict[str, _Device] = field(default_factory=dict)
    issued_access: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _public_url: str | None = None
    client_ssl: ssl.SSLContext | None = None  # how sign_in() trusts an HTTPS issuer

    # Lifecycle -------------------------------------------------------------------------------

    def start(
        self, *, port: int = 0, tls: ssl.SSLContext | None = None, public_url: str | None = None
    ) -> FakeIssuer:
        """Serve on 127.0.0.1:``port``; with ``tls``, over HTTPS, known as ``public_url``
        (for example https://auth.openai.com inside a test network namespace)."""
        self._serve(_Handler, port=port, tls=tls)
        self._public_url = public_url
        return self

    @property
    def url(self) -> str:
        return self._public_url or f"http://127.0.0.1:{self.port}"

    # What a browser and a user do ---------------------------------------------------------------

    def sign_in(self, authorize_url: str) -> str:
        """Open the authorize URL like a browser; return the callback address it redirects to."""
        request = urllib.request.Request(authorize_url)
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if self.client_ssl is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.client_ssl))
        opener = urllib.request.build_opener(*handlers)
        try:
            opener.open(request, timeout=5)
        except urllib.error.HTTPError as exc:
            if exc.code == 302:
                return str(exc.headers["Location"])
            raise AssertionError(f"authorize refused: {exc.code} {exc.read()!r}") from exc
        raise AssertionError("authorize did not redirect")

    def approve_device(self, user_code: str) -> None:
        with self.lock:
            for device in self.devices.values():
                if device.user_code == user_code:
                    device.approved = True
                    return
        raise AssertionError(f"no device attempt with code {user_code}")

    # Tokens --------------------------------------------------------------------------------------

    def issue_tokens(
        self, account: Account, *, include_id: bool = True, expires_in: int | None = None
    ) -> dict[str, Any]:
        now = int(time.time())
        lifetime = self.expires_in if expires_in is None else expires_in
        auth = {
            "chatgpt_account_id": account.account_id,
            "chatgpt_plan_type": account.plan,
            "chatgpt_user_id": account.user_id,
        }
        access = make_jwt(
            {
                "iss": self.url,
                "aud": ["https://api.openai.com/v1"],
                "exp": now + lifetime,
                "iat": now,
                "jti": secrets.token_hex(8),
                AUTH_CLAIM: auth,
                PROFILE_CLAIM: {"email": account.email},
            },
            pi_safe=self.pi_safe,
        )
        refresh = "rt_" + MARK + secrets.token_urlsafe(24)
        self.refresh_tokens[refresh] = account
        self.issued_access.append(access)
        answer: dict[str, Any] = {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": lifetime,
            "token_type": "Bearer",
        }
        if include_id:
            if account.organization_id:
                auth = {**auth, "organization_id": account.organization_id,
                        "project_id": account.project_id}  # fmt: skip
            answer["id_token"] = make_jwt(
                {
                    "iss": self.url,
                    "aud": CLIENT_ID,
                    "exp": now + 3600,
                    "email": account.email,
                    AUTH_CLAIM: auth,
                },
                pi_safe=self.pi_safe,
            )
        return answer

    def seed_refresh_token(
        self, account: Account | None = None, *, expires_in: int | None = None
    ) -> dict[str, Any]:
        """Tokens as if a sign-in had happened earlier (for refresh tests)."""
        with self.lock:
            return self.issue_tokens(account or self.account, expires_in=expires_in)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeIssuer

    def log_message(self, format: str, *args: object) -> None:
        pass

    # Plumbing ------------------------------------------------------------------------------------

    def _send(
        self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _hostile(self, kind: str) -> None:
        if kind == "nested":  # a body no JSON parser should recurse into
            data = b"[" * 100_000 + b"]" * 100_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        size = 300 * 1024 * 1024 if kind == "huge" else 64
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with contextlib.suppress(OSError):
            if kind == "huge":
                for _ in range(size // 65536):
                    self.wfile.write(b" " * 65536)
            else:
                for byte in b'{"access_token": "x", "expires_in": 1}'.ljust(size):
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.5)

    def _body(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if "json" in (self.headers.get("Content-Type") or ""):
            parsed = json.loads(raw or "{}")
            return {k: str(v) for k, v in parsed.items()}
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    # Routes --------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/oauth/authorize":
            self._authorize(parse_qs(parts.query))
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        fake = self.fake
        fake.calls[path] += 1
        body = self._body()
        if path == "/oauth/token":
            if fake.token_hostile:
                self._hostile(fake.token_hostile)
                return
            if fake.token_delay:
                time.sleep(fake.token_delay)
            with fake.lock:
                fault = fake.token_faults.pop(0) if fake.token_faults else None
            if fault:
                self._send(*fault)
                return
            self._token(body)
        elif path == "/oauth/revoke":
            with fake.lock:
                fake.revoked.append(body.get("token", ""))
                fake.refresh_tokens.pop(body.get("token", ""), None)
            self._send(200, {})
        elif path == "/api/accounts/deviceauth/usercode":
            self._usercode(body)
        elif path == "/api/accounts/deviceauth/token":
            self._device_token(body)
        else:
            self._send(404, {"error": "not_found"})

    def _authorize(self, query: dict[str, list[str]]) -> None:
        q = {k: v[0] for k, v in query.items()}
        redirect = q.get("redirect_uri", "")
        target = urlsplit(redirect)
        problems = [
            q.get("client_id") != CLIENT_ID and "client_id",
            q.get("response_type") != "code" and "response_type",
            q.get("code_challenge_method") != "S256" and "code_challenge_method",
            len(q.get("code_challenge", "")) != 43 and "code_challenge",
            not q.get("state") and "state",
            not {"openid", "offline_access"} <= set(q.get("scope", "").split()) and "scope",
            (
                target.scheme != "http"
                or target.hostname not in ("localhost", "127.0.0.1")
                or target.path != "/auth/callback"
            )
            and "redirect_uri",
        ]
        bad = [p for p in problems if p]
        if bad:
            self._send(400, {"error": "invalid_request", "error_description": f"bad {bad}"})
            return
        register(q["state"], "state")
        fake = self.fake
        if fake.deny:
            description = (
                "missing_codex_entitlement"
                if fake.deny == "missing_codex_entitlement"
                else "The user denied access"
            )
            params = {
                "error": "access_denied",
                "error_description": description,
                "state": q["state"],
            }
        else:
            code = "ac_" + MARK + secrets.token_urlsafe(32)
            with fake.lock:
                fake.codes[code] = _Code(
                    q["code_challenge"],
                    redirect,
                    q["client_id"],
                    time.time() + fake.code_ttl,
                    fake.account,
                )
            params = {"code": code, "scope": q["scope"], "state": q["state"]}
        self._send(302, {}, {"Location": f"{redirect}?{urlencode(params)}"})

    def _token(self, body: dict[str, str]) -> None:
        fake = self.fake
        grant = body.get("grant_type")
        fake.calls[f"grant:{grant}"] += 1
        if body.get("client_id") != CLIENT_ID:
            self._send(401, {"error": "invalid_client"})
            return
        with fake.lock:
            if grant == "authorization_code":
                status, answer = self._exchange(body)
            elif grant == "refresh_token":
                status, answer = self._refresh(body)
            elif grant == "urn:ietf:params:oauth:grant-type:token-exchange":
                status, answer = self._api_key(body)
            else:
                status, answer = 400, {"error": "unsupported_grant_type"}
        self._send(status, answer)

    def _exchange(self, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        fake = self.fake
        code = fake.codes.get(body.get("code", ""))
        invalid = (400, {"error": "invalid_grant", "error_description": "bad code"})
        if code is None or code.used:
            return invalid
        code.used = True  # single use, even when the rest of the request is wrong
        verifier = body.get("code_verifier", "")
        register(verifier, "PKCE verifier")
        if (
            time.time() > code.expires
            or body.get("redirect_uri") != code.redirect_uri
            or not 43 <= len(verifier) <= 128
            or b64url(hashlib.sha256(verifier.encode()).digest()) != code.challenge
        ):
            return invalid
        return 200, fake.issue_tokens(code.account)

    def _api_key(self, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The API key exchange (PROTOCOL.md §3): an id_token of an account with an API
        organization and project buys a key; ``api_key_fault`` answers instead when set."""
        fake = self.fake
        if fake.api_key_fault is not None:
            return fake.api_key_fault
        if (
            body.get("requested_token") != "openai-api-key"
            or body.get("subject_token_type") != "urn:ietf:params:oauth:token-type:id_token"
        ):
            return 400, {"error": "invalid_request"}  # fmt: skip
        try:
            claims = json.loads(base64.urlsafe_b64decode(
                body.get("subject_token", "").split(".")[1] + "=="))  # fmt: skip
        except (ValueError, IndexError):
            return 400, {"error": "invalid_grant"}
        if not claims.get(AUTH_CLAIM, {}).get("organization_id"):
            return 401, {"error": {"code": "no_organization", "message": "no organization"}}
        key = "sk-proj-" + MARK + secrets.token_urlsafe(32)
        register(key, "OpenAI API key")
        fake.api_keys.append(key)
        return 200, {"access_token": key}

    def _refresh(self, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        fake = self.fake
        token = body.get("refresh_token", "")
        if fake.refresh_hook is not None:
            answer = fake.refresh_hook(token)
            if answer is not None:
                return answer  # type: ignore[no-any-return]
        if token in fake.used_refresh_tokens:
            fake.calls["refresh_token_reused"] += 1
            return 401, {"error": {"code": "refresh_token_reused", "message": "already used"}}
        account = fake.refresh_tokens.pop(token, None)
        if account is None:
            return 401, {"error": {"code": "refresh_token_invalidated", "message": "unknown"}}
        fake.used_refresh_tokens.add(token)
        return 200, fake.issue_tokens(account, include_id=not fake.refresh_omits_id_token)

    def _usercode(self, body: dict[str, str]) -> None:
        fake = self.fake
        if not fake.device_enabled:
            self._send(404, {"error": "not_found"})
            return
        if body.get("client_id") != CLIENT_ID:
            self._send(401, {"error": "invalid_client"})
            return
        device_id = "dev_" + MARK + secrets.token_hex(8)
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(3).upper()}"
        with fake.lock:
            fake.devices[device_id] = _Device(user_code)
        self._send(
            200,
            {"device_auth_id": device_id, "user_code": user_code, "interval": fake.device_interval},
        )

    def _device_token(self, body: dict[str, str]) -> None:
        fake = self.fake
        with fake.lock:
            device = fake.devices.get(body.get("device_auth_id", ""))
            if device is None or device.user_code != body.get("user_code"):
                self._send(404, {"error": "not_found"})
                return
            device.polls += 1
            if not device.approved:
                self._send(403, {"error": "authorization_pending"})
                return
            del fake.devices[body["device_auth_id"]]
            verifier = b64url(secrets.token_bytes(64))
            challenge = b64url(hashlib.sha256(verifier.encode()).digest())
            code = "ac_" + MARK + secrets.token_urlsafe(32)
            fake.codes[code] = _Code(
                challenge,
                f"{fake.url}/deviceauth/callback",
                CLIENT_ID,
                time.time() + fake.code_ttl,
                fake.account,
            )
        self._send(
            200,
            {"authorization_code": code, "code_challenge": challenge, "code_verifier": verifier},
        )


def main() -> None:
    """Serve the fake issuer for trying the login program by hand:

    python -m tests.fake_issuer [port]
    CHATGPT_LOGIN_ISSUER=http://127.0.0.1:<port> chatgpt-login oauth-login
    Then open the printed link with ``curl -si '<link>' | grep -i ^location`` (the fake signs
    you in at once) and paste the address after ``location:`` into the login program.
    """
    import sys  # noqa: PLC0415

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    fake = FakeIssuer()
    fake._server = ThreadingHTTPServer(("127.0.0.1", port), type("H", (_Handler,), {"fake": fake}))
    print(f"fake issuer on {fake.url}; Ctrl-C to stop", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        fake._server.serve_forever()


if __name__ == "__main__":
    main()
