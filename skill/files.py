"""Private files: atomic 0600 writes, reads that wait out a half-written file, moving aside.

A credential file is never left half written by us, never readable by others, and never
silently replaced when it is corrupt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from skill.errors import SkillError

log = logging.getLogger(__name__)

T = TypeVar("T")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
# codex rewrites auth.json by truncate-and-write; a reader can catch it empty or cut short.
SETTLE_SECONDS = 0.5


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make ``path`` itself 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)


def unwritable(directory: Path) -> str | None:
    """Why no file can be written in ``directory`` (or, while it does not exist, in the nearest
    parent it would be made in), or None. Asked before a sign-in, not after the user has done
    their part: a login program that cannot save ends the sign-in it just made."""
    here = directory
    while not here.exists() and here.parent != here:
        here = here.parent
    if not here.is_dir():
        return f"{here} is not a directory"
    if os.access(here, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(here).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return f"{here} is on a read-only file system" if read_only else f"{here} is not writable"


def check_writable(paths: list[Path]) -> None:
    """Refuse to start a sign-in whose credential could not be saved to ``paths`` (a read-only
    home, a directory of another user's): said now, before the user signs in for nothing."""
    for path in paths:
        why = unwritable(path.parent)
        if why is not None:
            raise SkillError(
                "local_error",
                f"The sign-in could not be saved to {path}: {why}. Make it writable, or point "
                "PI_CODING_AGENT_DIR (CODEX_HOME for codex's file) to a writable directory; "
                "then start again.",
            )


def write_private(path: Path, data: bytes) -> bool:
    """Atomically make ``path`` hold ``data`` with mode 0600, whatever the umask.

    Temp file in the same directory (``O_EXCL|O_NOFOLLOW``), write, fsync, rename, fsync the
    directory. Returns False, touching nothing but a too-open mode, when the file already
    holds exactly ``data`` (so its mtime does not change).
    """
    ensure_private_dir(path.parent)
    if _holds(path, data):
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask may have removed bits we need; never adds any
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return True


def _holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file (not a symlink, not a FIFO) holding exactly ``data``;
    its mode is made 0600 if so. Never follows a link, never waits, never reads more than it
    compares."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # missing, or a link: the write replaces it
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size != len(data):
            return False
        if os.read(fd, len(data) + 1) != data:
            return False
        if stat.S_IMODE(found.st_mode) != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
        return True
    finally:
        os.close(fd)


def read_small(path: Path, limit: int = 4096) -> str | None:
    """The text of a small file of ours (a recorded id), or None: missing, not a regular file
    (a FIFO put there would hang a plain read; a device would never end), or a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def read_settled(
    path: Path, parse: Callable[[bytes], T], *, settle: float = SETTLE_SECONDS
) -> tuple[bytes, T] | None:
    """Read and parse ``path``; None if it does not exist.

    When parsing fails, re-read until ``settle`` seconds have passed: another program may be
    in the middle of a non-atomic rewrite. Still failing after that means the file is corrupt
    (``credentials_corrupt``).
    """
    deadline = time.monotonic() + settle
    delay = 0.01
    while True:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return raw, parse(raw)
        except (ValueError, UnicodeError, SkillError):
            if time.monotonic() >= deadline:
                raise SkillError(
                    "credentials_corrupt",
                    f"{path} is not a valid credential file. It will be moved aside on the next "
                    "sign-in; sign in again.",
                ) from None
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)


def temp_files(path: Path) -> list[Path]:
    """Temp files of :func:`write_private` beside ``path``. Under ``path``'s lock every one is
    an orphan: each writer of ours holds that lock while its temp file exists."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def sweep_temp_files(path: Path) -> int:
    """Remove temp files a killed writer left beside ``path``; call only under its lock (they
    still hold a credential: they must not linger)."""
    removed = 0
    for orphan in temp_files(path):
        with contextlib.suppress(FileNotFoundError):
            orphan.unlink()
            removed += 1
    return removed


def move_aside(path: Path) -> Path:
    """Rename a corrupt file to ``<name>.corrupt-<UTC time>`` (kept 0600); return its new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, target)
    target.chmod(PRIVATE_FILE)
    _fsync_dir(path.parent)
    log.warning("moved corrupt credential file aside to %s", target)
    return target


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
