"""One credential, many containers: real services sharing one stored copy, 20-second tokens.

Each container is a real ``chatgpt-login serve`` (tests/fleet.py) with its own home, state
directory, port and holder id. Three kinds of store: the seed's API, which has no
compare-and-set (``seed``), our reference server, which has (``cas``), and a real OpenBao
server's KV version 2 (``vault``), whose check-and-set makes the lease exact.

What is counted (``scripts/reliability.py`` runs these at full size and reports the lines they
print): refresh tokens presented twice (``refresh_token_reused``, must be 0), samples in which a
container says it needs a new sign-in (0), the share of 1-second samples in which each
container's pi file holds a refresh token the issuer still takes (at least 99%), and issuer
refreshes against the half-life schedule's bound (two per token lifetime, plus one).

Sizes come from the environment so that CI runs a short mode: ``FLEET_SIZES`` (default 3),
``FLEET_SECONDS`` (30), ``FLEET_OVERLAPS`` (2 rolling restarts); the main test runs against
every store, and each of the others against one unless ``FLEET_ALL_STORES=1`` (the full runs).
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.secrets import HttpSecretsStore, SecretsStore, secrets_store
from service.settings import ServiceSettings
from tests.conftest import wait_until
from tests.fake_issuer import FakeIssuer
from tests.fake_secrets import FakeSecretsAPI
from tests.fault_proxy import FaultProxy
from tests.fleet import Fleet, ReferenceStore, http_store_env, seed_store, vault_store_env
from tests.openbao import OpenBao

pytestmark = pytest.mark.slow

LIFETIME = 20  # seconds an access token lives
DEAD_LIMIT = 2.5  # seconds a container may hold a rotated-away token: a store poll (1 s) and more
SIZES = [int(n) for n in os.environ.get("FLEET_SIZES", "3").split(",")]
SECONDS = float(os.environ.get("FLEET_SECONDS", "30"))
OVERLAPS = int(os.environ.get("FLEET_OVERLAPS", "2"))
ALL_STORES = os.environ.get("FLEET_ALL_STORES") == "1"


STORES = ["seed", "cas", "vault"]


def stores(default: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("store", STORES if ALL_STORES else [default], indirect=True)


@dataclass
class Store:
    """A store the fleet shares: how a container reaches it (``env``, or ``env_via`` a proxy
    in front of ``port``) and a client of our own to seed and read it."""

    mode: str
    env: dict[str, str]
    port: int
    client: SecretsStore

    def env_via(self, proxy_url: str) -> dict[str, str]:
        raise NotImplementedError

    def document(self) -> dict[str, object]:
        found = self.client.read()
        assert found is not None
        return found.document


class SeedStore(Store):
    def __init__(self, api: FakeSecretsAPI) -> None:
        client = HttpSecretsStore(url=api.url, token=api.token, cas="off")
        port = int(api.url.split(":")[2].split("/")[0])
        super().__init__("seed", http_store_env(api.url, api.token), port, client)
        self.api = api

    def env_via(self, proxy_url: str) -> dict[str, str]:
        return http_store_env(f"{proxy_url}/api/agent/secrets", self.api.token)


class CasStore(Store):
    def __init__(self, server: ReferenceStore) -> None:
        client = HttpSecretsStore(url=server.url, token=server.token)
        super().__init__("cas", http_store_env(server.url, server.token), server.port, client)
        self.server = server

    def env_via(self, proxy_url: str) -> dict[str, str]:
        return http_store_env(f"{proxy_url}/api/agent/secrets", self.server.token)


class VaultStore(Store):
    """A path of its own in the session's real OpenBao server (KV v2, check-and-set)."""

    def __init__(self, bao: OpenBao, tmp_path: Path) -> None:
        self.bao, self.path = bao, f"chatgpt-login/fleet-{secrets.token_hex(4)}"
        client = secrets_store(ServiceSettings(
            state_dir=tmp_path / "vault-client", secrets_backend="vault", vault_addr=bao.addr,
            vault_token=bao.root, vault_path=self.path,
        ))  # fmt: skip
        super().__init__("vault", vault_store_env(bao.addr, bao.root, self.path), bao.port,
                         client)  # fmt: skip

    def env_via(self, proxy_url: str) -> dict[str, str]:
        return vault_store_env(proxy_url, self.bao.root, self.path)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path, api: FakeSecretsAPI) -> Iterator[Store]:
    if request.param == "seed":
        yield SeedStore(api)
        return
    if request.param == "vault":
        yield VaultStore(request.getfixturevalue("openbao"), tmp_path)
        return
    server = ReferenceStore(tmp_path)
    try:
        yield CasStore(server)
    finally:
        server.stop()


