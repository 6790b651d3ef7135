#!/usr/bin/env python3
"""Every benchmark in one run, written to BENCHMARKS.md (``make bench``).

    .venv/bin/python scripts/bench.py            # full runs (about 25 minutes) -> BENCHMARKS.md
    .venv/bin/python scripts/bench.py --short    # a few runs each, to check they all still work
                                                 # (CI); written to --output, not BENCHMARKS.md

Each section is one of the ``scripts/bench_*.py`` scripts, run as its own process one after the
other (never two at once: they would disturb each other's figures). Inside each, the variants
are interleaved, so ratios hold on a noisy machine. The machine and versions come first.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import bench_venv  # noqa: E402

# (script, full arguments, short arguments)
SECTIONS = [
    ("bench_login_url.py", ["--runs", "20"], ["--runs", "2"]),
    ("bench_runner.py", ["--runs", "20", "--recipe-runs", "5"],
     ["--runs", "2", "--recipe-runs", "1"]),
    ("bench_restore.py", ["--runs", "20"], ["--runs", "2"]),
    ("bench_syncback.py", ["--rewrites", "50"], ["--rewrites", "3"]),
    ("bench_api.py", ["--runs", "5", "--seconds", "5"],
     ["--runs", "1", "--seconds", "1", "--connections", "1,8"]),
    ("bench_events.py", ["--runs", "5", "--seconds", "5"],
     ["--runs", "1", "--seconds", "1", "--streams", "10"]),
    ("bench_stampede.py", ["--runs", "3"], ["--runs", "1", "--processes", "1,4"]),
    ("bench_memory.py", ["--runs", "3"], ["--runs", "1", "--load-seconds", "3"]),
    ("bench_vault.py", ["--runs", "20", "--hvac"], ["--runs", "2"]),
    ("bench_fleet.py", ["--seconds", "90"],
     ["--seconds", "8", "--containers", "2", "--stores", "cas,vault"]),
]  # fmt: skip


def machine() -> list[str]:
    venv_python = str(bench_venv() / "bin" / "python")
    versions = subprocess.run(
        [venv_python, "-c", "import importlib.metadata as m; print(', '.join(f'{p} ' + "
         "m.version(p) for p in ('flask', 'gunicorn', 'pydantic', 'libtmux')))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = _git("rev-parse", "--short", "HEAD")
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit {commit}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; {versions}",
        f"- {_version(['tmux', '-V'])}; node {_version(['node', '--version'])}; "
        f"pi-ai 0.73.1 and codex 0.169.0 (tests/npm/package-lock.json)",
    ]  # fmt: skip


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "not installed"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=False).stdout.strip()  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a few runs each (CI)")
    parser.add_argument(
        "--output", type=Path, default=None,
        help="default: BENCHMARKS.md, or a temporary file with --short",
    )  # fmt: skip
    args = parser.parse_args()
    output = args.output or (
        Path(tempfile.mkstemp(prefix="benchmarks-", suffix=".md")[1]) if args.short
        else REPO / "BENCHMARKS.md"
    )  # fmt: skip
    mode = "short check (not figures to quote)" if args.short else "full run"
    parts = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`scripts/bench.py`), {mode}. Each table is one script in "
        "`scripts/`, which says in its docstring what it measures and how; run one alone to "
        "repeat it. Times are medians with min and max over the runs stated.",
        "",
        *machine(),
    ]
    python = sys.executable
    failed = []
    for script, full, short in SECTIONS:
        started = time.monotonic()
        print(f"== {script}", flush=True)
        argv = [python, str(REPO / "scripts" / script), *(short if args.short else full)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        took = time.monotonic() - started
        if done.returncode != 0:
            failed.append(script)
            tail = done.stderr.strip()[-3000:]
            # Printed as well as reported: CI keeps what the run printed, not the report file.
            print(f"{script} failed (exit {done.returncode}):\n{tail}", file=sys.stderr, flush=True)
            parts += ["", f"## {script}: FAILED (exit {done.returncode})", "", "```", tail, "```"]
            continue
        table = done.stdout.strip().splitlines()
        heading = table[0].lstrip("# ") if table and table[0].startswith("#") else script
        command = f"`.venv/bin/python scripts/{script} {' '.join(full)}`"
        body = "\n".join(table[1:]).strip().splitlines()
        parts += ["", f"## {heading}", "", *body, "", f"{command} ({took:.0f} s this run)"]
    output.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {output}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
