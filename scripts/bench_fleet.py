#!/usr/bin/env python3
"""# One credential, N containers: issuer and secrets-API calls per hour at steady state

N real services (``chatgpt-login serve``, each with its own home, state directory and holder
id; tests/fleet.py) share one stored credential with 20-second access tokens, against each kind
of store: the seed's API without compare-and-set (``seed``, tests/fake_secrets.py) and our
reference server with it (``cas``, ``chatgpt-login secrets-server``), and a real OpenBao's KV
version 2 (``vault``: its writes are POSTs of a whole version; no ``304``, every read has the
record). Settings are the defaults
(a store read every 5 s, a heartbeat every 60 s) except the minimum interval between refreshes
(5 s), so that the half-life schedule applies to such short tokens.

After the containers are up, requests are counted for ``--seconds`` at the issuer and at the
store and scaled to an hour. The goal: issuer refreshes independent of N (two per token
lifetime: 360 an hour for 20-second tokens; once a lifetime for tokens that live for days), and
store reads that cost little (a ``304`` without a body when nothing changed, with the reference
server). Reads during a rotation (a follower watches the store closely for the holder's result)
are in the GET column.

    .venv/bin/python scripts/bench_fleet.py --seconds 90 --containers 1,4,8
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.secrets import SecretsStore, secrets_store  # noqa: E402
from service.settings import ServiceSettings  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402
from tests.fault_proxy import FaultProxy  # noqa: E402
from tests.fleet import Fleet, ReferenceStore, http_store_env, seed_store, vault_store_env  # noqa: E402
from tests.openbao import OpenBao  # noqa: E402

SETTINGS = {
    "CHATGPT_LOGIN_REFRESH_MIN_INTERVAL": "5",
    "CHATGPT_LOGIN_STORE_POLL": "5",
    "CHATGPT_LOGIN_HOLDER_HEARTBEAT": "60",
    "CHATGPT_LOGIN_LEASE_SETTLE": "0.5",
}
ACCESS = re.compile(r'"(GET|PATCH) /api/agent/secrets" (\d{3})')


class Counted(list[str]):
    """The store's requests as (time, method, status); as the fake's ``requests`` list, it
    notes each request the fake answers as it arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, str, int]] = []

    def append(self, method: str) -> None:
        super().append(method)
        self.seen.append((time.monotonic(), method, 200))

    def between(self, start: float, end: float) -> list[tuple[str, int]]:
        return [(m, s) for t, m, s in self.seen if start <= t <= end]


def reference_store(root: Path) -> tuple[ReferenceStore, Counted]:
    store, counted = ReferenceStore(root), Counted()

    def read() -> None:  # gunicorn's access log, followed as it is written: one line a request
        with store.log.open("rb") as log:
            while store.proc.poll() is None:
                line = log.readline()
                if not line.endswith(b"\n"):
                    log.seek(-len(line), os.SEEK_CUR)  # a line not yet whole: read it again
                    time.sleep(0.02)
                elif found := ACCESS.search(line.decode(errors="replace")):
                    counted.seen.append((time.monotonic(), found.group(1), int(found.group(2))))

    threading.Thread(target=read, daemon=True).start()
    return store, counted


def vault_store() -> tuple[OpenBao, FaultProxy, dict[str, str]]:
    """A real OpenBao dev server behind a forwarding proxy that notes each request's method
    (OpenBao's own audit log can only be set up in its configuration)."""
    bao = OpenBao().start()
    proxy = FaultProxy(upstream_port=bao.port).start()
    return bao, proxy, vault_store_env(proxy.url, bao.root, "chatgpt-login/bench")


def run(kind: str, containers: int, seconds: float) -> str:
    issuer = FakeIssuer(expires_in=20).start()
    root = Path(tempfile.mkdtemp(prefix="cgl-bench-fleet-"))
    api: FakeSecretsAPI | None = None
    server: ReferenceStore | None = None
    bao: tuple[OpenBao, FaultProxy] | None = None
    counted = Counted()
    if kind == "seed":
        api = FakeSecretsAPI(requests=counted).start()
        env = http_store_env(api.url, api.token)
    elif kind == "vault":
        server_bao, proxy, env = vault_store()
        bao = (server_bao, proxy)
    else:
        server, counted = reference_store(root)
        env = http_store_env(server.url, server.token)
    seed_store(issuer, _client(env, root))
    fleet = Fleet(issuer, env, extra_env=SETTINGS)
    try:
        for _ in range(containers):
            fleet.add().start()
        for container in fleet.containers:
            container.wait_up()
        time.sleep(2)  # past the first reads and beats
        refreshed, start = issuer.calls["grant:refresh_token"], time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
        refreshes = issuer.calls["grant:refresh_token"] - refreshed
    finally:
        fleet.stop()
        issuer.stop()
        if api is not None:
            api.stop()
        if server is not None:
            server.stop()
        if bao is not None:
            bao[1].stop()
            bao[0].stop()
            # Vault's writes are POSTs (a whole version each); each request is one connection.
            counted.seen = [(t, "PATCH" if m in ("POST", "PUT") else m, 200)
                            for t, m in bao[1].methods]  # fmt: skip
    calls = counted.between(start, end)
    per_hour = 3600 / (end - start)
    gets = sum(m == "GET" for m, _ in calls)
    not_modified = sum(m == "GET" and s == 304 for m, s in calls)
    patches = sum(m == "PATCH" for m, _ in calls)
    total = (gets + patches) * per_hour
    return (
        f"| {containers} | {kind} | {end - start:.0f} | {refreshes * per_hour:.0f} | "
        f"{issuer.calls['refresh_token_reused']} | {gets * per_hour:.0f} "
        f"({not_modified * per_hour:.0f}) | {patches * per_hour:.0f} | "
        f"{total / containers:.0f} |"
    )


def _client(env: dict[str, str], root: Path) -> SecretsStore:
    """Our own client of the store the fleet uses, to seed it."""
    settings = ServiceSettings.from_env(
        {
            **env,
            "CHATGPT_LOGIN_STATE_DIR": str(root / "seed"),
            "CHATGPT_LOGIN_SECRETS_DIR": str(root / "none"),
        }
    )
    return secrets_store(settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--containers", default="1,4,8")
    parser.add_argument("--stores", default="seed,cas,vault")
    args = parser.parse_args()
    print(__doc__.splitlines()[0])
    print()
    print(
        "| containers | store | seconds counted | issuer refreshes / h | refresh tokens "
        "reused | store GET / h (304) | store writes / h | store calls / h per container |"
    )
    print("|---|---|---|---|---|---|---|---|")  # fmt: skip
    for count in (int(n) for n in args.containers.split(",")):
        for kind in args.stores.split(","):
            print(run(kind, count, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
