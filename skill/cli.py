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
from typing import TYPE_CHECKING

from skill.errors import ExitCode

if TYPE_CHECKING:
    from skill.settings import Settings

__version__ = "0.1.0"

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
Sign in with a ChatGPT Plus/Pro subscription from inside a container, and keep the sign-in
alive. Unofficial: reuses the Codex CLI's public OAuth client.
"""

EXIT_CODES = """\
exit codes:
  0    success
  1    unexpected failure
  2    bad input (a wrong paste, a bad option)
  3    the sign-in was refused (declined, plan, entitlement)
  4    network or server trouble: try again
  5    the sign-in is dead: sign in again
  6    timed out
  7    a local file or lock problem
  128+N  stopped by signal N
"""


def _oauth_login(args: argparse.Namespace) -> int:
    from skill import login_program  # noqa: PLC0415

    settings = _settings(args, login_timeout=args.timeout, credential_files=args.write)
    return login_program.run(settings, method=args.method)


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    """The settings from the environment, with the command's options on top."""
    from skill.settings import Settings  # noqa: PLC0415

    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings.model_validate(given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatgpt-login",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    login = commands.add_parser(
        "oauth-login",
        help="run one sign-in in this terminal (the login program)",
        description=(
            "Run one ChatGPT sign-in in this terminal. Browser method: prints a link, then "
            "takes the code from the loopback listener (127.0.0.1:1455, or 1457) or from a "
            "pasted address, whichever comes first. Device method: prints a code to enter at "
            "the verification page. Writes the credential files and prints "
            "'Credentials saved to <path>' for each."
        ),
        epilog="example:\n  chatgpt-login oauth-login --method device",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    login.set_defaults(handler=_oauth_login)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
        return handler(args)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"Error: invalid setting: {_first_line(exc)}. Fix it and retry.", file=sys.stderr)
        return ExitCode.USAGE


def _first_line(exc: Exception) -> str:
    """The field and the complaint, without pydantic's echo of the input value."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
    return re.sub(r"\s*\[type=.*?\]", "", text) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
