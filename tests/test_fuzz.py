"""Fuzzing (hypothesis) of everything that reads outside input: the pasted-address parser, the
credential loaders, the byte-preserving splice of pi's file and the token claims.

Each target gets ``FUZZ_EXAMPLES`` examples (300 by default; ``scripts/reliability.py`` raises
it). The property is the same everywhere: a valid result or our one error type, never another
exception, and never a result that was not in the input.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skill.authfiles import splice_entry
from skill.claims import Claims
from skill.credentials import Credential
from skill.errors import SkillError
from skill.redirect import parse_redirect

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip

STATE, PORT = "state-0123456789abcdefghij", 1455
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip
# Entries shaped like pi's and codex's, with any field possibly wrong.
PI_ENTRY = st.fixed_dictionaries(
    {},
    optional={"type": st.sampled_from(["oauth", "api", ""]) | JSON, "access": st.text() | JSON,
              "refresh": st.text() | JSON, "expires": st.integers() | JSON,
              "accountId": st.text() | JSON},
)  # fmt: skip
URLISH = st.lists(
    st.sampled_from(["http://", "localhost", f":{PORT}", ":1457", "/auth/callback", "?", "&",
                     "code=", "state=", STATE, "error=", "ac_x", "%20", "#", "<", ">", "'", " "])
    | st.text(max_size=6),
    max_size=14,
).map("".join)  # fmt: skip


@fuzz
@given(URLISH | st.text(max_size=200))
def test_paste_parser(text: str) -> None:
    try:
        callback = parse_redirect(text, state=STATE, port=PORT)
    except SkillError:
        return
    assert callback.state == STATE and callback.code and callback.code in text


@fuzz
@given(PI_ENTRY | JSON)
def test_pi_entry_loader(entry: Any) -> None:
    try:
        credential = Credential.from_pi_entry(entry)
    except SkillError:
        return
    assert isinstance(entry, dict)
    assert (credential.access_token, credential.refresh_token) == (
        entry["access"],
        entry["refresh"],
    )
    assert credential.access_token and credential.refresh_token and credential.account_id


@fuzz
@given(st.fixed_dictionaries({}, optional={"tokens": st.fixed_dictionaries(
    {}, optional={"access_token": st.text() | JSON, "refresh_token": st.text() | JSON,
                  "id_token": st.text() | JSON, "account_id": st.text() | JSON}) | JSON,
    "last_refresh": st.text() | JSON, "OPENAI_API_KEY": JSON}) | JSON)  # fmt: skip
def test_codex_loader(document: Any) -> None:
    try:
        credential = Credential.from_codex(document)
    except SkillError:
        return
    assert credential.refresh_token == document["tokens"]["refresh_token"]


@fuzz
@given(st.dictionaries(st.text(max_size=10), JSON, max_size=5), PI_ENTRY | st.none())
def test_splice_keeps_every_other_entry(document: dict[str, Any], value: Any) -> None:
    text = json.dumps(document, indent=2)
    spliced = json.loads(splice_entry(text, "openai-codex", value))
    expected = {k: v for k, v in document.items() if k != "openai-codex"}
    if value is not None:
        expected["openai-codex"] = value
    assert spliced == expected


@fuzz
@given(st.text(max_size=120) | st.lists(st.text(max_size=40), max_size=4).map(".".join))
def test_claims_from_any_token(token: str) -> None:
    try:
        Claims.from_tokens(access_token=token)
    except SkillError:
        return
