"""The canary sweep itself (tests/canary.py): it must find what it looks for, in every kind of
capture, and let through only the places a secret belongs."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.canary import MARK, Sweep, register

STATE = "st8-" + "q" * 40  # a registered secret, as the fake issuer registers each state


def test_it_finds_a_marked_token_and_a_registered_secret_and_says_where() -> None:
    register(STATE, "state")
    sweep = Sweep()
    sweep.add("log record", "skill.runner", f"refreshing with rt_{MARK}abcdefghijklmnop")
    sweep.add("response", "GET /v1/credentials -> 200", f'{{"note": "{STATE}"}}')
    sweep.add("process output", "chatgpt-login status", "nothing to see")
    leaks = sweep.leaks()
    assert len(leaks) == 2
    assert leaks[0].startswith("a marked code or token in log record in (no test): skill.runner")
    assert leaks[1].startswith("state in response in (no test): GET /v1/credentials")
    assert all(MARK not in leak and STATE not in leak for leak in leaks)  # the report is blank


def test_the_sign_in_link_the_callers_argv_and_test_programs_are_allowed() -> None:
    register(STATE, "state")
    sweep = Sweep()
    link = f"http://127.0.0.1:9/oauth/authorize?response_type=code&state={STATE}"
    sweep.add("process output", "chatgpt-login start", f"Open this link:\n{link}\n")
    pasted = f"http://localhost:1455/auth/callback?code=ac_{MARK}x&state={STATE}"
    sweep.argv_seen[f"python -m skill.cli complete {pasted}".encode()] = "test"
    sweep.argv_seen[f"tmux send-keys -l -- code=ac_{MARK}x".encode()] = "test"
    sweep.argv_seen[f"python3 -c <a pi writer> auth.json rt_{MARK}x".encode()] = "test"
    leaks = sweep.leaks()
    assert len(leaks) == 1 and leaks[0].startswith("a marked code or token in process argv")


def test_the_sources_are_hooked(tmp_path: Path) -> None:
    """Subprocess output, process argument lists and log files each reach the sweep (the live
    one, watching this run)."""
    from tests.conftest import SWEEP  # noqa: PLC0415

    if not SWEEP.running:
        pytest.skip("CANARY_SWEEP=0: the sweep is off for this run")
    probe = f"probe-{secrets.token_hex(8)}"
    before = len(SWEEP.captures)
    # stderr: a test program's stdout is its report to the test, not searched
    program = f"import sys; print('{probe}', file=sys.stderr)"
    printed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                             check=True)  # fmt: skip
    assert printed.stderr and any(probe in text for _, text in SWEEP.captures[before:])
    subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)", probe], check=True)
    assert any(probe.encode() in argv for argv in SWEEP.argv_seen)
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    (logs / "pane.log").write_text(probe)
    SWEEP.read_dir(tmp_path)
    assert SWEEP._files[logs / "pane.log"] == (SWEEP.current, probe)
    assert "test_the_sources_are_hooked" in SWEEP.current


LEAKING_TEST = f"""
import logging

def test_leaks():
    logging.getLogger("skill.runner").warning("refreshing with rt_{MARK}abcdefghijklmnop")

def test_does_not():
    pass
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist workers"])
def test_a_leak_fails_the_run_and_is_named(tmp_path: Path, workers: list[str]) -> None:
    """Whether the suite runs in one process or in pytest-xdist workers (as scripts/test runs
    it), a find fails the whole run and the controller names it."""
    (tmp_path / "test_leaking.py").write_text(LEAKING_TEST)
    repo = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), *workers, str(tmp_path)],
        cwd=repo, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "2 passed" in run.stdout, run.stdout[-2000:]
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout[-2000:]
    assert "LEAK: a marked code or token in log record" in run.stdout
    assert f"rt_{MARK}" not in run.stdout  # named, not repeated
