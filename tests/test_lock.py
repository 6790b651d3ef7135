"""The pi-compatible lock, against a real second process holding it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skill.errors import SkillError
from skill.lock import DirLock, FlockLock

HOLD_DIR_LOCK = textwrap.dedent(
    """
    import os, sys, time
    lock = sys.argv[1] + ".lock"
    os.mkdir(lock)                      # what proper-lockfile does
    print("held", flush=True)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:       # refresh the mtime, as proper-lockfile does
        os.utime(lock)
        time.sleep(0.05)
    os.rmdir(lock)
    """
)


def hold(target: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_DIR_LOCK, str(target), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_waits_for_another_process_to_release(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    holder = hold(target, 0.6)
    started = time.monotonic()
    with DirLock(target, stale=30, timeout=10):
        waited = time.monotonic() - started
        assert holder.wait(5) == 0
    assert waited >= 0.4
    assert not target.with_name("auth.json.lock").exists()


def test_a_live_holder_makes_us_time_out_clearly(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    holder = hold(target, 3)
    try:
        with pytest.raises(SkillError) as caught, DirLock(target, stale=30, timeout=0.3):
            pass
        assert caught.value.code == "lock_timeout"
        assert "stuck pi process" in caught.value.message
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    lock_dir = target.with_name("auth.json.lock")
    lock_dir.mkdir()
    old = time.time() - 31
    os.utime(lock_dir, (old, old))
    started = time.monotonic()
    with DirLock(target, stale=30, timeout=5):
        assert lock_dir.is_dir()
        assert time.time() - lock_dir.stat().st_mtime < 5
    assert time.monotonic() - started < 1
    assert not lock_dir.exists()
    assert not list(tmp_path.glob("auth.json.lock.stale-*"))


HOLD_OUR_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from skill.lock import DirLock
    DirLock(Path(sys.argv[1])).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


@contextlib.contextmanager
def holding_ours(target: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process of ours holding the lock on ``target`` until the block ends (killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OUR_LOCK, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def assert_refused(target: Path) -> None:
    with pytest.raises(SkillError) as caught, DirLock(target, stale=30, timeout=0.5):
        pass
    assert caught.value.code == "lock_timeout"


def test_a_lock_left_by_a_killed_process_of_ours_is_taken_over_at_once(tmp_path: Path) -> None:
    """A service killed mid-refresh leaves its lock directory behind, fresh; the restart must
    not wait out the 30 s staleness (and a live holder of ours is still respected)."""
    target = tmp_path / "auth.json"
    with holding_ours(target):
        assert_refused(target)
    lock_dir = target.with_name("auth.json.lock")
    assert lock_dir.is_dir()  # left behind, and younger than the staleness
    assert time.time() - lock_dir.stat().st_mtime < 30
    with DirLock(target, stale=30, timeout=2):
        assert lock_dir.is_dir()
    assert not lock_dir.exists()
    assert not list(tmp_path.glob("auth.json.lock.stale-*"))


DIE_WHILE_TAKING = textwrap.dedent(
    """
    import fcntl, os, pathlib, signal, sys
    from pathlib import Path
    import skill.lock
    from skill.lock import DirLock

    def dying(real):
        def call(*args, **kwargs):
            answer = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return answer
        return call

    point = sys.argv[2]
    if point == "draft made":
        pathlib.Path.mkdir = dying(pathlib.Path.mkdir)
    elif point == "flocked":
        skill.lock.fcntl = type("F", (), {"flock": staticmethod(dying(fcntl.flock)),
                                         "LOCK_EX": fcntl.LOCK_EX, "LOCK_NB": fcntl.LOCK_NB})
    elif point == "marked":
        skill.lock.os.fchmod = dying(os.fchmod)
    elif point == "in place":
        skill.lock._rename_noreplace = dying(skill.lock._rename_noreplace)
    DirLock(Path(sys.argv[1])).acquire()
    """
)


@pytest.mark.parametrize("point", ["draft made", "flocked", "marked", "in place"])
def test_a_holder_killed_at_any_instant_of_taking_the_lock_never_blocks_the_next(
    tmp_path: Path, point: str
) -> None:
    """Killed anywhere while taking the lock, a holder of ours leaves no lock, or one taken
    over at once: never one that only its age (30 s) could free. (Marking the lock after
    ``mkdir`` left such an instant; a crash test hit it about once in six CI runs.)"""
    target = tmp_path / "auth.json"
    dying = subprocess.run(
        [sys.executable, "-c", DIE_WHILE_TAKING, str(target), point], check=False, timeout=30
    )
    assert dying.returncode == -9  # it died where it was meant to, not by an error
    started = time.monotonic()
    with DirLock(target, stale=30, timeout=2) as lock:
        assert lock.path.stat().st_mode & stat.S_ISVTX
    assert time.monotonic() - started < 1
    assert not lock.path.exists()


def test_what_killed_holders_leave_beside_the_lock_is_swept_once_old(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    old, young = tmp_path / "auth.json.lock.new-0a0a0a0a", tmp_path / "auth.json.lock.new-1b1b1b1b"
    grave, other = tmp_path / "auth.json.lock.stale-2c2c2c2c", tmp_path / "unrelated.new-3d3d3d3d"
    for leftover in (old, young, grave, other):
        leftover.mkdir()
    for aged in (old, grave, other):
        os.utime(aged, (time.time() - 31, time.time() - 31))
    with DirLock(target, stale=30, timeout=2):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [young.name, other.name]


def test_where_the_filesystem_cannot_rename_without_replacing_the_lock_is_made_as_pi_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS and some seccomp profiles refuse ``RENAME_NOREPLACE``: then ``mkdir``, marked just
    after, still excludes pi and other holders."""
    monkeypatch.setattr("skill.lock._renameat2", lambda: lambda source, target: errno.EINVAL)
    target = tmp_path / "auth.json"
    with DirLock(target, stale=30, timeout=2) as lock:
        assert lock.path.stat().st_mode & stat.S_ISVTX
        with pytest.raises(SkillError):
            DirLock(target, stale=30, timeout=0.3).acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


