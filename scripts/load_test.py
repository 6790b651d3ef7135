#!/usr/bin/env python3
"""The operator API at a steady 50 requests per second while the keep-alive refreshes.

    .venv/bin/python scripts/load_test.py [--seconds 300] [--rate 50]

``chatgpt-login serve`` (runtime-only install, the repo's gunicorn config) stores in a loopback
secrets API; the fake issuer hands out 30-second access tokens and the refresh window is 20 s,
so the keep-alive refreshes (and syncs back) about every 10 s throughout. Requests are sent on
a fixed schedule (open loop: a slow answer does not slow the sender), mostly
``GET /v1/credentials``, with ``/readyz`` and ``/metrics`` mixed in.

Prints: requests sent, errors (anything but 200, or no answer within 5 s), p50/p99/max latency,
how late the sender fell behind its schedule, the service's RSS (master plus workers) after
warm-up and at the end, refreshes, refresh_token_reused answers (must be 0) and whether the
store ends with the credential on disk (must be yes).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import Served, bench_venv  # noqa: E402
from skill.authfiles import PiAuthFile  # noqa: E402
from skill.credentials import Credential  # noqa: E402
from skill.tokens import TokenSet  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402

TOKEN = "load-operator-token-0123456789"  # noqa: S105 - a throwaway for this run
PATHS = ["/v1/credentials"] * 8 + ["/readyz", "/metrics"]
RATE = 50  # requests per second: far beyond an operator's use, which is a few a minute


def service_rss_mib(pid: int) -> float:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for each in [pid, *map(int, children)]:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


class Client:
    """One keep-alive connection per sending thread. Like any HTTP client, a request that finds
    its idle connection closed by the server (gunicorn drops idle ones after 5 s) is sent once
    more on a new connection; only a failure on a fresh connection counts as an error."""

    def __init__(self, port: int, token: str = TOKEN) -> None:
        self.port = port
        self.token = token
        self.local = threading.local()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def get(self, path: str) -> None:
        started = time.monotonic()
        for attempt in (1, 2):
            reused = hasattr(self.local, "conn")
            if not reused:
                self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                self.local.conn.request(
                    "GET", path, headers={"Authorization": f"Bearer {self.token}"}
                )
                answer = self.local.conn.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException) as exc:
                del self.local.conn
                closed = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                stale = reused and isinstance(exc, closed)
                if stale and attempt == 1:
                    continue
                self.errors.append(f"{path}: {type(exc).__name__}")
            else:
                if answer.status != 200:
                    self.errors.append(f"{path}: HTTP {answer.status}")
            break
        self.latencies.append(time.monotonic() - started)


def highest_while_loaded(
    client: Client, seconds: float, measure: Callable[[], dict[str, float]]
) -> dict[str, float]:
    """The load's mix at RATE requests/s for ``seconds`` (open loop); ``measure`` is called once
    a second meanwhile, in a thread of its own (a slow one must not hold the sending back), and
    the highest value of each of its figures is returned."""
    highest: dict[str, float] = {}
    sent = threading.Event()
    failed: list[Exception] = []

    def watch() -> None:
        try:
            while not sent.wait(1.0):
                for name, value in measure().items():
                    highest[name] = max(highest.get(name, value), value)
        except Exception as exc:  # raised below, in the caller's thread
            failed.append(exc)
            sent.set()

    watcher = threading.Thread(target=watch, name="measure")
    with ThreadPoolExecutor(max_workers=16) as pool:
        watcher.start()
        began = time.monotonic()
        for n in range(int(seconds * RATE)):
            time.sleep(max(0.0, began + n / RATE - time.monotonic()))
            pool.submit(client.get, PATHS[n % len(PATHS)])
    sent.set()
    watcher.join()
    if failed:
        raise failed[0]
    if not highest:
        raise ValueError(f"nothing measured in {seconds} s: the load must run a second at least")
    return highest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rate", type=float, default=RATE)
    args = parser.parse_args()
    issuer, api = FakeIssuer(expires_in=30).start(), FakeSecretsAPI().start()
    home = Path(tempfile.mkdtemp(prefix="cgl-load-"))
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
        "CHATGPT_LOGIN_ISSUER": issuer.url, "CHATGPT_LOGIN_REFRESH_WINDOW": "20",
        "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
        "CHATGPT_LOGIN_SECRETS_DIR": str(home / "no-secrets"),
        "CHATGPT_LOGIN_OPERATOR_TOKEN": TOKEN,
    }  # fmt: skip
    pi = PiAuthFile(home / ".pi" / "agent" / "auth.json")
    pi.save(Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token())))
    serve = [str(bench_venv() / "bin" / "chatgpt-login"), "serve", "--bind", f"127.0.0.1:{port}"]
    server = Served(serve, env, port)
    client = Client(port)
    lateness: list[float] = []
    try:
        rss_start: float | None = None
        total = int(args.seconds * args.rate)
        with ThreadPoolExecutor(max_workers=32) as pool:
            began = time.monotonic()
            for n in range(total):
                due = began + n / args.rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                lateness.append(max(0.0, -wait))
                pool.submit(client.get, PATHS[n % len(PATHS)])
                if rss_start is None and time.monotonic() - began > min(10, args.seconds / 3):
                    rss_start = service_rss_mib(server.pid)
        rss_end = service_rss_mib(server.pid)
        time.sleep(2)  # the last sync-back
        stored = api.record.get("codex_credentials", {})
        on_disk = pi.load()
        in_store = on_disk is not None and stored.get("refresh") == on_disk.refresh_token
    finally:
        server.stop()
        api.stop()
        issuer.stop()
        shutil.rmtree(home, ignore_errors=True)
    report(
        args,
        client,
        lateness,
        (rss_start or rss_end, rss_end),
        issuer=issuer,
        api=api,
        in_store=in_store,
    )
    ok = not client.errors and in_store and issuer.calls["refresh_token_reused"] == 0
    return 0 if ok else 1


def report(args: argparse.Namespace, client: Client, lateness: list[float],
           rss: tuple[float, float], *, issuer: FakeIssuer, api: FakeSecretsAPI,
           in_store: bool) -> None:  # fmt: skip
    ordered = sorted(client.latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    print(f"# Load: {args.rate:g} requests/s for {args.seconds:g} s while the keep-alive refreshes")
    print()
    print("| what | value |")
    print("|---|---|")
    rows = [
        ("requests sent", f"{len(ordered)}"),
        ("errors (not 200, or no answer in 5 s)", f"{len(client.errors)}"),
        ("latency p50 / p99 / max",
         f"{pct(0.5):.1f} / {pct(0.99):.1f} / {ordered[-1] * 1000:.1f} ms"),
        ("sender behind schedule, median / max", f"{statistics.median(lateness) * 1000:.1f} / "
         f"{max(lateness) * 1000:.1f} ms"),
        ("service RSS (master + workers) after warm-up / at the end",
         f"{rss[0]:.1f} / {rss[1]:.1f} MiB ({rss[1] - rss[0]:+.1f})"),
        ("refreshes (issuer token calls)", f"{issuer.calls['/oauth/token']}"),
        ("refresh_token_reused answers", f"{issuer.calls['refresh_token_reused']}"),
        ("sync-backs acknowledged by the store", f"{len(api.acks)}"),
        ("store holds the credential on disk at the end", "yes" if in_store else "NO"),
    ]  # fmt: skip
    for name, value in rows:
        print(f"| {name} | {value} |")
    if client.errors:
        print(f"\nfirst errors: {client.errors[:5]}")


if __name__ == "__main__":
    sys.exit(main())
