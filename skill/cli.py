"""The ``chatgpt-login`` command line.

Each subcommand has help text with an example (``tests/test_docs.py`` keeps README.md in step
with it). Subcommand modules are imported only when run, so a quick command stays quick.
Exit codes are the :class:`skill.errors.ExitCode` values, listed in README.md.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from skill.errors import ExitCode, exit_code_help

if TYPE_CHECKING:
    from pydantic import ValidationError

    from skill.errors import SkillError
    from skill.settings import Settings

__version__ = "0.1.0"

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
Sign in with a ChatGPT Plus/Pro subscription from inside a container, and keep the sign-in
alive. Unofficial: reuses the Codex CLI's public OAuth client.
"""


def _oauth_login(args: argparse.Namespace) -> int:
    from skill import login_program  # noqa: PLC0415

    settings = _settings(args, login_timeout=args.timeout, credential_files=args.write)
    return login_program.run(settings, method=args.method, premade=args.premade)


def _agent_command(args: argparse.Namespace) -> int:
    """Run one of the agent's commands with its output mode (errors: :func:`fail`)."""
    from skill import commands  # noqa: PLC0415

    out = commands.Output(as_json=args.json)
    run: dict[str, Callable[[Settings], int]] = {
        "start": lambda st: commands.start(
            st, out, method=args.method, driver=args.driver, restart=args.restart
        ),
        "complete": lambda st: commands.complete(st, out, url=_pasted(args.url)),
        "wait": lambda st: commands.wait(st, out, timeout=args.timeout),
        "status": lambda st: commands.status(st, out),
        "cancel": lambda st: commands.cancel(st, out),
        "logout": lambda st: commands.logout(st, out),
    }
    return run[args.command](_settings(args))


def _pasted(url: str | None) -> str:
    """The address from the argument, or from stdin (``-`` or none): stdin keeps it out of the
    process list and shell history."""
    if url is None or url == "-":
        return sys.stdin.read(65536)
    return url


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    """The settings from the environment, with the command's options on top."""
    from skill.settings import Settings  # noqa: PLC0415

    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings.from_env(None, **given)


