"""The OAuth client against the strict fake issuer over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from skill.authorize import authorize_url, redirect_uri
from skill.claims import Claims, decode_jwt_payload
from skill.credentials import Credential
from skill.errors import SkillError
from skill.oauth import OAuthClient
from skill.pkce import Pkce, challenge_for, new_state
from skill.settings import Settings
from skill.tokens import TokenSet
from tests.conftest import free_port, wait_until
from tests.fake_issuer import FakeIssuer, make_jwt
from tests.fault_proxy import FaultProxy


@pytest.fixture
def client(settings: Settings) -> Iterator[OAuthClient]:
    with OAuthClient(settings) as oauth:
        yield oauth


def sign_in(issuer: FakeIssuer, settings: Settings) -> tuple[str, Pkce, str]:
    pkce, state = Pkce(), new_state()
    redirect = redirect_uri(settings, settings.callback_ports[0])
    callback = issuer.sign_in(authorize_url(settings, pkce=pkce, state=state, redirect=redirect))
    query = parse_qs(urlsplit(callback).query)
    assert query["state"] == [state]
    return query["code"][0], pkce, redirect


def test_pkce_and_state_shapes() -> None:
    pkce = Pkce()
    assert 43 <= len(pkce.verifier) <= 128
    assert pkce.challenge == challenge_for(pkce.verifier)
    # Independent computation: standard base64 of SHA-256, made URL-safe by hand.
    digest = hashlib.sha256(pkce.verifier.encode()).digest()
    expected = base64.b64encode(digest).decode().replace("+", "-").replace("/", "_").rstrip("=")
    assert pkce.challenge == expected and len(expected) == 43
    assert len(new_state()) == 43 and new_state() != new_state()
    assert "verifier" not in repr(pkce) or "<hidden>" in repr(pkce)


def test_authorize_url_has_every_parameter(settings: Settings) -> None:
    pkce = Pkce()
    url = authorize_url(
        settings, pkce=pkce, state="s" * 43, redirect="http://localhost:1455/auth/callback"
    )
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.path == "/oauth/authorize"
    assert query == {
        "response_type": "code",
        "client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
        "redirect_uri": "http://localhost:1455/auth/callback",
        "scope": "openid profile email offline_access",
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "state": "s" * 43,
        "id_token_add_organizations": "true",
        "codex_cli_simplified_flow": "true",
        "originator": "codex_cli_rs",
    }


def test_exchange_then_claims(issuer: FakeIssuer, settings: Settings, client: OAuthClient) -> None:
    code, pkce, redirect = sign_in(issuer, settings)
    tokens = client.exchange_code(code=code, verifier=pkce.verifier, redirect_uri=redirect)
    claims = Claims.from_tokens(access_token=tokens.access_token, id_token=tokens.id_token)
    assert claims.account_id == "acct-1111"
    assert claims.plan_type == "plus"
    assert claims.email == "user@example.com"
    assert claims.expires_at is not None and claims.expires_at.timestamp() > time.time() + 3000
    assert "access_token" not in repr(tokens) or tokens.access_token not in repr(tokens)


@pytest.mark.parametrize("mistake", ["verifier", "redirect", "reuse"])
def test_exchange_is_strict(
    issuer: FakeIssuer, settings: Settings, client: OAuthClient, mistake: str
) -> None:
    code, pkce, redirect = sign_in(issuer, settings)
    verifier = Pkce().verifier if mistake == "verifier" else pkce.verifier
    uri = redirect.replace("localhost", "127.0.0.1") if mistake == "redirect" else redirect
    if mistake == "reuse":
        client.exchange_code(code=code, verifier=verifier, redirect_uri=uri)
    with pytest.raises(SkillError) as caught:
        client.exchange_code(code=code, verifier=verifier, redirect_uri=uri)
    assert caught.value.code == "code_rejected"
    assert code not in caught.value.message


def test_expired_code_is_rejected(
    issuer: FakeIssuer, settings: Settings, client: OAuthClient
) -> None:
    issuer.code_ttl = 0.0
    code, pkce, redirect = sign_in(issuer, settings)
    with pytest.raises(SkillError, match="expires within minutes") as caught:
        client.exchange_code(code=code, verifier=pkce.verifier, redirect_uri=redirect)
    assert caught.value.kind == "user"


def test_refresh_rotates_and_reuse_is_permanent(issuer: FakeIssuer, client: OAuthClient) -> None:
    first = issuer.seed_refresh_token()
    fresh = client.refresh(first["refresh_token"])
    assert fresh.refresh_token and fresh.refresh_token != first["refresh_token"]
    with pytest.raises(SkillError) as caught:
        client.refresh(first["refresh_token"])
    assert caught.value.code == "refresh_token_reused"
    assert caught.value.permanent and caught.value.exit_code == 5


def test_refresh_keeps_fields_the_answer_omits(issuer: FakeIssuer, client: OAuthClient) -> None:
    issuer.refresh_omits_id_token = True
    seeded = issuer.seed_refresh_token()
    old = Credential.from_tokens(TokenSet.model_validate(seeded))
    answer = client.refresh(old.refresh_token)
    assert answer.id_token is None
    new = Credential.from_tokens(answer, previous=old)
    assert new.id_token == old.id_token
    assert new.refresh_token != old.refresh_token
    assert new.account_id == old.account_id
    no_refresh = TokenSet(access_token=answer.access_token, expires_in=60)
    assert Credential.from_tokens(no_refresh, previous=new).refresh_token == new.refresh_token


@pytest.mark.parametrize(
    ("status", "body", "code", "kind"),
    [
        (
            401,
            {"error": {"code": "refresh_token_expired", "message": "x"}},
            "refresh_token_expired",
            "permanent",
        ),
        (
            401,
            {"error": {"code": "refresh_token_invalidated"}},
            "refresh_token_invalidated",
            "permanent",
        ),
        (400, {"error": "invalid_grant"}, "invalid_grant", "permanent"),
        (401, {"error": "something_else"}, "refresh_rejected", "permanent"),
        (400, {"error": "temporarily_unavailable"}, "server_error", "transient"),
        (500, {}, "server_error", "transient"),
        (503, {}, "server_error", "transient"),
        (429, {}, "rate_limited", "transient"),
    ],
)
def test_refresh_errors_are_classified(
    issuer: FakeIssuer,
    client: OAuthClient,
    status: int,
    body: dict[str, object],
    code: str,
    kind: str,
) -> None:
    seeded = issuer.seed_refresh_token()
    issuer.token_faults.append((status, body))
    with pytest.raises(SkillError) as caught:
        client.refresh(seeded["refresh_token"])
    assert (caught.value.code, caught.value.kind) == (code, kind)
    assert seeded["refresh_token"] not in caught.value.message


def test_a_response_timeout_is_never_retried(issuer: FakeIssuer, settings: Settings) -> None:
    """A code (or refresh token) the server may have seen must not be sent twice."""
    code, pkce, redirect = sign_in(issuer, settings)
    issuer.token_delay = 1.5
    quick = settings.model_copy(update={"read_timeout": 0.3})
    with OAuthClient(quick) as client, pytest.raises(SkillError) as caught:
        client.exchange_code(code=code, verifier=pkce.verifier, redirect_uri=redirect)
    assert caught.value.code == "response_timeout"
    wait_until(lambda: issuer.calls["grant:authorization_code"] == 1, what="the one exchange")
    time.sleep(1.6)  # let the slow answer finish, then prove no second request came
    assert issuer.calls["grant:authorization_code"] == 1


def test_connect_failures_are_retried_then_reported(settings: Settings) -> None:
    dead = settings.model_copy(update={"issuer": f"http://127.0.0.1:{free_port()}"})
    sleeps: list[float] = []
    with OAuthClient(dead, sleep=sleeps.append) as client, pytest.raises(SkillError) as caught:
        client.refresh("rt_x")
    assert caught.value.code == "network_error"
    assert len(sleeps) == 2  # three attempts, backoff between them
    assert "HTTPS_PROXY" in caught.value.message


def test_connect_failure_then_success(issuer: FakeIssuer, settings: Settings) -> None:
    """The first connection is refused (nothing listens); during the backoff the proxy in front
    of the issuer comes back, and the second attempt gets the tokens. Nothing reached the issuer
    twice: only a request that never left is sent again."""
    proxy = FaultProxy(upstream_port=urlsplit(issuer.url).port or 80).start()
    try:
        proxy.stop()
        slept: list[float] = []

        def come_back(seconds: float) -> None:
            slept.append(seconds)
            proxy.start()

        via_proxy = settings.model_copy(update={"issuer": proxy.url})
        seeded = issuer.seed_refresh_token()
        with OAuthClient(via_proxy, sleep=come_back) as client:
            assert client.refresh(seeded["refresh_token"]).access_token
        assert len(slept) == 1 and issuer.calls["/oauth/token"] == 1
    finally:
        proxy.stop()


def test_a_connection_that_breaks_after_sending_is_not_sent_again(
    issuer: FakeIssuer, settings: Settings
) -> None:
    """A refresh token rotates on use: once the request may have reached the issuer, it is
    never sent a second time (the answer is lost: a network error, not a retry)."""
    proxy = FaultProxy(upstream_port=urlsplit(issuer.url).port or 80, faults=["truncate"]).start()
    try:
        via_proxy = settings.model_copy(update={"issuer": proxy.url})
        seeded = issuer.seed_refresh_token()
        with (
            OAuthClient(via_proxy, sleep=lambda _: None) as client,
            pytest.raises(SkillError) as caught,
        ):
            client.refresh(seeded["refresh_token"])
        assert caught.value.code == "network_error"
        assert proxy.seen == ["truncate"] and issuer.calls["/oauth/token"] == 1
    finally:
        proxy.stop()


class _Canned(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's ``canned`` (content type, body)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        kind, body = self.server.canned  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned(settings: Settings) -> Iterator[tuple[http.server.ThreadingHTTPServer, Settings]]:
    """A real HTTP issuer on loopback that answers what the test puts in ``server.canned``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield (
            server,
            settings.model_copy(update={"issuer": f"http://127.0.0.1:{server.server_address[1]}"}),
        )
    finally:
        server.shutdown()
        server.server_close()


