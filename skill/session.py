"""One attempt's login program in our private tmux server: launched, watched, ended.

The runner (:mod:`skill.runner`) decides what an attempt does next; a :class:`Session` is how
it sees and touches the program: it launches it, reads its screen for the sign-in link or
device code, waits until it is ready for a pasted address, hands the address over (to its own
loopback listener, or typed at its prompt), reads its verdict, notices its death, and at the
end takes away its processes, session, log and working directory. Every wait polls with a
deadline (:func:`skill.waiting.poll_until`) and ends with a result, never a hang.

What differs between login programs is asked of the :class:`~skill.drivers.Driver`, never of
its name.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from skill import statedir
from skill.attempt import Attempt
from skill.drivers import DRIVERS, Driver, Method, Saved
from skill.errors import CODES, SkillError
from skill.files import ensure_private_dir
from skill.premade import premade_link
from skill.procs import alive, descendants, end_processes, listener_pids
from skill.redirect import Callback
from skill.relay import callback_url, relay_http
from skill.screen import find_authorize_link, find_device_code
from skill.settings import Settings
from skill.tmux import PaneStatus, TmuxServer
from skill.waiting import poll_until

log = logging.getLogger(__name__)

POLL = 0.02
Tick = Callable[[float], None]


class Session:
    """The login program of the attempt ``attempt`` (its session, pane and working directory)."""

    def __init__(self, settings: Settings, tmux: TmuxServer, attempt: Attempt) -> None:
        self.settings, self.tmux, self.attempt = settings, tmux, attempt
        self.driver: Driver = DRIVERS[attempt.driver]
        self.workdir = settings.state_dir / statedir.WORK / attempt.id

    @classmethod
    def launch(
        cls, settings: Settings, tmux: TmuxServer, driver: Driver, method: Method
    ) -> Session:
        """Start ``driver``'s program for a new attempt, in a session of its own."""
        login_id = secrets.token_hex(4)
        ensure_private_dir(settings.state_dir / statedir.WORK)
        workdir = settings.state_dir / statedir.WORK / login_id
        ensure_private_dir(workdir)
        launch = driver.launch(settings, method, workdir)
        session = f"login-{login_id}"
        tmux.start(session, launch.argv, env=launch.env, cwd=workdir,
                   log_file=log_path(settings, login_id))  # fmt: skip
        # A device code lives its own 15 minutes; a browser attempt, login_timeout.
        lifetime = settings.device_timeout if method == "device" else settings.login_timeout
        now = datetime.now(UTC)
        link = {}
        if (premade := launch.premade) is not None:  # our program: its link is known already
            link = {"auth_url": premade_link(settings, premade), "oauth_state": premade.state,
                    "redirect_port": premade.port}  # fmt: skip
        attempt = Attempt(
            id=login_id, driver=driver.name, method=method, status="waiting", tmux_session=session,
            started_at=now, expires_at=now + timedelta(seconds=lifetime),
            pane_pid=tmux.status(session).pid, **link,
        )  # fmt: skip
        return cls(settings, tmux, attempt)

    def screen(self) -> str:
        return self.tmux.screen(self.attempt.tmux_session)

    # Starting -------------------------------------------------------------------------------

    def link(self) -> Attempt:
        """The attempt with the sign-in link (or device code) the program printed."""
        attempt = self.attempt

        def look() -> Attempt | None:
            screen = self.screen()
            if attempt.method == "browser":
                if (link := find_authorize_link(screen)) is not None:
                    return attempt.model_copy(update={
                        "auth_url": link.url, "oauth_state": link.state,
                        "redirect_port": link.redirect_port})  # fmt: skip
            elif (device := find_device_code(screen)) is not None:
                return attempt.model_copy(update={"verification_url": device.verification_url,
                                                "user_code": device.user_code})  # fmt: skip
            self.raise_if_dead(screen)
            return None

        found = poll_until(self.settings.start_timeout, look, every=POLL)
        if found is None:
            raise SkillError(
                "program_timeout",
                f"The {self.driver.name} login program printed no sign-in link within "
                f"{self.settings.start_timeout:.0f} s. Try again, or use --driver native.",
            )
        self.attempt = found
        return found

    # Completing -----------------------------------------------------------------------------

    def hand_over(self, callback: Callback, deadline: float) -> Saved | int:
        """Give the program the validated callback. Its answer when that is the verdict (a
        saved credential; a rejection raises); else the screen line its verdict comes after."""
        port, driver = self.attempt.redirect_port, self.driver
        if port is None:
            raise SkillError("internal", "The sign-in has no redirect port. Start again.")
        owned, screen = self._listener_or_prompt(port, deadline)
        if owned:
            answer = relay_http(port, callback, timeout=self.settings.complete_timeout)
            log.info("relay answered %s", answer.status)
            saved = driver.relay_verdict(self.settings, answer)  # raises for a rejected one
            if saved is not None:
                return saved
            # No verdict in its answer: it is in the program's output; read all of it.
            return 0 if driver.verdict_over_http else screen.count("\n")
        if driver.paste_prompt is not None and driver.paste_prompt.search(screen):
            if driver.echoes_paste:
                # The log must not take the address; the screen is wiped if the attempt goes on.
                self.tmux.stop_log(self.attempt.tmux_session)
            self.tmux.type_line(self.attempt.tmux_session, _typeable(callback_url(port, callback)))
            return screen.count("\n")
        if listener_pids(port, _all_pids()):
            raise SkillError("listener_not_ours")
        raise SkillError(
            "login_ended",
            "The login program is no longer waiting for the address. Check "
            "`chatgpt-login status` and start again if needed.",
        )

    def _listener_or_prompt(self, port: int, deadline: float) -> tuple[set[int], str]:
        """The program's own listener on the attempt's port, and its screen.

        ``start`` returns before our own program runs (its link is made in advance), so a quick
        ``complete`` can find it still starting: wait for its listener or its ready line, since
        a paste typed before the program turns echo off would land in the scrollback.
        """
        driver, pane_pid = self.driver, self.attempt.pane_pid

        def look() -> tuple[set[int], str] | None:
            owned = listener_pids(port, descendants(pane_pid) if pane_pid else set())
            if owned and driver.verdict_over_http:
                return owned, ""  # its HTTP answer is the verdict: no need to load libtmux
            screen = self.screen()
            ready = driver.paste_prompt is not None and driver.paste_prompt.search(screen)
            if owned or ready or not driver.starts_late:
                return owned, screen
            self.raise_if_dead(screen)
            return None

        found = poll_until(deadline - time.monotonic(), look, every=POLL)
        if found is None:
            raise SkillError(
                "program_timeout",
                f"The login program was not ready for the address within "
                f"{self.settings.complete_timeout:.0f} s. Start a new sign-in with "
                "`chatgpt-login start`.",
            )
        return found

    def verdict(
        self, mark: int, deadline: float, on_tick: Tick, *, poll: float = POLL
    ) -> bool | SkillError:
        """True on the program's success line after screen line ``mark``; a SkillError for its
        failure, a recoverable rejection (``bad_paste``), its death, or the deadline
        (``program_timeout``). Looks every ``poll`` seconds."""
        driver, started = self.driver, time.monotonic()

        def look() -> bool | SkillError | None:
            screen = self.screen()
            fresh = "\n".join(screen.split("\n")[mark:])
            if driver.success.search(fresh):
                if (
                    not driver.exits_on_success
                    or not self.tmux.status(self.attempt.tmux_session).alive
                ):
                    return True
            elif driver.rejected is not None and (match := driver.rejected.search(fresh)):
                code = match.group(2) if match.group(2) in CODES else "bad_paste"
                return SkillError(code, match.group(1).strip())
            elif not self.tmux.status(self.attempt.tmux_session).alive:
                # Its end is final: the screen read now holds all it printed, a success line
                # printed since the look above, or before ``mark`` was taken (a device code
                # approved between wait's first look and its mark) included.
                final = self.screen()
                if driver.success.search(final):
                    return True
                try:
                    self.raise_if_dead(final)
                except SkillError as exc:
                    return exc
            on_tick(time.monotonic() - started)
            return None

        found = poll_until(deadline - time.monotonic(), look, every=poll)
        return SkillError("program_timeout") if found is None else found

    def forget_paste(self) -> None:
        """After a rejected paste, for a program that echoed it: off the screen."""
        if self.driver.echoes_paste:
            self.tmux.wipe(self.attempt.tmux_session)

    def save(self) -> Saved:
        """The program's credential, collected and written to the configured files."""
        return self.driver.save(self.settings, self.workdir, self.screen)

    # Looking --------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.tmux.exists(self.attempt.tmux_session)

    def finished_alone(self, pane: PaneStatus) -> bool:
        """The program printed its success line with no paste from us: a device code the user
        approved, or a browser redirect that reached the program directly."""
        if not self.driver.success.search(self.screen()):
            return False
        return not self.driver.exits_on_success or not pane.alive

    def pane(self) -> PaneStatus:
        """The pane's status once tmux has noticed its program's end. A program killed a moment
        ago stays a zombie until tmux's event loop reaps it, and until then tmux still calls the
        pane alive; a single look (``status``) must not report such an attempt as waiting."""
        pane_pid = self.attempt.pane_pid

        def caught_up() -> PaneStatus | None:
            pane = self.tmux.status(self.attempt.tmux_session)
            gone = pane.alive and pane_pid and not alive(pane_pid)
            return None if gone else pane

        # tmux never catching up within a second: the program is gone anyway.
        return poll_until(1.0, caught_up, every=0.02) or PaneStatus(
            alive=False, exit_status=None, pid=pane_pid)  # fmt: skip

    def raise_if_dead(self, screen: str) -> None:
        status = self.tmux.status(self.attempt.tmux_session)
        if status.alive:
            return
        failures = self.driver.failure.findall(screen)
        reason = failures[-1].strip() if failures else f"it exited with status {status.exit_status}"
        raise SkillError(
            "program_failed",
            f"The {self.driver.name} login program failed: {reason} Start a new sign-in with "
            "`chatgpt-login start`.",
        )

    # Ending ---------------------------------------------------------------------------------

    def end(self) -> None:
        """Processes, session, log and working directory go: no code, attempt or token outlives
        the attempt anywhere we keep."""
        pids = descendants(self.attempt.pane_pid) if self.attempt.pane_pid else set()
        self.tmux.kill(self.attempt.tmux_session)
        end_processes(pids)
        log_path(self.settings, self.attempt.id).unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def end_leftovers(settings: Settings, tmux: TmuxServer) -> None:
    """End what attempts the state file no longer names left behind (the file lost, damaged,
    or naming a driver no longer registered): sessions in our tmux server, working directories
    (a program's credential may be in one), logs. Called when no attempt is live; every
    attempt has a working directory until it ends, so without one left there is nothing to
    look for in tmux (whose every command is a process start)."""
    left = [
        p for kind in (statedir.WORK, statedir.LOGS) for p in (settings.state_dir / kind).glob("*")
    ]
    if not left:
        return
    for name in tmux.sessions():
        tmux.kill(name)
    for leftover in left:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def log_path(settings: Settings, login_id: str) -> Path:
    """Where the attempt's tmux pane is logged (its directory made private first)."""
    logs = settings.state_dir / statedir.LOGS
    ensure_private_dir(logs)
    return logs / f"{login_id}.log"


def _typeable(text: str) -> str:
    """Refuse anything that could act as more than text at a prompt."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text) or text.startswith("-"):
        raise SkillError("bad_paste")
    if text.rstrip().endswith(";"):
        raise SkillError("bad_paste")
    return text


def _all_pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
