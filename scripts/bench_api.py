#!/usr/bin/env python3
"""The operator API under load: ``GET /v1/credentials`` against a bare Flask app, side by side.

    .venv/bin/python scripts/bench_api.py [--runs 3] [--seconds 5] [--connections 1,8,32]

Both run under the repo's gunicorn config (``service/gunicorn_conf.py``: one gthread worker with
8 API threads) from the runtime-only install; the load comes from wrk (Debian's package, installed
if missing) in another process on the loopback, with keep-alive connections. Ours answers for a
signed-in credential (it reads the credential file and the service state on every request), the
bare app returns a constant. For each connection count: requests per second and p50/p99
latency (median, min and max over --runs, the two apps interleaved), and ours / bare per
back-to-back pair (median and range; goal: at least 0.7).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import Served, bench_venv  # noqa: E402
from skill.authfiles import PiAuthFile  # noqa: E402
from skill.credentials import Credential  # noqa: E402
from skill.tokens import TokenSet  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402

TOKEN = "bench-operator-token-0123456789"  # noqa: S105 - a throwaway for this run
CONF = REPO / "service" / "gunicorn_conf.py"


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def signed_in_home(venv: Path, issuer: FakeIssuer, prefix: str) -> tuple[Path, dict[str, str]]:
    """A fresh HOME signed in with a credential from ``issuer``, and the service's environment
    for it (the operator token is :data:`TOKEN`)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "CHATGPT_LOGIN_SECRETS_DIR": str(home / "no-secrets"),
        "CHATGPT_LOGIN_OPERATOR_TOKEN": TOKEN,
        "CHATGPT_LOGIN_ISSUER": issuer.url,
    }
    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    PiAuthFile(home / ".pi" / "agent" / "auth.json").save(credential)
    return home, env


def wrk(binary: str, url: str, connections: int, seconds: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms)."""
    threads = max(1, min(2, connections))
    done = subprocess.run(
        [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", f"Authorization: Bearer {TOKEN}", url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = done.stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, _latency_ms(out, "50%"), _latency_ms(out, "99%")


def _latency_ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", default="1,8,32")
    args = parser.parse_args()
    binary = ensure_wrk()
    venv = bench_venv()
    issuer = FakeIssuer().start()
    home, settings_env = signed_in_home(venv, issuer, "cgl-bench-api-")
    ours_port, bare_port = free_port(), free_port()
    serve = [str(venv / "bin" / "chatgpt-login"), "serve", "--bind", f"127.0.0.1:{ours_port}"]
    ours = Served(serve, settings_env, ours_port)
    bare_env = {**settings_env, "PYTHONPATH": str(REPO / "scripts")}
    bare = Served([str(venv / "bin" / "python"), "-m", "gunicorn", "-c", str(CONF), "--bind",
                   f"127.0.0.1:{bare_port}", "bare_flask:app"], bare_env, bare_port)  # fmt: skip
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    try:
        connections = [int(c) for c in args.connections.split(",")]
        for _ in range(args.runs):
            for count in connections:
                for name, port, path in (("ours", ours_port, "/v1/credentials"),
                                         ("bare", bare_port, "/constant")):  # fmt: skip
                    url = f"http://127.0.0.1:{port}{path}"
                    results.setdefault((name, count), []).append(
                        wrk(binary, url, count, args.seconds)
                    )
    finally:
        ours.stop()
        bare.stop()
        issuer.stop()
        shutil.rmtree(home, ignore_errors=True)

    print(f"# Operator API: GET /v1/credentials vs a bare Flask app, same gunicorn config "
          f"({args.runs} runs of {args.seconds:g} s each, wrk keep-alive)")  # fmt: skip
    print()
    print("| connections | app | req/s median (min-max) | p50 ms | p99 ms | ours / bare |")
    print("|---|---|---|---|---|---|")
    for count in connections:
        # Each run's pair was measured back to back, so the ratio is taken per pair (machine
        # drift cancels out), then its median and range are shown.
        ratios = [o[0] / b[0] for o, b in zip(results[("ours", count)], results[("bare", count)],
                                                strict=True)]  # fmt: skip
        for name in ("ours", "bare"):
            runs = results[(name, count)]
            rps = [r[0] for r in runs]
            ratio = (f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                     if name == "bare" else "")  # fmt: skip
            spread = f"{statistics.median(rps):.0f} ({min(rps):.0f}-{max(rps):.0f})"
            print(f"| {count} | {name} | {spread} "
                  f"| {statistics.median(r[1] for r in runs):.2f} "
                  f"| {statistics.median(r[2] for r in runs):.2f} | {ratio} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
