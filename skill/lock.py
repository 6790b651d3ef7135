"""Cross-process locks on credential files, compatible with the real clients.

- pi guards ``auth.json`` with ``proper-lockfile``: the lock is a *directory* ``auth.json.lock``
  made with ``mkdir`` (atomic), its mtime refreshed while held, and considered stale (holder
  died) once the mtime is older than 30 s. :class:`DirLock` speaks exactly that protocol, so a
  running pi agent and this project never write the same file at once.

  On top of it, our own holders mark their lock so that one left by a killed process of ours
  is taken over at once instead of after 30 s (a service killed mid-refresh would otherwise
  stall its own restart, and every pi process, for that long). The holder keeps an ``flock``
  on the lock directory, which the kernel drops when the process dies, and sets the sticky bit
  on it. A sticky lock whose flock is free has lost its holder. pi never sets the sticky bit, so
  its locks are judged by age alone, as pi itself judges them; and the marks change neither the
  directory's name, its contents nor its mtime, which is all pi looks at.

  The lock is marked before anyone can see it: made under a name of its own, flocked and made
  sticky there, then renamed into place with ``RENAME_NOREPLACE`` (which fails, as ``mkdir``
  would, when the lock exists; a plain rename would replace pi's empty lock directory). A
  holder killed at any instant therefore leaves either no lock or one that is taken over at
  once; marking after ``mkdir`` left an instant in which a kill made a lock only age could free
  (seen: a restart waiting out the 30 s). Where the filesystem cannot rename that way, the lock
  is made with ``mkdir`` and marked just after.

  A taker of ours judges a lock only while holding its flock: so two takers never both remove
  one (each would then enter: two writers), and a live holder of ours, whose flock is held, is
  never taken over by us, however old its mtime (a paused container's holder is alive; pi may
  still take its lock by age, as its protocol says, so a holder checks that the lock is still
  the one it made before it refreshes or removes it). A lock we cannot open (another user's) is
  judged by age alone, as pi judges it.
- codex keeps a lock *file* ``auth.json.lock`` beside its auth.json; :class:`FlockLock` takes an
  exclusive ``flock`` on it, which is what Rust's ``File::lock`` does.

Both wait with a deadline and raise ``lock_timeout`` when it passes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from skill.errors import SkillError

log = logging.getLogger(__name__)

_POLL_FIRST = 0.02
_POLL_MAX = 0.25
_SAY_AFTER = 2.0  # a wait longer than this is said (a person at a terminal sees why it stalls)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _backoff(delay: float, deadline: float) -> float:
    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
    return min(delay * 1.5, _POLL_MAX)


class _Held:
    """``with lock:`` for both locks: acquire on entry, release on exit."""

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class DirLock(_Held):
    """pi's ``proper-lockfile`` lock on ``target`` (the lock is ``<target>.lock/``)."""

    def __init__(self, target: Path, *, stale: float = 30.0, timeout: float = 60.0) -> None:
        self.path = target.with_name(target.name + ".lock")
        self.stale = stale
        self.timeout = timeout
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._held_fd: int | None = None  # the flock that says "this holder is alive"

    def acquire(self) -> None:
        started = time.monotonic()
        deadline = started + self.timeout
        delay = _POLL_FIRST
        said = False
        while True:
            try:
                made = self._make()
            except FileExistsError:
                if self._take_over_if_stale():
                    continue
            else:
                if not made:
                    continue  # its draft was swept while this process stood still: again
                self._start_keeper()
                self._sweep_leftovers()
                return
            if not said and time.monotonic() - started > _SAY_AFTER:
                said = True
                log.warning(
                    "waiting for %s: another program holds it (pi, codex, or one of ours); a "
                    "lock its holder left behind is taken over %.0f s after its last sign of "
                    "life, at the latest in %.0f s",
                    self.path, self.stale, self.timeout - _SAY_AFTER,
                )  # fmt: skip
            if time.monotonic() >= deadline:
                raise SkillError(
                    "lock_timeout",
                    f"{self.path} stayed locked for {self.timeout:.0f} s. "
                    "Retry; if it persists, check for a stuck pi process.",
                )
            delay = _backoff(delay, deadline)

    def release(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None
        if self._still_ours():
            with contextlib.suppress(FileNotFoundError):
                self.path.rmdir()
        else:
            log.warning("%s was taken over while this process held it (a pi process judged it "
                        "stale); left to its new holder", self.path)  # fmt: skip
        if self._held_fd is not None:  # after the rmdir: no one sees a marked, unheld lock
            os.close(self._held_fd)
            self._held_fd = None

    def _still_ours(self) -> bool:
        """True unless the lock at the path is another than the one this holder made (known
        only for a marked lock: an unmarked one is removed as pi would)."""
        if self._held_fd is None:
            return True
        try:
            now, held = os.lstat(self.path), os.fstat(self._held_fd)
        except FileNotFoundError:
            return True
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def _make(self) -> bool:
        """Make the lock, marked as ours: True when made; FileExistsError when someone holds
        it; False when its draft vanished before it was placed (try again)."""
        draft = self.path.with_name(f"{self.path.name}.new-{secrets.token_hex(4)}")
        draft.mkdir(mode=0o700)
        fd = self._mark(draft)
        try:
            placed = _rename_noreplace(draft, self.path)
        except FileNotFoundError:
            self._drop_draft(draft, fd)
            return False  # swept as a leftover: this process stood still for `stale` seconds
        except BaseException:
            self._drop_draft(draft, fd)
            raise
        if placed:
            self._held_fd = fd
            return True
        self._drop_draft(draft, fd)  # this filesystem cannot: mkdir, then mark at once
        self.path.mkdir(mode=0o700)
        self._held_fd = self._mark(self.path)
        return True

    @staticmethod
    def _mark(directory: Path) -> int | None:
        """Hold an flock on ``directory``, then set its sticky bit (in that order, so a sticky
        lock without an flock always means a dead holder). The open flock, or None."""
        fd = os.open(directory, _DIR_FLAGS)
        try:
            # No one else has seen a draft. A lock made by mkdir (where renaming cannot be used)
            # may be flocked by a taker judging it this instant: it then stays unmarked.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(fd, 0o700 | stat.S_ISVTX)
        except OSError:
            os.close(fd)  # unmarked: others judge it by age, as they would pi's
            return None
        return fd

    @staticmethod
    def _drop_draft(draft: Path, fd: int | None) -> None:
        with contextlib.suppress(OSError):
            draft.rmdir()
        if fd is not None:
            os.close(fd)

    def _sweep_leftovers(self) -> None:
        """Remove the drafts and the removed locks that a holder or a taker killed half-way
        left beside the lock. Only old ones: a live holder's draft lasts microseconds."""
        kinds = (self.path.name + ".new-", self.path.name + ".stale-")
        horizon = time.time() - self.stale
        with contextlib.suppress(OSError), os.scandir(self.path.parent) as entries:
            for entry in entries:
                if entry.name.startswith(kinds) and entry.stat().st_mtime < horizon:
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)

    def _take_over_if_stale(self) -> bool:
        """Remove a lock whose holder died or stopped refreshing it; True to try again now.

        Judged while holding the lock's flock: a live holder of ours holds it (so is never
        taken over), and so does any other taker of ours judging the same lock (so only one
        removes it; before, two could each remove and enter)."""
        try:
            fd = os.open(self.path, _DIR_FLAGS)
        except FileNotFoundError:
            return True  # released meanwhile: try again at once
        except PermissionError:
            return self._take_over_by_age()  # another user's: judged as pi judges it
        except OSError:
            return False  # not a directory: wait, and time out clearly
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # its holder of ours lives, or another taker is judging it
        try:
            seen = os.fstat(fd)
            if seen.st_mode & stat.S_ISVTX:  # ours, and its flock was free
                return self._remove(seen, "its holder died")
            return self._remove_if_old(seen)
        finally:
            os.close(fd)  # drops the flock, after the removal

    def _take_over_by_age(self) -> bool:
        """A lock this process may not open: only its age can say it was left behind."""
        try:
            seen = os.lstat(self.path)
        except FileNotFoundError:
            return True
        return stat.S_ISDIR(seen.st_mode) and self._remove_if_old(seen, " (another user's)")

    def _remove_if_old(self, seen: os.stat_result, whose: str = "") -> bool:
        age = time.time() - seen.st_mtime
        return age > self.stale and self._remove(seen, f"{age:.0f} s old{whose}")

    def _remove(self, seen: os.stat_result, why: str) -> bool:
        """Remove the very lock judged stale (``seen``), not one made since; the caller's flock
        on it keeps our other takers from removing it meanwhile. True: try to take it again."""
        with contextlib.suppress(FileNotFoundError):
            now = os.stat(self.path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino):
                # Rename first so two takers cannot both remove it; only one rename succeeds.
                grave = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(4)}")
                try:
                    os.rename(self.path, grave)
                except OSError:
                    return True
                log.warning("took over a stale lock %s (%s)", self.path, why)
                with contextlib.suppress(OSError):
                    grave.rmdir()
        return True

    def _start_keeper(self) -> None:
        """Refresh the lock's mtime at half the stale interval, as proper-lockfile does."""
        self._stop.clear()

        held = self._held_fd  # by descriptor: never the mtime of a lock taken over since

        def keep() -> None:
            while not self._stop.wait(self.stale / 2):
                with contextlib.suppress(FileNotFoundError):
                    os.utime(held if held is not None else self.path)

        self._keeper = threading.Thread(target=keep, name="chatgpt-login-lock", daemon=True)
        self._keeper.start()


