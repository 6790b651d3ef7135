"""The ``chatgpt-login`` entry point: the skill's commands plus the service's own.

``skill`` never imports ``service``, so the service extends the skill's parser here with
``restore`` (and, with the service issue, ``serve``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from service.gunicorn_conf import API_THREADS
from skill import cli as skill_cli
from skill.errors import ExitCode, SkillError

if TYPE_CHECKING:
    from service.settings import ServiceSettings


def _restore(args: argparse.Namespace) -> int:
    from service.restore import restore_and_refresh, within_limit  # noqa: PLC0415
    from service.secrets import secrets_store  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415
    from skill.errors import CODES  # noqa: PLC0415

    settings = within_limit(ServiceSettings.from_env())
    # Every store request together (token lookup, reads, a pending logout's writes) within 60%
    # of the limit: the rest is for the issuer.
    until = time.monotonic() + 0.6 * settings.restore_limit
    result = restore_and_refresh(settings, secrets_store(settings, until=until))
    failure = CODES[result.code] if result.code else None
    if args.json:
        told: dict[str, object] = {"ok": not result.failed, "action": result.action,
                                   "message": result.message, "notes": result.notes,
                                   "refreshed": result.refreshed}  # fmt: skip
        if failure:  # as every command's errors say it
            told |= {"error": result.code, "next": failure.next}
        print(json.dumps(told))
    else:
        print(result.message + (" The access token was renewed." if result.refreshed else ""))
        for note in result.notes:
            print(f"Note: {note}")
    return int(failure.exit_code) if args.strict and failure else ExitCode.OK


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _refresh(args: argparse.Namespace) -> int:
    """Renew now through the service, under the store's lease, so that no other container
    spends the same refresh token. Never here alone: without the service (which holds the
    store's token) this machine cannot take the lease, and another container of this user may
    be spending the token at this very moment."""
    from service.settings import ServiceSettings  # noqa: PLC0415
    from skill.errors import CODES  # noqa: PLC0415
    from skill.service_client import REFRESH_PATH, call, json_body  # noqa: PLC0415

    settings = ServiceSettings.from_env()
    try:
        answer = call(settings, "POST", REFRESH_PATH, timeout=120.0, body=b"{}")
    except SkillError as exc:
        raise SkillError(
            "service_unavailable",
            f"Not renewed: {exc.message}, and renewing without it could spend a refresh token "
            "another container of this user is renewing. Start the service (it renews the "
            "sign-in by itself), then retry.",
        ) from None
    body = json_body(answer)
    if answer.status == 200:
        if args.json:
            print(json.dumps({"ok": True, "action": body.get("action"),
                              "message": body.get("message")}))  # fmt: skip
        else:
            print(body.get("message") or "Renewed.")
        return ExitCode.OK
    code = str(body.get("error") or "")
    message = body.get("message") or f"the service answered HTTP {answer.status}"
    if code.startswith(("secrets_", "store_", "vault_")):  # the store's, named by the service
        code = "store_unavailable" if body.get("next") == "retry" else "store_misconfigured"
    raise SkillError(code if code in CODES else "internal", str(message))


def _serve(args: argparse.Namespace) -> int:
    from service.context import local_token  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415

    settings = ServiceSettings.from_env(**({"bind": args.bind} if args.bind else {}))
    if not settings.operator_token and settings.bind_host not in LOOPBACK:
        print(
            f"Error: refusing to listen on {settings.bind_host} without an operator token. Set "
            "CHATGPT_LOGIN_OPERATOR_TOKEN (or the operator_token secret), or bind to 127.0.0.1.",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    problem = _hold_state_dir(settings) or _port_taken(settings.bind)
    if problem:  # said before anything changes: the running service's token stays valid
        print(f"Error: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    local_token(settings, new=True)  # made at every start, before the workers read it
    _leave_address(settings)
    _exec_gunicorn(settings.bind, "service.wsgi:app", worker_timeout(settings), args.workers)


_SERVING_WAIT = 10.0  # seconds: above gunicorn's graceful stop (service/gunicorn_conf.py)


def _hold_state_dir(settings: ServiceSettings) -> str | None:
    """One service per state directory: a second one would replace the first's local token
    (every agent command would then be refused by the running service) and share its holder id.
    The lock is an flock held for the service's whole life: its descriptor goes through the exec
    into gunicorn's master and through the fork into the worker, and a crash releases it. What
    is wrong, or None once held."""
    import fcntl  # noqa: PLC0415

    from skill import statedir  # noqa: PLC0415
    from skill.files import ensure_private_dir  # noqa: PLC0415
    from skill.waiting import poll_until  # noqa: PLC0415

    ensure_private_dir(settings.state_dir)
    path = settings.state_dir / statedir.SERVING
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def take() -> bool | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return True

    # A service restarted by a supervisor may meet the one before it still stopping (its
    # graceful stop, or a worker outliving a killed master by a second): that one is waited for.
    if not poll_until(_SERVING_WAIT, take, every=0.1):
        os.close(fd)
        return (f"a chatgpt-login service already runs with the state directory "
                f"{settings.state_dir} (waited {_SERVING_WAIT:.0f} s for it to stop); nothing "
                "was changed. Stop it first, or give this one another "
                "CHATGPT_LOGIN_STATE_DIR.")  # fmt: skip
    os.set_inheritable(fd, True)  # kept open: released when the last of gunicorn's exits
    return None


def _port_taken(bind: str) -> str | None:
    """Whether another program listens on ``bind``, said in one line, before gunicorn would
    spend five seconds retrying with a log line each."""
    import errno  # noqa: PLC0415
    import socket  # noqa: PLC0415

    host, port = bind.rsplit(":", 1)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"{bind} is in use by another program; nothing was changed. Stop it, or "
                    "listen elsewhere with --bind HOST:PORT.")  # fmt: skip
        return None  # anything else is gunicorn's to report, as it would
    return None


def _leave_address(settings: ServiceSettings) -> None:
    """Where the agent's commands on this machine find the service (unless told otherwise)."""
    from skill import statedir  # noqa: PLC0415
    from skill.files import write_private  # noqa: PLC0415

    write_private(settings.state_dir / statedir.SERVICE_URL, settings.local_url.encode())


def _events(args: argparse.Namespace) -> int:
    """Follow the service's events until interrupted; through its restarts too."""
    from service.settings import ServiceSettings  # noqa: PLC0415
    from skill.service_client import follow_events  # noqa: PLC0415

    def gap(why: str) -> None:
        print(f"({why})", file=sys.stderr, flush=True)

    try:
        for event in follow_events(ServiceSettings.from_env(), after=args.after, on_gap=gap):
            _print_event(event, as_json=args.json)
    except SkillError as exc:
        if exc.code != "service_unavailable" or "chatgpt-login serve" in exc.message:
            raise  # not that, or it says how to start it already
        raise SkillError(
            exc.code,
            f"{exc.message[:1].upper()}{exc.message[1:]}: the events "
            "come from it. Start it (`chatgpt-login serve`; in the container, its "
            "entrypoint does), then run `chatgpt-login events` again.",
        ) from None
    return ExitCode.OK


def _print_event(event: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(event), flush=True)
        return
    body = event.get("body") or {}
    said = " ".join(f"{k}={json.dumps(v)}" for k, v in body.items() if v is not None) if (
        isinstance(body, dict)) else ""  # fmt: skip
    print(f"{event.get('at')} #{event.get('id')} {event.get('type')} {said}".rstrip(), flush=True)


def _doctor(args: argparse.Namespace) -> int:
    from service.doctor import run_checks, settings_or_defaults  # noqa: PLC0415

    settings, first = settings_or_defaults()
    checks = [first]
    if not args.json:
        print(first.line, flush=True)
    for check in run_checks(settings):
        checks.append(check)
        if not args.json:
            print(check.line, flush=True)  # as it comes: a slow check does not hide the rest
    failed = any(check.status == "fail" for check in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [check.as_dict() for check in checks]}))
    return ExitCode.FAILED if failed else ExitCode.OK


