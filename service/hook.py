"""The on-change hook (``CHATGPT_LOGIN_ON_CHANGE``): a command run after each change of the
credential, as Vault Agent runs one when it renders a new secret, so that a program caching the
credential reloads it.

The command line is split like a shell's words but run without a shell. It gets the event as
JSON on stdin (its type, ``why``, ids; never a token) and an environment of its own: PATH,
HOME, LANG and the state directory, nothing of ours (the service's environment may hold the
store's token). Each run has a timeout after which it is killed; a failure is logged and
counted, never retried. Runs happen on a thread of their own, one at a time, in order: a hook
that hangs holds up the next hook, never the keep-alive.
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

log = logging.getLogger(__name__)

QUEUE_LIMIT = 100  # changes waiting for the hook; beyond this, the oldest are not hooked


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
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread: threading.Thread | None = None

    def __call__(self, event: Event) -> None:
        """Hook ``event`` (a credential change) soon; returns at once."""
        if not self.argv or not event.type.startswith("credential."):
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_forever, name="on-change",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("on-change hook: %d changes waiting; event %d not hooked",
                        QUEUE_LIMIT, event.id)  # fmt: skip
            self.metrics.count("hook_runs", "dropped")

    def _run_forever(self) -> None:
        while True:
            self.run(self._queue.get())

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
