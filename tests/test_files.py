"""Credential files: modes, atomic writes, byte-preserving merges, tolerant reads, corruption."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skill.authfiles import CodexAuthFile, PiAuthFile, splice_entry
from skill.credentials import Credential
from skill.errors import SkillError
from skill.files import read_settled, write_private
from skill.tokens import TokenSet
from tests.fake_issuer import FakeIssuer


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def credential(issuer: FakeIssuer) -> Credential:
    return Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))


@pytest.fixture(params=[0o000, 0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield int(request.param)
    os.umask(old)


def test_write_private_is_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "new" / "auth.json"
    assert write_private(target, b"{}")
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_write_private_tightens_an_existing_0644_file(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "auth.json"
    target.write_text("{}")
    target.chmod(0o644)
    assert write_private(target, b'{"a": 1}')
    assert mode(target) == 0o600
    assert target.read_bytes() == b'{"a": 1}'


def test_same_content_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    write_private(target, b"{}")
    before = target.stat()
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    before = target.stat()
    assert write_private(target, b"{}") is False
    after = target.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_write_private_refuses_to_follow_a_planted_temp_symlink(tmp_path: Path) -> None:
    """O_EXCL|O_NOFOLLOW: the temp name is random, and even if it existed we would not follow it."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    write_private(tmp_path / "auth.json", b"{}")
    assert victim.read_text() == "keep"