def _secrets_server(args: argparse.Namespace) -> int:
    from service.secrets_server import server_tokens  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415

    settings = ServiceSettings.from_env()
    try:
        if not server_tokens(settings):
            raise ValueError(
                "no token is configured: set CHATGPT_LOGIN_SECRETS_SERVER_TOKENS "
                "('<agent>:<token>' lines, or the secrets_server_tokens secret) or "
                "FAT_TOOLS_TOKEN for one agent"
            )
    except ValueError as exc:
        print(f"Error: {exc}.", file=sys.stderr)
        return ExitCode.USAGE
    # Two workers: the store serves many agents from its own container, not beside one agent.
    # It has no event streams, so no threads for them.
    _exec_gunicorn(args.bind, "service.secrets_server:wsgi()", worker_timeout(settings),
                   workers=2, threads=API_THREADS)  # fmt: skip


def worker_timeout(settings: ServiceSettings) -> int:
    """gunicorn's worker timeout: above every outbound wait of a request (a secrets API write
    with all its retries, or a complete's wait for the login program)."""
    return int(max(settings.secrets_deadline, settings.complete_timeout) + 30)


def _exec_gunicorn(
    bind: str, app: str, timeout: int, workers: int = 1, threads: int | None = None
) -> NoReturn:
    conf = Path(__file__).with_name("gunicorn_conf.py")
    # Bytecode without column positions: a traceback in the service's log still names the file
    # and line of each frame, without the ^^^^ under the failing part; 0.4 MiB less
    # (BENCHMARKS.md, "In the container").
    argv = [sys.executable, *_optimized(), "-X", "no_debug_ranges", "-m", "gunicorn",
            "-c", str(conf), "--bind", bind, "--timeout", str(timeout),
            "--workers", str(workers)]  # fmt: skip
    if threads is not None:
        argv += ["--threads", str(threads)]
    argv.append(app)
    # One malloc arena, not one per thread, and no per-thread cache of freed blocks: the threads
    # take turns under Python's lock anyway, and each arena and cache keeps memory of its own
    # (0.3 and 0.5 MiB less idle in the container, BENCHMARKS.md). Settings the user gave win.
    os.environ.setdefault("MALLOC_ARENA_MAX", "1")
    os.environ["GLIBC_TUNABLES"] = _with_tunable(os.environ.get("GLIBC_TUNABLES", ""),
                                                 "glibc.malloc.tcache_count", "0")  # fmt: skip
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and fixed arguments


