#!/usr/bin/env python3
"""The agent's three timed commands, this tree against another revision, in one run.

    .venv/bin/python scripts/bench_versus.py REV [--runs 10]

For a change that should not slow anything down (a refactoring, a library swapped): each tree
is installed as users get it (``scripts/install --bench``; the other revision from a temporary
``git worktree``), and each run times, whole process and one tree right after the other (so
that machine drift, another job on the machine included, hits both alike):

- ``chatgpt-login start`` to the link printed (native driver);
- ``chatgpt-login complete`` to the credential written (no service: persist pending);
- ``chatgpt-login restore`` of a stored record into an empty HOME (a loopback secrets API).

Prints median, min and max per tree and the median of the paired ratios (this / REV).
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

from scripts.benchlib import print_table  # noqa: E402
from skill.credentials import Credential  # noqa: E402
from skill.tokens import TokenSet  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402

STEPS = ("start", "complete", "restore")


def install(tree: Path) -> str:
    """The tree's runtime-only install; its ``chatgpt-login``."""
    subprocess.run([str(tree / "scripts" / "install"), "--bench"], check=True, cwd=tree,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return str(tree / ".cache" / "bench-venv" / "bin" / "chatgpt-login")


def timed(argv: list[str], env: dict[str, str], stdin: str = "") -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True,
                          check=False)  # fmt: skip
    took = time.monotonic() - started
    if done.returncode not in (0, 10):  # 10: signed in, persisting pending (no service here)
        raise RuntimeError(f"{argv[1]} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return took, done.stdout


def one_run(cli: str, issuer: FakeIssuer, api: FakeSecretsAPI) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="cgl-versus-"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
        "CHATGPT_LOGIN_ISSUER": issuer.url,
        "CHATGPT_LOGIN_CALLBACK_PORTS": f"{free_port()},{free_port()}",
        "CHATGPT_LOGIN_SECRETS_DIR": str(home / "no-secrets"),
    }  # fmt: skip
    try:
        figures: dict[str, float] = {}
        figures["start"], out = timed([cli, "start", "--json"], env)
        callback = issuer.sign_in(json.loads(out)["auth_url"])
        figures["complete"], _ = timed([cli, "complete", "-"], env, stdin=callback)
        subprocess.run([cli, "cancel"], env=env, capture_output=True, check=False)
        shutil.rmtree(home / ".pi")
        stored = {**env, "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token}
        figures["restore"], _ = timed([cli, "restore", "--strict"], stored)
        if not (home / ".pi" / "agent" / "auth.json").exists():
            raise RuntimeError("restore did not write auth.json")
        return figures
    finally:
        sock = home / ".local" / "state" / "chatgpt-login" / "tmux.sock"
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)  # it holds a credential, even if a fake one


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the revision to compare with (a commit, a tag, main~3)")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    other = Path(tempfile.mkdtemp(prefix="cgl-versus-tree-")) / rev
    subprocess.run(["git", "worktree", "add", "--detach", str(other), rev], cwd=REPO, check=True,
                   capture_output=True)  # fmt: skip
    issuer, api = FakeIssuer().start(), FakeSecretsAPI().start()
    try:
        seeded = TokenSet.model_validate(issuer.seed_refresh_token())
        api.record["codex_credentials"] = Credential.from_tokens(seeded).to_pi_entry()
        trees = {"this tree": install(REPO), rev: install(other)}
        rows: dict[str, list[float]] = {f"{step}: {name}": [] for step in STEPS for name in trees}
        for _ in range(args.runs):
            for name, cli in trees.items():
                for step, seconds in one_run(cli, issuer, api).items():
                    rows[f"{step}: {name}"].append(seconds)
        print(f"## This tree against {rev}: start, complete, restore ({args.runs} runs each)\n")
        print_table(rows)
        print()
        for step in STEPS:
            ours, theirs = rows[f"{step}: this tree"], rows[f"{step}: {rev}"]
            ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
            print(f"{step}: this tree / {rev}, paired runs: median {statistics.median(ratios):.2f}"
                  f" (min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip
    finally:
        api.stop()
        issuer.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO,
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(other.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
