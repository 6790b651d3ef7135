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
import shlex
import shutil
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from service.errors import ServiceError
from service.settings import ServiceSettings
from skill.attempt import AttemptFile
from skill.authfiles import auth_files
from skill.errors import SkillError
from skill.files import unwritable
from skill.procs import descendants, listener_inodes, listener_pids
from skill.relay import loopback_request
from skill.service_client import call, json_body, service_url

if TYPE_CHECKING:
    from service.vault import VaultSecretsStore

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


def run_checks(settings: ServiceSettings | None) -> Iterator[Check]:
    """Each check's findings as soon as it has them. A check runs in a thread of its own with
    a deadline: a store, issuer or listener that answers a byte at a time, or a FIFO where a
    file should be, costs that check and not the report. Without settings (they could not be
    read), only the checks that need none run."""
    checks: list[Callable[[ServiceSettings], Iterator[Check]]] = [
        _tmux, _node, _state_dir, _ports, _credential_files, _service, _store, _issuer,
        _on_change_hook,
    ]  # fmt: skip
    for each in checks:
        name = each.__name__.strip("_").replace("_", " ")
        if settings is None and each not in (_tmux, _node):
            yield Check(name, "skip", "the settings could not be read")
            continue
        found: list[Check] = []
        used = settings or ServiceSettings.model_construct()  # tmux and node need none
        worker = threading.Thread(target=_collect, args=(each, used, found, name),
                                  daemon=True)  # fmt: skip
        worker.start()
        worker.join(used.doctor_deadline)
        if worker.is_alive():
            found.append(Check(name, "fail", f"no answer within {used.doctor_deadline:g} s",
                               "see the other checks; something it waits on hangs"))  # fmt: skip
        yield from (_clean(check) for check in found)


def _collect(
    check: Callable[[ServiceSettings], Iterator[Check]], settings: ServiceSettings,
    found: list[Check], name: str,
) -> None:  # fmt: skip
    try:
        for each in check(settings):
            found.append(each)
    except (OSError, SkillError, ServiceError) as exc:  # a check that breaks is a finding
        found.append(Check(name, "fail", _message(exc)))
    except Exception as exc:  # an answer we did not expect: it costs this check only
        found.append(Check(name, "fail", f"the check broke on what it found "
                           f"({type(exc).__name__})"))  # fmt: skip


def _clean(check: Check) -> Check:
    """No terminal control characters from what others wrote (a process name, an answer)."""

    def printable(text: str) -> str:
        return "".join(c if c.isprintable() else "?" for c in text)

    return Check(check.name, check.status, printable(check.detail), printable(check.fix))


def _safe_url(url: str | None) -> str:
    """An address to print: no user or password, no query (a signed URL's signature)."""
    if not url:
        return "(none)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def settings_or_defaults(
    environ: Mapping[str, str] | None = None,
) -> tuple[ServiceSettings | None, Check]:
    """The settings; when one is not valid, the settings with that one at its default (said
    in the check), so that every other check still looks at the setup the user configured; None
    when even that fails (the checks that need settings are then skipped, not run against a
    setup that is not the user's)."""
    from pydantic import ValidationError  # noqa: PLC0415 - the settings' own error

    env = dict(os.environ if environ is None else environ)
    try:
        return ServiceSettings.from_env(env), Check("settings", "ok", "every setting is valid")
    except (ValueError, SkillError) as exc:  # ValidationError, and a dict setting not JSON
        from skill.cli import setting_problem  # noqa: PLC0415

        why = setting_problem(exc) if isinstance(exc, ValidationError) else _message(exc)
        bad = {str(e["loc"][0]) for e in exc.errors() if e.get("loc")} if isinstance(
            exc, ValidationError) else set()  # fmt: skip
    fix = "fix that setting (README, Settings)"
    # Overrides win over the environment and the file secrets alike: wherever it came from,
    # the bad value is put back to its default.
    defaults = {name: ServiceSettings.model_fields[name].get_default(call_default_factory=True)
                for name in bad if name in ServiceSettings.model_fields}  # fmt: skip
    try:
        kept = ServiceSettings.from_env(env, **defaults)
    except (ValueError, SkillError):
        skipped = f"{why.rstrip('.')}; the checks that need the settings were skipped"
        return None, Check("settings", "fail", skipped, fix)
    used = f"{why.rstrip('.')}; the checks below use its default, and the rest as set"
    return kept, Check("settings", "fail", used, fix)


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
        yield Check("node", "skip", "Node.js not found: only `start --driver pi-ai` and "
                    f"`--driver codex` need it (Node.js {NODE_MINIMUM})")  # fmt: skip
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
    """The browser's redirect must reach our login program on one of these ports: the login
    program takes the first one free, so a taken port fails only when none is left."""
    ours = _attempts_port(settings)
    taken = {port: _holder(port) for port in settings.callback_ports
             if port != ours and listener_inodes(port)}  # fmt: skip
    usable = ours is not None or len(taken) < len(settings.callback_ports)
    for port in settings.callback_ports:
        if port == ours:
            yield Check(f"port {port}", "ok", "held by the sign-in in progress")
        elif port not in taken:
            yield Check(f"port {port}", "ok", "free for the sign-in's callback")
        elif usable:
            yield Check(f"port {port}", "warn", f"taken by {taken[port]}; a sign-in uses "
                        "another of the callback ports")  # fmt: skip
        else:
            yield Check(f"port {port}", "fail", f"taken by {taken[port]}, and so is every other "
                        "callback port: the browser's redirect would reach no login program",
                        "stop that program, or set CHATGPT_LOGIN_CALLBACK_PORTS to ports that "
                        "are free")  # fmt: skip


