"""The ``chatgpt-login`` entry point: the skill's commands plus the service's own.

``skill`` never imports ``service``, so the service extends the skill's parser here with
``restore`` (and, with the service issue, ``serve``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from skill import cli as skill_cli
from skill.errors import ExitCode


def _restore(args: argparse.Namespace) -> int:
    from service.secrets import secrets_store  # noqa: PLC0415
    from service.settings import ServiceSettings  # noqa: PLC0415
    from service.sync import restore_and_refresh  # noqa: PLC0415

    settings = ServiceSettings.from_env()
    result = restore_and_refresh(settings, secrets_store(settings))
    print(result.message + (" The access token was renewed." if result.refreshed else ""))
    for note in result.notes:
        print(f"Note: {note}")
    if args.strict and result.failed:
        return ExitCode.TRANSIENT if result.action == "unreachable" else ExitCode.LOCAL
    return ExitCode.OK


def add_service_commands(commands: skill_cli.Commands) -> None:
    restore = commands.add_parser(
        "restore",
        help="restore the credential from the secrets store (run before the agent starts)",
        description=(
            "Bring this machine's credential and the stored copy to the newer of the two: write "
            "the stored one when the local file is missing, unreadable or older; push the local "
            "one up when it is newer; never take another account's. If the access token has "
            "expired, renew it once and store the result. When the store cannot be reached, "
            "prints one line and exits 0 without touching the local file (--strict: exit 4)."
        ),
        epilog="example:\n  chatgpt-login restore --strict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restore.add_argument("--strict", action="store_true", help="exit non-zero on failure")
    restore.set_defaults(handler=_restore)


def build_parser() -> argparse.ArgumentParser:
    return skill_cli.build_parser(extend=add_service_commands)


def main(argv: Sequence[str] | None = None) -> int:
    return skill_cli.main(argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
