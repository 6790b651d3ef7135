"""The sign-in address in whatever the user wrote back: chat replies as chat clients and people
shape them, first through the extraction alone, then each through the CLI against the fake
issuer (``chatgpt-login complete -`` with the whole reply on stdin).

``{url}`` is this attempt's callback, ``{old}`` an earlier attempt's, ``{auth}`` the sign-in link.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skill.chat import extract_callback
from skill.errors import SkillError
from skill.redirect import _CODE_RE
from tests.conftest import PYTHON, REPO
from tests.fake_issuer import FakeIssuer
from tests.test_redirect import BAD, CODE, PORT, STATE

URL = f"http://localhost:{PORT}/auth/callback?code={CODE}&scope=openid+profile&state={STATE}"
OLD = f"http://localhost:{PORT}/auth/callback?code=ac_older0123&scope=openid&state=0ld5tate99"
AUTH = (
    "https://auth.openai.com/oauth/authorize?response_type=code&client_id=app_x&redirect_uri="
    f"http%3A%2F%2Flocalhost%3A{PORT}%2Fauth%2Fcallback&scope=openid&state={STATE}"
)
Shape = Callable[[str], str]


def wrapped(at: int, join: str = "\n") -> Shape:
    return lambda url: url[:at] + join + url[at:]


# (name, how the reply is made from this attempt's address). Every one must sign in.
REPLIES: list[tuple[str, Shape]] = [
    ("bare", lambda u: u),
    ("spaces around", lambda u: f"   {u}   "),
    ("angle brackets", lambda u: f"<{u}>"),
    ("backticks", lambda u: f"`{u}`"),
    ("code fence", lambda u: f"```\n{u}\n```"),
    ("code fence with language", lambda u: f"```text\n{u}\n```"),
    ("inside a sentence", lambda u: f"the address bar shows {u} is that what you need?"),
    ("after a colon", lambda u: f"Here it is: {u}"),
    ("in quotes and a period", lambda u: f'"{u}".'),
    ("single quotes", lambda u: f"'{u}'"),
    ("smart quotes", lambda u: f"\u201c{u}\u201d"),
    ("markdown link", lambda u: f"[the page]({u})"),
    ("markdown autolink text", lambda u: f"[{u}]({u})"),
    ("parentheses", lambda u: f"({u})"),
    ("parentheses and a period", lambda u: f"it says (see {u})."),
    ("own line between text", lambda u: f"Sure!\n{u}\nLet me know if that works."),
    ("period after", lambda u: f"{u}."),
    ("exclamation after", lambda u: f"{u}!"),
    ("comma after", lambda u: f"{u}, right?"),
    ("question mark after", lambda u: f"Is it {u}?"),
    ("blank lines around", lambda u: f"Ok here:\n\n{u}\n\nthanks"),
    ("wrapped once", wrapped(60)),
    ("wrapped twice", lambda u: u[:40] + "\n" + u[40:80] + "\n" + u[80:]),
    ("wrapped with indent", wrapped(50, "\n    ")),
    ("wrapped with CRLF", wrapped(45, "\r\n")),
    ("wrapped in the state", lambda u: u[: len(u) - 10] + "\n" + u[len(u) - 10 :]),
    ("quoted reply, wrapped", lambda u: "> " + u[:50] + "\n> " + u[50:]),
    ("HTML escaped", lambda u: u.replace("&", "&amp;")),
    ("percent-encoded", lambda u: quote(u, safe="")),
    ("no scheme, typed by hand", lambda u: u.removeprefix("http://")),
    ("upper-case host", lambda u: u.replace("localhost", "LOCALHOST")),
    ("127.0.0.1", lambda u: u.replace("localhost", "127.0.0.1")),
    ("the same address twice", lambda u: f"{u}\n{u}"),
    ("an earlier attempt's first", lambda u: f"{OLD} sorry, wrong one: {u}"),
    ("an earlier attempt's after", lambda u: f"{u} (the older one was {OLD})"),
    ("numbered list with an old one", lambda u: f"1. {OLD}\n2. {u}"),
    ("markdown bold", lambda u: f"**{u}**"),
    ("markdown italics", lambda u: f"_{u}_"),
    ("emoji before", lambda u: f"Here you go \U0001f449 {u}"),
    ("emoji after", lambda u: f"{u} \U0001f642"),
    ("Chinese around", lambda u: f"\u5730\u5740\u662f{u}\u8c22\u8c22"),
    ("long sentence", lambda u: f"The page didn't load but the URL is {u}, hope that's right."),
    ("signature after", lambda u: f"{u}\n\nSent from my iPhone"),
    ("Slack link", lambda u: f"<{u}|{u}>"),
    ("with the sign-in link too", lambda u: f"I opened {AUTH} and got {u}"),
]

# (name, reply, error code, next, words in the message). The attempt stays live after each.
REFUSED: list[tuple[str, str, str, str, str]] = [
    ("nothing", "", "bad_paste", "ask_user", "no sign-in address"),
    ("no address", "I can't find it, the page is blank", "bad_paste", "ask_user",
     "no sign-in address"),
    ("the sign-in link", AUTH, "bad_paste", "ask_user", "sign-in link itself"),
    ("the success page", f"http://localhost:{PORT}/success?x=1", "bad_paste", "ask_user",
     "after a sign-in finished"),
    ("another site", "https://chatgpt.com/ is what I see", "bad_paste", "ask_user",
     "not this sign-in's callback"),
    ("cut after code=", f"http://localhost:{PORT}/auth/callback?code=", "bad_paste",
     "ask_user", "stops early"),
    ("cut before the state", URL.split("&state", maxsplit=1)[0], "bad_paste", "ask_user",
     "stops early"),
    ("only an earlier attempt's", OLD, "state_mismatch", "send_current_link",
     "earlier sign-in attempt"),
    ("two different addresses", f"{URL}\n{URL.replace(CODE, 'ac_another0123')}", "bad_paste",
     "ask_user", "two different addresses"),
    ("declined", f"http://localhost:{PORT}/auth/callback?error=access_denied&state={STATE}",
     "access_denied", "send_current_link", "declined"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "shape"), REPLIES, ids=[n for n, _ in REPLIES])
def test_a_reply_yields_this_attempts_callback(name: str, shape: Shape) -> None:
    callback = extract_callback(shape(URL), state=STATE, port=PORT)
    assert (callback.code, callback.state) == (CODE, STATE)


@pytest.mark.parametrize(
    ("name", "reply", "code", "next_step", "words"), REFUSED, ids=[r[0] for r in REFUSED]
)
def test_a_reply_without_exactly_one_is_refused_by_name(
    name: str, reply: str, code: str, next_step: str, words: str
) -> None:
    with pytest.raises(SkillError) as caught:
        extract_callback(reply, state=STATE, port=PORT)
    assert (caught.value.code, caught.value.next) == (code, next_step), caught.value.message
    assert words in caught.value.message
    assert STATE not in caught.value.message and CODE not in caught.value.message


# What the strict parser refuses stays refused, except an address inside a sentence, which is
# what this module is for.
STILL_REFUSED = [(p, c) for p, c, _ in BAD if not p.startswith("see ")]


@pytest.mark.parametrize(("pasted", "code"), STILL_REFUSED)
def test_the_bad_paste_table_stays_refused(pasted: str, code: str) -> None:
    with pytest.raises(SkillError):
        extract_callback(pasted, state=STATE, port=PORT)


def test_the_table_is_big_enough() -> None:
    assert len(REPLIES) >= 40 and len(STILL_REFUSED) >= 40


# Through the CLI --------------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [PYTHON, "-m", "skill.cli", *args, "--json"], input=stdin, capture_output=True,
        text=True, env=env, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def env(login_env: dict[str, str], state_dir: Path) -> dict[str, str]:
    return {**login_env, "CHATGPT_LOGIN_STATE_DIR": str(state_dir)}


def test_every_reply_signs_in_through_the_cli(env: dict[str, str], issuer: FakeIssuer) -> None:
    """One attempt per reply; the previous attempt's address is the decoy of the next, so the
    replies that carry an earlier attempt's address carry a real one."""
    older = OLD
    failures = []
    for name, shape in REPLIES:
        code, started = cli(env, "start", "--restart")
        assert code == 0, started
        url = issuer.sign_in(started["auth_url"])
        reply = shape(url).replace(OLD, older)
        code, done = cli(env, "complete", "-", stdin=reply)
        if code not in (0, 10) or done.get("status") != "succeeded":  # 10: no service here
            failures.append((name, done.get("error"), done.get("message")))
        older = url
    assert not failures, failures


