"""The strict pasted-URL parser: a table of bad pastes, what chat does to good ones, and a
property test that nothing but a valid (code, state) ever comes out."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skill.errors import SkillError
from skill.redirect import Callback, parse_redirect

STATE = "S" * 20 + "tate-value_0123456789abc"
PORT = 1455
CODE = "ac_AbCdEf0123456789-_.~xyz"
GOOD = f"http://localhost:{PORT}/auth/callback?code={CODE}&scope=openid&state={STATE}"


def parse(text: str, **kwargs: object) -> Callback:
    return parse_redirect(text, state=STATE, port=PORT, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pasted",
    [
        GOOD,
        f"  {GOOD}  ",
        f"<{GOOD}>",
        f'"{GOOD}"',
        f"'{GOOD}'",
        f"`{GOOD}`",
        f"\n{GOOD}\n",
        GOOD[:40] + "\n" + GOOD[40:],
        GOOD[:40] + "\r\n  " + GOOD[40:],
        GOOD.replace("localhost", "127.0.0.1"),
        GOOD.replace("localhost", "[::1]"),
        f"http://localhost:{PORT}/auth/callback?state={STATE}&code={CODE}",
        GOOD.replace("scope=openid", "scope=openid+profile%20email"),
    ],
)
def test_what_chat_does_to_a_good_url_is_undone(pasted: str) -> None:
    callback = parse(pasted)
    assert (callback.code, callback.state) == (CODE, STATE)
    assert CODE not in repr(callback) and STATE not in repr(callback)


def cb(**params: str) -> str:
    return f"http://localhost:{PORT}/auth/callback?{urlencode(params)}"


BAD: list[tuple[str, str, str]] = [
    ("", "bad_paste", "Nothing was pasted"),
    ("   ", "bad_paste", "Nothing was pasted"),
    ("hello", "bad_paste", "not a web address"),
    (CODE, "bad_paste", "not a web address"),
    ("x" * 5000, "bad_paste", "longer than any sign-in address"),
    ("x" * 20000, "bad_paste", "far too long"),
    (GOOD + "\x1b[31m", "bad_paste", "control characters"),
    (GOOD + "\x00", "bad_paste", "control characters"),
    (GOOD.replace("code=", "co de="), "bad_paste", "spaces or non-ASCII"),
    (GOOD + "é", "bad_paste", "spaces or non-ASCII"),
    (f"see {GOOD}", "bad_paste", "spaces"),
    (
        "https://auth.openai.com/oauth/authorize?client_id=a&state=" + STATE,
        "bad_paste",
        "sign-in link itself",
    ),
    ("http://auth.openai.com/oauth/authorize?x=1", "bad_paste", "sign-in link itself"),
    ("https://chatgpt.com/", "bad_paste", "sign-in link itself"),
    (GOOD.replace("http://", "https://"), "bad_paste", "not this sign-in's local callback"),
    (GOOD.replace("http://", "ftp://"), "bad_paste", "not this sign-in's local callback"),
    (GOOD.replace("localhost", "evil.example"), "bad_paste", "not this sign-in's local callback"),
    (GOOD.replace("localhost", "192.168.1.5"), "bad_paste", "not this sign-in's local callback"),
    (GOOD.replace("localhost", "localhost.evil.example"), "bad_paste", "not this sign-in's local"),
    (GOOD.replace("localhost", "user@localhost"), "bad_paste", "user name"),
    (GOOD.replace("localhost", "user:pw@localhost"), "bad_paste", "user name"),
    (GOOD + "#frag", "bad_paste", "'#' part"),
    (GOOD + "#", "bad_paste", "'#' part"),
    (f"http://localhost:{PORT}/success?id_token=x", "bad_paste", "after a sign-in finished"),
    (f"http://localhost:{PORT}/success/", "bad_paste", "after a sign-in finished"),
    (GOOD.replace("/auth/callback", "/auth/callbac"), "bad_paste", "path is not"),
    (GOOD.replace("/auth/callback", "/"), "bad_paste", "path is not"),
    (GOOD.replace("/auth/callback", "/auth/callback/"), "bad_paste", "path is not"),
    (GOOD.replace("/auth/callback", "/AUTH/callback"), "bad_paste", "path is not"),
    (GOOD.replace(f":{PORT}", ":1457"), "bad_paste", "older attempt"),
    (GOOD.replace(f":{PORT}", ""), "bad_paste", "older attempt"),
    (GOOD.replace(f":{PORT}", ":99999"), "bad_paste", "malformed"),
    (GOOD.replace(f":{PORT}", ":abc"), "bad_paste", "malformed"),
    ("http://[::1/auth/callback", "bad_paste", "malformed"),
    (cb(code=CODE, state="older-attempt-state"), "state_mismatch", "different sign-in attempt"),
    (cb(code=CODE, state=""), "state_mismatch", "different sign-in attempt"),
    (cb(code=CODE), "bad_paste", "no state"),
    (cb(state=STATE), "bad_paste", "no code"),
    (cb(code="", state=STATE), "bad_paste", "no code"),
    (GOOD + f"&state={STATE}", "bad_paste", "repeats"),
    (GOOD + "&code=other", "bad_paste", "repeats"),
    (cb(code="a;rm -rf /", state=STATE), "bad_paste", "characters a code never has"),
    (cb(code="a" * 3000, state=STATE), "bad_paste", "longer than any|characters a code never has"),
    (cb(error="access_denied", state=STATE), "access_denied", "declined"),
    (
        cb(error="access_denied", error_description="missing_codex_entitlement", state=STATE),
        "missing_codex_entitlement",
        "Codex is not enabled",
    ),
    (cb(error="server_error", state=STATE), "access_denied", r"reported an error \(server_error\)"),
    (cb(error="<script>", state=STATE), "access_denied", r"\(unknown\)"),
    (cb(error="access_denied", state="other"), "state_mismatch", "different sign-in attempt"),
]


@pytest.mark.parametrize(("pasted", "code", "why"), BAD)
def test_bad_pastes_say_what_they_are(pasted: str, code: str, why: str) -> None:
    with pytest.raises(SkillError) as caught:
        parse(pasted)
    assert caught.value.code == code
    assert caught.value.message
    import re  # noqa: PLC0415

    assert re.search(why, caught.value.message), caught.value.message
    assert STATE not in caught.value.message and CODE not in caught.value.message


def test_table_is_big_enough() -> None:
    assert len(BAD) >= 40


def test_bare_code_only_when_allowed() -> None:
    assert parse(CODE, allow_bare_code=True) == Callback(CODE, STATE)
    with pytest.raises(SkillError):
        parse(CODE)


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_yields_anything_but_the_attempt(text: str) -> None:
    try:
        callback = parse(text)
    except SkillError as exc:
        assert exc.code in {
            "bad_paste",
            "state_mismatch",
            "access_denied",
            "missing_codex_entitlement",
        }
        return
    assert callback.state == STATE


URL_PIECES = st.sampled_from(
    [
        "http://",
        "https://",
        "localhost",
        "127.0.0.1",
        f":{PORT}",
        ":1457",
        "/auth/callback",
        "/success",
        "?",
        "&",
        "#",
        "@",
        "code=",
        f"code={CODE}",
        f"state={STATE}",
        "state=x",
        "error=access_denied",
        "%0a",
        "\n",
        " ",
        '"',
        "<",
        ">",
    ]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(URL_PIECES, max_size=12).map("".join))
def test_url_like_text_only_passes_with_right_state_port_and_path(text: str) -> None:
    try:
        callback = parse(text)
    except SkillError as exc:
        assert CODE not in exc.message and STATE not in exc.message
        return
    assert callback.state == STATE
    assert callback.code == CODE
    assert f":{PORT}/auth/callback?" in text.replace("\n", "").replace(" ", "")


MANGLES = ["%3F", "/", "&", "", "#", "%3f", "\\"]


@pytest.mark.parametrize("mangled", MANGLES)
def test_a_mangled_question_mark_never_puts_the_code_in_the_message(mangled: str) -> None:
    """With its '?' changed the path holds the code and state: no message may quote it."""
    with pytest.raises(SkillError) as caught:
        parse(GOOD.replace("?", mangled, 1))
    assert CODE not in caught.value.message and STATE not in caught.value.message
