"""The error classes: each code belongs to one family (or to none, on purpose), and an error
made from its code is of that family, copied or not."""

from __future__ import annotations

import copy
import pickle

import pytest

from skill.errors import (
    CODES,
    FAMILIES,
    CredentialFileError,
    LockError,
    NetworkError,
    PasteError,
    SignInError,
    SkillError,
)

# A bad setting, a local file fault and our own bug belong to no family.
UNFAMILIAR = {"invalid_setting", "local_error", "internal", "store_misconfigured", "bad_usage"}


def test_every_code_has_its_family_and_every_family_code_exists() -> None:
    assert set(FAMILIES) <= set(CODES)
    assert set(CODES) - set(FAMILIES) == UNFAMILIAR


@pytest.mark.parametrize(
    ("code", "family"),
    [("lock_timeout", LockError), ("bad_paste", PasteError), ("network_error", NetworkError),
     ("program_failed", SignInError), ("credentials_corrupt", CredentialFileError),
     ("internal", SkillError)],
)  # fmt: skip
def test_an_error_is_of_its_codes_family(code: str, family: type[SkillError]) -> None:
    made = SkillError(code, "What happened; what to do.", details={"auth_url": "x"})
    assert type(made) is family and isinstance(made, SkillError)
    for again in (copy.copy(made), pickle.loads(pickle.dumps(made))):  # noqa: S301 - our own
        assert (type(again), again.code, again.message, again.details) == (
            family, code, "What happened; what to do.", {"auth_url": "x"})  # fmt: skip
    with pytest.raises(family):
        raise made