@functools.cache
def _renameat2() -> Callable[[bytes, bytes], int] | None:
    """The C library's ``renameat2(RENAME_NOREPLACE)``, as a call answering 0 or an errno;
    None without one. Looked up once; ``ctypes`` costs about 1.5 ms, paid only by a process
    that takes a pi lock."""
    import ctypes  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    call = getattr(libc, "renameat2", None)
    if call is None:
        return None

    def rename(source: bytes, target: bytes) -> int:
        done: int = call(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_NOREPLACE)
        return 0 if done == 0 else ctypes.get_errno()

    return rename


def _rename_noreplace(source: Path, target: Path) -> bool:
    """Rename that fails with FileExistsError when ``target`` exists; False where the C
    library, the kernel or the filesystem cannot rename that way."""
    rename = _renameat2()
    if rename is None:
        return False
    failure = rename(os.fsencode(source), os.fsencode(target))
    if failure == 0:
        return True
    if failure in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(failure, os.strerror(failure), str(target))


class FlockLock(_Held):
    """An exclusive ``flock`` on ``<target>.lock`` (a regular file, kept 0600)."""

    def __init__(self, target: Path, *, timeout: float = 60.0) -> None:
        self.path = target.with_name(target.name + ".lock")
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        deadline = time.monotonic() + self.timeout
        delay = _POLL_FIRST
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise SkillError("lock_timeout") from None
                delay = _backoff(delay, deadline)
            else:
                self._fd = fd
                return

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
