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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import Served, bench_venv  # noqa: E402
from scripts.load_test import PATHS, RATE, Client, highest_while_loaded  # noqa: E402
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


def service_memory(cli: str, env: dict[str, str], load_seconds: float) -> dict[str, float]:
    """The service's memory: proportional set size (PSS: pages shared between the master and the
    worker, or with other processes, split among them) idle and under the load test's traffic,
    and each process's peak RSS (VmHWM) at the end."""
    port = free_port()
    server = Served([cli, "serve", "--bind", f"127.0.0.1:{port}"], env, port)
    try:
        client = Client(port, TOKEN)
        for path in PATHS:  # every route the load uses, once: what a first request imports
            client.get(path)
        time.sleep(2)  # the keep-alive's first look at the store
        idle = pss_by_process(server.pid)
        loaded = highest_while_loaded(client, load_seconds, lambda: pss_by_process(server.pid))
        if client.errors:
            raise RuntimeError(f"the load got errors: {client.errors[:3]}")
        figures = {f"PSS idle: {name}": mib for name, mib in idle.items()}
        figures["PSS idle: total"] = sum(idle.values())
        figures |= {f"PSS under load ({RATE}/s): {name}": mib for name, mib in loaded.items()}
        figures[f"PSS under load ({RATE}/s): total"] = sum(loaded.values())
        pids = _service_pids(server.pid)
        for name, pid in pids.items():
            figures[f"peak RSS: {name}"] = _vm_hwm(pid)
        figures["peak RSS: all (sum; shared pages count in each)"] = sum(
            _vm_hwm(pid) for pid in pids.values()
        )
        return figures
    finally:
        server.stop()


def _service_pids(master: int) -> dict[str, int]:
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {"gunicorn master": master} | {
        f"worker {n}": int(pid) for n, pid in enumerate(workers, start=1)
    }


def pss_by_process(master: int) -> dict[str, float]:
    """PSS in MiB of the master and each worker, from /proc/<pid>/smaps_rollup."""
    found = {}
    for name, pid in _service_pids(master).items():
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                found[name] = int(line.split()[1]) / 1024
    return found


def _vm_hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=30,
                        help=f"the service under {RATE} requests/s, this long")  # fmt: skip
    args = parser.parse_args()
    cli = str(bench_venv() / "bin" / "chatgpt-login")
    issuer, api = FakeIssuer().start(), FakeSecretsAPI().start()
    rows: dict[str, list[float]] = {}
    service_rows: dict[str, list[float]] = {}
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
            for name, mib in service_memory(cli, env, args.load_seconds).items():
                service_rows.setdefault(name, []).append(mib)
            measure("chatgpt-login logout", "logout")
            sock = home / ".local" / "state" / "chatgpt-login" / "tmux.sock"
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                           check=False)  # fmt: skip
            shutil.rmtree(home, ignore_errors=True)
    finally:
        api.stop()
        issuer.stop()
    print(f"# Memory: peak RSS of each command, the service's PSS idle and under load "
          f"({args.runs} runs)")  # fmt: skip
    print()
    table("command", "peak RSS", rows)
    print()
    table("service (`chatgpt-login serve`)", "MiB", service_rows)
    return 0


def table(first: str, unit: str, rows: dict[str, list[float]]) -> None:
    print(f"| {first} | {unit} median | min | max |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} "
              f"| {max(values):.1f} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