@pytest.fixture
def fleet(issuer: FakeIssuer, store: Store) -> Iterator[Fleet]:
    issuer.expires_in = LIFETIME
    seed_store(issuer, store.client)
    running = Fleet(issuer, store.env)
    try:
        yield running
    finally:
        running.stop()


def start(fleet: Fleet, count: int) -> None:
    for _ in range(count):
        fleet.add().start()
    for container in fleet.containers:
        container.wait_up()


def stored_refresh(store: Store) -> str | None:
    entry = store.document().get("codex_credentials")
    return str(entry["refresh"]) if isinstance(entry, dict) else None


@pytest.mark.parametrize("size", SIZES)
def test_one_credential_many_containers(
    fleet: Fleet, store: Store, issuer: FakeIssuer, size: int
) -> None:
    started = time.monotonic()  # the stored token was issued just now
    start(fleet, size)
    fleet.run_for(SECONDS - (time.monotonic() - started))
    elapsed = time.monotonic() - started
    refreshes = issuer.calls["grant:refresh_token"]
    fleet.stop()
    live = {c.name: fleet.live_ratio(c.name) for c in fleet.containers}
    live_1s = {c.name: fleet.live_ratio(c.name, every=1.0) for c in fleet.containers}
    dead = {c.name: fleet.longest_dead(c.name) for c in fleet.containers}
    bound = 2 * elapsed / LIFETIME + 1
    print(
        f"\nFLEET mode={store.mode} containers={size} seconds={elapsed:.0f} "
        f"refreshes={refreshes} bound={bound:.1f} reused={issuer.calls['refresh_token_reused']} "
        f"relogin_samples={fleet.relogin_samples()} samples={len(fleet.samples)} "
        f"live_min={min(live.values()):.4f} live_1s={min(live_1s.values()):.4f} "
        f"longest_dead={max(dead.values()):.2f}s"
    )
    assert issuer.calls["refresh_token_reused"] == 0
    assert fleet.relogin_samples() == 0
    # Every rotation reaches every container within DEAD_LIMIT (a store poll and a write, with
    # room for a loaded machine); over a run long enough for the share to mean something,
    # each holds a live token in 99% of the 50 ms samples (issue 14 asks 99% of 1 s samples).
    assert all(seconds <= DEAD_LIMIT for seconds in dead.values()), dead
    if elapsed >= 120:
        assert all(ratio >= 0.99 for ratio in live.values()), live
    assert refreshes <= bound, f"{refreshes} refreshes in {elapsed:.0f} s"
    assert refreshes >= elapsed // LIFETIME, "the credential was kept alive"


