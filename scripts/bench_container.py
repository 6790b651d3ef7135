#!/usr/bin/env python3
"""The service's memory inside the container, per image: PSS idle and under the load test.

    .venv/bin/python scripts/bench_container.py --image localhost/chatgpt-login:dev \
        [--image localhost/chatgpt-login:before] [--runs 3] [--load-seconds 30]

Build the images first (``scripts/container-test`` builds ``localhost/chatgpt-login:dev``; for
another revision, ``podman build`` its checkout with the same arguments). Each run starts one
agent container per image, one image after the other (so that another job on the machine hits
them alike), locked down as compose.yaml runs it, with host networking: it restores a stored
credential from a loopback secrets API and keeps it alive against the fake issuer, whose
30-second tokens it renews about every 10 s. After one request of each kind the load test sends
(what a first request imports) and 2 s, the PSS of its gunicorn master and worker is read inside
the container (idle), then the highest seen while the load test's traffic (50 requests/s)
runs for --load-seconds. Median, min and max per image, in MiB.

Uses podman as ``scripts/container-test`` does (root, ``CONTAINERS_CONF=.ci/containers.conf``
on this machine); its containers and volumes are named ``cgl-bench-mem-*`` and removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.container_story import IMAGE_UID, LOCKED_DOWN, http_status, podman  # noqa: E402
from scripts.load_test import PATHS, RATE, Client, highest_while_loaded  # noqa: E402
from skill.credentials import Credential  # noqa: E402
from skill.tokens import TokenSet  # noqa: E402
from tests.conftest import free_port, wait_until  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402

NAME = "cgl-bench-mem"

# Run inside the container: the PSS (MiB) of the service's gunicorn master and worker(s), and
# how much of it is anonymous memory (the rest is mapped files: libraries' code and data, which
# the kernel can drop and read again under memory pressure as long as they are clean).
SERVICE_PSS = """
import json, pathlib
parents = {}
for proc in pathlib.Path("/proc").iterdir():
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\\0")
        if proc.name.isdigit() and b"gunicorn" in argv and b"service.wsgi:app" in argv:
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        continue
found = {}
for pid, parent in sorted(parents.items()):
    name = "worker" if parent in parents else "master"
    for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        for field, key in (("Pss:", name), ("Pss_Anon:", "anonymous")):
            if line.startswith(field):
                found[key] = found.get(key, 0) + int(line.split()[1]) / 1024
print(json.dumps(found))
"""


def remove(name: str) -> None:
    podman("rm", "-f", "-v", "-t", "5", name, check=False)
    podman("volume", "rm", "-f", f"{name}-home", f"{name}-state", check=False)


def measure(image: str, *, secrets_dir: Path, api: FakeSecretsAPI, issuer: FakeIssuer,
            operator_token: str, load_seconds: float) -> dict[str, float]:  # fmt: skip
    """One container of ``image``: the service's PSS idle and under load, by process."""
    port, name = free_port(), f"{NAME}-{secrets.token_hex(3)}"
    mounts = [f"{secrets_dir / each}:/run/secrets/{each}:ro"
              for each in ("secrets_api_token", "operator_token")]  # fmt: skip
    env = {"CHATGPT_LOGIN_SECRETS_API_URL": api.url, "CHATGPT_LOGIN_ISSUER": issuer.url,
           "CHATGPT_LOGIN_BIND": f"127.0.0.1:{port}",
           "CHATGPT_LOGIN_SERVICE_URL": f"http://127.0.0.1:{port}",
           "CHATGPT_LOGIN_CALLBACK_PORTS": f"{free_port()},{free_port()}",
           "CHATGPT_LOGIN_REFRESH_WINDOW": "20"}  # fmt: skip
    try:
        podman("run", "-d", "--name", name, *LOCKED_DOWN, "--network", "host",
               "--health-interval", "disable", "-v", f"{name}-home:/home/agent",
               "-v", f"{name}-state:/var/lib/chatgpt-login",
               *(arg for mount in mounts for arg in ("-v", mount)),
               *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
               image, "sleep", "infinity")  # fmt: skip
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 60,
                   f"{image}: /readyz")  # fmt: skip

        def pss() -> dict[str, float]:
            found = json.loads(podman("exec", name, "python3", "-c", SERVICE_PSS))
            anonymous = found.pop("anonymous")
            return found | {"total": sum(found.values()), "total: anonymous part": anonymous}

        client = Client(port, operator_token)
        for path in PATHS:
            client.get(path)
        time.sleep(2)
        idle = pss()
        loaded = highest_while_loaded(client, load_seconds, pss)
        if client.errors:
            raise RuntimeError(f"{image}: the load got errors: {client.errors[:3]}")
        return {f"idle: {k}": v for k, v in idle.items()} | {
            f"under load ({RATE}/s): {k}": v for k, v in loaded.items()
        }
    finally:
        remove(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="append", required=True, help="repeat to compare")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=30)
    args = parser.parse_args()
    os.environ.setdefault("CONTAINERS_CONF", str(REPO / ".ci" / "containers.conf"))
    issuer, api = FakeIssuer(expires_in=30).start(), FakeSecretsAPI().start()
    seeded = TokenSet.model_validate(issuer.seed_refresh_token())
    api.record["codex_credentials"] = Credential.from_tokens(seeded).to_pi_entry()
    operator_token = secrets.token_urlsafe(32)
    rows: dict[str, dict[str, list[float]]] = {image: {} for image in args.image}
    try:
        with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as workdir:
            secrets_dir = Path(workdir)
            for name, value in (("secrets_api_token", api.token),
                                ("operator_token", operator_token)):  # fmt: skip
                path = secrets_dir / name
                path.write_text(value + "\n")
                path.chmod(0o600)
                os.chown(path, IMAGE_UID, IMAGE_UID)
            for _ in range(args.runs):
                for image in args.image:
                    found = measure(image, secrets_dir=secrets_dir, api=api, issuer=issuer,
                                    operator_token=operator_token,
                                    load_seconds=args.load_seconds)  # fmt: skip
                    for key, mib in found.items():
                        rows[image].setdefault(key, []).append(mib)
    finally:
        api.stop()
        issuer.stop()
    print(f"# The service's PSS inside the container ({args.runs} runs, "
          f"load {args.load_seconds:g} s)")  # fmt: skip
    print()
    print("| image | what | MiB median | min | max |")
    print("|---|---|---|---|---|")
    for image, figures in rows.items():
        for key, values in figures.items():
            print(f"| {image} | {key} | {statistics.median(values):.1f} | {min(values):.1f} | "
                  f"{max(values):.1f} |")  # fmt: skip
    reused = issuer.calls["refresh_token_reused"]
    print(f"\nrenewals by the services: {issuer.calls['grant:refresh_token']}; reused: {reused}")
    return 0 if reused == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
