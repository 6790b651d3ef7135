"""``chatgpt-login doctor``: check this machine's setup, one line per check, each failure with
what to do about it.

When a sign-in fails, the cause is often around it rather than in it: tmux missing, a port taken
by another program, a state directory others can read, a damaged credential file, the service
not running, the store refusing its token, a clock far off. Each check looks at one of these
and never changes anything (the store is read, never written). Checks that cannot apply here
(no store configured, Node.js for drivers not in use) say so and do not fail.
"""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from service.errors import ServiceError
from service.settings import ServiceSettings
from skill.authfiles import auth_files
from skill.errors import SkillError
from skill.loginstate import StateStore
from skill.procs import listener_inodes, listener_pids
from skill.relay import loopback_request
from skill.service_client import call, service_url

Status = Literal["ok", "warn", "fail", "skip"]
TMUX_MINIMUM = (3, 0)  # load-buffer from stdin, pipe-pane -o, display -p formats
NODE_MINIMUM = 20  # pi-ai 0.73 needs Node 20
CLOCK_SKEW_LIMIT = 60.0  # seconds: token expiry is judged against this machine's clock


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}[self.status]
        return f"{mark} {self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def run_checks(settings: ServiceSettings) -> list[Check]:
    checks: list[Callable[[ServiceSettings], Iterator[Check]]] = [
        _tmux, _node, _state_dir, _ports, _credential_files, _service, _store, _clock,
    ]  # fmt: skip
    found: list[Check] = []
    for each in checks:
        try:
            found.extend(each(settings))
        except (OSError, SkillError, ServiceError) as exc:  # a check that breaks is a finding
            found.append(Check(each.__name__.strip("_"), "fail", _message(exc)))
    return found


def _tmux(settings: ServiceSettings) -> Iterator[Check]:
    path = shutil.which("tmux", path=settings.child_env.get("PATH"))
    if path is None:
        yield Check("tmux", "fail", "not found on PATH; every sign-in runs in a tmux session",
                    "install tmux (Debian: apt-get install tmux)")  # fmt: skip
        return
    version = _version([path, "-V"])
    if version is not None and version < TMUX_MINIMUM:
        wanted = ".".join(map(str, TMUX_MINIMUM))
        yield Check("tmux", "fail", f"{path} is version {_dotted(version)}, older than {wanted}",
                    f"install tmux {wanted} or newer")  # fmt: skip
        return
    yield Check("tmux", "ok", f"{path} ({_dotted(version) if version else 'version unknown'})")


def _node(settings: ServiceSettings) -> Iterator[Check]:
    """Only the pi-ai and codex drivers need Node.js; the default (native) one does not."""
    path = shutil.which("node", path=settings.child_env.get("PATH"))
    if path is None:
        yield Check("node", "warn", "Node.js not found: only `start --driver pi-ai` and "
                    "`--driver codex` need it",
                    f"install Node.js {NODE_MINIMUM} for those")  # fmt: skip
        return
    version = _version([path, "--version"])
    if version is not None and version[0] < NODE_MINIMUM:
        yield Check("node", "warn", f"Node.js {_dotted(version)}: pi-ai needs {NODE_MINIMUM}",
                    f"install Node.js {NODE_MINIMUM} for `--driver pi-ai`")  # fmt: skip
        return
    clis = [c for c in (settings.pi_ai_command, settings.codex_command, "npx")
            if shutil.which(c, path=settings.child_env.get("PATH"))]  # fmt: skip
    yield Check("node", "ok", f"Node.js {_dotted(version) if version else '?'}; on PATH: "
                f"{', '.join(clis) or 'neither pi-ai, codex nor npx'}")  # fmt: skip


def _state_dir(settings: ServiceSettings) -> Iterator[Check]:
    path = settings.state_dir
    try:
        info = path.stat()
    except FileNotFoundError:
        yield Check("state directory", "ok", f"{path} does not exist yet (made 0700 on first use)")
        return
    if not stat.S_ISDIR(info.st_mode):
        yield Check("state directory", "fail", f"{path} is not a directory",
                    "move it away, or set CHATGPT_LOGIN_STATE_DIR")  # fmt: skip
    elif info.st_uid != os.getuid():
        yield Check("state directory", "fail", f"{path} belongs to uid {info.st_uid}, not to "
                    f"this user ({os.getuid()})", f"chown {os.getuid()} {path}")  # fmt: skip
    elif info.st_mode & 0o077:
        yield Check("state directory", "fail", f"{path} is {stat.filemode(info.st_mode)}: other "
                    "users could read the sign-in in progress", f"chmod 700 {path}")  # fmt: skip
    else:
        yield Check("state directory", "ok", f"{path} (0700, yours)")


def _ports(settings: ServiceSettings) -> Iterator[Check]:
    """The browser's redirect must reach our login program on one of these ports."""
    attempt = StateStore(settings.state_dir).load() if settings.state_dir.is_dir() else None
    live = attempt is not None and attempt.live and attempt.redirect_port
    for port in settings.callback_ports:
        if not listener_inodes(port):
            yield Check(f"port {port}", "ok", "free for the sign-in's callback")
        elif live and attempt is not None and port == attempt.redirect_port:
            yield Check(f"port {port}", "ok", "held by the sign-in in progress")
        else:
            holder = _holder(port)
            yield Check(f"port {port}", "fail", f"taken by {holder}: the browser's redirect "
                        "would not reach the login program", "stop that program, or set "
                        "CHATGPT_LOGIN_CALLBACK_PORTS to ports that are free")  # fmt: skip