if TYPE_CHECKING:
    Commands = argparse._SubParsersAction["_Parser"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line given with --json is answered as every other error
    is then: one JSON object (argparse prints its usage text), for the agent that reads it."""

    # Whether the command line being parsed asked for JSON: set by main() from the arguments it
    # parses (a caller's own, not always sys.argv), for the subcommand's parser too.
    answer_in_json = False

    def error(self, message: str) -> NoReturn:
        if not _Parser.answer_in_json:
            super().error(message)
        from skill.errors import SkillError  # noqa: PLC0415

        problem = SkillError("bad_usage", f"{message[:1].upper()}{message[1:]}. Check "
                             f"`{self.prog} --help`.")  # fmt: skip
        sys.exit(fail(argparse.Namespace(json=True), problem))


def build_parser(extend: Callable[[Commands], None] | None = None) -> argparse.ArgumentParser:
    """The parser; ``extend`` adds more subcommands (the service package adds its own, since
    ``skill`` never imports ``service``)."""
    parser = _Parser(
        prog="chatgpt-login",
        description=DESCRIPTION,
        epilog=exit_code_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    login = add_command(
        commands,
        "oauth-login",
        "run one sign-in in this terminal (the login program)",
        (
            "Run one ChatGPT sign-in in this terminal. Browser method: prints a link, then "
            "takes the code from the loopback listener (127.0.0.1:1455, or 1457) or from a "
            "pasted address, whichever comes first. Device method: prints a code to enter at "
            "the verification page. Writes the credential files and prints "
            "'Credentials saved to <path>' for each."
        ),
        "chatgpt-login oauth-login --method device",
    )
    login.add_argument("--method", choices=("browser", "device"), default="browser")
    login.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="give up after this long"
    )
    login.add_argument(
        "--write",
        default=None,
        metavar="FORMATS",
        help="credential files to write: pi, codex or pi,codex (default: pi)",
    )
    login.add_argument(
        "--premade",
        type=Path,
        default=None,
        metavar="FILE",
        # Internal: the sign-in link the skill runner made in advance (0600; deleted once
        # read). Not a person's option, so not in --help.
        help=argparse.SUPPRESS,
    )
    login.set_defaults(handler=_oauth_login)
    _add_agent_commands(commands)
    if extend is not None:
        extend(commands)
    return parser


AGENT_COMMANDS = {
    "start": (
        "start a sign-in and print the link (or device code) for the user",
        "Start a ChatGPT sign-in in the background (a login program in a private tmux session) "
        "and print the link to send the user, or the device URL and code. If a sign-in is "
        "already live, prints that one instead (--restart replaces it).",
        "chatgpt-login start --method browser --driver native",
    ),
    "complete": (
        "relay the address the user pasted back, and finish the sign-in",
        "Check the address the user pasted (the page that failed to load after signing in), "
        "hand it to the login program, wait for the result, then ask the service to persist "
        "the credential. Reads the address from stdin when URL is - or missing, which keeps it "
        "out of the process list and shell history.",
        "chatgpt-login complete - <<'EOF'\n"
        "  http://localhost:1455/auth/callback?code=...&state=...\n  EOF",
    ),
    "wait": (
        "wait for a device-code sign-in to be approved",
        "Wait until the user approves the device code shown by `chatgpt-login start --method "
        "device` (or the sign-in ends), then finish like complete. On a browser sign-in it "
        "waits 30 seconds unless --timeout says otherwise: those end with `complete`.",
        "chatgpt-login wait --timeout 300",
    ),
    "status": (
        "show the sign-in in progress and the credential on this machine",
        "Show the current or last sign-in attempt and whether this machine holds a ChatGPT "
        "credential (account, plan, expiry). Never prints a token.",
        "chatgpt-login status --json",
    ),
    "cancel": (
        "cancel the sign-in in progress",
        "Cancel the live sign-in: its login program, tmux session and logs are removed.",
        "chatgpt-login cancel",
    ),
    "logout": (
        "sign out: revoke the sign-in and remove it from this machine",
        "Cancel any live sign-in, revoke the refresh token at OpenAI (best effort), and remove "
        "the ChatGPT entries from the credential files (other providers' entries stay).",
        "chatgpt-login logout",
    ),
}


def add_command(
    commands: Commands, name: str, summary: str, description: str, example: str
) -> argparse.ArgumentParser:
    """A subcommand with the help every command has: a summary, a description and an example
    (tests/test_docs.py holds every command to that)."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_agent_commands(commands: Commands) -> None:
    for name, (summary, description, example) in AGENT_COMMANDS.items():
        sub = add_command(commands, name, summary, description, example)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "start":
            # Unset: the live sign-in's, if there is one (else browser, native); set to another
            # than the live one's, it replaces that one.
            sub.add_argument(
                "--method",
                choices=("browser", "device"),
                default=None,
                help="browser (the default) or device (a code to enter: phones)",
            )
            from skill.drivers import DRIVERS  # noqa: PLC0415 - light: names and patterns

            sub.add_argument(
                "--driver",
                choices=tuple(DRIVERS),
                default=None,
                help="the login program (default: native)",
            )
            sub.add_argument("--restart", action="store_true", help="replace a live sign-in")
        elif name == "complete":
            sub.add_argument("url", nargs="?", help="the pasted address, or - to read stdin")
        elif name == "wait":
            sub.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
        sub.set_defaults(handler=_agent_command)


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    parser = parser or build_parser()
    _Parser.answer_in_json = "--json" in (sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        code = _guarded(handler, args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
    except BrokenPipeError:
        return _reader_gone()
    return code


def _reader_gone() -> int:
    """Whoever read our output stopped (``| head``): say nothing more, as a program killed by
    SIGPIPE would, and exit as one (128 + 13)."""
    import os  # noqa: PLC0415

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    return 128 + 13


def _guarded(handler: Handler, args: argparse.Namespace) -> int:
    """Every command's one error boundary: whatever goes wrong is one line (or, with --json,
    one JSON object) with a code and an exit code, never a traceback (that only with -v)."""
    from pydantic import ValidationError  # noqa: PLC0415 - loaded by the settings anyway

    from skill.errors import SkillError, from_os_error  # noqa: PLC0415

    try:
        return handler(args)
    except KeyboardInterrupt:
        return ExitCode.CANCELED
    except BrokenPipeError:
        raise  # not a failure to report (on the pipe that just closed): main() ends quietly
    except SkillError as exc:
        return fail(args, exc)
    except ValidationError as exc:
        return fail(args, SkillError("invalid_setting", setting_problem(exc)))
    except OSError as exc:
        return fail(args, from_os_error(exc))
    except Exception as exc:
        logging.getLogger(__name__).info("unexpected failure", exc_info=True)  # with -v
        return fail(args, SkillError("internal", f"Something unexpected went wrong "
                                     f"({type(exc).__name__}). Report it, with the output of "
                                     "`chatgpt-login status --json`."))  # fmt: skip


def fail(args: argparse.Namespace, exc: SkillError) -> int:
    """Say ``exc`` as the command speaks: a JSON object with --json, else a line on stderr."""
    if getattr(args, "json", False):
        import json  # noqa: PLC0415

        print(json.dumps({"ok": False, "error": exc.code, "message": exc.message,
                          "next": exc.next, **exc.details}))  # fmt: skip
    else:
        print(f"Error: {exc.message}", file=sys.stderr)
    code: int = exc.exit_code
    return code


def setting_problem(exc: ValidationError) -> str:
    """The variable to fix and what is wrong with it, never the value (it may be a token)."""
    from skill.settings import ENV_ALIASES, ENV_PREFIX  # noqa: PLC0415

    problems = exc.errors(include_input=False, include_url=False)
    if not problems:
        return f"Invalid setting: {_first_line(exc)}. Fix it and retry."
    first = problems[0]
    why = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:  # a rule across settings: its message names them
        return f"Invalid settings: {why}. Fix them and retry."
    field = str(first["loc"][0])
    variable = ENV_PREFIX + field.upper()
    if field in ENV_ALIASES:  # the other tool's name is the one documented (VAULT_ADDR)
        variable = f"{ENV_ALIASES[field]} (or {variable})"
    return f"Invalid setting {variable}: {why}. Fix it and retry."


def _first_line(exc: Exception) -> str:
    """The field and the complaint, without pydantic's echo of the input value."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
    return re.sub(r"\s*\[type=.*?\]", "", text) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
