"""What the benchmark scripts share."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench_venv() -> Path:
    """A regular, runtime-only install, as users get it (``scripts/install --bench``): the test
    venv's extras change import costs (schemathesis brings rich, which makes httpx import its
    own CLI), and an editable install adds a path finder to every start."""
    subprocess.run([str(REPO / "scripts" / "install"), "--bench"], check=True)
    return REPO / ".cache" / "bench-venv"


def print_table(rows: dict[str, list[float]], *, first: str = "what") -> None:
    """One Markdown row per measurement: median, min and max in seconds."""
    print(f"| {first} | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f} | {max(values):.3f} |")