def _with_tunable(tunables: str, name: str, value: str) -> str:
    """``GLIBC_TUNABLES`` (``name=value`` pairs joined by ':') with ``name`` set, unless the
    user set it already."""
    given = [each for each in tunables.split(":") if each]
    if any(each.split("=", 1)[0] == name for each in given):
        return tunables
    return ":".join([*given, f"{name}={value}"])


def _optimized() -> list[str]:
    """``-OO`` (bytecode without docstrings or asserts) where it was compiled ahead, as the image
    and ``scripts/install`` do: the service then takes 2.5 MiB less (BENCHMARKS.md, "In the
    container"). Elsewhere it is often missing and not to be written (a distribution's Python
    run by a user, PYTHONDONTWRITEBYTECODE), and compiling it at every start would cost more
    than it saves. One module each of the standard library, the libraries and ours tells."""
    import importlib.util  # noqa: PLC0415 - only serve needs it
    import logging  # noqa: PLC0415 - imported already

    flask = importlib.util.find_spec("flask")  # found, not imported
    sources = [logging.__file__, flask and flask.origin, str(Path(__file__).with_name("app.py"))]
    compiled = [importlib.util.cache_from_source(str(source), optimization=2)
                for source in sources if source]  # fmt: skip
    return ["-OO"] if len(compiled) == len(sources) and all(map(os.path.exists, compiled)) else []