def test_read_settled_waits_out_a_truncating_writer(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    target.write_text('{"tokens": ')  # caught mid-write, as codex's truncate-and-write allows

    def finish() -> None:
        time.sleep(0.15)
        target.write_text('{"tokens": {}}')

    writer = threading.Thread(target=finish)
    writer.start()
    found = read_settled(target, json.loads, settle=2.0)
    writer.join()
    assert found is not None and found[1] == {"tokens": {}}


def test_read_settled_calls_a_lasting_mess_corrupt(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    target.write_text("{nope")
    started = time.monotonic()
    with pytest.raises(SkillError) as caught:
        read_settled(target, json.loads, settle=0.2)
    assert caught.value.code == "credentials_corrupt"
    assert 0.2 <= time.monotonic() - started < 2
    assert read_settled(tmp_path / "missing.json", json.loads) is None


# Splicing the pi file ---------------------------------------------------------------------------

PI_FILE_FROM_PI = """{
  "anthropic": {
    "type": "oauth",
    "access": "sk-ant-\\u00e9",
    "expires": 1e21,
    "ratio": 1.50,
    "nested": {"compact":[1,2 ,3]}
  },
  "openai-codex": {
    "type": "oauth",
    "access": "old",
    "refresh": "old",
    "expires": 1,
    "accountId": "acct-1111",
    "futureField": {"keep": true}
  },
  "google": "x"
}"""


def test_splice_keeps_other_entries_byte_for_byte() -> None:
    new = splice_entry(PI_FILE_FROM_PI, "openai-codex", {"type": "oauth", "access": "new"})
    original_anthropic = PI_FILE_FROM_PI[
        PI_FILE_FROM_PI.index('"anthropic"') : PI_FILE_FROM_PI.index(',\n  "openai-codex"')
    ]
    assert original_anthropic in new
    assert '  "google": "x"\n}' in new
    assert json.loads(new)["openai-codex"] == {"type": "oauth", "access": "new"}


def test_splice_adds_and_drops() -> None:
    added = splice_entry('{"a":1}', "openai-codex", {"x": 1})
    assert json.loads(added) == {"a": 1, "openai-codex": {"x": 1}}
    assert splice_entry(added, "openai-codex", None) == '{\n  "a": 1\n}'
    assert json.loads(splice_entry("", "k", [])) == {"k": []}
    assert splice_entry('{"k": 1}', "k", None) == "{}"


def test_splice_matches_pi_layout() -> None:
    """A file pi wrote (JSON.stringify(obj, null, 2)) comes back identical when unchanged."""
    document = json.loads(PI_FILE_FROM_PI)
    pi_layout = json.dumps({"a": {"b": [1, {"c": None}]}, "d": "é"}, indent=2, ensure_ascii=False)
    assert splice_entry(pi_layout, "a", {"b": [1, {"c": None}]}) == pi_layout
    assert document["openai-codex"]["futureField"] == {"keep": True}


def test_pi_save_merges_and_keeps_unknown_keys(tmp_path: Path, credential: Credential) -> None:
    path = tmp_path / "pi" / "auth.json"
    path.parent.mkdir()
    path.write_text(PI_FILE_FROM_PI)
    path.chmod(0o644)
    result = PiAuthFile(path).save(credential)
    assert result.changed and result.moved_aside is None
    text = path.read_text()
    assert '"access": "sk-ant-\\u00e9"' in text and '"expires": 1e21' in text
    entry = json.loads(text)["openai-codex"]
    assert entry["futureField"] == {"keep": True}
    assert entry["access"] == credential.access_token
    assert list(entry)[:5] == ["type", "access", "refresh", "expires", "accountId"]
    assert mode(path) == 0o600
    assert PiAuthFile(path).save(credential).changed is False
    loaded = PiAuthFile(path).load()
    assert loaded is not None and loaded.refresh_token == credential.refresh_token


def test_pi_remove_keeps_other_providers(tmp_path: Path, credential: Credential) -> None:
    path = tmp_path / "auth.json"
    path.write_text(PI_FILE_FROM_PI)
    assert PiAuthFile(path).remove().removed is True
    assert "openai-codex" not in json.loads(path.read_text())
    assert '"google": "x"' in path.read_text()
    assert PiAuthFile(path).remove().removed is False
    assert PiAuthFile(path).load() is None


def test_corrupt_pi_file_is_moved_aside_not_overwritten(
    tmp_path: Path, credential: Credential
) -> None:
    path = tmp_path / "auth.json"
    path.write_text("[1, 2")
    with pytest.raises(SkillError):
        PiAuthFile(path).load()
    result = PiAuthFile(path).save(credential)
    assert result.moved_aside is not None
    assert result.moved_aside.read_text() == "[1, 2"
    assert mode(result.moved_aside) == 0o600
    assert json.loads(path.read_text())["openai-codex"]["accountId"] == credential.account_id


def test_codex_file_round_trip_keeps_unknown_keys(tmp_path: Path, credential: Credential) -> None:
    path = tmp_path / "codex" / "auth.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "auth_mode": "chatgpt",
                "OPENAI_API_KEY": None,
                "extra": 1,
                "tokens": {
                    "oauth_provenance": "x",
                    "id_token": "i",
                    "access_token": "a",
                    "refresh_token": "r",
                },
            }
        )
    )
    CodexAuthFile(path).save(credential)
    document = json.loads(path.read_text())
    assert document["extra"] == 1 and document["tokens"]["oauth_provenance"] == "x"
    assert mode(path) == 0o600
    loaded = CodexAuthFile(path).load()
    assert loaded is not None
    assert (loaded.account_id, loaded.refresh_token) == (
        credential.account_id,
        credential.refresh_token,
    )
    assert abs(loaded.expires_ms - credential.expires_ms) < 2000
    assert path.with_name("auth.json.lock").is_file()


def test_codex_remove_takes_back_only_what_we_wrote(tmp_path: Path, credential: Credential) -> None:
    """A user's API key and codex's own fields stay; a file that is only ours goes; a file that
    cannot be read is moved aside, never deleted."""
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"OPENAI_API_KEY": "sk-keep-this", "model": "gpt-x"}))
    os.chmod(path, 0o600)
    before = path.read_bytes()
    assert CodexAuthFile(path).remove().removed is False and path.read_bytes() == before
    CodexAuthFile(path).save(credential)
    assert CodexAuthFile(path).remove().removed is True
    assert json.loads(path.read_text()) == {
        "OPENAI_API_KEY": "sk-keep-this", "model": "gpt-x", "auth_mode": "apikey",
    }  # fmt: skip
    only_ours = tmp_path / "ours" / "auth.json"
    CodexAuthFile(only_ours).save(credential)
    assert CodexAuthFile(only_ours).remove().removed is True and not only_ours.exists()
    broken = tmp_path / "broken" / "auth.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    result = CodexAuthFile(broken).remove()
    assert not result.removed and result.moved_aside is not None
    assert result.moved_aside.read_text() == "{not json" and not broken.exists()


