#!/usr/bin/env python3
"""# Unauthenticated /readyz load against a slow secrets store

``/readyz`` answers anyone. Before, each call read the secrets store with the service's token,
so two dozen concurrent calls against a slow store held every worker thread and delayed an
operator's request by a minute. Now it reports the keep-alive's own reads, and asks the store
itself at most once per 10 s per worker; what a flood of it still costs is CPU, as any cheap
endpoint does (the back-to-back row: two cores answering a thousand calls a second).

A real service (``chatgpt-login serve``: gunicorn, one worker x 8 threads) in front of a store
whose every answer takes 4 s (longer than the service's 2 s timeout). First the operator's
``GET /v1/credentials`` alone, one after another, for ``--seconds``; then the same while
``--clients`` unauthenticated clients call ``/readyz``, each ten times a second; then back to
back. Figures: the operator's latency (p50, p99), the /readyz calls answered, and how many store
reads each phase caused beyond the first.

    .venv/bin/python scripts/readyz_load.py --seconds 30 --clients 24
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import Served  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402

TOKEN = "readyz-operator-token-0123456789"  # noqa: S105 - a throwaway for this run


@dataclass
class Phase:
    latencies: list[float]
    readyz: int
    store_reads: int

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - our loopback service
    try:
        with urllib.request.urlopen(request, timeout=90) as answer:  # noqa: S310 - the same
            return int(answer.status)
    except urllib.error.HTTPError as answer:
        return answer.code
    except OSError:
        return 0


def measure(seconds: float, clients: int) -> tuple[Phase, Phase, Phase]:
    api = FakeSecretsAPI(delay=4.0).start()
    api.faults.extend(["delay"] * 100_000)
    home = Path(tempfile.mkdtemp(prefix="cgl-readyz-"))
    port = free_port()
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO),
        "CHATGPT_LOGIN_STATE_DIR": str(home / "state"),
        "CHATGPT_LOGIN_SECRETS_DIR": str(home / "none"),
        "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
        "CHATGPT_LOGIN_SECRETS_TIMEOUT": "2", "CHATGPT_LOGIN_SECRETS_ATTEMPTS": "1",
        "CHATGPT_LOGIN_SECRETS_DEADLINE": "2", "CHATGPT_LOGIN_OPERATOR_TOKEN": TOKEN,
    }  # fmt: skip
    server = Served([sys.executable, "-m", "service.cli", "serve", "--bind",
                     f"127.0.0.1:{port}"], env, port)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        time.sleep(3)  # past the keep-alive's first read
        quiet = _phase(base, seconds, 0, api, pace=0)
        paced = _phase(base, seconds, clients, api, pace=0.1)
        flood = _phase(base, seconds, clients, api, pace=0)
    finally:
        server.stop()
        api.stop()
    for loaded in (paced, flood):
        loaded.store_reads -= quiet.store_reads  # what the load added
    return quiet, paced, flood


def _phase(base: str, seconds: float, clients: int, api: FakeSecretsAPI, *, pace: float) -> Phase:
    stop = threading.Event()
    answered = [0]

    def hammer() -> None:
        while not stop.is_set():
            if _get(base + "/readyz") in (200, 503):
                answered[0] += 1
            stop.wait(pace)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(clients)]
    reads_before = api.requests.count("GET")
    for thread in threads:
        thread.start()
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        status = _get(base + "/v1/credentials", TOKEN)
        latencies.append(time.monotonic() - started if status == 200 else 90.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=100)
    return Phase(latencies, answered[0], api.requests.count("GET") - reads_before)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=24)
    args = parser.parse_args()
    quiet, paced, flood = measure(args.seconds, args.clients)
    print(__doc__.splitlines()[0])
    print()
    print("| phase | operator requests | p50 ms | p99 ms | /readyz answered | store reads |")
    print("|---|---|---|---|---|---|")
    for name, phase in (("alone", quiet), (f"{args.clients} /readyz clients, 10/s each", paced),
                        (f"{args.clients} /readyz clients, back to back", flood)):  # fmt: skip
        median = statistics.median(phase.latencies) * 1000
        print(
            f"| {name} | {len(phase.latencies)} | {median:.1f} | {phase.percentile(0.99):.1f} "
            f"| {phase.readyz} | {phase.store_reads} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
