"""What a login program shows: its sign-in link, or its device verification URL and code.

Found on the joined, escape-free screen text and validated by parsing, never by comparing
strings (parameter order and space encoding differ between clients).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from skill.redirect import LOOPBACK_HOSTS

_AUTHORIZE = re.compile(r"https?://[^\s'\"<>]+/oauth/authorize\?[^\s'\"<>]+")
_DEVICE_URL = re.compile(r"https?://[^\s'\"<>]+/codex/device\b")
_USER_CODE = re.compile(r"\b([A-Z0-9]{4,5}-[A-Z0-9]{4,6})\b")


@dataclass(frozen=True, repr=False)
class AuthorizeLink:
    url: str
    state: str
    redirect_uri: str
    redirect_port: int

    def __repr__(self) -> str:
        return f"AuthorizeLink(port={self.redirect_port})"


@dataclass(frozen=True)
class DeviceCode:
    verification_url: str
    user_code: str


def find_authorize_link(text: str) -> AuthorizeLink | None:
    """The last complete sign-in link on screen whose redirect is a loopback callback."""
    for url in reversed(_AUTHORIZE.findall(text)):
        link = parse_authorize_link(url)
        if link is not None:
            return link
    return None


def parse_authorize_link(url: str) -> AuthorizeLink | None:
    try:
        query = parse_qs(urlsplit(url).query)
        redirect = query["redirect_uri"][0]
        target = urlsplit(redirect)
        port = target.port or 80
    except (KeyError, IndexError, ValueError):
        return None
    required = ("state", "client_id", "code_challenge", "response_type")
    if any(not query.get(name, [""])[0] for name in required):
        return None
    if target.scheme != "http" or target.hostname not in LOOPBACK_HOSTS:
        return None
    return AuthorizeLink(url, query["state"][0], redirect, port)


def find_device_code(text: str) -> DeviceCode | None:
    """The verification URL and the one-time code printed after it."""
    match = _DEVICE_URL.search(text)
    if match is None:
        return None
    code = _USER_CODE.search(text, match.end())
    return DeviceCode(match.group(0), code.group(1)) if code else None