def _credential_files(settings: ServiceSettings) -> Iterator[Check]:
    for file in auth_files(settings):
        path: Path = file.path
        name = f"credential file {path}"
        try:
            info = path.stat()
        except FileNotFoundError:
            yield Check(name, "ok", "none yet (not signed in on this machine)")
            continue
        if info.st_mode & 0o077:
            yield Check(name, "fail", f"mode {stat.filemode(info.st_mode)}: other users can "
                        "read the tokens", f"chmod 600 {path}")  # fmt: skip
            continue
        try:
            credential = file.load()
        except SkillError as exc:
            yield Check(name, "fail", _message(exc), "sign in again (`chatgpt-login start`): "
                        "the damaged file is moved aside, never lost")  # fmt: skip
            continue
        if credential is None:
            yield Check(name, "ok", "holds no ChatGPT sign-in (other entries left alone)")
        else:
            yield Check(name, "ok", f"0600, signed in as account {credential.account_id}")


def _service(settings: ServiceSettings) -> Iterator[Check]:
    url = service_url(settings)
    try:
        health = loopback_request("GET", url.rstrip("/") + "/healthz", timeout=3)
    except (OSError, SkillError):
        yield Check("service", "fail", f"nothing answers at {url}", "start it with "
                    "`chatgpt-login serve` (in the container its entrypoint does)")  # fmt: skip
        return
    if health.status != 200:
        yield Check("service", "fail", f"{url}/healthz answered HTTP {health.status}",
                    "look at the service's log")  # fmt: skip
        return
    try:
        answer = call(settings, "GET", "/v1/credentials", timeout=5)
    except SkillError as exc:
        yield Check("service", "fail", f"answers at {url} but not to this user: {_message(exc)}",
                    "run as the user the service runs as")  # fmt: skip
        return
    if answer.status != 200:
        yield Check("service", "fail", f"answers at {url} but refused the local token "
                    f"(HTTP {answer.status})", "restart the service (it writes a new "
                    "service.token)")  # fmt: skip
        return
    yield Check("service", "ok", f"answering at {url}")


def _store(settings: ServiceSettings) -> Iterator[Check]:
    """Read (never write) the stored copy with this process's settings; where the store's
    token is not here (the agent's side), ask the service, which holds it."""
    from service.secrets import FileSecretsStore, secrets_store  # noqa: PLC0415

    store = secrets_store(settings, until=time.monotonic() + 15)
    if not isinstance(store, FileSecretsStore):
        try:
            store.read()
        except ServiceError as exc:
            yield Check("secrets store", "fail", _message(exc), _store_fix(exc.code))
            return
        where = settings.vault_addr if settings.secrets_backend == "vault" else (
            settings.secrets_api_url)  # fmt: skip
        yield Check("secrets store", "ok", f"{where} answered a read with the configured token")
        return
    try:
        answer = loopback_request("GET", service_url(settings).rstrip("/") + "/readyz", timeout=5)
        checks = answer.json().get("checks", {})
    except (OSError, SkillError, ValueError, AttributeError):
        yield Check("secrets store", "skip", "no store configured here, and the service does not "
                    "answer to tell how its store is")  # fmt: skip
        return
    said = str(checks.get("secrets_store", "not reported"))
    status: Status = "ok" if said.startswith("ok") else "fail"
    fix = "" if status == "ok" else "see the service's log and its store settings"
    yield Check("secrets store", status, f"the service says: {said}", fix)


def _clock(settings: ServiceSettings) -> Iterator[Check]:
    import httpx  # noqa: PLC0415 - only this check talks to the issuer

    from skill.oauth import http_client  # noqa: PLC0415

    try:
        with http_client(settings) as client:
            answer = client.head(settings.issuer + "/", timeout=10)
    except (httpx.HTTPError, SkillError) as exc:
        yield Check("clock", "warn", f"could not reach the issuer to compare clocks "
                    f"({type(exc).__name__})", "check the network or proxy settings")  # fmt: skip
        return
    date = answer.headers.get("Date")
    parsed = email.utils.parsedate_to_datetime(date) if date else None
    if parsed is None:
        yield Check("clock", "skip", "the issuer's answer carries no Date")
        return
    skew = time.time() - parsed.timestamp()
    if abs(skew) > CLOCK_SKEW_LIMIT:
        side = "ahead of" if skew > 0 else "behind"
        yield Check("clock", "fail", f"this machine is {abs(skew):.0f} s {side} the issuer: "
                    "tokens would be judged expired at the wrong time",
                    "sync the clock (NTP)")  # fmt: skip
        return
    yield Check("clock", "ok", f"within {max(abs(skew), 1):.0f} s of the issuer")


def _store_fix(code: str) -> str:
    if "unauthorized" in code or "forbidden" in code or "token" in code:
        return "check the store's token (secrets_api_token, vault_token or VAULT_TOKEN)"
    if "unavailable" in code or "unreachable" in code or "timeout" in code:
        return "check the store's address and that it is running"
    return "see the message; the store's settings are in README, Settings"


def _holder(port: int) -> str:
    """Which program listens on ``port``: its name only (another program's arguments may hold
    its secrets)."""
    pids = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    for pid in sorted(listener_pids(port, pids)):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        return f"{name} (pid {pid})"
    return "a program of another user (or in another namespace)"


def _version(argv: list[str]) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _dotted(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "?"


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).rstrip(".")
