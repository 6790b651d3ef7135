"""Start a program with exactly the environment kept in a file, which is deleted first.

``python -m skill.launch <file> -- <program> [args...]``: how the skill runner hands a login
program its environment (proxy credentials among it) without putting any of it on a command
line, where every local user can read it (``ps``, ``/proc/<pid>/cmdline``); a process's
environment is readable by its own user only. The file is 0600 in the attempt's 0700 directory.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m skill.launch <environment file> -- <program> [args...]",
              file=sys.stderr)  # fmt: skip
        return 2
    path, program = args[0], args[2:]
    try:
        with open(path, encoding="utf-8") as file:
            env = json.load(file)
        os.unlink(path)
    except (OSError, ValueError) as exc:
        print(f"Error: the login program's environment is unreadable ({exc.__class__.__name__}). "
              "Start a new sign-in with `chatgpt-login start`.", file=sys.stderr)  # fmt: skip
        return 127
    try:
        os.execvpe(program[0], program, {str(k): str(v) for k, v in env.items()})  # noqa: S606 - our own argv
    except OSError as exc:
        print(f"Error: could not start {program[0]} ({exc.strerror}). Check that it is "
              "installed, or point CHATGPT_LOGIN_CODEX_COMMAND (codex) or "
              "CHATGPT_LOGIN_PI_AI_COMMAND (pi-ai) at it.", file=sys.stderr)  # fmt: skip
        return 127


if __name__ == "__main__":
    sys.exit(main())
