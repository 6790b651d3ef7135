"""Delivering a validated callback to a login program.

Over HTTP when the program listens on the attempt's port: the request is rebuilt from the
parsed ``code`` and ``state`` (never the pasted text), sent to 127.0.0.1 only, and redirects are
followed only while they stay on loopback (codex finishes only after its ``/success`` page).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from skill.authorize import CALLBACK_PATH
from skill.errors import SkillError
from skill.redirect import LOOPBACK_HOSTS, Callback

MAX_HOPS = 5


@dataclass(frozen=True)
class RelayAnswer:
    status: int
    body: str
    hops: int


def callback_url(port: int, callback: Callback) -> str:
    query = urlencode({"code": callback.code, "state": callback.state})
    return f"http://127.0.0.1:{port}{CALLBACK_PATH}?{query}"


def relay_http(port: int, callback: Callback, *, timeout: float) -> RelayAnswer:
    """GET the callback on loopback and follow loopback redirects; the last answer wins."""
    url = callback_url(port, callback)
    limits = httpx.Timeout(timeout, connect=5.0)
    # trust_env=False: a proxy must never see a loopback callback.
    with httpx.Client(timeout=limits, trust_env=False, follow_redirects=False) as client:
        for hop in range(MAX_HOPS + 1):
            try:
                response = client.get(url)
            except httpx.TimeoutException as exc:
                raise SkillError("program_timeout") from exc
            except httpx.HTTPError as exc:
                raise SkillError(
                    "login_ended",
                    "The login program stopped listening before the address reached it. "
                    "Check `chatgpt-login status`, then start again if needed.",
                ) from exc
            location = response.headers.get("location")
            if not response.is_redirect or not location:
                return RelayAnswer(response.status_code, response.text[:2000], hop)
            url = urljoin(url, location)
            if urlsplit(url).hostname not in LOOPBACK_HOSTS:
                return RelayAnswer(response.status_code, "", hop)
    return RelayAnswer(310, "too many redirects", MAX_HOPS)