SLOW_TAKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import skill.lock
    from skill.lock import DirLock

    target = Path(sys.argv[1])
    lock_path = str(target) + ".lock"
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # stands still between judging the lock and removing it
        answer = real_stat(path, *args, **kwargs)
        if str(path) == lock_path and kwargs.get("follow_symlinks") is False:
            print("judging", flush=True)
            time.sleep(0.5)
        return answer

    skill.lock.os.stat = stat
    with DirLock(target, stale=30, timeout=5):
        print(f"inside {time.monotonic()}", flush=True)
        time.sleep(0.5)
        print(f"leaving {time.monotonic()}", flush=True)
    """
)


def test_two_takers_of_one_stale_lock_never_both_enter(tmp_path: Path) -> None:
    """Of two takers judging one old lock, the first removes it and enters; the second must not
    then remove the first one's new lock as if it were the old one (it did: it compared the
    lock once, then renamed whatever was there, and both were inside at once)."""
    target = tmp_path / "auth.json"
    lock_dir = target.with_name("auth.json.lock")
    lock_dir.mkdir()  # pi's, left behind an hour ago
    os.utime(lock_dir, (time.time() - 3600, time.time() - 3600))
    slow = subprocess.Popen(
        [sys.executable, "-c", SLOW_TAKER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert slow.stdout is not None and slow.stdout.readline().strip() == "judging"
    with DirLock(target, stale=30, timeout=5):
        we_entered = time.monotonic()
    said = dict(line.split() for line in slow.stdout.read().splitlines())
    assert slow.wait(5) == 0
    assert we_entered > float(said["leaving"]), "both inside at once"


def test_a_live_holder_of_ours_is_never_taken_over_however_old_its_lock(tmp_path: Path) -> None:
    """A paused holder (docker pause, a stalled VM) is alive: its flock says so; taking its lock
    by age would let it write on when it resumes."""
    target = tmp_path / "auth.json"
    with holding_ours(target) as holder:
        holder.send_signal(signal.SIGSTOP)
        lock_dir = target.with_name("auth.json.lock")
        os.utime(lock_dir, (time.time() - 3600, time.time() - 3600))
        assert_refused(target)


def test_a_holder_whose_lock_pi_took_over_leaves_pi_its_new_lock(tmp_path: Path) -> None:
    """pi takes a lock by age alone, ours too if its holder stood still for 30 s. That holder,
    when it moves again, must neither refresh nor remove pi's new lock."""
    target = tmp_path / "auth.json"
    ours = DirLock(target, stale=0.4, timeout=2)
    ours.acquire()
    os.rmdir(ours.path)  # pi judged it stale and removed it
    os.mkdir(ours.path)  # and holds its own
    pis = ours.path.stat()
    os.utime(ours.path, (pis.st_atime, pis.st_mtime - 10))
    time.sleep(0.5)  # past our keeper's refresh interval
    assert ours.path.stat().st_mtime == pis.st_mtime - 10  # not refreshed by us
    ours.release()
    assert ours.path.is_dir() and ours.path.stat().st_ino == pis.st_ino  # still pi's