def test_refresh_accepts_a_form_encoded_answer(
    canned: tuple[http.server.ThreadingHTTPServer, Settings],
) -> None:
    server, settings = canned
    access = make_jwt(
        {"exp": int(time.time()) + 60, "https://api.openai.com/auth": {"chatgpt_account_id": "a"}}
    )
    server.canned = ("application/x-www-form-urlencoded",  # type: ignore[attr-defined]
                     f"access_token={access}&refresh_token=rt_new&expires_in=60")  # fmt: skip
    with OAuthClient(settings) as client:
        answer = client.refresh("rt_old")
    assert (answer.access_token, answer.refresh_token, answer.expires_in) == (access, "rt_new", 60)


@pytest.mark.parametrize(
    "body",
    ["not json", "[]", '{"access_token": ""}', '{"access_token": "x", "expires_in": "soon"}'],
)
def test_malformed_answers_are_invalid_response(
    canned: tuple[http.server.ThreadingHTTPServer, Settings], body: str
) -> None:
    server, settings = canned
    server.canned = ("application/json", body)  # type: ignore[attr-defined]
    with OAuthClient(settings) as client, pytest.raises(SkillError) as caught:
        client.refresh("rt_x")
    assert caught.value.code == "invalid_response"


def test_loopback_is_never_proxied(
    issuer: FakeIssuer, client: OAuthClient, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    seeded = issuer.seed_refresh_token()
    with OAuthClient(settings) as proxied_env:
        assert proxied_env.refresh(seeded["refresh_token"]).access_token


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
def test_other_hosts_go_through_the_environment_proxy(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, variable: str
) -> None:
    """As curl reads them: the scheme's own proxy, or ALL_PROXY where that is not set."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"error": "invalid_grant"}).encode()
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.server_address[1]}")
    remote = settings.model_copy(update={"issuer": "http://auth.example.test"})
    try:
        with OAuthClient(remote) as client, pytest.raises(SkillError) as caught:
            client.refresh("rt_x")
    finally:
        proxy.shutdown()
    assert caught.value.code == "invalid_grant"
    assert seen == ["http://auth.example.test/oauth/token"]


def test_revoke(issuer: FakeIssuer, client: OAuthClient) -> None:
    seeded = issuer.seed_refresh_token()
    client.revoke(seeded["refresh_token"])
    assert issuer.revoked == [seeded["refresh_token"]]
    with pytest.raises(SkillError) as caught:
        client.refresh(seeded["refresh_token"])
    assert caught.value.permanent


def test_device_flow_pending_then_approved(issuer: FakeIssuer, client: OAuthClient) -> None:
    issuer.device_interval = "1"
    device = client.request_device_code()
    assert device.interval == 1.0 and device.verification_url.endswith("/codex/device")
    approver = threading.Thread(
        target=lambda: (
            wait_until(lambda: issuer.calls["/api/accounts/deviceauth/token"] >= 2),
            issuer.approve_device(device.user_code),
        )
    )
    approver.start()
    grant = client.wait_for_device_approval(device, timeout=20)
    approver.join()
    tokens = client.exchange_device_grant(grant)
    assert Claims.from_tokens(access_token=tokens.access_token).account_id == "acct-1111"


def test_device_flow_expires(issuer: FakeIssuer, client: OAuthClient) -> None:
    device = client.request_device_code()
    with pytest.raises(SkillError) as caught:
        client.wait_for_device_approval(device, timeout=0.5)
    assert caught.value.code == "device_code_expired"


def test_device_flow_can_be_canceled(issuer: FakeIssuer, client: OAuthClient) -> None:
    device = client.request_device_code()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SkillError) as caught:
        client.wait_for_device_approval(device, timeout=30, cancel=cancel)
    assert caught.value.code == "canceled"


def test_device_flow_disabled(issuer: FakeIssuer, client: OAuthClient) -> None:
    issuer.device_enabled = False
    with pytest.raises(SkillError) as caught:
        client.request_device_code()
    assert caught.value.code == "device_auth_disabled"


def test_jwt_payload_with_url_safe_characters_decodes() -> None:
    """pi's atob fails on '-' and '_'; ours must not."""
    token = make_jwt(
        {"https://api.openai.com/auth": {"chatgpt_account_id": "??>>??"}}, pi_safe=False
    )
    payload = token.split(".")[1]
    assert "-" in payload or "_" in payload
    assert (
        decode_jwt_payload(token)["https://api.openai.com/auth"]["chatgpt_account_id"] == "??>>??"
    )


@pytest.mark.parametrize("bad", ["", "a.b", "a.!!!.c", "a.W10.c"])
def test_bad_jwts_are_reported(bad: str) -> None:
    with pytest.raises(SkillError) as caught:
        decode_jwt_payload(bad)
    assert caught.value.code == "credentials_invalid"


@pytest.mark.parametrize(
    ("kind", "code"),
    [("drip", "response_timeout"), ("huge", "invalid_response"), ("nested", "invalid_response")],
)
def test_a_hostile_token_answer_is_cut_off(
    settings: Settings, issuer: FakeIssuer, kind: str, code: str
) -> None:
    """An answer sent a byte at a time ends at the deadline, not at the last byte; one too big
    or too deep is refused as soon as that is seen; each with its own code, no traceback."""
    issuer.token_hostile = kind
    quick = settings.model_copy(update={"request_deadline": 2.0})
    started = time.monotonic()
    with pytest.raises(SkillError) as caught, OAuthClient(quick) as client:
        client.refresh("rt_any")
    assert caught.value.code == code, caught.value.message
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "proxy",
    ["http://user:proxy-pw-canary-3b8e@127.0.0.1:notaport", "socks5://127.0.0.1:1080",
     "ftp://127.0.0.1:21", "https://user:proxy-pw-canary-3b8e@127.0.0.1:3128",
     "http:/user:proxy-pw-canary-3b8e@127.0.0.1:3128", "http:user:proxy-pw-canary-3b8e@host"],
)  # fmt: skip
def test_a_proxy_it_cannot_use_is_a_setting_to_fix(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, proxy: str
) -> None:
    """The issuer's client and the secrets store's say so alike (they are one client)."""
    from service.store_client import StoreClient  # noqa: PLC0415

    monkeypatch.setenv("HTTPS_PROXY", proxy)
    store = {"label": "The secrets API", "address_hint": "secrets_api_url"}
    for make in (lambda: OAuthClient(settings), lambda: StoreClient(**store)):
        with pytest.raises(SkillError) as caught:
            make()
        assert caught.value.code == "invalid_setting" and "HTTPS_PROXY" in caught.value.message
        assert "proxy-pw-canary" not in caught.value.message
