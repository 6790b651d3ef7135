"""The strict parser for a pasted redirect URL, used by every path that accepts one.

What comes out is only ever a ``(code, state)`` pair whose state equals the live attempt's and
whose address is the attempt's own loopback callback. Everything else raises a
:class:`~skill.errors.SkillError` whose message says what was pasted instead and what to paste.
Messages never repeat the pasted text: it holds a code and a state.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from skill.authorize import AUTHORIZE_PATH, CALLBACK_PATH
from skill.errors import SkillError

MAX_LENGTH = 4096
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_CODE_RE = re.compile(r"[A-Za-z0-9._~+/=-]{1,2048}")
_QUOTES = "\"'`<>"
_LINE_BREAK = re.compile(r"[ \t]*[\r\n]+[ \t]*")
_PASTE_HINT = (
    "Paste the full address of the page that failed to load after signing in "
    "(it starts with http://localhost:{port}/auth/callback?code=)."
)


@dataclass(frozen=True, repr=False)
class Callback:
    """A validated callback. ``repr`` hides both values."""

    code: str
    state: str

    def __repr__(self) -> str:
        return "Callback(<hidden>)"


def clean_paste(pasted: str) -> str:
    """Undo what chat and terminals do to a URL: surrounding space, quotes or angle brackets,
    and line breaks inside it."""
    text = _LINE_BREAK.sub("", pasted.strip())
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def parse_redirect(
    pasted: str, *, state: str, port: int, allow_bare_code: bool = False, hint: str | None = None
) -> Callback:
    """Validate ``pasted`` against the live attempt (its ``state`` and redirect ``port``).

    With ``allow_bare_code`` a lone code (no URL) is accepted too; it carries no state to check,
    so only a program that holds the attempt itself (our login program) allows it. ``hint`` ends
    each message (default: what to paste, said to the person at the terminal).
    """
    hint = hint or _PASTE_HINT.format(port=port)
    if len(pasted) > 4 * MAX_LENGTH:
        raise _bad(f"The pasted text is far too long for a sign-in address. {hint}")
    text = clean_paste(pasted)
    if not text:
        raise _bad(f"Nothing was pasted. {hint}")
    if len(text) > MAX_LENGTH:
        raise _bad(
            f"The pasted text is longer than any sign-in address ({MAX_LENGTH} bytes). {hint}"
        )
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise _bad(f"The pasted text contains control characters. {hint}")
    if "://" not in text:
        if allow_bare_code and _CODE_RE.fullmatch(text):
            return Callback(code=text, state=state)
        raise _bad(f"That is not a web address. {hint}")
    if any(ch.isspace() or ord(ch) > 0x7E for ch in text):
        raise _bad(
            f"The address contains spaces or non-ASCII characters; it was probably cut or "
            f"joined with other text. {hint}"
        )
    return _parse_url(text, state=state, port=port, hint=hint)


def _parse_url(text: str, *, state: str, port: int, hint: str) -> Callback:
    try:
        parts = urlsplit(text)
        host, url_port = parts.hostname, parts.port
    except ValueError:
        raise _bad(f"That address is malformed. {hint}") from None
    if parts.path == AUTHORIZE_PATH or (parts.scheme == "https" and host not in LOOPBACK_HOSTS):
        raise _bad(
            "That is the sign-in link itself. Open it in a browser, sign in, and then paste the "
            "address of the page that fails to load."
        )
    if parts.scheme != "http" or host not in LOOPBACK_HOSTS:
        raise _bad(f"That address is not this sign-in's local callback. {hint}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _bad(f"The address contains a user name, which a callback never has. {hint}")
    if parts.fragment or text.endswith("#"):
        raise _bad(f"The address has a '#' part, which a callback never has. {hint}")
    if parts.path.rstrip("/") == "/success":
        raise _bad(
            "That is the page shown after a sign-in finished, not the callback. "
            f"{hint} If a sign-in already finished, check `chatgpt-login status`."
        )
    if parts.path != CALLBACK_PATH:
        # Never quote the path: with its '?' mangled (%3F, /, &), it holds the code and state.
        raise _bad(
            f"That address's path is not {CALLBACK_PATH} (was its '?' changed, or the path cut "
            f"or changed?). {hint}"
        )
    if (url_port or 80) != port:
        raise _bad(
            f"That address is for port {url_port or 80}, but this sign-in waits on port {port}: "
            "it is probably from an older attempt. Open the newest sign-in link and paste the "
            "address you get from it."
        )
    return _check_query(parts.query, state=state, hint=hint)


def _check_query(query: str, *, state: str, hint: str) -> Callback:
    params = parse_qs(query, keep_blank_values=True)
    states = params.get("state", [])
    if len(states) > 1 or len(params.get("code", [])) > 1:
        raise _bad(f"The address repeats its code or state, so it cannot be trusted. {hint}")
    if states and not hmac.compare_digest(states[0].encode(), state.encode()):
        raise SkillError("state_mismatch")
    if "error" in params:
        raise _callback_error(params)
    if not states:
        raise _bad(f"The address has no state, so it may be cut short. {hint}")
    codes = params.get("code", [])
    if not codes or not codes[0]:
        raise _bad(f"The address has no code; it may have been cut short. {hint}")
    if not _CODE_RE.fullmatch(codes[0]):
        raise _bad(f"The code in the address has characters a code never has. {hint}")
    return Callback(code=codes[0], state=states[0])


def _callback_error(params: dict[str, list[str]]) -> SkillError:
    error = params["error"][0]
    description = " ".join(params.get("error_description", []))
    if "missing_codex_entitlement" in description or error == "missing_codex_entitlement":
        return SkillError("missing_codex_entitlement")
    if error == "access_denied":
        return SkillError("access_denied")
    shown = error if re.fullmatch(r"[a-z_]{1,64}", error) else "unknown"
    return SkillError(
        "access_denied",
        f"The sign-in page reported an error ({shown}). Open the sign-in link again and retry.",
    )


def _bad(message: str) -> SkillError:
    return SkillError("bad_paste", message)
