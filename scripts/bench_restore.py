#!/usr/bin/env python3
"""``chatgpt-login restore`` as a whole process against a loopback secrets API.

    .venv/bin/python scripts/bench_restore.py [--runs 20]

Each run starts from an empty HOME, so the restore really writes the file. Prints median, min
and max, with beside it, in the same runs: ``curl`` fetching the same record into a file (what
the seed's shell one-liner does; the goal is a restore at most 4 times that, the median of the
paired ratios), a bare ``python3 -c pass``, Python importing the standard library's HTTP
client and json (what any Python restore pays before it reads a byte), and the smallest pydantic
model with a constrained field, built and validated once (what any process that builds a
pydantic model pays).
"""

from __future__ import annotations

import argparse
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

from scripts.benchlib import bench_venv, print_table  # noqa: E402
from skill.credentials import Credential  # noqa: E402
from skill.tokens import TokenSet  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402

# What every pydantic settings object pays before reading a single variable: pydantic, its
# field machinery (pydantic.fields, annotated_types) and one schema build.
SMALLEST_MODEL = """
from pydantic import BaseModel, Field
class Settings(BaseModel):
    timeout: float = Field(default=1.0, gt=0)
Settings.model_validate({"timeout": "2"})
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    issuer, api = FakeIssuer().start(), FakeSecretsAPI().start()
    seeded = TokenSet.model_validate(issuer.seed_refresh_token())
    api.record["codex_credentials"] = Credential.from_tokens(seeded).to_pi_entry()
    cli = str(bench_venv() / "bin" / "chatgpt-login")
    venv_python = str(bench_venv() / "bin" / "python")
    pydantic_floor = "one pydantic model with a Field (floor with pydantic settings)"
    http_floor = "python3 importing urllib.request and json (floor of a Python HTTP client)"
    curl = "curl of the same record into a file (the seed's one-liner)"
    rows: dict[str, list[float]] = {
        curl: [],
        "python3 -c pass (floor)": [],
        http_floor: [],
        pydantic_floor: [],
        "chatgpt-login restore": [],
    }
    for _ in range(args.runs):
        home = tempfile.mkdtemp(prefix="cgl-restore-")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
               "CHATGPT_LOGIN_SECRETS_API_URL": api.url, "FAT_TOOLS_TOKEN": api.token,
               "CHATGPT_LOGIN_SECRETS_DIR": f"{home}/no-secrets"}  # fmt: skip
        headers = Path(home) / "headers"  # curl reads the token from a file, not its argv
        headers.write_text(f"Authorization: Bearer {api.token}\n")
        fetch = ["curl", "-sSf", "--max-time", "10", "-H", f"@{headers}", "-o",
                 f"{home}/record.json", api.url]  # fmt: skip
        for name, argv in ((curl, fetch),
                           ("python3 -c pass (floor)", [sys.executable, "-c", "pass"]),
                           (http_floor, [sys.executable, "-c", "import urllib.request, json"]),
                           (pydantic_floor, [venv_python, "-c", SMALLEST_MODEL]),
                           ("chatgpt-login restore", [cli, "restore", "--strict"])):  # fmt: skip
            started = time.monotonic()
            subprocess.run(argv, env=env, check=True, capture_output=True)
            rows[name].append(time.monotonic() - started)
        if not (Path(home) / ".pi" / "agent" / "auth.json").exists():
            raise RuntimeError("restore did not write auth.json")
        shutil.rmtree(home)  # it holds a credential, even if a fake one
    api.stop()
    issuer.stop()
    print(f"# chatgpt-login restore, whole process, loopback store ({args.runs} runs)")
    print_table(rows)
    ratios = [
        ours / theirs
        for ours, theirs in zip(rows["chatgpt-login restore"], rows[curl], strict=True)
    ]
    print()
    print(f"restore / curl, paired runs: median {statistics.median(ratios):.1f}x "
          f"(min {min(ratios):.1f}x, max {max(ratios):.1f}x; goal: at most 4x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
