"""One sign-in through the runner with a real client, run *inside* a test network namespace.

    ip netns exec <ns> python -m tests.netns_flow <spec.json>

Starts the fake issuer as https://auth.openai.com on 127.0.0.1:443 (the namespace's hosts file
points the name there), signs in with the requested driver and scenario, and prints one JSON
object describing what happened, for tests/test_real_clients.py to check.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from skill.errors import SkillError
from skill.procs import listener_inodes
from skill.runner import Runner
from skill.settings import Settings
from tests.conftest import PROXY_PASSWORD, wait_until
from tests.fake_issuer import FakeIssuer


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    issuer = FakeIssuer()
    scenario = spec["scenario"]
    if scenario == "exchange_fails":
        issuer.token_faults.append((400, {"error": "invalid_grant", "error_description": "nope"}))
    if scenario == "free_plan":
        issuer.account.plan = "free"
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(spec["server_cert"], spec["server_key"])
    issuer.start(port=443, tls=server_tls, public_url="https://auth.openai.com")
    issuer.client_ssl = ssl.create_default_context(cafile=spec["ca_cert"])

    state_dir = Path(tempfile.mkdtemp(prefix="cgl-ns-", dir="/tmp"))
    npm_bin = spec["npm_bin"]
    settings = Settings(
        state_dir=state_dir,
        pi_agent_dir=work / "pi",
        codex_home=work / "codex",
        child_env={
            "PATH": f"{npm_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG": "C.UTF-8",
            "NODE_EXTRA_CA_CERTS": spec["ca_cert"],
            "SSL_CERT_FILE": spec["ca_cert"],
            # A proxy with a password that nothing goes through: it must show in no argv.
            "HTTPS_PROXY": f"http://agent:{PROXY_PASSWORD}@127.0.0.1:9",
            "NO_PROXY": "auth.openai.com,127.0.0.1,localhost",
        },
        pi_ai_command=f"{npm_bin}/pi-ai",
        codex_command=f"{npm_bin}/codex",
        start_timeout=60,
        complete_timeout=60,
    )
    holder = None
    if scenario == "paste_prompt":  # another program holds 1455, so pi-ai falls back to a prompt
        holder = socket.socket()
        holder.bind(("127.0.0.1", 1455))
        holder.listen()

    runner = Runner(settings)
    result: dict[str, Any] = {}
    started = time.monotonic()
    state, _ = runner.start(method=spec["method"], driver=spec["driver"])
    result["start_seconds"] = time.monotonic() - started
    result["auth_url_host"] = (state.auth_url or state.verification_url or "").split("/")[2]
    try:
        if spec["method"] == "device":
            assert state.user_code
            wait_until(lambda: issuer.calls["/api/accounts/deviceauth/token"] >= 1, 30, "a poll")
            issuer.approve_device(state.user_code)
            done = runner.wait(timeout=60)
        else:
            assert state.auth_url
            callback = issuer.sign_in(state.auth_url)
            result["redirect_host"] = callback.split("/")[2]
            if scenario == "paste_prompt":
                prompt = "Paste the authorization code"
                wait_until(
                    lambda: prompt in runner.tmux.screen(state.tmux_session), 30, "pi's prompt"
                )
            started = time.monotonic()
            done = runner.complete(callback)
            result["complete_seconds"] = time.monotonic() - started
        result.update(status=done.status, saved=done.saved)
    except SkillError as exc:
        result.update(status="error", error=exc.code, message=exc.message)
    final = runner.status()
    result["final_status"] = final.status if final else None
    result["issuer_calls"] = dict(issuer.calls)
    result["sessions_left"] = runner.tmux.sessions()
    if holder is not None:
        holder.close()
    result["listeners_left"] = sorted(p for p in (1455, 1457) if listener_inodes(p))
    pi_file = settings.pi_auth_file
    if pi_file.exists():
        result["pi_mode"] = oct(stat.S_IMODE(pi_file.stat().st_mode))
        result["pi_entry"] = json.loads(pi_file.read_text()).get("openai-codex")
    result["work_left"] = sorted(os.listdir(state_dir / "work"))
    result["logs_left"] = sorted(os.listdir(state_dir / "logs"))
    runner.tmux._run("kill-server", check=False)
    issuer.stop()
    shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
