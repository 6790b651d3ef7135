#!/usr/bin/env python3
"""Event streams: what 50 idle ``GET /v1/events`` streams cost the operator API and memory.

    .venv/bin/python scripts/bench_events.py [--runs 5] [--seconds 5] [--streams 50]

``chatgpt-login serve`` as users run it (runtime-only install, one gthread worker), signed in.
Each run measures ``GET /v1/credentials`` with wrk (8 keep-alive connections) twice, back to
back: with no stream open, then with ``--streams`` idle streams open (each reading its
heartbeats). Prints p50/p99 latency and requests/s for both (median, min and max over the runs),
the p99 ratio per pair (goal: unchanged, about 1), the service's PSS idle and with the streams
open, and how long the service takes to stop (SIGTERM) with the streams open.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.bench_api import TOKEN, ensure_wrk, signed_in_home, wrk  # noqa: E402
from scripts.bench_memory import pss_by_process  # noqa: E402
from scripts.benchlib import Served, bench_venv  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402


def open_streams(port: int, count: int) -> list[http.client.HTTPConnection]:
    """``count`` streams, each past its first line (served, not queued). The last run's streams
    give their slots back within a second of hanging up: until then, 503 is retried."""
    opened: list[http.client.HTTPConnection] = []
    deadline = time.monotonic() + 10
    while len(opened) < count:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
        answer = connection.getresponse()
        if answer.status == 503 and time.monotonic() < deadline:
            connection.close()
            time.sleep(0.2)
            continue
        if answer.status != 200:
            raise RuntimeError(f"stream {len(opened) + 1} got HTTP {answer.status}")
        answer.readline()  # "retry: ..."
        opened.append(connection)
    return opened


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=50)
    args = parser.parse_args()
    binary = ensure_wrk()
    venv = bench_venv()
    issuer = FakeIssuer().start()
    home, env = signed_in_home(venv, issuer, "cgl-bench-events-")
    env["CHATGPT_LOGIN_EVENTS_HEARTBEAT"] = "1"
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/credentials"
    server = Served([str(venv / "bin" / "chatgpt-login"), "serve", "--bind",
                     f"127.0.0.1:{port}"], env, port)  # fmt: skip
    results: dict[str, list[tuple[float, float, float]]] = {"none": [], "open": []}
    pss: dict[str, float] = {}
    stop_seconds = 0.0
    try:
        wrk(binary, url, 8, 1)  # warm-up: every import a request makes
        pss["idle"] = sum(pss_by_process(server.pid).values())
        for _ in range(args.runs):
            results["none"].append(wrk(binary, url, 8, args.seconds))
            streams = open_streams(port, args.streams)
            results["open"].append(wrk(binary, url, 8, args.seconds))
            pss["open"] = max(pss.get("open", 0.0), sum(pss_by_process(server.pid).values()))
            for stream in streams:
                stream.close()
        streams = open_streams(port, args.streams)
        started = time.monotonic()
        os.killpg(server.pid, signal.SIGTERM)
        server.proc.wait(timeout=30)
        stop_seconds = time.monotonic() - started
        for stream in streams:
            stream.close()
    finally:
        server.stop()
        issuer.stop()
        shutil.rmtree(home, ignore_errors=True)

    print(f"# Event streams: GET /v1/credentials with 0 and {args.streams} idle streams open "
          f"({args.runs} pairs of {args.seconds} s, wrk 8 connections, one worker)")  # fmt: skip
    print()
    print("| streams open | req/s median (min-max) | p50 ms | p99 ms median (min-max) |")
    print("|---|---|---|---|")
    for name, label in (("none", "0"), ("open", str(args.streams))):
        runs = results[name]
        rps, p99 = [r[0] for r in runs], [r[2] for r in runs]
        print(f"| {label} | {statistics.median(rps):.0f} ({min(rps):.0f}-{max(rps):.0f}) "
              f"| {statistics.median(r[1] for r in runs):.2f} "
              f"| {statistics.median(p99):.2f} ({min(p99):.2f}-{max(p99):.2f}) |")  # fmt: skip
    ratios = [o[2] / n[2] for n, o in zip(results["none"], results["open"], strict=True)]
    print()
    print(f"- p99 with / without the streams, per pair: median {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    print(f"- service PSS: {pss['idle']:.1f} MiB idle, {pss['open']:.1f} MiB with "
          f"{args.streams} streams open ({pss['open'] - pss['idle']:+.1f})")  # fmt: skip
    print(
        f"- stop (SIGTERM to exit) with {args.streams} streams open: {stop_seconds:.2f} s "
        "(gunicorn's graceful timeout is 8 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
