#!/usr/bin/env python3
"""Refresh stampede: N processes need a token at once while the access token has expired.

    .venv/bin/python scripts/bench_stampede.py [--runs 3] [--processes 1,4,16,64]

Each process (the runtime-only install's Python) waits at a starting line, then asks
``Refresher.ensure_fresh()`` for a valid token. Figures per N: calls to the issuer's token
endpoint (must be 1: the refresh token is spent once, the others adopt it under pi's lock),
``refresh_token_reused`` answers (must be 0), and wall time from the start signal until every
process has its token (median, min, max over --runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import bench_venv  # noqa: E402
from service.settings import ServiceSettings  # noqa: E402
from skill.authfiles import PiAuthFile  # noqa: E402
from skill.credentials import Credential  # noqa: E402
from skill.tokens import TokenSet  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402

CALLER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from service.refresher import Refresher
    from service.settings import ServiceSettings
    settings = ServiceSettings.model_validate_json(sys.argv[1])
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    token = Refresher(settings).ensure_fresh().credential.access_token
    print(json.dumps({"token": token, "done": time.time()}))
    """
)


def one_run(python: str, issuer: FakeIssuer, processes: int) -> tuple[int, int, float]:
    """(token endpoint calls, refresh_token_reused answers, seconds to the last token)."""
    with tempfile.TemporaryDirectory(prefix="cgl-stampede-") as work:
        settings = ServiceSettings(
            issuer=issuer.url, pi_agent_dir=Path(work) / "pi", codex_home=Path(work) / "codex",
            state_dir=Path(work) / "state",
        )  # fmt: skip
        seeded = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
        expired = seeded.model_copy(update={"expires_ms": int((time.time() - 60) * 1000)})
        PiAuthFile(settings.pi_auth_file).save(expired)
        calls_before = issuer.calls["/oauth/token"]
        reused_before = issuer.calls["refresh_token_reused"]
        go = Path(work) / "go"
        procs = [
            subprocess.Popen([python, "-c", CALLER, settings.model_dump_json(), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(processes)
        ]  # fmt: skip
        time.sleep(0.5 + processes * 0.05)  # every interpreter is up and waiting
        started = time.time()
        go.touch()
        answers = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"a caller failed: {err[-500:]}")
            answers.append(json.loads(out))
        if len({a["token"] for a in answers}) != 1:
            raise RuntimeError("callers ended with different tokens")
        wall = max(a["done"] for a in answers) - started
        return (issuer.calls["/oauth/token"] - calls_before,
                issuer.calls["refresh_token_reused"] - reused_before, wall)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", default="1,4,16,64")
    args = parser.parse_args()
    python = str(bench_venv() / "bin" / "python")
    issuer = FakeIssuer().start()
    counts = [int(n) for n in args.processes.split(",")]
    results: dict[int, list[tuple[int, int, float]]] = {n: [] for n in counts}
    try:
        for _ in range(args.runs):
            for n in counts:
                results[n].append(one_run(python, issuer, n))
    finally:
        issuer.stop()
    print(f"# Refresh stampede: N processes need a token, access token expired ({args.runs} runs)")
    print()
    print("| processes | issuer token calls (each run) | refresh_token_reused | "
          "to the last token, median s (min-max) |")  # fmt: skip
    print("|---|---|---|---|")
    for n in counts:
        calls = ", ".join(str(r[0]) for r in results[n])
        reused = sum(r[1] for r in results[n])
        walls = [r[2] for r in results[n]]
        print(f"| {n} | {calls} | {reused} | {statistics.median(walls):.3f} "
              f"({min(walls):.3f}-{max(walls):.3f}) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
