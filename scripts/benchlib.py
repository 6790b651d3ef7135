"""What the benchmark scripts share."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench_venv() -> Path:
    """A regular, runtime-only install, as users get it (``scripts/install --bench``): the test
    venv's extras change import costs (schemathesis brings rich and more), and an editable
    install adds a path finder to every start."""
    subprocess.run([str(REPO / "scripts" / "install"), "--bench"], check=True)
    return REPO / ".cache" / "bench-venv"


def print_table(rows: dict[str, list[float]], *, first: str = "what") -> None:
    """One Markdown row per measurement: median, min and max in seconds."""
    print(f"| {first} | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f} | {max(values):.3f} |")


class Served:
    """A server (``chatgpt-login serve``, gunicorn) started in a session of its own, returned
    once ``/healthz`` on ``port`` answers; :meth:`stop` sends SIGTERM to its whole process
    group (master and workers) and waits for it."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return
            except OSError:  # URLError included: not listening yet
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{argv[0]} did not come up on port {port}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)
