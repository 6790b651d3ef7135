#!/usr/bin/env python3
"""The container story, run by ``scripts/container-test`` against a built image.

With the fake issuer on this machine's loopback and the reference secrets API in its own
container (host networking, as on this build machine):

1. start an agent container whose command records whether auth.json was there when it began;
2. sign in through ``chatgpt-login start`` / ``complete`` inside it; the credential must reach
   the secrets API;
3. remove the container and its volumes (only the secrets API's volume stays);
4. start a new one: its auth.json must be back (0600, same account, same refresh token) before
   the agent command starts;
5. rotate the token inside it from another process than the service: the rotation must reach
   the secrets API (sync-back);
6. start a second agent container of the same user (its own volumes): it comes up signed in
   with the stored copy; through three token lifetimes one container renews and the other
   adopts, 0 refresh tokens presented twice; then the first is restarted while the second
   keeps working, and both end on the stored copy;
7. ``podman stop`` must end it cleanly (exit 0, within the grace period).

Prints one line per check and the figures (start to /readyz green, sync-back latency, stop
time); exits non-zero at the first failed check. No token is printed: tokens are compared by
their SHA-256 inside the containers.

    .venv/bin/python scripts/container_story.py --image localhost/chatgpt-login:dev
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import free_port  # noqa: E402
from tests.fake_issuer import FakeIssuer  # noqa: E402

PREFIX = "cgl-story"
IMAGE_UID = 10001  # the Dockerfile's user
HOME_VOLUME, STATE_VOLUME, DATA_VOLUME = f"{PREFIX}-home", f"{PREFIX}-state", f"{PREFIX}-data"
AGENT, SECRETS_API = f"{PREFIX}-agent", f"{PREFIX}-secrets-api"
# The second agent container of the same user, and its own volumes.
AGENT2, HOME2_VOLUME, STATE2_VOLUME = f"{PREFIX}-agent2", f"{PREFIX}-home2", f"{PREFIX}-state2"
# The agent command: says whether auth.json was there when it started (its mode and the hash of
# its refresh token), then idles.
AGENT_COMMAND = (
    'f="$HOME/.pi/agent/auth.json"; '
    'if [ -f "$f" ]; then echo "agent start: auth.json $(stat -c %a "$f")'
    " $(python -c \"import hashlib, json; print(hashlib.sha256(json.load(open('$f'))"
    "['openai-codex']['refresh'].encode()).hexdigest())\")\"; "
    'else echo "agent start: no auth.json"; fi; exec sleep infinity'
)
# compose.yaml's x-locked-down, as podman run flags: every container of the story runs so.
LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp:noexec,nosuid", "--cap-drop", "ALL",  # noqa: S108
               "--security-opt", "no-new-privileges"]  # fmt: skip
# Short token lives, so the story sees several: the service renews when under 20 s are left.
TOKEN_LIFE, REFRESH_WINDOW = 30, 20
# Hash of the stored or local refresh token, computed where the token is, so none is printed.
LOCAL_REFRESH_HASH = (
    "import hashlib, json, pathlib; "
    "e = json.loads((pathlib.Path.home() / '.pi/agent/auth.json').read_text())['openai-codex']; "
    "print(e['accountId'], hashlib.sha256(e['refresh'].encode()).hexdigest())"
)
# Another process than the service spends the refresh token and writes the file (as pi would).
ROTATE = (
    "from service.refresher import Refresher; from service.settings import ServiceSettings; "
    "Refresher(ServiceSettings.from_env()).ensure_fresh(force=True)"
)


def podman(*args: str, check: bool = True, input: str | None = None) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, input=input, timeout=120, check=False
    )
    if check and done.returncode != 0:
        raise StoryError(
            f"podman {args[0]} failed ({done.returncode}): {done.stderr.strip()[-800:]}"
        )
    return done.stdout


class StoryError(Exception):
    pass


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        raise StoryError(what)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise StoryError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback
            return int(answer.status)
    except urllib.error.HTTPError as answer:
        return answer.code
    except OSError:
        return 0


class Story:
    def __init__(self, image: str, workdir: Path) -> None:
        self.image = image
        self.secrets_dir = workdir / "secrets"
        self.secrets_dir.mkdir(mode=0o700)
        self.api_token = secrets.token_urlsafe(32)
        self.operator_token = secrets.token_urlsafe(32)
        # As scripts/make-secrets leaves them (run as root): 0600, owned by the image's user.
        for name, value in (("secrets_api_token", self.api_token),
                            ("operator_token", self.operator_token)):  # fmt: skip
            path = self.secrets_dir / name
            path.write_text(value + "\n")
            path.chmod(0o600)
            os.chown(path, IMAGE_UID, IMAGE_UID)
        self.api_port, self.agent_port, self.agent2_port = free_port(), free_port(), free_port()
        self.callback_ports = f"{free_port()},{free_port()}"
        self.issuer = FakeIssuer(expires_in=TOKEN_LIFE).start()
        self.figures: dict[str, str] = {}

    @property
    def store_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/agent/secrets"

    def secret_mount(self, name: str) -> list[str]:
        return ["-v", f"{self.secrets_dir / name}:/run/secrets/{name}:ro"]

    def clean(self) -> None:
        podman("rm", "-f", "-v", "-t", "0", AGENT, AGENT2, SECRETS_API, check=False)
        podman("volume", "rm", "-f", HOME_VOLUME, STATE_VOLUME, DATA_VOLUME, HOME2_VOLUME,
               STATE2_VOLUME, check=False)  # fmt: skip

    # The two containers --------------------------------------------------------------------

    def start_secrets_api(self) -> None:
        bind = f"127.0.0.1:{self.api_port}"
        podman(
            "run",
            "-d",
            "--name",
            SECRETS_API,
            *LOCKED_DOWN,
            "--health-interval",
            "disable",
            "-v",
            f"{DATA_VOLUME}:/var/lib/chatgpt-login",
            *self.secret_mount("secrets_api_token"),
            "-e",
            f"CHATGPT_LOGIN_BIND={bind}",
            "--entrypoint",
            "tini",
            self.image,
            "--",
            "chatgpt-login",
            "secrets-server",
            "--bind",
            bind,
        )
        healthy = ["podman", "healthcheck", "run", SECRETS_API]
        wait_for(
            lambda: subprocess.run(healthy, capture_output=True, check=False).returncode == 0,
            30,
            "the secrets API's HEALTHCHECK",
        )
        check(True, "secrets API container healthy (its HEALTHCHECK passes)")

    def start_agent(
        self,
        *,
        store_url: str | None = None,
        ready_path: str = "/readyz",
        extra_env: Sequence[str] = (),
        second: bool = False,
    ) -> float:
        """Start an agent container (``second``: the other one of the same user); seconds from
        `podman run` to ``ready_path`` answering 200."""
        started = time.monotonic()
        name, home, state = (AGENT2, HOME2_VOLUME, STATE2_VOLUME) if second else (
            AGENT, HOME_VOLUME, STATE_VOLUME)  # fmt: skip
        port = self.agent2_port if second else self.agent_port
        podman(
            "run",
            "-d",
            "--name",
            name,
            *LOCKED_DOWN,
            "--health-interval",
            "disable",
            "-v",
            f"{home}:/home/agent",
            "-v",
            f"{state}:/var/lib/chatgpt-login",
            *self.secret_mount("secrets_api_token"),
            *self.secret_mount("operator_token"),
            "-e",
            f"CHATGPT_LOGIN_SECRETS_API_URL={store_url or self.store_url}",
            *extra_env,
            "-e",
            f"CHATGPT_LOGIN_BIND=127.0.0.1:{port}",
            "-e",
            f"CHATGPT_LOGIN_SERVICE_URL=http://127.0.0.1:{port}",
            "-e",
            f"CHATGPT_LOGIN_ISSUER={self.issuer.url}",
            "-e",
            f"CHATGPT_LOGIN_CALLBACK_PORTS={self.callback_ports}",
            "-e",
            f"CHATGPT_LOGIN_REFRESH_WINDOW={REFRESH_WINDOW}",
            "-e",
            "CHATGPT_LOGIN_REFRESH_MIN_INTERVAL=5",
            "-e",
            "CHATGPT_LOGIN_STORE_POLL=2",
            "-e",
            "CHATGPT_LOGIN_HOLDER_HEARTBEAT=5",
            self.image,
            "bash",
            "-c",
            AGENT_COMMAND,
        )
        ready = f"http://127.0.0.1:{port}{ready_path}"
        wait_for(lambda: http_status(ready) == 200, 60, f"the agent's {ready_path}")
        return time.monotonic() - started

    def agent_exec(self, *argv: str, stdin: str | None = None, agent: str = AGENT) -> str:
        interactive = ["-i"] if stdin is not None else []
        return podman("exec", *interactive, agent, *argv, input=stdin)

    def agent_log(self, agent: str = AGENT) -> str:
        done = subprocess.run(
            ["podman", "logs", agent], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout + done.stderr

    # What the checks read ------------------------------------------------------------------

    def stored(self) -> tuple[str, str] | None:
        """(account id, refresh token hash) of the stored record, or None."""
        headers = {"Authorization": f"Bearer {self.api_token}"}
        request = urllib.request.Request(self.store_url, headers=headers)  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            entry = json.load(answer).get("codex_credentials")
        if not entry:
            return None
        return entry["accountId"], hashlib.sha256(entry["refresh"].encode()).hexdigest()

    def local(self, agent: str = AGENT) -> tuple[str, str]:
        account, digest = self.agent_exec("python", "-c", LOCAL_REFRESH_HASH, agent=agent).split()
        return account, digest

    def holders(self, port: int) -> list[str]:
        """The holder ids the operator API shows as sharing the credential."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/credentials",
            headers={"Authorization": f"Bearer {self.operator_token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            return sorted(holder["id"] for holder in json.load(answer)["holders"])

    # The story ---------------------------------------------------------------------------------

    def rotate_elsewhere(self) -> None:
        """Another process than the service (as pi would) renews the token and writes the
        file; the service must store the rotation (sync-back)."""
        before = self.local()
        self.agent_exec("python", "-c", ROTATE)
        rotated_at = time.monotonic()
        rotated = self.local()
        check(rotated[1] != before[1], "a process in the container rotated the refresh token")
        wait_for(lambda: self.stored() == rotated, 10, "the rotation in the store")
        latency = time.monotonic() - rotated_at
        self.figures.setdefault(
            "sync-back: rotation written to stored (at most)", f"{latency:.2f} s"
        )
        check(True, f"the rotated credential was synced back within {latency:.2f} s")

    def unreachable_store_does_not_block(self) -> None:
        """A secrets API that accepts connections and never answers: the restore gives up
        within CHATGPT_LOGIN_RESTORE_LIMIT and the service and the agent start."""
        with socket.socket() as blackhole:
            blackhole.bind(("127.0.0.1", 0))
            blackhole.listen(16)
            url = f"http://127.0.0.1:{blackhole.getsockname()[1]}/api/agent/secrets"
            took = self.start_agent(store_url=url, ready_path="/healthz",
                                    extra_env=["-e", "CHATGPT_LOGIN_RESTORE_LIMIT=3"])  # fmt: skip
            wait_for(lambda: "agent start:" in self.agent_log(), 10, "the agent command")
        log = self.agent_log()
        # restore cuts its own waits to fit the limit, so it says so itself; the entrypoint's
        # `timeout` is the backstop in case it did not.
        gave_up = "could not be reached" in log or "restore did not finish within 3s" in log
        started = gave_up and "agent start:" in log and took < 15
        check(started, f"secrets API hanging: the container still started ({took:.1f}s)")
        self.figures["hanging secrets API: podman run to /healthz 200"] = f"{took:.2f} s"
        podman("rm", "-f", "-v", "-t", "10", AGENT)
        podman("volume", "rm", HOME_VOLUME, STATE_VOLUME)

    def run(self) -> None:
        self.clean()
        self.unreachable_store_does_not_block()
        self.start_secrets_api()

        first_ready = self.start_agent()
        self.figures["first container: podman run to /readyz 200"] = f"{first_ready:.2f} s"
        wait_for(lambda: "agent start:" in self.agent_log(), 10, "the agent command")
        check("agent start: no auth.json" in self.agent_log(), "fresh container: no auth.json yet")
        check_locked_down(AGENT, "agent container")
        check_locked_down(SECRETS_API, "secrets API container")

        started = json.loads(self.agent_exec("chatgpt-login", "start", "--json"))
        callback = self.issuer.sign_in(started["auth_url"])
        completed = json.loads(
            self.agent_exec("chatgpt-login", "complete", "--json", stdin=callback)
        )
        check(
            completed.get("status") == "succeeded" and completed.get("persisted") is True,
            f"start/complete inside the container: {completed.get('status')}, "
            f"persisted={completed.get('persisted')}",
        )
        account, refresh_hash = self.local()
        check(
            self.stored() == (account, refresh_hash),
            "the credential reached the secrets API (same account, same refresh token)",
        )

        # Several token lifetimes: the service renews ahead of expiry; each renewal is stored.
        lifetimes_started = time.monotonic()
        wait_for(lambda: self.issuer.calls["grant:refresh_token"] >= 3, 4 * TOKEN_LIFE,
                 "three renewals by the service's keep-alive")  # fmt: skip
        self.figures["three token lifetimes renewed by the service"] = (
            f"{time.monotonic() - lifetimes_started:.0f} s"
        )
        wait_for(lambda: self.stored() == self.local(), 10, "the last renewal in the store")
        check(True, "3 renewals by the service's keep-alive, each synced back")
        self.rotate_elsewhere()

        account, refresh_hash = self.local()
        podman("rm", "-f", "-v", "-t", "10", AGENT)
        podman("volume", "rm", HOME_VOLUME, STATE_VOLUME)
        check(True, "agent container and its volumes removed (the secrets API's volume stays)")

        second_ready = self.start_agent()
        self.figures["new container: podman run to /readyz 200"] = f"{second_ready:.2f} s"
        wait_for(lambda: "agent start:" in self.agent_log(), 10, "the agent command")
        check(
            f"agent start: auth.json 600 {refresh_hash}" in self.agent_log(),
            "new container: auth.json was back (0600, the stored refresh token) before the agent "
            "command started",
        )
        check(self.local()[0] == account, "restored credential: same account")

        # The restored refresh token works: renew now, as the agent's user could.
        self.agent_exec("chatgpt-login", "refresh")
        renewed = self.local()
        check(renewed[1] != refresh_hash, "the restored refresh token was accepted by the issuer")
        wait_for(lambda: self.stored() == renewed, 10, "the renewal in the store")
        check(True, "and the renewal was stored")
        self.rotate_elsewhere()
        reused = self.issuer.calls["refresh_token_reused"]
        check(reused == 0, f"refresh_token_reused answers from the issuer: {reused}")
        self.two_agents()

        stop_started = time.monotonic()
        podman("stop", "-t", "15", AGENT)
        stopped = time.monotonic() - stop_started
        self.figures["podman stop (grace 15 s)"] = f"{stopped:.2f} s"
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", AGENT).strip()
        log = self.agent_log()
        check(exit_code == "0" and stopped < 15, f"podman stop: exit {exit_code} in {stopped:.1f}s")
        check("Shutting down: Master" in log, "gunicorn shut down gracefully")
        leaked = [s for s in (self.api_token, self.operator_token, callback) if s in log]
        check(not leaked, "no token or pasted address in the container's log")

    def two_agents(self) -> None:
        """Two agent containers of one user share the stored copy: one renews per lifetime, the
        other adopts; the first restarts while the second keeps working."""
        self.start_agent(second=True)
        wait_for(lambda: "agent start:" in self.agent_log(AGENT2), 10, "the second agent")
        stored = self.stored()
        check(
            stored is not None and f"agent start: auth.json 600 {stored[1]}" in self.agent_log(
                AGENT2),
            "second agent container: signed in with the stored copy before its command started",
        )  # fmt: skip
        calls, started = self.issuer.calls["grant:refresh_token"], time.monotonic()
        wait_for(lambda: self.issuer.calls["grant:refresh_token"] >= calls + 3, 4 * TOKEN_LIFE,
                 "three renewals with two containers")  # fmt: skip
        span = time.monotonic() - started
        in_step = lambda: self.stored() == self.local() == self.local(AGENT2)  # noqa: E731
        wait_for(in_step, 10, "both containers on the stored copy")
        renewals = self.issuer.calls["grant:refresh_token"] - calls
        check(True, f"two containers, {span:.0f} s: {renewals} renewals, both on the stored copy")
        wait_for(lambda: len(self.holders(self.agent_port)) == 2, 15, "two holders in the view")
        check(True, f"the operator API shows both holders: {self.holders(self.agent_port)}")

        podman("restart", "-t", "15", AGENT)  # restore at start, then the service, again
        ready = f"http://127.0.0.1:{self.agent_port}/readyz"
        wait_for(lambda: http_status(ready) == 200, 60, "the restarted agent's /readyz")
        calls = self.issuer.calls["grant:refresh_token"]
        wait_for(lambda: self.issuer.calls["grant:refresh_token"] > calls, 2 * TOKEN_LIFE,
                 "a renewal after the restart")  # fmt: skip
        wait_for(in_step, 10, "both containers on the stored copy after the restart")
        reused = self.issuer.calls["refresh_token_reused"]
        check(reused == 0, f"first restarted while the second worked: in step, {reused} reused")
        self.figures["two containers: renewals in three token lifetimes"] = str(renewals)
        podman("rm", "-f", "-t", "15", AGENT2)


# Run inside a container: whether a write outside the volumes and /tmp fails, and PID 1's
# effective capabilities and no_new_privs flag.
LOCKDOWN_PROBE = (
    "for d in /opt/chatgpt-login /etc /usr/local/bin /; do "
    'if touch "$d/.cgl-write-probe" 2>/dev/null; then echo "writable: $d"; fi; done; '
    "find / -xdev -perm /6000 -type f 2>/dev/null | sed 's/^/setuid: /'; "
    "grep -E '^(CapEff|NoNewPrivs):' /proc/1/status"
)


def check_locked_down(container: str, where: str) -> None:
    """The container's root file system refuses writes, it has no capabilities, and no
    program in it can gain privileges."""
    found = podman("exec", container, "bash", "-c", LOCKDOWN_PROBE)
    writable = [line for line in found.splitlines() if line.startswith("writable:")]
    check(not writable, f"{where}: a write outside the volumes fails ({writable or 'read-only'})")
    setuid = [line for line in found.splitlines() if line.startswith("setuid:")]
    check(not setuid, f"{where}: no setuid or setgid program ({setuid or 'none'})")
    status = dict(line.split(":\t", 1) for line in found.splitlines() if ":\t" in line)
    check(
        status.get("CapEff", "").strip("0") == "" and status.get("NoNewPrivs") == "1",
        f"{where}: no capabilities (CapEff {status.get('CapEff')}), "
        f"no_new_privs {status.get('NoNewPrivs')}",
    )


def compose_container(service: str) -> str:
    """The name podman-compose gave one service's container (by compose's labels)."""
    return podman("ps", "--filter", f"label=com.docker.compose.project={PREFIX}-compose",
                  "--filter", f"label=com.docker.compose.service={service}",
                  "--format", "{{.Names}}").split()[0]  # fmt: skip


def compose_check(workdir: Path, proxy_ca: Path | None) -> dict[str, str]:
    """README's container commands as written, in a copy of this checkout, under podman-compose
    (bridge network, service names as hosts): ``scripts/make-secrets`` (the proxy's CA copied to
    secrets/proxy_ca.pem, as README says, when this machine has one), then ``up -d --build``,
    which builds the image with that build secret (from the layers container-test built: the
    build secret is checked, and was used by that build). Both
    services come up locked down; the agent restores from and reaches secrets-api by name;
    the operator port is published on 127.0.0.1 and wants the operator token; ``down`` ends
    both."""
    project = workdir / "compose"
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                             check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    subprocess.run([project / "scripts" / "make-secrets"], check=True, capture_output=True)
    if proxy_ca is not None:
        shutil.copyfile(proxy_ca, project / "secrets" / "proxy_ca.pem")
    port = free_port()
    # The base image container-test built from (README: "Without registry access") and
    # podman's image format for a HEALTHCHECK (README: "With podman"): compose's build then
    # reuses container-test's layers, whose build is where the proxy's CA was used.
    env = {**os.environ, "CHATGPT_LOGIN_PORT": str(port), "BUILDAH_FORMAT": "docker",
           "BASE_IMAGE": "localhost/debian:bookworm-slim"}  # fmt: skip
    compose = [sys.executable, "-m", "podman_compose", "-p", f"{PREFIX}-compose"]
    figures: dict[str, str] = {}
    started = time.monotonic()
    try:
        up = subprocess.run([*compose, "up", "-d", "--build"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        failed = f": {up.stderr.strip()[-500:]}" if up.returncode else ""
        check(up.returncode == 0, f"podman-compose up: exit {up.returncode}{failed}")
        ready = f"http://127.0.0.1:{port}/readyz"
        wait_for(lambda: http_status(ready) == 200, 60, "the agent's /readyz through compose")
        figures["compose up to /readyz 200"] = f"{time.monotonic() - started:.2f} s"
        with urllib.request.urlopen(ready, timeout=5) as answer:
            checks = json.load(answer)["checks"]
        check(
            str(checks.get("secrets_store")).startswith("ok (http)"),
            f"compose: the agent reaches secrets-api by name ({checks.get('secrets_store')})",
        )
        credentials = f"http://127.0.0.1:{port}/v1/credentials"
        check(http_status(credentials) == 401, "compose: the operator API wants a token")
        token = (project / "secrets" / "operator_token").read_text().strip()
        request = urllib.request.Request(credentials, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            status = json.load(answer)["status"]
        check(status == "not_logged_in", f"compose: operator token accepted ({status})")
        for service in ("agent", "secrets-api"):
            check_locked_down(compose_container(service), f"compose: {service}")
        if proxy_ca is not None:
            agent = compose_container("agent")
            logs = subprocess.run(["podman", "logs", agent], capture_output=True, text=True,
                                  timeout=30, check=False)  # fmt: skip
            check(
                "trusting the proxy's CA" in logs.stdout + logs.stderr,
                "compose: the agent trusts the proxy's CA at run time (the proxy_ca secret)",
            )
        figures.update(_vault_profile(compose, project, env))
    finally:
        subprocess.run([*compose, "--profile", "vault", "down", "-v", "-t", "15"], cwd=project,
                       env=env, capture_output=True, timeout=120, check=False)  # fmt: skip
    return figures


def _vault_profile(compose: list[str], project: Path, env: dict[str, str]) -> dict[str, str]:
    """``--profile vault`` adds OpenBao (dev mode) and a second agent that keeps its credential
    there: it comes up, reaches OpenBao by name with the vault_token secret, and says so."""
    port = free_port()
    env = {**env, "CHATGPT_LOGIN_VAULT_PORT": str(port)}
    started = time.monotonic()
    up = subprocess.run([*compose, "--profile", "vault", "up", "-d", "--build"], cwd=project,
                        env=env, capture_output=True, text=True, timeout=900,
                        check=False)  # fmt: skip
    failed = f": {up.stderr.strip()[-500:]}" if up.returncode else ""
    check(up.returncode == 0, f"podman-compose --profile vault up: exit {up.returncode}{failed}")
    ready = f"http://127.0.0.1:{port}/readyz"

    def vault_ready() -> bool:
        if http_status(ready) != 200:
            return False
        with urllib.request.urlopen(ready, timeout=5) as answer:
            return str(json.load(answer)["checks"].get("secrets_store")).startswith("ok (vault)")

    wait_for(vault_ready, 90, "agent-vault's /readyz with the store ok (vault) through compose")
    for service in ("openbao", "agent-vault"):
        check_locked_down(compose_container(service), f"compose --profile vault: {service}")
    return {"compose --profile vault: up to /readyz ok (vault)":
            f"{time.monotonic() - started:.2f} s"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="localhost/chatgpt-login:dev")
    parser.add_argument("--keep", action="store_true", help="leave the containers for a look")
    parser.add_argument("--proxy-ca", type=Path, default=None,
                        help="a TLS-intercepting proxy's CA, for compose's build")  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cgl-story-") as workdir:
        story = Story(args.image, Path(workdir))
        try:
            story.run()
        except StoryError as exc:
            print(f"container story failed: {exc}", file=sys.stderr)
            print(f"agent container log (tail):\n{story.agent_log()[-4000:]}", file=sys.stderr)
            return 1
        finally:
            if not args.keep:
                story.clean()
            story.issuer.stop()
        try:
            story.figures.update(compose_check(Path(workdir), args.proxy_ca))
        except StoryError as exc:
            print(f"compose check failed: {exc}", file=sys.stderr)
            return 1
    for what, figure in story.figures.items():
        print(f"figure: {what}: {figure}")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
