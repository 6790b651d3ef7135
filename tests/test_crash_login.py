"""SIGKILL during a sign-in in progress, at random moments: the login program, or the whole
tmux server (as when the container goes away). Each time the next look says what happened,
nothing is left running or listening, and a new sign-in starts and completes."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from skill.procs import descendants
from skill.runner import Runner
from skill.settings import Settings
from skill.tmux import PaneStatus, TmuxServer
from tests.fake_issuer import FakeIssuer
from tests.process import kill
from tests.test_runner import CLEAN, leftovers

KILLS = int(os.environ.get("CRASH_KILLS_LOGIN", "20"))


def _still_running(pids: list[int], *, within: float) -> list[str]:
    """The processes of ``pids`` still there (zombies count as gone) after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            state = stat.rsplit(")", 1)[1].split()[0]
            if state != "Z":
                left.append(f"{pid} state {state}: {cmd.decode(errors='replace')[:120]}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_sigkill_during_a_sign_in(runner_settings: Settings, issuer: FakeIssuer) -> None:
    rng = random.Random(7)  # noqa: S311 - where to strike, not a secret
    outcomes = {"program": 0, "tmux server": 0}
    not_clear = unclean = not_restartable = 0
    for _ in range(KILLS):
        runner = Runner(runner_settings)
        state, _ = runner.start()
        assert state.pane_pid
        pids = descendants(state.pane_pid)
        time.sleep(rng.uniform(0, 0.3))
        target = rng.choice(list(outcomes))
        outcomes[target] += 1
        if target == "program":
            for pid in pids:
                kill(pid)
        else:
            server_pid = int(runner.tmux._run("display-message", "-p", "#{pid}").stdout.strip())
            kill(server_pid)
        left = _still_running(pids, within=10)
        assert not left, f"after killing the {target}: {left}"
        after = Runner(runner_settings).status()
        if (
            after is None
            or after.status != "failed"
            or "chatgpt-login start" not in (after.message or "")
        ):
            not_clear += 1
            print(f"\n{target}: {after and after.status} {after and after.message}")
        if leftovers(runner, runner_settings) != CLEAN:
            unclean += 1
        again, _ = Runner(runner_settings).start()
        callback = issuer.sign_in(again.auth_url or "")
        try:
            done = Runner(runner_settings).complete(callback)
            not_restartable += done.status != "succeeded"
        except Exception:  # counted, and the loop goes on
            not_restartable += 1
        runner_settings.pi_auth_file.unlink(missing_ok=True)
    print(f"\nSIGKILL during a sign-in: {KILLS} runs ({outcomes['program']} program, "
          f"{outcomes['tmux server']} tmux server), status not clear: {not_clear}, left running "
          f"or listening: {unclean}, next sign-in failed: {not_restartable}")  # fmt: skip
    assert (not_clear, unclean, not_restartable) == (0, 0, 0)


def test_a_program_killed_a_moment_ago_is_reported_at_once(
    runner_settings: Settings, issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tmux calls a pane alive until its event loop reaps the program, a moment after a kill;
    one CI run's ``status`` landed in that moment and said "waiting". Here tmux's view is held
    at "alive" for good, so only our own look at the process can tell."""
    runner = Runner(runner_settings)
    state, _ = runner.start()
    assert state.pane_pid
    pids = descendants(state.pane_pid)
    for pid in pids:
        kill(pid)
    assert not _still_running(list(pids), within=10)
    with monkeypatch.context() as patch:
        stuck = PaneStatus(alive=True, exit_status=None, pid=state.pane_pid)
        patch.setattr(TmuxServer, "status", lambda self, name: stuck)
        after = Runner(runner_settings).status()
    assert after is not None
    assert (after.status, after.error) == ("failed", "program_failed")
    assert "chatgpt-login start" in (after.message or "")
    assert leftovers(runner, runner_settings) == CLEAN
