"""The client of the secrets stores (the secrets API and Vault): one retry policy for both.

Each attempt is one :meth:`skill.outbound.Outbound.send` (a deadline that covers connecting,
sending and reading the whole answer, a size cap, no redirects, TLS always verified), and its
answer is parsed as JSON only within a nesting limit. Network errors and whatever the store's
*judge* calls retryable (5xx, 429, unreadable answers) are retried with exponential backoff and
jitter (``Retry-After`` honoured), bounded by attempts and a total deadline; answers too big or
too deep are not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from typing import Any, TypeVar

from service.errors import ServiceError, unreachable
from skill.errors import SkillError
from skill.outbound import (
    MAX_ANSWER_BYTES,
    MAX_JSON_DEPTH,
    Answer,
    AnswerError,
    Outbound,
    ProxySettingError,
    describe,
    parse_json,
)
from skill.waiting import backoff

log = logging.getLogger(__name__)

T = TypeVar("T")
_BACKOFF_BASE, _BACKOFF_CAP = 0.25, 5.0


class StoreClient:
    """Requests to one store, named ``label`` in messages (``address_hint`` says which setting
    holds its address)."""

    def __init__(
        self,
        *,
        label: str,
        address_hint: str,
        timeout: float = 10.0,
        attempts: int = 5,
        deadline: float = 30.0,
        max_bytes: int = MAX_ANSWER_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
        cafile: Path | None = None,
        cadata: str | None = None,
        until: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.label, self.address_hint = label, address_hint
        self.until = until  # a monotonic time no request goes past (restore's whole budget)
        self.timeout, self.attempts, self.deadline = timeout, attempts, deadline
        self.max_bytes, self.max_depth = max_bytes, max_depth
        self._sleep = sleep
        try:
            self._outbound = Outbound(
                connect_timeout=timeout, read_timeout=timeout, max_bytes=max_bytes,
                cafile=cafile, cadata=cadata,
            )  # fmt: skip
        except ProxySettingError as exc:
            raise SkillError("invalid_setting", str(exc)) from None

    def request(
        self,
        method: str,
        url: str,
        judge: Callable[[Answer], T | ServiceError],
        *,
        body: bytes | None = None,
        headers: dict[str, str],
    ) -> T:
        """What ``judge`` makes of the answer, after bounded retries on network errors and on
        the errors ``judge`` returns (it raises what is not worth retrying)."""
        deadline = time.monotonic() + self.deadline
        if self.until is not None:
            deadline = min(deadline, self.until)
        error: ServiceError = unreachable("no time left for it", self.label)
        for attempt in range(1, self.attempts + 1):
            if time.monotonic() >= deadline:
                break
            seconds = max(0.1, min(self.timeout, deadline - time.monotonic()))
            retry_after = None
            try:
                response = self._outbound.send(method, url, body=body, headers=headers,
                                               seconds=seconds)  # fmt: skip
            except AnswerError as exc:  # too big: a broken or hostile server; not retried
                raise self.bad_answer(exc, transient=False) from None
            except (OSError, HTTPException, ValueError) as exc:  # timeouts, resets, TLS, truncation
                error = unreachable(describe(exc), self.label)
            else:
                judged = judge(response)
                if not isinstance(judged, ServiceError):
                    return judged
                error, retry_after = judged, _retry_after(response)
            delay = (retry_after if retry_after is not None
                     else backoff(attempt, base=_BACKOFF_BASE, cap=_BACKOFF_CAP))  # fmt: skip
            if attempt == self.attempts or time.monotonic() + delay > deadline:
                break
            # Each attempt, for -v; the service's log says once per keep-alive step what failed.
            log.debug("%s %s failed (attempt %d), retrying in %.2fs", self.label, method, attempt,
                      delay)  # fmt: skip
            self._sleep(delay)
        raise error

    def json(self, response: Answer) -> Any | ServiceError:
        """The answer's JSON; an error to retry on when it is unreadable (cut short, say);
        raises when it is too deep, since asking again brings the same."""
        try:
            return parse_json(response.body, max_depth=self.max_depth)
        except AnswerError as exc:
            if "deeper" in exc.reason:
                raise self.bad_answer(exc, transient=False) from None
            return self.bad_answer(exc, transient=True)

    def bad_answer(self, exc: AnswerError, *, transient: bool) -> ServiceError:
        if transient:
            then = f"It will be retried; if it persists, check its address ({self.address_hint})."
        elif "larger than" in exc.reason:  # a store that holds more than ours: no address fault
            then = (f"If that is the stored document (every key in it, not only this tool's), "
                    "remove the keys nothing uses, or raise CHATGPT_LOGIN_ANSWER_MAX_BYTES; else "
                    f"check its address ({self.address_hint}).")  # fmt: skip
        else:
            then = f"Check its address ({self.address_hint})."
        return ServiceError(
            "secrets_bad_response",
            f"{self.label} sent an answer this tool does not take ({exc.reason}). {then}",
            status=502,
            transient=transient,
        )


def _retry_after(response: Answer) -> float | None:
    value = response.headers.get("Retry-After") or ""
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return None
