#!/usr/bin/env python3
"""Peak memory (RSS) of each CLI command and of the running service.

    .venv/bin/python scripts/bench_memory.py [--runs 3]

Commands run from the runtime-only install against the fake issuer and a loopback secrets API,
in the order a user meets them; each one's peak RSS as GNU time reports it. The service
(``chatgpt-login serve``: gunicorn master and its workers) is read from ``/proc/<pid>/status``
(VmHWM, the peak) after 2000 requests to ``GET /v1/credentials``. Median, min and max over
--runs, in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import Served, bench_venv  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402

TOKEN = "bench-operator-token-0123456789"  # noqa: S105 - a throwaway for this run
TIME = "/usr/bin/time"  # GNU time (Debian package "time")


def run_measured(argv: list[str], env: dict[str, str], stdin: str = "") -> tuple[float, str]:
    """(peak RSS in MiB, stdout) of one command.

    Measured by GNU time (``/usr/bin/time -f %M``), not by our own ``wait4``: Linux carries the
    peak of the image a process replaces at exec into its ``ru_maxrss``, so a child spawned
    from this (pydantic-laden) Python would report at least our size.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        done = subprocess.run([TIME, "-q", "-f", "%M", "-o", report.name, *argv], env=env,
                              input=stdin, capture_output=True, text=True, check=False)  # fmt: skip
        kib = int(report.read().split()[-1])
    return kib / 1024, done.stdout


def service_peak(cli: str, env: dict[str, str]) -> dict[str, float]:
    port = free_port()
    server = Served([cli, "serve", "--bind", f"127.0.0.1:{port}"], env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        request = urllib.request.Request(f"{base}/v1/credentials", headers=headers)  # noqa: S310
        for _ in range(2000):
            with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
                answer.read()
        workers = [int(p) for p in Path(f"/proc/{server.pid}/task/{server.pid}/children")
                   .read_text().split()]  # fmt: skip
        peaks = {"service: gunicorn master": _vm_hwm(server.pid)}
        for n, pid in enumerate(workers, start=1):
            peaks[f"service: worker {n}"] = _vm_hwm(pid)
        peaks["service: master + workers (sum; shared pages count in each)"] = sum(peaks.values())
        return peaks
    finally:
        server.stop()


def _vm_hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cli = str(bench_venv() / "bin" / "chatgpt-login")
    issuer, api = FakeIssuer().start(), FakeSecretsAPI().start()
    rows: dict[str, list[float]] = {}
    try:
        for _ in range(args.runs):
            home = Path(tempfile.mkdtemp(prefix="cgl-mem-"))
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                "LANG": "C.UTF-8", "CHATGPT_LOGIN_ISSUER": issuer.url,
                "CHATGPT_LOGIN_CALLBACK_PORTS": f"{free_port()},{free_port()}",
                "CHATGPT_LOGIN_SECRETS_DIR": str(home / "no-secrets"),
                "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
                "CHATGPT_LOGIN_OPERATOR_TOKEN": TOKEN,
            }  # fmt: skip
            api.record.clear()

            def measure(name: str, *args: str, stdin: str = "", env: dict[str, str] = env) -> str:
                mib, out = run_measured([cli, *args], env, stdin)
                rows.setdefault(name, []).append(mib)
                return out

            measure("chatgpt-login --help", "--help")
            measure("chatgpt-login restore (nothing stored)", "restore")
            started = json.loads(measure("chatgpt-login start", "start", "--json"))
            callback = issuer.sign_in(started["auth_url"])
            measure("chatgpt-login complete (no service: persist pending)", "complete",
                    "--json", stdin=callback)  # fmt: skip
            measure("chatgpt-login status", "status")
            measure("chatgpt-login refresh", "refresh")
            shutil.rmtree(home / ".pi")
            measure("chatgpt-login restore (writes auth.json)", "restore")
            for name, mib in service_peak(cli, env).items():
                rows.setdefault(name, []).append(mib)
            measure("chatgpt-login logout", "logout")
            sock = home / ".local" / "state" / "chatgpt-login" / "tmux.sock"
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                           check=False)  # fmt: skip
            shutil.rmtree(home, ignore_errors=True)
    finally:
        api.stop()
        issuer.stop()
    print(f"# Peak RSS ({args.runs} runs)")
    print()
    print("| process | median MiB | min MiB | max MiB |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} "
              f"| {max(values):.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
