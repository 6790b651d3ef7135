#!/usr/bin/env python3
"""# Vault/OpenBao beside the HTTP store: restore, persist, and what hvac would cost

    .venv/bin/python scripts/bench_vault.py [--runs 20] [--hvac]

Against a real OpenBao dev server and, beside it, the seed's secrets API (for restore) and our
reference server with compare-and-set (for persist), all on 127.0.0.1:

- ``chatgpt-login restore`` as a whole process (the installed console script), each run from an
  empty HOME, so that it really writes the file;
- one persist in the service's process (``Persistence.persist``: read the store, write the new
  credential with compare-and-set), each run with a new credential on disk;
- with ``--hvac``: the well-kept Vault client (hvac, installed into ``.cache/hvac-venv``) beside
  the HTTP client our stores share, as ``python -c`` processes: the import alone, and an import
  and one read of the record (ours through the settings object ``restore`` builds anyway).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchlib import bench_venv, print_table  # noqa: E402
from service.persistence import Persistence  # noqa: E402
from service.secrets import SecretsStore, secrets_store  # noqa: E402
from service.settings import ServiceSettings  # noqa: E402
from skill.authfiles import PiAuthFile  # noqa: E402
from skill.credentials import Credential  # noqa: E402
from skill.tokens import TokenSet  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402
from tests.fake_secrets import FakeSecretsAPI  # noqa: E402
from tests.fleet import ReferenceStore, http_store_env, vault_store_env  # noqa: E402
from tests.openbao import OpenBao  # noqa: E402

HVAC = "hvac==2.4.0"
PATH = "chatgpt-login/bench"
HVAC_READ = """
import os, hvac
client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
client.secrets.kv.v2.read_secret_version(path="{path}", raise_on_deleted_version=True)
"""
OURS_READ = """
from service.secrets import secrets_store
from service.settings import ServiceSettings
secrets_store(ServiceSettings.from_env()).read()
"""


def credential(issuer: FakeIssuer) -> Credential:
    return Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))


def client(env: dict[str, str], root: Path) -> SecretsStore:
    return secrets_store(ServiceSettings.from_env({
        **env, "CHATGPT_LOGIN_STATE_DIR": str(root / "client"),
        "CHATGPT_LOGIN_SECRETS_DIR": str(root / "none"),
    }))  # fmt: skip


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, check=False, capture_output=True, text=True)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} exited {done.returncode} after {took:.2f} s: "
                           f"{(done.stdout + done.stderr).strip()[-1500:]}")  # fmt: skip
    return took


def restores(stores: dict[str, dict[str, str]], runs: int) -> dict[str, list[float]]:
    cli = str(bench_venv() / "bin" / "chatgpt-login")
    rows: dict[str, list[float]] = {f"restore from {name}": [] for name in stores}
    for _ in range(runs):
        for name, store_env in stores.items():
            home = tempfile.mkdtemp(prefix="cgl-bench-vault-")
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
                   "CHATGPT_LOGIN_SECRETS_DIR": f"{home}/none", **store_env}  # fmt: skip
            rows[f"restore from {name}"].append(timed([cli, "restore", "--strict"], env))
            if not (Path(home) / ".pi" / "agent" / "auth.json").exists():
                raise RuntimeError(f"restore from {name} did not write auth.json")
            shutil.rmtree(home)
    return rows


def persists(
    stores: dict[str, dict[str, str]], issuer: FakeIssuer, runs: int, root: Path
) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    for name, store_env in stores.items():
        settings = ServiceSettings.from_env({
            **store_env, "CHATGPT_LOGIN_STATE_DIR": str(root / name / "state"),
            "CHATGPT_LOGIN_SECRETS_DIR": str(root / "none"),
            "PI_CODING_AGENT_DIR": str(root / name / "pi"), "HOME": str(root / name),
        })  # fmt: skip
        persistence = Persistence(settings, secrets_store(settings))
        times = rows.setdefault(f"persist to {name}", [])
        for _ in range(runs):
            PiAuthFile(settings.pi_auth_file).save(credential(issuer))
            started = time.monotonic()
            result = persistence.persist()
            times.append(time.monotonic() - started)
            if result.decision != "push":
                raise RuntimeError(f"persist to {name}: {result.decision}")
    return rows


def hvac_imports(bao: OpenBao, runs: int) -> dict[str, list[float]]:
    venv = REPO / ".cache" / "hvac-venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        HVAC], check=True)  # fmt: skip
    ours = str(bench_venv() / "bin" / "python")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": tempfile.mkdtemp(),
           **vault_store_env(bao.addr, bao.root, PATH)}  # fmt: skip
    argvs = {
        "python3 -c pass (floor)": [ours, "-c", "pass"],
        "import our HTTP client (service.store_client)": [ours, "-c",
                                                          "import service.store_client"],
        f"import hvac ({HVAC})": [str(venv / "bin" / "python"), "-c", "import hvac"],
        "ours: settings (pydantic), import, read the record": [ours, "-c", OURS_READ],
        "hvac: import, read the record (no settings)": [str(venv / "bin" / "python"), "-c",
                                                        HVAC_READ.format(path=PATH)],
    }  # fmt: skip
    rows: dict[str, list[float]] = {name: [] for name in argvs}
    for _ in range(runs):
        for name, argv in argvs.items():
            rows[name].append(timed(argv, env))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--hvac", action="store_true", help="also measure hvac (installs it)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cgl-bench-vault-"))
    issuer, api, bao = FakeIssuer().start(), FakeSecretsAPI().start(), OpenBao().start()
    reference = ReferenceStore(root / "reference")
    vault = vault_store_env(bao.addr, bao.root, PATH)
    try:
        entry = credential(issuer).to_pi_entry()
        api.record["codex_credentials"] = entry
        client(vault, root).write({"codex_credentials": entry})
        print(__doc__.splitlines()[0])
        print()
        print(f"{args.runs} runs each, seconds.")
        print()
        rows = restores({"the seed's API (HTTP)": http_store_env(api.url, api.token),
                         "OpenBao (vault)": vault}, args.runs)  # fmt: skip
        rows |= persists({"the reference server (HTTP, If-Match)":
                          http_store_env(reference.url, reference.token),
                          "OpenBao (vault)": vault}, issuer, args.runs, root)  # fmt: skip
        if args.hvac:
            rows |= hvac_imports(bao, args.runs)
        print_table(rows)
    finally:
        reference.stop()
        bao.stop()
        api.stop()
        issuer.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