@stores("cas")
def test_rolling_restarts(fleet: Fleet, store: Store, issuer: FakeIssuer) -> None:
    """A new container restores while the old one keeps refreshing, then the old one stops."""
    rng = random.Random(1455)  # noqa: S311 - overlap lengths, not cryptography
    old = fleet.add()
    old.start()
    old.wait_up()
    for _ in range(OVERLAPS):
        new = fleet.add()
        new.start()  # restore, then serve, beside the old one
        new.wait_up()
        fleet.run_for(rng.uniform(2, LIFETIME / 2 + 2))  # often across a refresh
        old.stop()
        old = new
    fleet.run_for(LIFETIME / 2 + 2)  # the last one renews alone
    survivor = old.refresh_token()
    print(
        f"\nROLLING mode={store.mode} overlaps={OVERLAPS} "
        f"refreshes={issuer.calls['grant:refresh_token']} "
        f"reused={issuer.calls['refresh_token_reused']} relogin_samples={fleet.relogin_samples()} "
        f"lost={int(survivor not in issuer.refresh_tokens)}"
    )
    assert issuer.calls["refresh_token_reused"] == 0
    assert fleet.relogin_samples() == 0
    assert survivor in issuer.refresh_tokens, "the credential was lost"
    assert stored_refresh(store) == survivor


@stores("seed")
def test_a_partitioned_container_adopts_on_return(
    fleet: Fleet, store: Store, issuer: FakeIssuer
) -> None:
    """Cut off from the store for two token lifetimes, a container spends nothing (the others
    rotate meanwhile) and adopts the current copy once the store answers again."""
    proxy = FaultProxy(upstream_port=store.port).start()
    try:
        start(fleet, 2)
        cut = fleet.add(store_env=store.env_via(proxy.url))
        cut.start()
        cut.wait_up()
        fleet.run_for(2)
        proxy.down_for(2 * LIFETIME)
        fleet.run_for(2 * LIFETIME)
        returned = time.monotonic()
        wait_until(lambda: cut.refresh_token() == stored_refresh(store), 20, "the adoption")
        adopted_after = time.monotonic() - returned
        fleet.run_for(LIFETIME / 2 + 2)  # and it goes on with the others
    finally:
        proxy.stop()
    print(
        f"\nPARTITION mode={store.mode} seconds={2 * LIFETIME} "
        f"reused={issuer.calls['refresh_token_reused']} relogin_samples={fleet.relogin_samples()} "
        f"adopted_after={adopted_after:.1f}s"
    )
    assert issuer.calls["refresh_token_reused"] == 0
    assert fleet.relogin_samples() == 0
    assert all(fleet.samples[-1].live.values()), fleet.samples[-1]


@stores("cas")
def test_logout_in_one_container_signs_out_every_one(
    fleet: Fleet, store: Store, issuer: FakeIssuer
) -> None:
    start(fleet, 4)
    fleet.run_for(2)
    # Every one holds the stored copy before the logout: in one CI run the first container had
    # none yet and its logout found the store unreachable (why is not known; a failure now
    # shows its log).
    wait_until(lambda: all(c.refresh_token() for c in fleet.containers), 20,
               "every container signed in from the stored copy")  # fmt: skip
    first, *others = fleet.containers
    token = first.refresh_token()
    logged_out = time.monotonic()
    out = first.call("DELETE", "/v1/credentials")
    assert out["stored"] == "tombstoned" and out["revoked"] is True, (
        out,
        first.log.read_text()[-3000:],
    )
    wait_until(lambda: all(c.view()["status"] == "logged_out" for c in others), 5,
               "every container to report logged_out")  # fmt: skip
    took = time.monotonic() - logged_out
    assert all(c.refresh_token() is None for c in fleet.containers)
    assert issuer.revoked == [token]
    document = store.document()
    assert document.get("codex_credentials") is None and document.get("codex_credentials_tombstone")

    fresh = fleet.add()  # a container started afterwards: the restore writes nothing
    restored = fresh.cli("restore")
    assert "logged out" in restored.stdout, restored.stdout
    assert fresh.refresh_token() is None

    again = others[0]  # the tombstone survives a restart of the service
    again.stop()
    again.start()
    again.wait_up()
    fleet.run_for(2)
    assert again.view()["status"] == "logged_out" and again.refresh_token() is None
    assert store.document().get("codex_credentials") is None
    print(f"\nLOGOUT mode={store.mode} containers=4 all_logged_out_after={took:.2f}s")
