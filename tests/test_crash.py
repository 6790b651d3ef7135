"""SIGKILL a credential writer at random points: the file must always be readable and whole.

A forked child rewrites the pi file in a loop (alternating two credentials, beside another
provider's entry); the parent kills it with SIGKILL at a random moment, then checks the file.
Forked children are real processes killed for real; forking keeps 200+ runs fast.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import stat
import time
from collections import Counter
from pathlib import Path

from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.fake_issuer import FakeIssuer

KILLS = int(os.environ.get("CRASH_KILLS", "200"))
OTHER = '{\n  "anthropic": {\n    "type": "oauth",\n    "access": "keep-me"\n  }\n}'


def _defects(path: Path, valid: set[str]) -> tuple[list[str], str | None]:
    """What is wrong with the file after a kill (empty when nothing), and our refresh token."""
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        return [f"mode {stat.S_IMODE(path.stat().st_mode):o}"], None
    try:
        document = json.loads(path.read_text())
    except ValueError:
        return ["not JSON"], None
    found: list[str] = []
    if document.get("anthropic") != {"type": "oauth", "access": "keep-me"}:
        found.append("other provider's entry lost or changed")
    refresh = (document.get("openai-codex") or {}).get("refresh")
    if refresh is not None and refresh not in valid:
        found.append("unknown refresh token")
    return found, refresh


def _writer(path: Path, creds: list[Credential], ready: int) -> None:
    """Child: write forever; one byte on ``ready`` after each completed save."""
    try:
        # A killed holder leaves the lock dir; a short stale time keeps the loop moving.
        auth = PiAuthFile(path, stale=0.001, timeout=5)
        i = 0
        while True:
            auth.save(creds[i % 2])
            i += 1
            os.write(ready, b".")
    finally:
        os._exit(1)


def test_sigkill_during_writes_never_leaves_an_unreadable_file(
    tmp_path: Path, issuer: FakeIssuer
) -> None:
    path = tmp_path / "pi" / "auth.json"
    path.parent.mkdir(mode=0o700)
    path.write_text(OTHER)
    path.chmod(0o600)  # as pi leaves it; our first write would fix a looser mode anyway
    creds = [
        Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
        for _ in range(2)
    ]
    valid = {c.refresh_token for c in creds}
    rng = random.Random(1455)  # noqa: S311 - kill timing, not cryptography
    defects: Counter[str] = Counter()
    seen: set[str] = set()
    leftovers = 0
    for run in range(KILLS):
        ready, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready)
            _writer(path, creds, ready_w)
        os.close(ready_w)
        # Kill at a random moment within the next few saves after the first completed one, so
        # the kills land inside the write loop however slow this disk's fsync is (a kill before
        # any write proves nothing). The fork-to-first-save time stands in for one save.
        forked = time.monotonic()
        started = select.select([ready], [], [], 30)[0]
        one_save = max(time.monotonic() - forked, 0.012)
        time.sleep(rng.uniform(0.0, 3 * one_save))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready)
        assert started, "the writer did not finish one save within 30 s"
        found, refresh = _defects(path, valid)
        if found:
            defects.update(found)
            shutil.copy2(path, tmp_path / f"bad-after-kill-{run}.json")  # kept for a post-mortem
        elif refresh is not None:
            seen.add(refresh)
        leftovers = len(list(path.parent.glob(".auth.json.*.tmp")))
    unreadable = sum(defects.values())
    print(
        f"\nSIGKILL runs: {KILLS}, unreadable or torn: {unreadable}, temp files left: {leftovers}"
    )
    assert not defects, f"defects after kills: {dict(defects)}; copies kept in {tmp_path}"
    assert leftovers <= 1  # only the last kill's; each write sweeps earlier orphans
    PiAuthFile(path, stale=0.001).save(creds[0])  # the last kill left its lock behind
    assert not list(path.parent.glob(".auth.json.*.tmp"))
    assert seen == valid  # the kills landed while both values were being written