def test_codex_file_needs_an_id_token(tmp_path: Path, credential: Credential) -> None:
    from_pi = Credential.from_pi_entry(credential.to_pi_entry())
    with pytest.raises(SkillError, match="needs an id_token"):
        CodexAuthFile(tmp_path / "auth.json").save(from_pi)
    assert not (tmp_path / "auth.json").exists()


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"type": "oauth"},
        {"type": "apikey", "access": "a", "refresh": "r", "expires": 1, "accountId": "x"},
        {"type": "oauth", "access": "a", "refresh": "r", "expires": "soon", "accountId": "x"},
        {"type": "oauth", "access": "a", "refresh": "r", "expires": 3 * 10**14, "accountId": "x"},
        {"type": "oauth", "access": "a", "refresh": "r", "expires": -5, "accountId": "x"},
        [],
        "x",
    ],
)
def test_malformed_pi_entries_are_reported(entry: object) -> None:
    with pytest.raises(SkillError) as caught:
        Credential.from_pi_entry(entry)
    assert caught.value.code == "credentials_invalid"


def orphan(path: Path, text: str) -> Path:
    """A temp file as a writer of ours killed before its rename leaves it."""
    left = path.with_name(f".{path.name}.0123456789ab.tmp")
    left.write_text(text)
    left.chmod(0o600)
    return left


def later(credential: Credential, seconds: float = 3600) -> Credential:
    return credential.model_copy(update={"expires_ms": credential.expires_ms + int(seconds * 1000)})


def test_an_interrupted_rotation_is_finished_keeping_other_providers(
    tmp_path: Path, credential: Credential
) -> None:
    path = tmp_path / "auth.json"
    pi = PiAuthFile(path)
    pi.save(credential)
    rotated = later(credential).model_copy(update={"refresh_token": "rotated-refresh"})
    # The orphan holds the file as it was when the killed writer read it; since then pi added a
    # provider, which must survive: only our entry is taken from the orphan.
    left = orphan(path, json.dumps({"openai-codex": rotated.to_pi_entry()}))
    path.write_text(splice_entry(path.read_text(), "google", {"key": "g"}))
    adopted = pi.finish_interrupted_write()
    assert adopted is not None and adopted.refresh_token == "rotated-refresh"
    document = json.loads(path.read_text())
    assert document["openai-codex"]["refresh"] == "rotated-refresh"
    assert document["google"] == {"key": "g"}
    assert not left.exists() and mode(path) == 0o600
    assert pi.finish_interrupted_write() is None


@pytest.mark.parametrize(
    "case", ["older", "same", "other account", "cut short", "no entry", "not json"]
)
def test_an_orphan_that_is_not_a_newer_rotation_is_dropped(
    tmp_path: Path, credential: Credential, case: str
) -> None:
    path = tmp_path / "auth.json"
    pi = PiAuthFile(path)
    pi.save(credential)
    before = path.read_bytes()
    entry = {
        "older": later(credential, -60).to_pi_entry(),
        "same": credential.to_pi_entry(),
        "other account": later(credential)
        .model_copy(update={"account_id": "acct-2"})
        .to_pi_entry(),
    }
    text = {
        "cut short": json.dumps({"openai-codex": later(credential).to_pi_entry()})[:40],
        "no entry": json.dumps({"google": {"key": "g"}}),
        "not json": "\x00" * 16,
    }.get(case) or json.dumps({"openai-codex": entry[case]})
    left = orphan(path, text)
    assert pi.finish_interrupted_write() is None
    assert path.read_bytes() == before and not left.exists()


def test_an_orphan_is_adopted_when_the_file_is_gone(tmp_path: Path, credential: Credential) -> None:
    path = tmp_path / "auth.json"
    orphan(path, json.dumps({"openai-codex": credential.to_pi_entry()}))
    adopted = PiAuthFile(path).finish_interrupted_write()
    assert adopted is not None and adopted.refresh_token == credential.refresh_token
    loaded = PiAuthFile(path).load()
    assert loaded is not None and loaded.refresh_token == credential.refresh_token
