"""How this code waits: one loop that looks until something shows up or a deadline passes, and
one backoff policy for retries.

Every wait here is bounded (a user is told what happened, never left hanging), and every retry
is jittered: many containers retrying the same store or issuer at once must spread out, not
come back in step.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(seconds: float, look: Callable[[], T], *, every: float) -> T:
    """Call ``look`` every ``every`` seconds until it returns something other than None (that
    is returned), or ``seconds`` have passed (None). It is called at least once, and once more
    at the deadline; what it raises goes to the caller. (``T`` includes None: typed so, mypy
    keeps a union of what ``look`` returns instead of widening it to ``object``.)"""
    deadline = time.monotonic() + seconds
    while True:
        found = look()
        if found is not None:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            return found  # None: nothing showed up in time
        time.sleep(min(every, left))


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first): ``base`` doubled at
    each attempt up to ``cap``, times a random factor between 0.5 and 1.5."""
    exponent = min(max(attempt, 1), 32) - 1  # no float overflow after a long outage
    return float(min(cap, base * 2.0**exponent) * (0.5 + random.random()))  # noqa: S311 - spreading retries
