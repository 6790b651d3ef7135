"""The on-change hook (``CHATGPT_LOGIN_ON_CHANGE``): a command run after each change of the
credential, as Vault Agent runs one when it renders a new secret, so that a program caching the
credential reloads it.

The command line is split like a shell's words but run without a shell. It gets the event as
JSON on stdin (its type, ``why``, ids; never a token) and an environment of its own: PATH, HOME,
LANG and the state directory, nothing of ours (the service's environment may hold the store's
token). Each run has a timeout after which it is killed; a failure is logged and counted, never
retried. A run ends when its command exits: what the command left running in its session
(``cmd &``, ``timeout 60 cmd``, a job shell's groups) is ended with it, so that nothing escapes
the timeout or piles up change after change (a hook that means to start something lasting
detaches it with ``setsid``). Runs happen on a thread of their own, one at a time, in order: a
hook that hangs holds up the next hook, never the keep-alive.

Hooked are the changes of the credential this machine holds: ``credential.updated``,
``credential.needs_relogin`` and ``credential.logged_out``; not ``credential.persisted``, which
says the stored copy caught up with it (nothing here changed).

The id of the last event hooked is kept in the state directory (``hooked.id``), so that when the
keep-alive's leader changes (its worker died, the service restarted) the new leader hooks what
came since, not only what comes next; with no hook set it still moves on, so that a hook set
later does not replay old changes. A run is one at a time across leaders too: its session is
named in ``hook.pid`` while it runs (with its leader's start and this pid namespace, so that a
file from another container or a pid used again names nothing), killed when its worker stops,
and killed by the next leader if its worker died before it could (that event is then hooked
again: a hook is told to reload, which is safe to do twice).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
import weakref
from pathlib import Path

from service.metrics import Metrics
from service.settings import ServiceSettings
from skill import statedir
from skill.events import Event
from skill.files import read_small, write_private

log = logging.getLogger(__name__)

QUEUE_LIMIT = 100  # changes waiting for the hook; beyond this, the oldest are not hooked
HOOKED = frozenset({"credential.updated", "credential.needs_relogin", "credential.logged_out"})
TERM_GRACE = 1.0  # seconds between SIGTERM and SIGKILL for a run past its timeout


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
        self.cursor = settings.state_dir / statedir.HOOKED
        self.running = settings.state_dir / statedir.HOOK_RUNNING
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = False
        _HOOKS.add(self)  # a worker that stops takes its run with it (_stop_all, at exit)

    def resume_after(self, newest: int) -> int:
        """The id after which a new leader hooks events: the last one hooked (by any leader
        before it); ``newest`` when there is no hook, or no record of one (written now, so that
        a change made before the first run is hooked by the next leader if this one dies), or a
        record from another journal (ids past the newest)."""
        if not self.argv:
            self._record(newest)
            return newest
        _kill_leftover(self.running)  # a run whose worker died before it could end it
        try:
            hooked = int((read_small(self.cursor, 32) or "").strip())
        except ValueError:
            hooked = -1
        if 0 <= hooked <= newest:
            return hooked
        self._record(newest)
        return newest

    def __call__(self, event: Event) -> None:
        """Hook ``event`` (a credential change) soon; returns at once."""
        if not self.argv:
            self._record(event.id)  # nothing to run: a hook set later starts from here
            return
        if event.type not in HOOKED:
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
            try:
                self.run(event)
            except Exception:  # the thread must outlive any one run, or nothing is hooked again
                log.exception("on-change hook: the run for event %d failed", event.id)
            if self._stopping:  # the run was cut short by the stop: the next leader runs it
                return
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
            log.warning("on-change hook (CHATGPT_LOGIN_ON_CHANGE) %r could not start: %s",
                        self.argv[0], exc.strerror or type(exc).__name__)  # fmt: skip
            self.metrics.count("hook_runs", "not_started")
            return "not_started"
        self._child = child
        with contextlib.suppress(OSError):
            write_private(self.running, f"{child.pid} {_started(child.pid)} {_pid_namespace()}"
                          .encode())  # fmt: skip
        try:
            child.communicate(event.to_json().encode(), timeout=self.timeout)
            outcome = "ok" if child.returncode == 0 else "failed"
            _end_run(child)  # what it left running in the background
            if outcome == "failed":
                log.warning("on-change hook %r exited %d for event %d (its output is not kept: "
                            "run it by hand with the event on stdin to see why)", self.argv[0],
                            child.returncode, event.id)  # fmt: skip
        except subprocess.TimeoutExpired:
            outcome = "timeout"
            _end_run(child)
            log.warning("on-change hook %r stopped after CHATGPT_LOGIN_ON_CHANGE_TIMEOUT (%gs) "
                        "for event %d", self.argv[0], self.timeout, event.id)  # fmt: skip
        finally:
            self._child = None
            with contextlib.suppress(OSError):
                self.running.unlink(missing_ok=True)
        self.metrics.count("hook_runs", outcome)
        return outcome

    def _stop_child(self) -> None:
        self._stopping = True
        child = self._child
        if child is not None:  # its leader may have exited, leaving the rest of the run
            _end_run(child)
            with contextlib.suppress(OSError):
                self.running.unlink(missing_ok=True)


_HOOKS: weakref.WeakSet[OnChangeHook] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for hook in list(_HOOKS):
        hook._stop_child()


def _end_run(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to every process of the run, SIGKILL to what is left after a grace. The run is
    its session (``start_new_session``): a process that moved to a group of its own (a job
    shell, GNU ``timeout``) is still in it; only ``setsid`` leaves it. The session's id stays
    taken while any member lives, even once the leader has exited, so these signals reach this
    run's processes and no one else's."""
    _signal_session(child.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(TERM_GRACE)
    deadline = time.monotonic() + TERM_GRACE
    while _members(child.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # members that took SIGTERM are still exiting: give them the grace
    _signal_session(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(TERM_GRACE)  # not forever: a leader stuck in the kernel (a hung mount)


def _signal_session(sid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(sid, signum)  # the leader's group, at once
    for pid in _members(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def _members(sid: int) -> list[int]:
    """The live processes of session ``sid`` (zombies are done)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[3] == str(sid) and fields[0] != "Z":  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with
    the pid, it names one process; a pid used again later has another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _pid_namespace() -> str:
    """This process's pid namespace (an inode number): pids name processes only within it, and
    a container that starts again has a new one."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "?"


def _is_that_run(sid: int, started: str, namespace: str) -> bool:
    """True if session ``sid`` is still the run named in ``hook.pid``: in this pid namespace,
    its leader is that very process, or the leader has exited and members remain (they keep
    the number from being given to anyone else)."""
    if namespace != _pid_namespace():
        return False  # written in another container: its pids are not ours
    leader = _started(sid)
    if leader:
        return leader == started
    return bool(_members(sid))


def _kill_leftover(running: Path) -> None:
    """Kill the run a dead leader left, if it is still that run."""
    try:
        sid_text, started, namespace = (read_small(running, 96) or "").split()
        sid = int(sid_text)
    except ValueError:  # unreadable, or written before the namespace was part of it
        with contextlib.suppress(OSError):
            running.unlink(missing_ok=True)
        return
    if sid > 1 and _is_that_run(sid, started, namespace):
        log.warning("on-change hook: killing the run a stopped worker left (session %d)", sid)
        _signal_session(sid, signal.SIGKILL)
        # Gone, not only told to go, before the change is hooked again: on a busy machine a
        # killed process takes a while to exit, and two runs must never overlap.
        deadline = time.monotonic() + TERM_GRACE
        while _members(sid) and time.monotonic() < deadline:
            time.sleep(0.01)
    with contextlib.suppress(OSError):
        running.unlink(missing_ok=True)