def _attempts_port(settings: ServiceSettings) -> int | None:
    """The port a live sign-in's own program listens on (its process tree, as the runner
    checks before it relays), if any. login.json is read only in a state directory of ours."""
    try:
        owner = settings.state_dir.stat().st_uid
    except OSError:
        return None
    attempt = AttemptFile(settings.state_dir).load() if owner == os.getuid() else None
    if attempt is None or not attempt.live or attempt.expired_now or not attempt.pane_pid:
        return None
    port = attempt.redirect_port
    tree = descendants(attempt.pane_pid)
    return port if port and listener_pids(port, tree) else None


def _credential_files(settings: ServiceSettings) -> Iterator[Check]:
    for file in auth_files(settings):
        path: Path = file.path
        name = f"credential file {path}"
        why = unwritable(path.parent)
        if why is not None:
            yield Check(name, "fail", f"a sign-in could not be saved: {why}",
                        "make it writable, or point PI_CODING_AGENT_DIR (CODEX_HOME) to a "
                        "writable directory")  # fmt: skip
            continue
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
            continue
        try:
            credential.claims()
        except SkillError as exc:
            yield Check(name, "fail", _message(exc), "sign in again (`chatgpt-login start`)")
            continue
        yield Check(name, "ok", f"0600, signed in as account {credential.account_id}")


def _service(settings: ServiceSettings) -> Iterator[Check]:
    full = service_url(settings, default=settings.local_url)  # before `serve` ran: its bind
    url = _safe_url(full)
    try:
        health = loopback_request("GET", full.rstrip("/") + "/healthz", timeout=3)
    except (OSError, SkillError):
        yield Check("service", "warn", f"nothing answers at {url}: a sign-in works, but nothing "
                    "renews it or keeps it for restarts", "start it with `chatgpt-login serve` "
                    "(in the container its entrypoint does; run doctor there: "
                    "`docker compose exec agent chatgpt-login doctor`)")  # fmt: skip
        return
    if health.status != 200:
        yield Check("service", "fail", f"{url}/healthz answered HTTP {health.status}",
                    "look at the service's log")  # fmt: skip
        return
    try:
        answer = call(settings, "GET", "/v1/credentials", timeout=5)
    except SkillError as exc:
        yield Check("service", "fail", f"answers at {url}, but {_message(exc)}",
                    "run doctor as the user the service runs as")  # fmt: skip
        return
    if answer.status == 401:
        yield Check("service", "fail", f"the service at {url} did not take this machine's local "
                    "token: it is another service (a container's published port?), or one "
                    "started with another state directory", "point CHATGPT_LOGIN_SERVICE_URL "
                    "and CHATGPT_LOGIN_STATE_DIR at the same service")  # fmt: skip
        return
    if answer.status != 200:
        said = json_body(answer)
        yield Check("service", "fail", f"answers at {url}: HTTP {answer.status} "
                    f"({said.get('error', '?')}): {str(said.get('message', '')).rstrip('.')}",
                    "see the message")  # fmt: skip
        return
    yield Check("service", "ok", f"answering at {url}")


def _store(settings: ServiceSettings) -> Iterator[Check]:
    """Read (never write) the stored copy with this process's settings; where the store's
    token is not here (the agent's side), ask the service, which holds it."""
    from service.secrets import FileSecretsStore, secrets_store  # noqa: PLC0415
    from service.vault import VaultSecretsStore  # noqa: PLC0415

    store = secrets_store(settings, until=time.monotonic() + 15)
    # An AppRole login would spend one of the secret id's uses and leave a token behind: the
    # service, which holds its own token, is asked instead.
    approle = settings.secrets_backend == "vault" and bool(settings.vault_role_id)
    if not isinstance(store, FileSecretsStore) and not approle:
        try:
            store.read()
        except ServiceError as exc:
            yield Check(
                "secrets store",
                "fail",
                _message(exc),
                _store_fix(exc.code, vault=store.name == "vault"),
            )
            return
        where = _safe_url(settings.vault_addr if settings.secrets_backend == "vault"
                          else settings.secrets_api_url)  # fmt: skip
        yield Check("secrets store", "ok", f"{where} answered a read with the configured token")
        if isinstance(store, VaultSecretsStore):
            yield from _vault_policy(store)
        return
    try:
        answer = loopback_request("GET", service_url(settings).rstrip("/") + "/readyz", timeout=5)
        checks = answer.json().get("checks")
        if not isinstance(checks, dict):
            raise ValueError("no checks in /readyz")
    except (OSError, SkillError, ValueError, AttributeError):
        yield Check("secrets store", "skip", "no store configured here, and the service does not "
                    "answer to tell how its store is")  # fmt: skip
        return
    said = str(checks.get("secrets_store", "not reported"))
    status: Status = "ok" if said.startswith("ok") else "fail"
    fix = "" if status == "ok" else "see the service's log and its store settings"
    yield Check("secrets store", status, f"the service says: {said}", fix)


