"""The skill runner: one live sign-in at a time, driven in our private tmux server.

``start`` launches a driver's login program behind a gate, waits (polling with a deadline) for
its sign-in link or device code, and records the attempt in the state file. ``complete``
validates a pasted address with the strict parser, hands the rebuilt callback to the program
(HTTP to its own loopback listener, or typed at its paste prompt), waits for the program's
verdict, collects the credential and writes the configured files. Every wait ends with a clear
result: success, the program's own error line, a timeout, or the program's death. When an
attempt ends, its processes, tmux session, log and working directory are removed, so no code,
state or token outlives it anywhere we keep.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from skill import statedir
from skill.attempt import premade_link
from skill.chat import codes_in, extract_callback
from skill.drivers import DRIVERS, Driver, DriverName, Method, Saved
from skill.errors import CODES, RECOVERABLE, LockError, SkillError
from skill.events import emit
from skill.files import ensure_private_dir
from skill.loginstate import LoginState, StateStore
from skill.procs import alive, descendants, end_processes, listener_pids
from skill.redirect import Callback
from skill.relay import callback_url, relay_http
from skill.screen import find_authorize_link, find_device_code
from skill.settings import Settings
from skill.tmux import PaneStatus, TmuxServer
from skill.waiting import poll_until

log = logging.getLogger(__name__)

POLL = 0.02
# `wait` looks at a device sign-in this often: the user takes minutes to approve, and each look
# reads the pane (a tmux command).
WAIT_POLL = 0.5
Tick = Callable[[float], None]


def _no_tick(_: float) -> None:
    return None


class Runner:
    def __init__(self, settings: Settings, *, tmux: TmuxServer | None = None) -> None:
        self.settings = settings
        self.dir = settings.state_dir
        ensure_private_dir(self.dir)
        self.store = StateStore(self.dir)
        env = {**settings.child_env, "HOME": str(Path.home())}
        self.tmux = tmux or TmuxServer(
            self.dir / statedir.TMUX_SOCKET, base_env=env, python=settings.python_executable
        )

    # Commands -------------------------------------------------------------------------------

    def start(
        self, *, method: Method = "browser", driver: DriverName = "native", restart: bool = False
    ) -> tuple[LoginState, bool]:
        """Start a sign-in; returns it and whether it was an already-live one (reused)."""
        chosen = DRIVERS[driver]
        with self.store.locked():
            current = self._settle(self.store.load())
            if current is not None and current.live:
                if not restart:
                    return current, True
                self._end(current, "canceled", message="Replaced by a new sign-in.")
            state = self._launch(chosen, method)
            self.store.save(state)
            emit(self.dir, "login.started", login_id=state.id, method=method, driver=driver)
            if state.auth_url is not None:
                return state, False  # a premade attempt: the link is known already
            try:
                state = self._wait_for_link(state, chosen)
            except SkillError as exc:
                self._end(state, "failed", error=exc.code, message=exc.message)
                raise
            self.store.save(state)
            return state, False

    def complete(self, pasted: str, *, on_tick: Tick = _no_tick) -> LoginState:
        """Relay a pasted address and wait for the verdict. A rejected paste leaves the attempt
        live; repeating the address that finished it returns the first result."""
        with self.store.locked():
            state = self._settle(self.store.load())
            if state is None:
                raise SkillError("no_login")
            if state.status == "succeeded":
                return self._repeated(state, pasted)
            if not state.live:
                raise SkillError("login_ended", ended_message(state))
            if state.method != "browser" or state.state is None or state.redirect_port is None:
                raise SkillError(
                    "unsupported_method",
                    "This sign-in uses a device code: approve it in the browser, then run "
                    "`chatgpt-login wait`.",
                )
            try:
                callback = extract_callback(pasted, state=state.state, port=state.redirect_port)
            except SkillError as exc:
                raise _with_link(exc, state) from None
            state = state.model_copy(update={"status": "completing"})
            self.store.save(state)
            try:
                return self._relay_and_finish(state, callback, on_tick)
            except SkillError as exc:
                current = self.store.load() or state
                if current.status == "completing":
                    self.store.save(current.model_copy(update={"status": "waiting"}))
                raise (_with_link(exc, state) if current.live else exc) from None

    def _repeated(self, state: LoginState, pasted: str) -> LoginState:
        """A paste after the attempt succeeded: the address that finished it, again, gets the
        first result, while the credential it made is still here; anything else is refused."""
        from skill.authfiles import auth_files  # noqa: PLC0415 - not on the start path

        try:
            here = any(f.load() is not None for f in auth_files(self.settings))
        except SkillError:
            here = False
        same = state.code_sha256 is not None and state.code_sha256 in map(_sha, codes_in(pasted))
        if same and here:
            return state
        if here:
            raise SkillError("already_signed_in")
        raise SkillError(
            "login_ended",
            "That sign-in finished earlier, but its credential is no longer on this machine "
            "(signed out since?). Start a new sign-in with `chatgpt-login start`.",
        )

    def wait(self, *, timeout: float | None = None, on_tick: Tick = _no_tick) -> LoginState:
        """Wait for a live sign-in (device code, or a browser one completed elsewhere) to end."""
        with self.store.locked():
            state = self._settle(self.store.load())
        if state is None:
            raise SkillError("no_login")
        if not state.live:
            return state
        limit = (state.expires_at - datetime.now(UTC)).total_seconds()
        deadline = time.monotonic() + max(0.0, min(limit, timeout or limit))
        driver = DRIVERS[state.driver]
        mark = self.tmux.screen(state.session).count("\n")
        verdict = self._await_verdict(state, driver, mark, deadline, on_tick, poll=WAIT_POLL)
        if isinstance(verdict, SkillError) and verdict.code == "program_timeout":
            with self.store.locked():
                current = self._settle(self.store.load())
            if current is None or not current.live:  # the attempt itself ran out
                raise SkillError("login_timeout")
            raise SkillError(
                "approval_pending",
                f"Not approved yet. The code stays valid until {state.expires_at:%H:%M} UTC: "
                "remind the user, then run `chatgpt-login wait` again.",
            )
        with self.store.locked():
            return self._conclude(state, driver, verdict, code_sha=None)

    def status(self) -> LoginState | None:
        """The current attempt. While another command holds it (a ``complete`` waiting for
        its verdict) this reads the file as it stands instead of waiting."""
        try:
            with self.store.locked(timeout=0.2):
                return self._settle(self.store.load())
        except LockError:
            return self.store.load()

    def cancel(self) -> LoginState | None:
        """End the live sign-in; returns it, or None if none was live."""
        with self.store.locked():
            state = self._settle(self.store.load())
            if state is None or not state.live:
                return None
            return self._end(state, "canceled", message="Canceled.")

    # Starting -------------------------------------------------------------------------------

    def _launch(self, driver: Driver, method: Method) -> LoginState:
        login_id = secrets.token_hex(4)
        ensure_private_dir(self.dir / statedir.WORK)
        workdir = self.dir / statedir.WORK / login_id
        ensure_private_dir(workdir)
        launch = driver.launch(self.settings, method, workdir)
        premade = launch.premade
        session = f"login-{login_id}"
        self.tmux.start(session, launch.argv, env=launch.env, cwd=workdir,
                        log_file=self._log(login_id))  # fmt: skip
        # A device code lives its own 15 minutes; a browser attempt, login_timeout.
        device = method == "device"
        lifetime = self.settings.device_timeout if device else self.settings.login_timeout
        now = datetime.now(UTC)
        link = {}
        if premade is not None:
            link = {
                "auth_url": premade_link(self.settings, premade),
                "state": premade.state,
                "redirect_port": premade.port,
            }
        return LoginState(
            id=login_id,
            driver=driver.name,
            method=method,
            status="waiting",
            session=session,
            started_at=now,
            expires_at=now + timedelta(seconds=lifetime),
            pane_pid=self.tmux.status(session).pid,
            **link,
        )

    def _wait_for_link(self, state: LoginState, driver: Driver) -> LoginState:
        def look() -> LoginState | None:
            screen = self.tmux.screen(state.session)
            if state.method == "browser":
                if (link := find_authorize_link(screen)) is not None:
                    return state.model_copy(update={
                        "auth_url": link.url, "state": link.state,
                        "redirect_port": link.redirect_port})  # fmt: skip
            elif (device := find_device_code(screen)) is not None:
                return state.model_copy(update={"verification_url": device.verification_url,
                                                "user_code": device.user_code})  # fmt: skip
            self._raise_if_dead(state, driver, screen)
            return None

        found = poll_until(self.settings.start_timeout, look, every=POLL)
        if found is None:
            raise SkillError(
                "program_timeout",
                f"The {driver.name} login program printed no sign-in link within "
                f"{self.settings.start_timeout:.0f} s. Try again, or use --driver native.",
            )
        return found

    # Completing -----------------------------------------------------------------------------

    def _relay_and_finish(self, state: LoginState, callback: Callback, on_tick: Tick) -> LoginState:
        driver = DRIVERS[state.driver]
        if state.redirect_port is None:
            raise SkillError("internal", "The sign-in has no redirect port. Start again.")
        deadline = time.monotonic() + self.settings.complete_timeout
        owned, screen = self._listener_or_prompt(state, driver, state.redirect_port, deadline)
        mark = screen.count("\n")
        if owned:
            answer = relay_http(
                state.redirect_port, callback, timeout=self.settings.complete_timeout
            )
            log.info("relay answered %s", answer.status)
            saved = driver.relay_verdict(self.settings, answer)  # raises for a rejected one
            if saved is not None:
                return self._succeeded(state, saved, code_sha=_sha(callback.code))
            if driver.verdict_over_http:
                mark = 0  # no verdict in its answer: it is in its output; read all of it
        elif driver.paste_prompt is not None and driver.paste_prompt.search(screen):
            if driver.echoes_paste:
                # The log must not take the address, and the screen is wiped if the attempt
                # goes on.
                self.tmux.stop_log(state.session)
            self.tmux.type_line(
                state.session, _typeable(callback_url(state.redirect_port, callback))
            )
        elif listener_pids(state.redirect_port, _all_pids()):
            raise SkillError("listener_not_ours")
        else:
            raise SkillError(
                "login_ended",
                "The login program is no longer waiting for the address. Check "
                "`chatgpt-login status` and start again if needed.",
            )
        verdict = self._await_verdict(state, driver, mark, deadline, on_tick)
        if isinstance(verdict, SkillError) and verdict.code in RECOVERABLE:
            if driver.echoes_paste:
                self.tmux.wipe(state.session)  # an echoed address must not stay on screen
            raise verdict  # the attempt stays live for another try
        return self._conclude(state, driver, verdict, code_sha=_sha(callback.code))

    def _listener_or_prompt(
        self, state: LoginState, driver: Driver, port: int, deadline: float
    ) -> tuple[set[int], str]:
        """The program's own listener on the attempt's port, and its screen.

        ``start`` returns before our own program runs (its link is made in advance), so a quick
        ``complete`` can find it still starting: wait for its listener or its ready line, since
        a paste typed before the program turns echo off would land in the scrollback.
        """

        def look() -> tuple[set[int], str] | None:
            pids = descendants(state.pane_pid) if state.pane_pid else set()
            owned = listener_pids(port, pids)
            if owned and driver.verdict_over_http:
                return owned, ""  # its HTTP answer is the verdict: no need to load libtmux
            screen = self.tmux.screen(state.session)
            ready = driver.paste_prompt is not None and driver.paste_prompt.search(screen)
            if owned or ready or not driver.starts_late:
                return owned, screen
            self._raise_if_dead(state, driver, screen)
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

    def _await_verdict(
        self,
        state: LoginState,
        driver: Driver,
        mark: int,
        deadline: float,
        on_tick: Tick,
        *,
        poll: float = POLL,
    ) -> bool | SkillError:
        """True on the program's success line; a SkillError for its failure, a recoverable
        rejection (``bad_paste``), its death, or the deadline. Looks every ``poll`` seconds."""
        started = time.monotonic()

        def look() -> bool | SkillError | None:
            screen = self.tmux.screen(state.session)
            fresh = "\n".join(screen.split("\n")[mark:])
            if driver.success.search(fresh):
                if not driver.exits_on_success or not self.tmux.status(state.session).alive:
                    return True
            elif driver.rejected is not None and (match := driver.rejected.search(fresh)):
                code = match.group(2) if match.group(2) in CODES else "bad_paste"
                return SkillError(code, match.group(1).strip())
            else:
                try:
                    self._raise_if_dead(state, driver, screen)
                except SkillError as exc:
                    return exc
            on_tick(time.monotonic() - started)
            return None

        found = poll_until(deadline - time.monotonic(), look, every=poll)
        return SkillError("program_timeout") if found is None else found

    def _conclude(
        self, state: LoginState, driver: Driver, verdict: bool | SkillError, *, code_sha: str | None
    ) -> LoginState:
        if isinstance(verdict, SkillError):
            if verdict.code == "program_timeout":
                raise verdict  # the attempt may still finish; leave it live
            self._end(state, "failed", error=verdict.code, message=verdict.message)
            raise verdict
        try:
            saved = driver.save(self.settings, self.dir / statedir.WORK / state.id,
                                lambda: self.tmux.screen(state.session))  # fmt: skip
        except SkillError as exc:
            self._end(state, "failed", error=exc.code, message=exc.message)
            raise
        return self._succeeded(state, saved, code_sha=code_sha)

    def _succeeded(self, state: LoginState, saved: Saved, *, code_sha: str | None) -> LoginState:
        done = state.model_copy(update={
            "saved": saved.paths, "notes": saved.notes, "code_sha256": code_sha,
            "signed_in_as": saved.who,
        })  # fmt: skip
        return self._end(done, "succeeded", message="Signed in.")

    # Ending ---------------------------------------------------------------------------------

    def _end(self, state: LoginState, status: str, **outcome: str | None) -> LoginState:
        """End the attempt: processes, session, log and working directory go; state scrubbed."""
        pids = descendants(state.pane_pid) if state.pane_pid else set()
        self.tmux.kill(state.session)
        end_processes(pids)
        self._log(state.id).unlink(missing_ok=True)
        shutil.rmtree(self.dir / statedir.WORK / state.id, ignore_errors=True)
        ended = state.ended(status, **outcome)  # type: ignore[arg-type]
        self.store.save(ended)
        if status == "canceled":
            emit(self.dir, "login.canceled", login_id=state.id)
        else:
            emit(self.dir, "login.completed", login_id=state.id, ok=status == "succeeded",
                 status=status, error=ended.error)  # fmt: skip
        if status == "succeeded":
            emit(self.dir, "credential.updated", why="sign-in", login_id=state.id)
        return ended

    def _settle(self, state: LoginState | None) -> LoginState | None:
        """Bring a live attempt's status up to date: expired, or its program gone."""
        if state is None or not state.live:
            return state
        if state.expired_now:
            return self._end(state, "expired", error="login_timeout", message=None)
        if not self.tmux.exists(state.session):
            return self._end(
                state,
                "failed",
                error="program_failed",
                message="The login program is gone (the machine or service restarted?). "
                "Start a new sign-in with `chatgpt-login start`.",
            )
        pane = self._caught_up_status(state)
        if state.status == "waiting" and self._finished_alone(state, pane):
            return self._conclude_alone(state)
        # Exit 0 is left to `complete`, which reads the program's verdict from its screen.
        if not pane.alive and pane.exit_status != 0:
            how = (f"with status {pane.exit_status}" if pane.exit_status is not None
                   else "killed by a signal")  # fmt: skip
            return self._end(
                state,
                "failed",
                error="program_failed",
                message=f"The login program stopped ({how}) before the sign-in finished. "
                "Start a new sign-in with `chatgpt-login start`.",
            )
        return state

    def _conclude_alone(self, state: LoginState) -> LoginState | None:
        """Nobody has to be waiting for it: `status`, the API and the service's keep-alive all
        see a device code approved a moment ago as the sign-in it now is."""
        try:
            return self._conclude(state, DRIVERS[state.driver], True, code_sha=None)
        except SkillError:  # it could not be saved: _conclude ended the attempt so
            return self.store.load()

    def _finished_alone(self, state: LoginState, pane: PaneStatus) -> bool:
        """The program printed its success line with no paste from us: a device code the user
        approved, or a browser redirect that reached the program directly."""
        driver = DRIVERS[state.driver]
        if not driver.success.search(self.tmux.screen(state.session)):
            return False
        return not driver.exits_on_success or not pane.alive

    def _caught_up_status(self, state: LoginState) -> PaneStatus:
        """The pane's status once tmux has noticed its program's end. A program killed a moment
        ago stays a zombie until tmux's event loop reaps it, and until then tmux still calls the
        pane alive; a single look (``status``) must not report such an attempt as waiting."""

        def caught_up() -> PaneStatus | None:
            pane = self.tmux.status(state.session)
            gone = pane.alive and state.pane_pid and not alive(state.pane_pid)
            return None if gone else pane

        # tmux never catching up within a second: the program is gone anyway.
        return poll_until(1.0, caught_up, every=0.02) or PaneStatus(
            alive=False, exit_status=None, pid=state.pane_pid)  # fmt: skip

    def _raise_if_dead(self, state: LoginState, driver: Driver, screen: str) -> None:
        status = self.tmux.status(state.session)
        if status.alive:
            return
        failures = driver.failure.findall(screen)
        reason = failures[-1].strip() if failures else f"it exited with status {status.exit_status}"
        raise SkillError(
            "program_failed",
            f"The {driver.name} login program failed: {reason} Start a new sign-in with "
            "`chatgpt-login start`.",
        )

    def _log(self, login_id: str) -> Path:
        logs = self.dir / statedir.LOGS
        ensure_private_dir(logs)
        return logs / f"{login_id}.log"


def _with_link(exc: SkillError, state: LoginState) -> SkillError:
    """The attempt's sign-in link on an error whose next step is to send it again."""
    if exc.next == "send_current_link" and state.auth_url:
        exc.details["auth_url"] = state.auth_url
        if exc.code == "state_mismatch":
            exc.message += f" The current link: {state.auth_url}"
    return exc


def _typeable(text: str) -> str:
    """Refuse anything that could act as more than text at a prompt."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text) or text.startswith("-"):
        raise SkillError("bad_paste")
    if text.rstrip().endswith(";"):
        raise SkillError("bad_paste")
    return text


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _all_pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}


def ended_message(state: LoginState) -> str:
    what = {"failed": "failed", "canceled": "was canceled", "expired": "expired"}.get(
        state.status, state.status
    )
    detail = f" ({state.message})" if state.message else ""
    return f"That sign-in attempt {what}{detail}. Start a new one with `chatgpt-login start`."
