"""SIGKILL a credential writer at random points: the file must always be readable and whole.

A forked child rewrites the pi file in a loop (alternating two credentials, beside another
provider's entry); the parent kills it with SIGKILL after a random delay, then checks the file.
Forked children are real processes killed for real; forking keeps 200+ runs fast.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import time
from pathlib import Path

from skill.authfiles import PiAuthFile
from skill.credentials import Credential
from skill.tokens import TokenSet
from tests.fake_issuer import FakeIssuer

KILLS = int(os.environ.get("CRASH_KILLS", "200"))
OTHER = '{\n  "anthropic": {\n    "type": "oauth",\n    "access": "keep-me"\n  }\n}'


def test_sigkill_during_writes_never_leaves_an_unreadable_file(
    tmp_path: Path, issuer: FakeIssuer
) -> None:
    path = tmp_path / "pi" / "auth.json"
    path.parent.mkdir(mode=0o700)
    path.write_text(OTHER)
    creds = [
        Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
        for _ in range(2)
    ]
    valid = {c.refresh_token for c in creds}
    rng = random.Random(1455)  # noqa: S311 - kill timing, not cryptography
    unreadable, seen, leftovers = 0, set(), 0
    for _ in range(KILLS):
        pid = os.fork()
        if pid == 0:  # child: write until killed
            try:
                # A killed holder leaves the lock dir; a short stale time keeps the loop moving.
                auth = PiAuthFile(path, stale=0.001, timeout=5)
                i = 0
                while True:
                    auth.save(creds[i % 2])
                    i += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        try:
            document = json.loads(path.read_text())
            entry = document.get("openai-codex")
            assert document["anthropic"] == {"type": "oauth", "access": "keep-me"}
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            if entry is not None:
                assert entry["refresh"] in valid
                seen.add(entry["refresh"])
        except (ValueError, KeyError, AssertionError):
            unreadable += 1
        leftovers = len(list(path.parent.glob(".auth.json.*.tmp")))
    print(
        f"\nSIGKILL runs: {KILLS}, unreadable or torn: {unreadable}, temp files left: {leftovers}"
    )
    assert unreadable == 0
    assert leftovers <= 1  # only the last kill's; each write sweeps earlier orphans
    PiAuthFile(path, stale=0.001).save(creds[0])  # the last kill left its lock behind
    assert not list(path.parent.glob(".auth.json.*.tmp"))
    assert seen == valid  # the kills landed while both values were being written
