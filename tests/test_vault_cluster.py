"""A three-node OpenBao Raft cluster on 127.0.0.1 under containers sharing one credential.

Containers (real ``chatgpt-login serve``, tests/fleet.py, 20-second tokens) point at the
followers; the leader is killed (SIGKILL) while they refresh and push. After a new leader is
elected, every rotation the store acknowledged before the kill must be there (a container's
local generation is only ever one the store acknowledged), and the containers carry on with 0
refresh tokens reused. Then the whole cluster is sealed: containers keep their credential,
report the store unavailable in ``/readyz``, and are live again soon after the unseal.

The refresh lease lasts 30 s here (the other fleet tests use 8 s; the default is 120 s), longer
than the seal: what a seal (any store outage) must not outlast is a lease whose holder has spent
the token and could not store the result yet. If it does, another container takes over after
the lease and spends the token already spent (README, "One credential, many containers", says
so); a CI run with 8-second leases found that case after an 11 s seal.

``VAULT_FAILOVER_KILLS`` (default 1) leader kills; ``make reliability`` runs more.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.secrets import SecretsStore, secrets_store
from service.settings import ServiceSettings
from tests.conftest import wait_until
from tests.fake_issuer import FakeIssuer
from tests.fleet import Container, Fleet, seed_store, vault_store_env
from tests.openbao import OpenBaoCluster

pytestmark = pytest.mark.slow

LIFETIME = 20
LEASE = 30  # seconds: longer than the seal below
KILLS = int(os.environ.get("VAULT_FAILOVER_KILLS", "1"))
PATH = "chatgpt-login/cluster"


@pytest.fixture
def cluster() -> Iterator[OpenBaoCluster]:
    started = OpenBaoCluster().start()
    yield started
    started.stop()


def reader(cluster: OpenBaoCluster, tmp_path: Path) -> SecretsStore:
    """Our own client on a live node (a follower forwards to the leader)."""
    return secrets_store(ServiceSettings(
        state_dir=tmp_path / "reader", secrets_backend="vault", vault_addr=cluster.live()[0].addr,
        vault_token=cluster.root, vault_path=PATH, secrets_deadline=10, secrets_attempts=10,
    ))  # fmt: skip


def stored_generation(cluster: OpenBaoCluster, tmp_path: Path) -> int:
    found = reader(cluster, tmp_path).read()
    assert found is not None
    entry = found.document.get("codex_credentials")
    return int(entry["generation"]) if isinstance(entry, dict) else 0


def readyz(container: Container) -> tuple[int, str]:
    url = f"http://127.0.0.1:{container.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, str(json.load(answer)["checks"]["secrets_store"])
    except urllib.error.HTTPError as answer:
        return answer.code, str(json.load(answer)["checks"]["secrets_store"])


def test_leader_killed_then_cluster_sealed(
    cluster: OpenBaoCluster, issuer: FakeIssuer, tmp_path: Path
) -> None:
    issuer.expires_in = LIFETIME
    seed_store(issuer, reader(cluster, tmp_path))
    leader = cluster.leader()
    assert leader is not None
    followers = [n for n in cluster.nodes if n is not leader]
    fleet = Fleet(issuer, vault_store_env(followers[0].addr, cluster.root, PATH),
                  extra_env={"CHATGPT_LOGIN_LEASE_SECONDS": str(LEASE)})  # fmt: skip

    def every_live() -> None:
        """Every container on a refresh token the issuer takes, within a few seconds: one look
        could fall between a renewal and the others' adoption of it (seen in a CI run)."""
        wait_until(lambda: all(fleet.sample().live.values()), 10,
                   "every container on a live refresh token")  # fmt: skip

    try:
        for i in range(3):
            fleet.add(store_env={"VAULT_ADDR": followers[i % len(followers)].addr}).start()
        for container in fleet.containers:
            container.wait_up()
        rng = random.Random(8200)  # noqa: S311 - when to kill, not cryptography
        elections, lost = [], 0
        for _ in range(KILLS):
            fleet.run_for(rng.uniform(3, LIFETIME))  # often across a refresh and its push
            leader = cluster.leader()
            assert leader is not None
            acknowledged = max(int(c.local_state().get("generation") or 0)
                               for c in fleet.containers)  # fmt: skip
            cluster.kill(leader)
            killed = time.monotonic()
            wait_until(lambda: cluster.leader() is not None, 60, "a new leader")
            elections.append(time.monotonic() - killed)
            lost += int(stored_generation(cluster, tmp_path) < acknowledged)
            fleet.run_for(2)
            cluster.restart(leader)
        fleet.run_for(LIFETIME)  # they carry on across another refresh
        print(
            f"\nFAILOVER kills={KILLS} containers=3 election_max={max(elections):.1f}s "
            f"refreshes={issuer.calls['grant:refresh_token']} "
            f"reused={issuer.calls['refresh_token_reused']} lost={lost} "
            f"relogin_samples={fleet.relogin_samples()}"
        )
        assert lost == 0 and issuer.calls["refresh_token_reused"] == 0
        assert fleet.relogin_samples() == 0
        every_live()

        # Sealed: /readyz says the store is unavailable; cut off from it, nobody spends a
        # token (the others may be rotating) and nobody loses or drops one.
        cluster.seal_all()
        sealed = time.monotonic()
        wait_until(lambda: all(readyz(c)[0] == 503 for c in fleet.containers), 20,
                   "every container's /readyz to report the sealed store")  # fmt: skip
        reported = time.monotonic() - sealed
        checks = [readyz(c)[1] for c in fleet.containers]
        assert all(check.startswith("secrets_unreachable") for check in checks), checks
        held = {c.name: c.refresh_token() for c in fleet.containers}
        refreshes = issuer.calls["grant:refresh_token"]
        fleet.run_for(3)
        assert all(held.values()), held
        assert {c.name: c.refresh_token() for c in fleet.containers} == held
        assert issuer.calls["grant:refresh_token"] == refreshes, "a refresh while sealed"
        cluster.unseal_all()
        unsealed = time.monotonic()
        wait_until(lambda: all(readyz(c)[0] == 200 for c in fleet.containers), 30,
                   "every container's /readyz after the unseal")  # fmt: skip
        back = time.monotonic() - unsealed
        fleet.run_for(LIFETIME)
        print(
            f"\nSEALED containers=3 readyz_503_after={reported:.1f}s "
            f"readyz_200_after_unseal={back:.1f}s "
            f"reused={issuer.calls['refresh_token_reused']} "
            f"relogin_samples={fleet.relogin_samples()}"
        )
        assert issuer.calls["refresh_token_reused"] == 0 and fleet.relogin_samples() == 0
        every_live()
    finally:
        fleet.stop()
