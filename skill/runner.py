"""The skill runner: one live sign-in at a time, its commands and how an attempt ends.

``start`` launches a driver's login program (:class:`skill.session.Session`), waits for its
sign-in link or device code, and records the attempt in the state file. ``complete`` validates a
pasted address with the strict parser, has the session hand the rebuilt callback to the program,
waits for its verdict, and collects the credential into the configured files. Every wait ends
with a clear result: success, the program's own error line, a timeout, or the program's death.
When an attempt ends, the session takes its processes, tmux session, log and working directory
with it, and the state file keeps no secret of it.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path

from skill import statedir
from skill.attempt import Attempt, AttemptFile, Status
from skill.chat import extract_callback, values_in
from skill.drivers import DRIVERS, DriverName, Method, Saved
from skill.errors import RECOVERABLE, LockError, SkillError
from skill.events import emit
from skill.files import check_writable, ensure_private_dir
from skill.redirect import Callback
from skill.session import Session, Tick, end_leftovers
from skill.settings import Settings
from skill.tmux import TmuxServer

# `wait` looks at a device sign-in this often: the user takes minutes to approve, and each look
# reads the pane (a tmux command).
WAIT_POLL = 0.5
BROWSER_WAIT = 30.0  # seconds `wait` gives a browser sign-in unless told (--timeout)


def _no_tick(_: float) -> None:
    return None


class Runner:
    def __init__(self, settings: Settings, *, tmux: TmuxServer | None = None) -> None:
        self.settings = settings
        self.dir = settings.state_dir
        ensure_private_dir(self.dir)
        self.attempt_file = AttemptFile(self.dir)
        env = {**settings.child_env, "HOME": str(Path.home())}
        self.tmux = tmux or TmuxServer(
            self.dir / statedir.TMUX_SOCKET, base_env=env, python=settings.python_executable
        )

    def session(self, attempt: Attempt) -> Session:
        return Session(self.settings, self.tmux, attempt)

    # Commands -------------------------------------------------------------------------------

    def start(
        self, *, method: Method = "browser", driver: DriverName = "native", restart: bool = False
    ) -> tuple[Attempt, bool]:
        """Start a sign-in; returns it and whether it was an already-live one (reused)."""
        with self.attempt_file.locked():
            current = self._settle(self.attempt_file.load())
            if current is not None and current.live:
                if not restart:
                    return current, True
                self._end(current, "canceled", message="Replaced by a new sign-in.")
            check_writable(self.settings.credential_paths)
            end_leftovers(self.settings, self.tmux)  # nothing is live now
            session = Session.launch(self.settings, self.tmux, DRIVERS[driver], method)
            self.attempt_file.save(session.attempt)
            emit(self.dir, "login.started", login_id=session.attempt.id, method=method,
                 driver=driver)  # fmt: skip
            if session.attempt.auth_url is not None:
                return session.attempt, False  # a premade attempt: the link is known already
            try:
                attempt = session.link()
            except SkillError as exc:
                self._end(session.attempt, "failed", error=exc.code, message=exc.message)
                raise
            self.attempt_file.save(attempt)
            return attempt, False

    def complete(self, pasted: str, *, on_tick: Tick = _no_tick) -> Attempt:
        """Relay a pasted address and wait for the verdict. A rejected paste leaves the attempt
        live; repeating the address that finished it returns the first result."""
        with self.attempt_file.locked():
            attempt = self._settle(self.attempt_file.load())
            if attempt is None:
                raise SkillError("no_login")
            if attempt.status == "succeeded":
                return self._repeated(attempt, pasted)
            if not attempt.live:
                raise ended_error(attempt)
            if (
                attempt.method != "browser"
                or attempt.oauth_state is None
                or attempt.redirect_port is None
            ):
                raise SkillError(
                    "unsupported_method",
                    "This sign-in uses a device code: approve it in the browser, then run "
                    "`chatgpt-login wait`.",
                )
            try:
                callback = extract_callback(
                    pasted, state=attempt.oauth_state, port=attempt.redirect_port
                )
            except SkillError as exc:
                raise _with_link(exc, attempt) from None
            attempt = attempt.model_copy(update={"status": "completing"})
            self.attempt_file.save(attempt)
            try:
                return self._relay_and_finish(attempt, callback, on_tick)
            except SkillError as exc:
                current = self.attempt_file.load() or attempt
                if current.status == "completing":
                    self.attempt_file.save(current.model_copy(update={"status": "waiting"}))
                raise (_with_link(exc, attempt) if current.live else exc) from None

    def _repeated(self, attempt: Attempt, pasted: str) -> Attempt:
        """A paste after the attempt succeeded: the address that finished it, again, gets the
        first result, while the credential it made is still here; anything else is refused."""
        from skill.authfiles import auth_files  # noqa: PLC0415 - not on the start path

        try:
            here = any(f.load() is not None for f in auth_files(self.settings))
        except SkillError:
            here = False
        # The code that finished it; when the browser reached the login program itself, no code
        # passed through us, and the attempt's own state tells its address.
        if attempt.code_sha256 is not None:
            same = _among(attempt.code_sha256, values_in(pasted, "code"))
        else:
            same = _among(attempt.state_sha256, values_in(pasted, "state"))
        if same and here:
            return attempt
        if here:
            raise SkillError("already_signed_in")
        raise SkillError(
            "login_ended",
            "That sign-in finished earlier, but its credential is no longer on this machine "
            "(signed out since?). Start a new sign-in with `chatgpt-login start`.",
        )

    def wait(self, *, timeout: float | None = None, on_tick: Tick = _no_tick) -> Attempt:
        """Wait for a live sign-in (device code, or a browser one completed elsewhere) to end."""
        with self.attempt_file.locked():
            attempt = self._settle(self.attempt_file.load())
        if attempt is None:
            raise SkillError("no_login")
        if not attempt.live:
            return attempt
        limit = (attempt.expires_at - datetime.now(UTC)).total_seconds()
        if timeout is None and attempt.method == "browser":
            # A browser sign-in ends with a paste (`complete`); waiting is for one the browser
            # took to the program itself. Not the whole attempt: an agent would hang on it.
            timeout = BROWSER_WAIT
        deadline = time.monotonic() + max(0.0, min(limit, timeout or limit))
        session = self.session(attempt)
        mark = session.screen().count("\n")
        verdict = session.verdict(mark, deadline, on_tick, poll=WAIT_POLL)
        if isinstance(verdict, SkillError) and verdict.code == "program_timeout":
            with self.attempt_file.locked():
                current = self._settle(self.attempt_file.load())
            if current is None or not current.live:  # the attempt itself ran out
                raise SkillError("login_timeout")
            until = f"{attempt.expires_at:%H:%M} UTC"
            raise SkillError(
                "approval_pending",
                f"Not approved yet. The code stays valid until {until}: remind the user, then "
                "run `chatgpt-login wait` again."
                if attempt.method == "device"
                else f"Not signed in yet: the user has not finished in the browser. The link "
                f"works until {until}: remind them, then run `chatgpt-login wait` again, or "
                "`chatgpt-login complete` with the address they paste.",
            )
        with self.attempt_file.locked():
            return self._conclude(session, verdict, code_sha=None)

    def status(self) -> Attempt | None:
        """The current attempt. While another command holds it (a ``complete`` waiting for
        its verdict) this reads the file as it stands instead of waiting."""
        try:
            with self.attempt_file.locked(timeout=0.2):
                return self._settle(self.attempt_file.load())
        except LockError:
            return self.attempt_file.load()

    def cancel(self) -> Attempt | None:
        """End the live sign-in; returns it, or None if none was live."""
        with self.attempt_file.locked():
            attempt = self._settle(self.attempt_file.load())
            if attempt is None or not attempt.live:
                return None
            return self._end(attempt, "canceled")  # "was canceled" says it all

    # Completing -----------------------------------------------------------------------------

    def _relay_and_finish(self, attempt: Attempt, callback: Callback, on_tick: Tick) -> Attempt:
        session = self.session(attempt)
        deadline = time.monotonic() + self.settings.complete_timeout
        handed = session.hand_over(callback, deadline)
        if isinstance(handed, Saved):  # the program's answer was its verdict
            return self._succeeded(attempt, handed, code_sha=_sha(callback.code))
        verdict = session.verdict(handed, deadline, on_tick)
        if isinstance(verdict, SkillError) and verdict.code in RECOVERABLE:
            session.forget_paste()
            raise verdict  # the attempt stays live for another try
        return self._conclude(session, verdict, code_sha=_sha(callback.code))

    def _conclude(
        self, session: Session, verdict: bool | SkillError, *, code_sha: str | None
    ) -> Attempt:
        attempt = session.attempt
        if isinstance(verdict, SkillError):
            if verdict.code == "program_timeout":
                raise verdict  # the attempt may still finish; leave it live
            self._end(attempt, "failed", error=verdict.code, message=verdict.message)
            raise verdict
        try:
            saved = session.save()
        except SkillError as exc:
            self._end(attempt, "failed", error=exc.code, message=exc.message)
            raise
        return self._succeeded(attempt, saved, code_sha=code_sha)

    def _succeeded(self, attempt: Attempt, saved: Saved, *, code_sha: str | None) -> Attempt:
        state_sha = _sha(attempt.oauth_state) if attempt.oauth_state else None
        done = attempt.model_copy(update={
            "saved": saved.paths, "notes": saved.notes, "code_sha256": code_sha,
            "state_sha256": state_sha, "signed_in_as": saved.who,
        })  # fmt: skip
        return self._end(done, "succeeded", message="Signed in.")

    # Ending ---------------------------------------------------------------------------------

    def _end(self, attempt: Attempt, status: Status, **outcome: str | None) -> Attempt:
        """End the attempt: its program and files go (:meth:`Session.end`), its secrets scrubbed."""
        self.session(attempt).end()
        ended = attempt.ended(status, **outcome)
        self.attempt_file.save(ended)
        if status == "canceled":
            emit(self.dir, "login.canceled", login_id=attempt.id)
        else:
            emit(self.dir, "login.completed", login_id=attempt.id, ok=status == "succeeded",
                 status=status, error=ended.error)  # fmt: skip
        if status == "succeeded":
            emit(self.dir, "credential.updated", why="sign-in", login_id=attempt.id)
        return ended

    def _settle(self, attempt: Attempt | None) -> Attempt | None:
        """Bring a live attempt's status up to date: expired, or its program gone."""
        if attempt is None or not attempt.live:
            return attempt
        if attempt.expired_now:
            return self._end(attempt, "expired", error="login_timeout", message=None)
        session = self.session(attempt)
        if not session.exists():
            return self._end(attempt, "failed", error="program_failed", message="The login "
                             "program is gone (the machine or service restarted?). Start a new "
                             "sign-in with `chatgpt-login start`.")  # fmt: skip
        pane = session.pane()
        if attempt.status == "waiting" and session.finished_alone(pane):
            return self._concluded_alone(session)
        # Exit 0 is left to `complete`, which reads the program's verdict from its screen.
        if not pane.alive and pane.exit_status != 0:
            how = (f"with status {pane.exit_status}" if pane.exit_status is not None
                   else "killed by a signal")  # fmt: skip
            return self._end(attempt, "failed", error="program_failed", message=f"The login "
                             f"program stopped ({how}) before the sign-in finished. Start a new "
                             "sign-in with `chatgpt-login start`.")  # fmt: skip
        return attempt

    def _concluded_alone(self, session: Session) -> Attempt | None:
        """Nobody has to be waiting for it: `status`, the API and the service's keep-alive all
        see a device code approved a moment ago as the sign-in it now is."""
        try:
            return self._conclude(session, True, code_sha=None)
        except SkillError:  # it could not be saved: _conclude ended the attempt so
            return self.attempt_file.load()


def _with_link(exc: SkillError, attempt: Attempt) -> SkillError:
    """The attempt's sign-in link on an error whose next step is to send it again."""
    if exc.next == "send_current_link" and attempt.auth_url:
        exc.details["auth_url"] = attempt.auth_url
        if exc.code == "state_mismatch":
            exc.message += f" The current link: {attempt.auth_url}"
    return exc


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _among(digest: str | None, values: set[str]) -> bool:
    return digest is not None and digest in {_sha(value) for value in values}


def ended_error(attempt: Attempt) -> SkillError:
    """The error for an attempt that ended without signing in: ``login_timeout`` when its time
    ran out, else ``login_ended`` (failed or canceled); its message says which."""
    code = "login_timeout" if attempt.status == "expired" else "login_ended"
    return SkillError(code, ended_message(attempt))


def ended_message(attempt: Attempt) -> str:
    what = {"failed": "failed", "canceled": "was canceled", "expired": "expired"}.get(
        attempt.status, attempt.status
    )
    detail = f" ({attempt.message})" if attempt.message else ""
    return f"That sign-in attempt {what}{detail}. Start a new one with `chatgpt-login start`."
