"""The on-change hook (``CHATGPT_LOGIN_ON_CHANGE``): a command run after each change of the
credential, as Vault Agent runs one when it renders a new secret, so that a program caching the
credential reloads it.

The command line is split like a shell's words but run without a shell. It gets the event as
JSON on stdin (its type, ``why``, ids; never a token) and an environment of its own: PATH,
HOME, LANG and the state directory, nothing of ours (the service's environment may hold the
store's token). Each run has a timeout after which it is killed; a failure is logged and
counted, never retried. Runs happen on a thread of their own, one at a time, in order: a hook
that hangs holds up the next hook, never the keep-alive.

The id of the last event hooked is kept in the state directory (``hooked.id``), so that when the
keep-alive's leader changes (its worker died, the service restarted) the new leader hooks what
came since, not only what comes next. An event whose run was cut short by the old leader's death
is hooked again: a hook is told to reload, which is safe to do twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shlex
import signal
import subprocess
import threading

from service.metrics import Metrics
from service.settings import ServiceSettings
from skill.events import Event
from skill.files import write_private

log = logging.getLogger(__name__)

QUEUE_LIMIT = 100  # changes waiting for the hook; beyond this, the oldest are not hooked
HOOKED_FILE = "hooked.id"


class OnChangeHook:
    def __init__(self, settings: ServiceSettings, metrics: Metrics) -> None:
        self.argv = shlex.split(settings.on_change or "")
        self.timeout = settings.on_change_timeout
        self.metrics = metrics
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "CHATGPT_LOGIN_STATE_DIR": str(settings.state_dir),
        }
        self.cursor = settings.state_dir / HOOKED_FILE
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread: threading.Thread | None = None

    def resume_after(self, newest: int) -> int:
        """The id after which a new leader hooks events: the last one hooked (by any leader
        before it); ``newest`` when there is no hook, or no record of one (written now, so that
        a change made before the first run is hooked by the next leader if this one dies), or a
        record from another journal (ids past the newest)."""
        if not self.argv:
            return newest
        try:
            hooked = int(self.cursor.read_text().strip())
        except (OSError, ValueError):
            hooked = -1
        if 0 <= hooked <= newest:
            return hooked
        self._record(newest)
        return newest

    def __call__(self, event: Event) -> None:
        """Hook ``event`` (a credential change) soon; returns at once."""
        if not self.argv or not event.type.startswith("credential."):
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_forever, name="on-change",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:  # the newest change matters most: the oldest waiting one goes
                with contextlib.suppress(queue.Empty):
                    dropped = self._queue.get_nowait()
                    log.warning("on-change hook: %d changes waiting; event %d not hooked",
                                QUEUE_LIMIT, dropped.id)  # fmt: skip
                    self.metrics.count("hook_runs", "dropped")

    def _run_forever(self) -> None:
        while True:
            event = self._queue.get()
            self.run(event)
            self._record(event.id)

    def _record(self, hooked: int) -> None:
        try:
            write_private(self.cursor, str(hooked).encode())
        except OSError as exc:  # a new leader would hook what follows again: harmless
            log.warning("on-change hook: could not record event %d as hooked (%s)",
                        hooked, type(exc).__name__)  # fmt: skip

    def run(self, event: Event) -> str:
        """Run the hook for ``event`` now; its outcome (ok, failed, timeout, not_started). It
        runs in a process group of its own, all of which a timeout kills; its output is not
        read (it may be as long as it likes, and is not ours to log)."""
        try:
            child = subprocess.Popen(  # the operator's own command, without a shell
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=self.env, cwd="/", start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            log.warning("on-change hook could not start (%s): %s", type(exc).__name__,
                        exc.strerror or exc)  # fmt: skip
            self.metrics.count("hook_runs", "not_started")
            return "not_started"
        try:
            child.communicate(event.to_json().encode(), timeout=self.timeout)
            outcome = "ok" if child.returncode == 0 else "failed"
            if outcome == "failed":
                log.warning("on-change hook for event %d exited %d", event.id, child.returncode)
        except subprocess.TimeoutExpired:
            outcome = "timeout"
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            log.warning("on-change hook for event %d killed after %gs", event.id, self.timeout)
        self.metrics.count("hook_runs", outcome)
        return outcome
