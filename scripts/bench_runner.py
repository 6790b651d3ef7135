#!/usr/bin/env python3
"""Benchmark the agent's commands against the original recipe, side by side in one run.

    .venv/bin/python scripts/bench_runner.py [--runs 20]

Figures (median, min, max over --runs, interleaved so machine drift hits all alike):

- ``chatgpt-login start`` to the link printed (whole process), per driver: native, pi-ai and
  codex (the pinned CLIs from .cache/npm);
- ``chatgpt-login complete`` to the credential written (whole process), native driver, against
  the fake issuer on loopback; and the same with the service running (``chatgpt-login serve``)
  until the loopback secrets API has acknowledged the stored credential;
- the original recipe (../shared/seeds/000): ``tmux new-session ... pi-ai login | tee``,
  ``sleep 5``, ``cat``; then ``tmux send-keys <url> Enter``, ``sleep 3``, ``cat``. Run literally
  (with the installed pi-ai instead of ``npx``, which would only add download time), including
  whether it signed in: with pi-ai 0.73.1 it cannot, because pi-ai ignores typed input while
  its callback listener is up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import Served, bench_venv, print_table  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402

CLI = str(bench_venv() / "bin" / "chatgpt-login")
NPM_BIN = REPO / ".cache" / "npm" / "node_modules" / ".bin"


class Bench:
    def __init__(self, issuer: FakeIssuer) -> None:
        self.issuer = issuer
        self.home = Path(tempfile.mkdtemp(prefix="cgl-bench-", dir="/tmp"))
        self.ports = f"{free_port()},{free_port()}"
        self.api: FakeSecretsAPI | None = None
        self.service_port = 0

    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{NPM_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "CHATGPT_LOGIN_ISSUER": self.issuer.url,
            "CHATGPT_LOGIN_CALLBACK_PORTS": self.ports,
            "CHATGPT_LOGIN_PI_AI_COMMAND": str(NPM_BIN / "pi-ai"),
            "CHATGPT_LOGIN_CODEX_COMMAND": str(NPM_BIN / "codex"),
        }
        if self.api is not None:
            env.update(CHATGPT_LOGIN_SECRETS_API_URL=self.api.url, FAT_TOOLS_TOKEN=self.api.token,
                       CHATGPT_LOGIN_SERVICE_URL=f"http://127.0.0.1:{self.service_port}",
                       CHATGPT_LOGIN_SECRETS_DIR=str(self.home / "no-secrets"))  # fmt: skip
        return env

    def start_service(self, api: FakeSecretsAPI) -> Served:
        """``chatgpt-login serve`` for this HOME, storing in ``api``; from now on every command
        runs with it (``complete`` asks it to persist)."""
        self.api, self.service_port = api, free_port()
        serve = [CLI, "serve", "--bind", f"127.0.0.1:{self.service_port}"]
        return Served(serve, self.env(), self.service_port)

    def cli(self, *args: str, stdin: str = "") -> tuple[float, dict[str, object]]:
        started = time.monotonic()
        done = subprocess.run(
            [CLI, *args, "--json"], input=stdin, capture_output=True, text=True,
            env=self.env(), check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        data = json.loads(done.stdout)
        if not data.get("ok"):
            raise RuntimeError(f"{args[0]} failed: {data}")
        return elapsed, data

    def start(self, driver: str) -> float:
        elapsed, _ = self.cli("start", "--driver", driver, "--restart")
        self.cli("cancel")
        return elapsed

    def complete(self) -> float:
        _, data = self.cli("start", "--restart")
        callback = self.issuer.sign_in(str(data["auth_url"]))
        elapsed, data = self.cli("complete", "-", stdin=callback)
        if data["status"] != "succeeded":
            raise RuntimeError(data)
        # With the service, complete returns once the secrets API has acknowledged the write.
        if self.api is not None and not (data.get("persisted") and self.api.acks):
            raise RuntimeError(f"not stored: {data.get('persist_message')}")
        return elapsed

    def recipe(self) -> tuple[float, float, bool]:
        """The original skill's two steps, literally; returns their times and the outcome."""
        work = Path(tempfile.mkdtemp(prefix="cgl-recipe-", dir="/tmp"))
        sock, log = str(work / "sock"), work / "chatgpt-login.log"
        tmux = ["tmux", "-S", sock]
        env = {**self.env(), "HOME": str(work)}
        pi = shutil.which("pi-ai", path=env["PATH"])
        started = time.monotonic()
        subprocess.run([*tmux, "new-session", "-d", "-s", "chatgpt-login",
                        f"cd {work} && {pi} login openai-codex 2>&1 | tee {log}"], env=env,
                       check=True)  # fmt: skip
        time.sleep(5)
        text = log.read_text()
        step1 = time.monotonic() - started
        url = next((w for w in text.split() if "/oauth/authorize?" in w), "")
        callback = f"http://localhost:1455/auth/callback?code=ac_recipe&state={url[-8:]}"
        started = time.monotonic()
        subprocess.run([*tmux, "send-keys", "-t", "chatgpt-login", callback, "Enter"], check=True)
        time.sleep(3)
        signed_in = "Credentials saved to auth.json" in log.read_text()
        step2 = time.monotonic() - started
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        return step1, step2, signed_in


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--recipe-runs", type=int, default=None, help="default: --runs")
    args = parser.parse_args()
    issuer, api = FakeIssuer().start(), FakeSecretsAPI().start()
    bench, served = Bench(issuer), Bench(issuer)
    service = served.start_service(api)
    have_npm = (NPM_BIN / "pi-ai").exists() and (NPM_BIN / "codex").exists()
    rows: dict[str, list[float]] = {}
    cases: dict[str, Callable[[], float]] = {
        "start, native (to link printed)": lambda: bench.start("native"),
        "complete, native (to credential written)": bench.complete,
        "complete, native, service running (to stored in the secrets API)": served.complete,
    }
    if have_npm:
        cases["start, pi-ai installed (to link printed)"] = lambda: bench.start("pi-ai")
        cases["start, codex (to link printed)"] = lambda: bench.start("codex")
    for _ in range(args.runs):
        for name, case in cases.items():
            rows.setdefault(name, []).append(case())
    recipe_ok = 0
    recipe_runs = args.runs if args.recipe_runs is None else args.recipe_runs
    if have_npm:
        for _ in range(recipe_runs):
            step1, step2, ok = bench.recipe()
            rows.setdefault("original recipe: start (sleep 5, cat)", []).append(step1)
            rows.setdefault("original recipe: paste (send-keys, sleep 3)", []).append(step2)
            recipe_ok += ok
    service.stop()
    issuer.stop()
    api.stop()
    for each in (bench, served):
        sock = each.home / ".local" / "state" / "chatgpt-login" / "tmux.sock"
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True, check=False)
        shutil.rmtree(each.home, ignore_errors=True)

    print(f"# chatgpt-login commands vs the original recipe ({args.runs} runs each)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, tmux {_tmux_version()}")  # fmt: skip
    print()
    print_table(rows)
    if have_npm:
        print(f"\noriginal recipe signed in: {recipe_ok} of {recipe_runs} runs")
    return 0


def _tmux_version() -> str:
    return subprocess.run(
        ["tmux", "-V"], capture_output=True, text=True, check=False
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