def _on_change_hook(settings: ServiceSettings) -> Iterator[Check]:
    if not settings.on_change:
        yield Check("on-change hook", "skip", "none set (CHATGPT_LOGIN_ON_CHANGE)")
        return
    program = shlex.split(settings.on_change)[0]  # the settings made sure it splits
    found = shutil.which(program, path=os.environ.get("PATH"))  # the service's PATH is the hook's
    if found is None:
        yield Check("on-change hook", "fail", f"{program!r} is not a program on PATH: no change "
                    "would reach it", "fix CHATGPT_LOGIN_ON_CHANGE (a command line, run without "
                    "a shell)")  # fmt: skip
        return
    yield Check("on-change hook", "ok", f"runs {found} after each change (stopped after "
                f"{settings.on_change_timeout:g} s)")  # fmt: skip


def _issuer(settings: ServiceSettings) -> Iterator[Check]:
    """The issuer answers over TLS this machine trusts, and its clock agrees with ours."""
    from http.client import HTTPException  # noqa: PLC0415 - only this check talks to the issuer

    from skill.oauth import outbound  # noqa: PLC0415
    from skill.outbound import describe  # noqa: PLC0415

    try:
        answer = outbound(settings).send("HEAD", settings.issuer + "/", seconds=10)
    except (OSError, HTTPException, ValueError) as exc:
        if _untrusted(exc):
            untrusted = (f"{_safe_url(settings.issuer)} presents a certificate this machine "
                         "does not trust (a TLS-intercepting proxy?): the sign-in and every "
                         "renewal would fail")  # fmt: skip
            yield Check("issuer", "fail", untrusted, "give the proxy's CA: secrets/proxy_ca.pem "
                        "with compose, or CHATGPT_LOGIN_PROXY_CA (README, Running it in a "
                        "container)")  # fmt: skip
            return
        yield Check("issuer", "warn", f"could not reach {_safe_url(settings.issuer)} "
                    f"({describe(exc)}): the clock was not compared",
                    "check the network or the proxy settings")  # fmt: skip
        return
    try:
        parsed = email.utils.parsedate_to_datetime(answer.headers.get("Date") or "")
    except (TypeError, ValueError, OverflowError):  # none, or not a date
        parsed = None
    if parsed is None:
        yield Check("issuer", "ok", "answers; its answer carries no Date to compare clocks")
        return
    skew = time.time() - parsed.timestamp()
    if abs(skew) > CLOCK_SKEW_LIMIT:
        side = "ahead of" if skew > 0 else "behind"
        yield Check("clock", "fail", f"this machine is {abs(skew):.0f} s {side} the issuer: "
                    "tokens would be judged expired at the wrong time",
                    "sync the clock (NTP)")  # fmt: skip
        return
    how = "over TLS we trust" if settings.issuer.startswith("https://") else "(plain HTTP)"
    yield Check("issuer", "ok", f"{_safe_url(settings.issuer)} answers {how}; clocks within "
                f"{max(abs(skew), 1):.0f} s")  # fmt: skip


def _untrusted(exc: BaseException | None) -> bool:
    """Whether connecting failed on a certificate this machine does not trust."""
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _vault_policy(store: VaultSecretsStore) -> Iterator[Check]:
    """Whether the token may do all the service does (a read answered says nothing of writes)."""
    try:
        missing = store.missing_capabilities()
    except ServiceError as exc:
        yield Check("vault policy", "warn",
                    f"its capabilities could not be looked up: {_message(exc)}",
                    "compare the token's policy with service/vault-policy.hcl")  # fmt: skip
        return
    if not missing:
        yield Check("vault policy", "ok", "the token may read, write and (after a logout) destroy "
                    "the stored copy's older versions")  # fmt: skip
        return
    lacking = "; ".join(f"{', '.join(caps)} on {path}" for path, caps in missing.items())
    yield Check("vault policy", "fail", f"the token's policy lacks {lacking}: the store would "
                "refuse those requests", "grant what service/vault-policy.hcl grants")  # fmt: skip


def _store_fix(code: str, *, vault: bool) -> str:
    if code == "vault_token_expired":
        return "give the service a new Vault token (VAULT_TOKEN or the vault_token secret)"
    if code == "secrets_rejected" and vault:
        return "check CHATGPT_LOGIN_VAULT_MOUNT and CHATGPT_LOGIN_VAULT_PATH against the message"
    if "unauthorized" in code or "forbidden" in code or "token" in code or "rejected" in code:
        if vault:
            return ("check VAULT_TOKEN (or the vault_token secret) and that its policy grants "
                    "what service/vault-policy.hcl does")  # fmt: skip
        return "check FAT_TOOLS_TOKEN (or the secrets_api_token secret) and the store's address"
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
