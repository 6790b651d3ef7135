"""Drive a real ``chatgpt-login`` process: read its lines with deadlines, type into its stdin."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

from tests.conftest import PYTHON


def kill(pid: int, signum: int = signal.SIGKILL) -> bool:
    """Signal ``pid``; False if it had already gone (a snapshot of a process tree ages fast)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


class Program:
    """A running CLI process whose stdout lines are collected as they arrive."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "skill.cli", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self.stderr = ""
        self._eof = False
        self._stderr_read = threading.Event()  # stderr is whole only once its pump is done
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        text = self.proc.stderr.read()
        with self._cond:
            self.stderr = text
            self._stderr_read.set()
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """The first line from index ``start`` on matching ``pattern``; fails at the deadline."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._more_coming()):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s; output:\n{self.output}"
                        f"\nstderr:\n{self.stderr}"
                    )
                self._cond.wait(min(remaining, 0.1))

    def _more_coming(self) -> bool:
        """True while stdout or stderr may still bring something (both pumps run on threads
        of their own, which a loaded machine may schedule after the process has exited)."""
        return not (self._eof and self._stderr_read.is_set())

    def authorize_url(self) -> str:
        return self.wait_for(r"^(https?://\S+/oauth/authorize\?\S+)$").group(1)

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 15.0) -> int:
        """Wait for exit; returns the exit code (kills and fails on timeout)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(
                f"still running after {timeout}s; output:\n{self.output}"
            ) from None
        deadline = time.monotonic() + 5
        while self._more_coming() and time.monotonic() < deadline:
            time.sleep(0.01)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
