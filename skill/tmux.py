"""Our private tmux server: the one place that talks to the tmux binary.

One server per user, its socket in the 0700 state directory, never the user's default server.
Every command we send runs with a minimal environment (given to the process, never on its
command line: a proxy's password must not show in ``ps``), so whichever one starts the server
gives it that environment, and secrets in the caller's environment do not reach the server or
anything it runs. A program started in a session gets its own environment through a 0600 file
that :mod:`skill.launch` reads and deletes. Handles are re-queried, never cached.

libtmux gives the typed pane handles used to read the screen and type. Importing it costs
about 0.1 s, a third of ``chatgpt-login start``'s budget, so the handful of fire-and-forget
commands on the start and cleanup paths run the binary directly through :meth:`_run`, and
libtmux is imported only when a pane is read or typed into.

A login program is started behind a gate: the session is created running
``tmux wait-for <channel> && exec <program>``; then ``remain-on-exit`` and ``pipe-pane`` to a 0600
log are set up, then the gate opens. So no line of output is ever missed, and the last lines stay
readable after the program exits.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from skill.errors import SkillError
from skill.files import write_private

if TYPE_CHECKING:
    import libtmux

log = logging.getLogger(__name__)

ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
WIDTH, HEIGHT = 220, 50
_START_ATTEMPTS = 3


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


@dataclass(frozen=True)
class PaneStatus:
    alive: bool
    exit_status: int | None
    pid: int | None


class TmuxServer:
    """The private server on ``socket``. ``base_env`` is all its programs inherit."""

    def __init__(
        self, socket: Path, *, base_env: Mapping[str, str], python: str = sys.executable
    ) -> None:
        self.socket = socket
        self.base_env = dict(base_env)
        self.python = python  # runs skill.launch for each program
        self.tmux = shutil.which("tmux", path=self.base_env.get("PATH")) or "tmux"
        self._server: libtmux.Server | None = None

    @property
    def server(self) -> libtmux.Server:
        if self._server is None:
            import libtmux  # noqa: PLC0415 - see the module docstring

            self._server = libtmux.Server(socket_path=str(self.socket), config_file="/dev/null")
        return self._server

    def _run(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """One tmux command on our socket, with the server's clean environment."""
        argv = [self.tmux, "-S", str(self.socket), "-f", "/dev/null", *args]
        done = subprocess.run(argv, env=self.base_env, capture_output=True, text=True,
                              timeout=10, check=False, input=input)  # fmt: skip
        if check and done.returncode != 0:
            raise SkillError(
                "internal",
                f"tmux failed ({args[0]}: {done.stderr.strip()[:200]}). Is tmux installed?",
            )
        return done

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_file: Path,
        width: int = WIDTH,
    ) -> None:
        """Run ``argv`` in a new session ``name`` with exactly ``env``, logging to ``log_file``."""
        gate = f"gate-{name}"
        env_file = cwd / f".{name}.env"
        write_private(env_file, json.dumps(dict(env)).encode())
        launch = [self.python, "-m", "skill.launch", str(env_file), "--", *argv]
        program = shlex.join(launch)
        opener = shlex.join([self.tmux, "-S", str(self.socket), "wait-for", gate])
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        target = f"={name}:"
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                # One tmux invocation: start the server if needed (through _run, so with the
                # clean environment), create the gated session, keep the pane after exit, log
                # it, then open the gate.
                self._run(
                    "start-server", ";",
                    "new-session", "-d", "-s", name, "-x", str(width), "-y", str(HEIGHT),
                    "-c", str(cwd), f"{opener} && exec {program}", ";",
                    "set-option", "-t", target, "remain-on-exit", "on", ";",
                    "set-option", "-t", target, "history-limit", "5000", ";",
                    "pipe-pane", "-o", "-t", target, f"cat >> {shlex.quote(str(log_file))}", ";",
                    "wait-for", "-S", gate,
                )  # fmt: skip
                return
            except SkillError as exc:
                self.kill(name)
                # The server exits by itself when its last session is gone: a start that meets
                # one still exiting (a sign-in canceled a moment ago) finds it gone. Once more.
                if "server exited unexpectedly" not in exc.message or attempt == _START_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)

    def _pane(self, name: str) -> libtmux.Pane | None:
        from libtmux.exc import LibTmuxException  # noqa: PLC0415

        try:
            session = self.server.sessions.get(session_name=name, default=None)
        except LibTmuxException:
            return None
        return session.active_pane if session is not None else None

    def exists(self, name: str) -> bool:
        return self._run("has-session", "-t", f"={name}", check=False).returncode == 0

    def screen(self, name: str) -> str:
        """Everything the pane shows and has scrolled off, wrapped lines joined, no escapes."""
        pane = self._pane(name)
        if pane is None:
            return ""
        lines = pane.capture_pane(start="-", end="-", join_wrapped=True)
        return strip_ansi("\n".join(lines))

    def status(self, name: str) -> PaneStatus:
        fmt = "#{pane_dead}|#{pane_dead_status}|#{pane_pid}"
        done = self._run("display-message", "-p", "-t", f"={name}:", fmt, check=False)
        if done.returncode != 0:
            return PaneStatus(alive=False, exit_status=None, pid=None)
        dead, status, pid = [*done.stdout.strip().split("|"), "", ""][:3]
        return PaneStatus(
            alive=dead != "1",
            exit_status=int(status) if status.lstrip("-").isdigit() else None,
            pid=int(pid) if pid.isdigit() else None,
        )

    def type_line(self, name: str, text: str) -> None:
        """Type ``text`` literally, then press Enter as a separate key.

        The text goes to tmux on stdin (``load-buffer -``) and into the pane with
        ``paste-buffer -d``, which deletes the buffer as it pastes: never in a command line,
        where ``ps`` would show it (``send-keys -l -- <text>`` did, for as long as it ran).
        tmux pastes every byte as a character, so nothing in ``text`` can run a tmux command.
        """
        pane = self._pane(name)
        if pane is None:
            raise SkillError("internal", "The login program's terminal is gone. Start again.")
        buffer = f"cgl-{secrets.token_hex(6)}"
        self._run("load-buffer", "-b", buffer, "-", input=text)
        self._run("paste-buffer", "-d", "-b", buffer, "-t", str(pane.pane_id))
        pane.cmd("send-keys", "Enter")

    def stop_log(self, name: str) -> None:
        """Stop copying the pane to its log (``pipe-pane`` with no command closes the pipe)."""
        self._run("pipe-pane", "-t", f"={name}:", check=False)

    def wipe(self, name: str) -> None:
        """Clear the pane's screen and scrollback, as tmux's own "clear" does."""
        self._run("send-keys", "-R", "-t", f"={name}:", ";", "clear-history", "-t", f"={name}:",
                  check=False)  # fmt: skip

    def kill(self, name: str) -> None:
        """Kill the session; tmux hangs up on everything running in it."""
        if self._run("kill-session", "-t", f"={name}", check=False).returncode != 0:
            log.debug("kill-session found no session %s", name)

    def sessions(self) -> list[str]:
        done = self._run("list-sessions", "-F", "#{session_name}", check=False)
        return done.stdout.split() if done.returncode == 0 else []