def test_a_lock_another_user_left_is_taken_over_by_age_as_pi_would(tmp_path: Path) -> None:
    """A lock we may not open (made by root's `chatgpt-login`, killed) is judged by its age,
    as pi judges it; before, it was never taken over."""
    shared = Path(tempfile.mkdtemp(prefix="cgl-lock-"))
    try:
        shared.chmod(0o777)
        lock_dir = shared / "auth.json.lock"
        lock_dir.mkdir(mode=0o700)  # root's, unreadable to the taker
        os.utime(lock_dir, (time.time() - 3600, time.time() - 3600))
        # Our code where that user can read it: a checkout may sit in a directory only its owner
        # may enter (`mktemp -d` makes them 0700).
        code = shared / "code"
        shutil.copytree(Path(__file__).resolve().parent.parent / "skill", code / "skill",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        for path in (code, *code.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        take = ("import sys; from pathlib import Path; from skill.lock import DirLock\n"
                "with DirLock(Path(sys.argv[1]), stale=30, timeout=3): print('held')")  # fmt: skip
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
             "-c", take, str(shared / "auth.json")],
            env={"PYTHONPATH": str(code), "PATH": "/usr/bin"},
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.stdout.strip() == "held", done.stderr[-1500:]
        assert not lock_dir.exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_our_mark_leaves_the_lock_as_pi_expects(tmp_path: Path) -> None:
    """pi sees a plain directory it can remove with rmdir; the mark is gone on release."""
    target = tmp_path / "auth.json"
    with DirLock(target, stale=30, timeout=2) as lock:
        assert lock.path.is_dir() and not any(lock.path.iterdir())
        assert lock.path.stat().st_mode & stat.S_ISVTX
    holder = hold(target, 0.1)  # pi takes it after us
    assert holder.wait(5) == 0
    assert not lock.path.exists()


def test_the_holder_keeps_the_lock_fresh(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    with DirLock(target, stale=0.4, timeout=5) as lock:
        first = lock.path.stat().st_mtime
        time.sleep(0.5)
        assert lock.path.stat().st_mtime > first
        # A second taker must not see a stale lock while we hold it.
        with pytest.raises(SkillError):
            DirLock(target, stale=0.4, timeout=0.6).acquire()


def test_flock_lock_excludes_another_process(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    script = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(0.5)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(target) + ".lock"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    started = time.monotonic()
    with FlockLock(target, timeout=5):
        assert time.monotonic() - started >= 0.3
    proc.wait(5)
    with pytest.raises(SkillError) as caught:
        other = FlockLock(target, timeout=0.2)
        with FlockLock(target, timeout=1):
            other.acquire()
    assert caught.value.code == "lock_timeout"
