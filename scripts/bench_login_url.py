#!/usr/bin/env python3
"""Time from starting a login program to its sign-in link being printed.

Runs each program N times (default 20), side by side in one run so the ratios hold on a noisy
machine, and prints median, min and max. Programs: our login program (the installed
``chatgpt-login`` entry point), and for comparison the real pi-ai 0.73.1 and codex 0.169.0 CLIs
from .cache/npm when scripts/test has installed them, plus bare Python start-up as a floor.

    .venv/bin/python scripts/bench_login_url.py [--runs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from scripts.benchlib import bench_venv, print_table  # noqa: E402

NPM_BIN = REPO / ".cache" / "npm" / "node_modules" / ".bin"
URL_RE = re.compile(r"https://auth\.openai\.com/oauth/authorize\?\S+")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_to_url(argv: list[str], env: dict[str, str], cwd: str, timeout: float = 30) -> float:
    """Seconds from spawn to a line holding the authorize URL; the program is then killed."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        text=True,
        start_new_session=True,  # its own process group, killed whole below
    )
    try:
        if proc.stdout is None:
            raise RuntimeError("no stdout pipe")
        while time.monotonic() - started < timeout:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{argv[0]} exited before printing a URL")
            if URL_RE.search(line):
                return time.monotonic() - started
        raise RuntimeError(f"{argv[0]} printed no URL within {timeout}s")
    finally:
        # The whole group: npm's codex wrapper would otherwise leave the native binary
        # holding port 1455.
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def time_to_exit(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-login-")
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "LANG": "C.UTF-8"}
    ours_env = {**base_env, "PI_CODING_AGENT_DIR": f"{work}/pi"}
    chatgpt_login = str(bench_venv() / "bin" / "chatgpt-login")

    def ours() -> float:
        ports = f"{free_port()},{free_port()}"
        env = {**ours_env, "CHATGPT_LOGIN_CALLBACK_PORTS": ports}
        return time_to_url([chatgpt_login, "oauth-login"], env, work)

    programs: dict[str, Callable[[], float]] = {
        "python3 -c pass (floor)": lambda: time_to_exit([sys.executable, "-c", "pass"], base_env),
        "chatgpt-login oauth-login": ours,
    }
    if (NPM_BIN / "pi-ai").exists():
        pi = [str(NPM_BIN / "pi-ai"), "login", "openai-codex"]
        programs["pi-ai login openai-codex"] = lambda: time_to_url(pi, base_env, work)
    if (NPM_BIN / "codex").exists():
        codex = [str(NPM_BIN / "codex"), "-c", 'cli_auth_credentials_store="file"', "login"]
        codex_env = {**base_env, "CODEX_HOME": work}
        programs["codex login"] = lambda: time_to_url(codex, codex_env, work)

    samples: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(args.runs):  # interleaved, so drift hits every program alike
        for name, run in programs.items():
            samples[name].append(run())

    print(f"# Time to sign-in link ({args.runs} runs each, interleaved)")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print()
    print_table(samples, first="program")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