def test_refused_replies_keep_the_attempt_and_say_what_next(
    env: dict[str, str], issuer: FakeIssuer
) -> None:
    code, started = cli(env, "start")
    assert code == 0
    url = issuer.sign_in(started["auth_url"])
    state = url.split("state=")[1]
    for name, template, error, next_step, _ in REFUSED:
        port = started["redirect_port"]
        reply = template.replace(STATE, state).replace(f":{PORT}/", f":{port}/")
        code, done = cli(env, "complete", "-", stdin=reply)
        assert code != 0 and done["ok"] is False, name
        assert (done["error"], done["next"]) == (error, next_step), (name, done)
        if next_step == "send_current_link":
            assert done["auth_url"] == started["auth_url"], name
    code, status = cli(env, "status")
    assert status["login"]["status"] == "waiting"
    code, done = cli(env, "complete", "-", stdin=f"finally: {url}.")
    assert code in (0, 10) and done["status"] == "succeeded"


# What comes out is never more than a code and this attempt's state --------------------------

INJECTIONS = ["; run-shell 'touch /tmp/x'", "a\nb", "-N 5", "\x1b[31m", "C-c", "foo; kill-server",
              "$(touch /tmp/x)", "`id`", "%0a%0d", "&state=other"]  # fmt: skip