def add_service_commands(commands: skill_cli.Commands) -> None:
    refresh = skill_cli.add_command(
        commands,
        "refresh",
        "renew the access token now and store the result",
        (
            "Renew the access token now. The service does it, under the secrets store's lease, "
            "so no other container (and, through pi's lock, no other program here) spends the "
            "same refresh token; if another one just renewed it, that result is used. With the "
            "service down it refuses (exit 4): alone, it could spend a token another container "
            "is renewing. The service also renews by itself ahead of expiry."
        ),
        "chatgpt-login refresh",
    )
    refresh.add_argument("--json", action="store_true", help="print one JSON object")
    refresh.set_defaults(handler=_refresh)
    serve = skill_cli.add_command(
        commands,
        "serve",
        "run the operator API under gunicorn (127.0.0.1:8080 by default)",
        (
            "Run the service: the operator REST API (see /v1/openapi.json), persisting to the "
            "secrets store. Every endpoint but /healthz and /readyz needs a bearer token: "
            "CHATGPT_LOGIN_OPERATOR_TOKEN, or the local token the service writes to "
            "<state dir>/service.token for the agent's own commands. Without an operator token "
            "it only listens on loopback."
        ),
        "chatgpt-login serve --bind 127.0.0.1:8080",
    )
    serve.add_argument("--bind", default=None, metavar="HOST:PORT")
    serve.add_argument(
        "--workers", type=int, default=1, choices=range(1, 9), metavar="N",
        help="gunicorn worker processes, 1 to 8 (default 1: one worker with threads serves an "
        "operator's traffic many times over; each more costs about 35 MiB)",
    )  # fmt: skip
    serve.set_defaults(handler=_serve)

    restore = skill_cli.add_command(
        commands,
        "restore",
        "restore the credential from the secrets store (run before the agent starts)",
        (
            "Bring this machine's credential and the stored copy to the newer of the two: write "
            "the stored one when the local file is missing, unreadable or older; push the local "
            "one up when it is newer; never take another account's. If the access token has "
            "expired, renew it once and store the result. When the store cannot be reached, "
            "prints one line and exits 0 without touching the local file (--strict: exit 4; 2 when "
            "the store refused the token or its address is wrong)."
        ),
        "chatgpt-login restore --strict",
    )
    restore.add_argument("--strict", action="store_true", help="exit non-zero on failure")
    restore.add_argument("--json", action="store_true", help="print one JSON object")
    restore.set_defaults(handler=_restore)

    events = skill_cli.add_command(
        commands,
        "events",
        "follow what changes: sign-ins, renewals, adoptions, logouts (until Ctrl-C)",
        (
            "Follow the service's events as they happen, one line each (--json: the event as "
            "JSON): login.started, login.completed, login.canceled, credential.updated (why: "
            "sign-in, refresh, adopted, restored), credential.persisted, "
            "credential.needs_relogin, credential.logged_out. No event carries a secret. "
            "--after N starts after event N (what a reconnecting follower last saw); exits 4 "
            "when the service stops."
        ),
        "chatgpt-login events --json",
    )
    events.add_argument("--json", action="store_true", help="one JSON object per event")
    events.add_argument("--after", type=int, default=0, metavar="ID",
                        help="start after this event id (default: the oldest kept)")  # fmt: skip
    events.set_defaults(handler=_events)

    doctor = skill_cli.add_command(
        commands,
        "doctor",
        "check this machine's setup: tmux, ports, files, the service, the store, the clock",
        (
            "Check what a sign-in depends on, one line per check with what to do when it fails: "
            "tmux, Node.js (for the pi-ai and codex drivers only), the state directory's owner "
            "and mode, the callback ports, the credential files (they parse, 0600), the service "
            "answering, the secrets store answering a read with its token (nothing is written), "
            "and this machine's clock against the issuer's. Exit 0 when nothing failed, 1 "
            "otherwise."
        ),
        "chatgpt-login doctor",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.set_defaults(handler=_doctor)

    server = skill_cli.add_command(
        commands,
        "secrets-server",
        "run the reference secrets API (GET/PATCH /api/agent/secrets) under gunicorn",
        (
            "A small implementation of the remote secrets API this project stores credentials "
            "in, for local runs and self-hosting: a JSON document per agent in SQLite "
            "(CHATGPT_LOGIN_SECRETS_SERVER_DB, default <state dir>/secrets-server.db), merge-"
            "patched with PATCH, read with GET, each agent with its own bearer token "
            "(CHATGPT_LOGIN_SECRETS_SERVER_TOKENS: '<agent>:<token>' lines; default: "
            "FAT_TOOLS_TOKEN for one agent). Point agents at it with "
            "CHATGPT_LOGIN_SECRETS_API_URL=http://<host>:8090/api/agent/secrets."
        ),
        "chatgpt-login secrets-server --bind 0.0.0.0:8090",
    )
    server.add_argument("--bind", default="127.0.0.1:8090", metavar="HOST:PORT")
    server.set_defaults(handler=_secrets_server)


def build_parser() -> argparse.ArgumentParser:
    return skill_cli.build_parser(extend=add_service_commands)


def main(argv: Sequence[str] | None = None) -> int:
    return skill_cli.main(argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
