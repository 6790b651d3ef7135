"""Processes and sockets, read from /proc: who listens on a port, and ending a process tree.

Used so that a pasted code is only ever sent to a listener that belongs to our own login
program (a foreign process on port 1455 would otherwise receive it), and so that ending a
login leaves nothing behind (npm's codex wrapper, for one, leaves its native binary running
when only the wrapper is killed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    tree = children_map()
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(tree.get(current, []))
    return found


def _listening(port: int) -> Iterator[tuple[str, int]]:
    """(socket inode, owner uid) of each socket listening on ``port``, loopback or any."""
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                    yield fields[9], int(fields[7])


def peer_uid(sock: socket.socket) -> int | None:
    """The user owning the other end of a connected loopback socket (the server's accepted
    socket carries its listener's owner), read from the kernel's table; None if not found.
    An IPv4 connection's other end may be an IPv6 socket (a dual-stack listener, a client
    connecting to ::ffff:127.0.0.1): the kernel lists it in tcp6, its addresses mapped."""
    (my_host, my_port), (their_host, their_port) = sock.getsockname()[:2], sock.getpeername()[:2]
    pairs = {(_proc_address(their_host, their_port), _proc_address(my_host, my_port))}
    if ":" not in their_host:
        pairs.add((_proc_address(f"::ffff:{their_host}", their_port),
                   _proc_address(f"::ffff:{my_host}", my_port)))  # fmt: skip
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if (fields[1], fields[2]) in pairs:
                    return int(fields[7])
    return None


def _proc_address(host: str, port: int) -> str:
    """``host:port`` as /proc/net/tcp{,6} spells it: the address in 32-bit words in host
    order, hex."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(family, host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return f"{words.hex().upper()}:{port:04X}"


def listener_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` on loopback or any address."""
    return {inode for inode, _ in _listening(port)}


def listener_uids(port: int) -> set[int]:
    """The users whose sockets listen on ``port`` (loopback or any address)."""
    return {uid for _, uid in _listening(port)}


def listener_pids(port: int, among: set[int]) -> set[int]:
    """Which of the processes ``among`` hold a listening socket on ``port``."""
    wanted = {f"socket:[{inode}]" for inode in listener_inodes(port)}
    owners: set[int] = set()
    for pid in among:
        with contextlib.suppress(OSError):
            for fd in (PROC / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        owners.add(pid)
                        break
    return owners


def alive(pid: int) -> bool:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def end_processes(pids: set[int], *, grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL whatever is still there after ``grace`` seconds; returns once they
    are gone (or a further ``grace`` has passed), so their ports are free when it returns."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    _wait_gone(pids, grace)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    _wait_gone(pids, grace)


def _wait_gone(pids: set[int], limit: float) -> None:
    deadline = time.monotonic() + limit
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