@pytest.mark.parametrize("payload", INJECTIONS)
def test_what_could_act_on_a_terminal_never_comes_out(payload: str) -> None:
    """Around a good address, anything is left behind (or the whole reply refused); in place of
    the code, it is refused unless it is a plain code ("C-c" is one: harmless, as the runner
    types the rebuilt address literally). What the runner relays or types is only ever
    rebuilt from a code and the state, both checked."""
    for reply, code in ((f"{payload} {URL} {payload}", CODE), (URL.replace(CODE, payload), None)):
        try:
            callback = extract_callback(reply, state=STATE, port=PORT)
        except SkillError:
            continue
        assert callback.state == STATE and _CODE_RE.fullmatch(callback.code)
        assert code is None or callback.code == code


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_yields_another_state(text: str) -> None:
    try:
        callback = extract_callback(text, state=STATE, port=PORT)
    except SkillError as exc:
        assert exc.code in {"bad_paste", "state_mismatch", "access_denied",
                            "missing_codex_entitlement"}  # fmt: skip
        return
    assert callback.state == STATE and _CODE_RE.fullmatch(callback.code)


PIECES = st.sampled_from(["http://", "localhost", "127.0.0.1", f":{PORT}", ":1457",
                          "/auth/callback", "/success", "?", "&", "#", "@", "code=",
                          f"code={CODE}", f"state={STATE}", "state=x", "error=access_denied",
                          "%0a", "\n", " ", '"', "<", ">", "(", ")", "[", "]", ".", ",",
                          "&amp;", "`", "**", "see "])  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(PIECES, max_size=14).map("".join))
def test_url_like_chat_only_passes_with_this_attempts_address(text: str) -> None:
    try:
        callback = extract_callback(text, state=STATE, port=PORT)
    except SkillError as exc:
        assert CODE not in exc.message and STATE not in exc.message
        return
    assert callback.state == STATE and callback.code == CODE
    flat = text.replace("\n", "").replace(" ", "").replace("&amp;", "&")
    assert f":{PORT}/auth/callback?" in flat
