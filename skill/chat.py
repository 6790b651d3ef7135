"""The sign-in address in whatever the user wrote: a whole chat message in, one callback out.

Users answer in chat the way chat goes: the address inside a sentence, in quotes followed by a
period, as a markdown link or autolink, in parentheses or a code fence, wrapped across lines by
their client, HTML-escaped (``&amp;``) or percent-encoded by something on the way, with the
``http://`` left off when typed by hand. :func:`extract_callback` finds every loopback callback
address in the message (``localhost``, ``127.0.0.1`` or ``[::1]``, path ``/auth/callback``) and
checks each with the strict parser (:func:`skill.redirect.parse_redirect`), which stays as strict
as ever: what comes out is rebuilt from a code and the live attempt's ``state``, nothing else.

- Exactly one address of this attempt (its ``state``) is taken; the same address twice counts
  once; an older attempt's address beside it is ignored.
- Two different addresses of this attempt are refused: which one the user meant is a guess.
- Otherwise the error names the real problem (no address at all, the sign-in link itself, an
  address cut short, an earlier attempt's address, a declined sign-in) and carries the agent's
  next step (:attr:`skill.errors.SkillError.next`).

Messages never repeat the pasted text: it holds a code and a state.
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import parse_qs, unquote, urlsplit

from skill.errors import SkillError
from skill.redirect import MAX_LENGTH, Callback, parse_redirect

MAX_MESSAGE = 4 * MAX_LENGTH
# What may sit in a callback address (and the user-info and fragment the strict parser refuses).
# Brackets, quotes, backticks, asterisks and anything non-ASCII end it: none occurs in a code, a
# state or a scope.
_URL_CHARS = r"A-Za-z0-9\-._~:/?#@%&=+"
_HOSTS = r"(?:localhost|127\.0\.0\.1|\[::1\])"
# An address starts at its scheme, or (typed by hand) at its host, but never inside another
# address: not after a letter or digit, nor after the characters that join a URL's parts (so
# the encoded redirect_uri inside a sign-in link is not taken for a callback).
_CANDIDATE = re.compile(
    rf"(?<![A-Za-z0-9=/%.\-+&?#@])((?:https?|ftp)://[^\s()<>\[\]{{}}\"'`*|]*?{_HOSTS}"
    rf"[{_URL_CHARS}]*|(?<![{_URL_CHARS}]){_HOSTS}(?::\d+)?/[{_URL_CHARS}]*)",
    re.IGNORECASE,
)
_ENCODED = re.compile(
    r"(?<![A-Za-z0-9=/%.\-+&?#@])https?%3A%2F%2F[A-Za-z0-9\-._~%+]+", re.IGNORECASE
)
_AUTHORIZE = re.compile(r"https?://[^\s]*?/oauth/authorize\b", re.IGNORECASE)
_ANY_URL = re.compile(r"\b(?:https?|ftp)://[^\s()<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?_~-"  # a sentence's end, or markdown's _emphasis_; tried before as it is
_CONTINUATION = re.compile(rf"[ \t]*\r?\n[ \t>]*([{_URL_CHARS}]+)")
_MAX_JOINS = 4


def extract_callback(message: str, *, state: str, port: int) -> Callback:
    """The live attempt's callback in ``message``; a SkillError naming the problem if there is
    not exactly one."""
    if len(message) > MAX_MESSAGE:
        raise _bad(f"The message is far too long to be a sign-in address. {_hint(port)}")
    if any(_is_control(ch) for ch in message):
        raise _bad(f"The message contains control characters. {_hint(port)}")
    text = _decoded(message)
    found: dict[tuple[str, str], Callback] = {}
    problems: list[SkillError] = []
    for start, end in _spans(text):
        for candidate in _readings(text, start, end):
            try:
                callback = parse_redirect(candidate, state=state, port=port, hint=_hint(port))
            except SkillError as exc:
                problems.append(exc)
                continue
            found.setdefault((callback.code, callback.state), callback)
            break
    if len(found) == 1:
        return next(iter(found.values()))
    if len(found) > 1:
        raise SkillError(
            "bad_paste",
            "The message holds two different addresses of this sign-in, so which one to use is "
            "a guess. Ask the user to paste only the address of the page that failed to load "
            "last.",
        )
    raise _the_problem(text, problems, port)


def values_in(message: str, name: str) -> set[str]:
    """The values of query parameter ``name`` (``code``, ``state``) of every callback address
    in ``message``, whatever attempt it is from (to recognise the address that finished an
    attempt when it is pasted again)."""
    if len(message) > MAX_MESSAGE:
        return set()
    text = _decoded(message)
    found: set[str] = set()
    for start, end in _spans(text):
        for reading in _readings(text, start, end):
            try:
                query = urlsplit(reading).query
            except ValueError:
                continue
            found.update(value for value in parse_qs(query).get(name, []) if value)
    return found


def _decoded(message: str) -> str:
    """Undo what carried the message: HTML escapes, and a percent-encoded address."""
    text = html.unescape(message) if "&" in message else message
    return _ENCODED.sub(lambda m: unquote(m.group(0)), text)


def _spans(text: str) -> list[tuple[int, int]]:
    """Where each address that names a loopback host starts and ends."""
    return [(m.start(1), m.end(1)) for m in _CANDIDATE.finditer(text)]


def _readings(text: str, start: int, end: int) -> list[str]:
    """Ways to read the address at ``text[start:end]``, most likely first: as it stands, then
    without the punctuation that ends a sentence, then joined with the lines a client wrapped
    it onto. An address that runs straight into a cased letter or a digit (``...statéx``) was
    joined with other text: it is offered only as it stands, which the strict parser refuses.
    (Scripts that write without spaces, such as Chinese or Japanese, may follow it directly.)"""
    after = text[end : end + 1]
    if after and unicodedata.category(after) in ("Lu", "Ll", "Lt", "Nd"):
        return [text[start : end + 1]]
    token = text[start:end]
    readings = [token.rstrip(_TRAILING), token]
    joined, position = token, end
    for _ in range(_MAX_JOINS):
        if (more := _CONTINUATION.match(text, position)) is None:
            break
        joined += more.group(1)
        position = more.end()
        readings += [joined.rstrip(_TRAILING), joined]
    with_scheme = [r if "://" in r else "http://" + r for r in readings]
    return list(dict.fromkeys(with_scheme))


def _the_problem(text: str, problems: list[SkillError], port: int) -> SkillError:
    """The most useful error when no address of this attempt was found: what was wrong with the
    addresses there were, or else what the message holds instead."""
    return _worst(problems) or _instead(text, port)


def _worst(problems: list[SkillError]) -> SkillError | None:
    declined = [p for p in problems if p.code in ("access_denied", "missing_codex_entitlement")]
    if declined:
        return declined[0]
    if problems and all(p.code == "state_mismatch" for p in problems):
        return SkillError(
            "state_mismatch",
            "That address is from an earlier sign-in attempt. Send the user the current "
            "sign-in link and ask for the address they get from it.",
        )
    if any("has no code" in p.message or "has no state" in p.message for p in problems):
        return SkillError(
            "bad_paste",
            "The address in the message stops early (after `code=`, or before its state): it "
            "was cut off. Ask the user to copy the whole address from the address bar again.",
        )
    return next((p for p in problems if p.code != "state_mismatch"), None)


def _instead(text: str, port: int) -> SkillError:
    if _AUTHORIZE.search(text):
        what = (
            "That is the sign-in link itself. The user should open it, sign in, and then paste "
            "the address of the page that fails to load."
        )
    elif re.search(rf"{_HOSTS}(?::\d+)?/success\b", text, re.IGNORECASE):
        what = (
            "That is the page shown after a sign-in finished, not the callback. Check "
            "`chatgpt-login status`; if not signed in, ask for the address of the page that "
            "failed to load."
        )
    elif _ANY_URL.search(text):
        what = f"The message has an address, but not this sign-in's callback. {_hint(port)}"
    else:
        what = f"The message has no sign-in address. {_hint(port)}"
    return _bad(what)


def _hint(port: int) -> str:
    return (
        "Ask the user for the full address of the page that failed to load after signing in "
        f"(it starts with http://localhost:{port}/auth/callback?code=)."
    )


def _is_control(ch: str) -> bool:
    return (ord(ch) < 0x20 and ch not in "\n\r\t") or ord(ch) == 0x7F


def _bad(message: str) -> SkillError:
    return SkillError("bad_paste", message)
