"""Reading and writing the pi and codex credential files.

Every write is a locked read-modify-write: take the client's own lock, re-read the file, change
only our entry, write atomically at 0600. Other providers' entries in the pi file are kept byte
for byte (we splice their original text back in). A file that is not valid JSON is moved aside
and the move reported, never overwritten.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from skill.credentials import PI_PROVIDER_KEY, Credential
from skill.errors import SkillError
from skill.files import (
    ensure_private_dir,
    move_aside,
    read_settled,
    sweep_temp_files,
    temp_files,
    write_private,
)
from skill.lock import DirLock, FlockLock
from skill.settings import CredentialFormat, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaveResult:
    path: Path
    changed: bool
    moved_aside: Path | None = None


@dataclass(frozen=True)
class RemoveResult:
    path: Path
    removed: bool  # our entry was there and is gone
    moved_aside: Path | None = None  # the file was unreadable: moved here, never deleted


class AuthFile(Protocol):
    path: Path

    def load(self) -> Credential | None: ...
    def save(self, credential: Credential) -> SaveResult: ...
    def remove(self) -> RemoveResult: ...


def _parse_object(raw: bytes) -> dict[str, Any]:
    document = json.loads(raw.decode("utf-8"))
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


class PiAuthFile:
    """``auth.json`` of the pi agent: one entry per provider; ours is ``openai-codex``."""

    def __init__(self, path: Path, *, stale: float = 30.0, timeout: float = 60.0) -> None:
        self.path = path
        self.stale, self.timeout = stale, timeout

    @property
    def lock(self) -> DirLock:
        """pi's lock on this file; a new handle each time, so threads never share one."""
        return DirLock(self.path, stale=self.stale, timeout=self.timeout)

    def load(self) -> Credential | None:
        found = read_settled(self.path, _parse_object)
        if found is None or PI_PROVIDER_KEY not in found[1]:
            return None
        return Credential.from_pi_entry(found[1][PI_PROVIDER_KEY])

    def save(self, credential: Credential) -> SaveResult:
        ensure_private_dir(self.path.parent)  # the lock directory lives there
        with self.lock:
            return self.save_locked(credential)

    def save_locked(self, credential: Credential) -> SaveResult:
        """:meth:`save` for a caller that already holds :attr:`lock` (a refresh's critical
        section: re-read, spend the refresh token, write, all under one lock)."""
        # Whoever must not lose an orphan's rotation finished it first (the refresher, restore
        # and the keep-alive do); for the rest, what they write supersedes it.
        sweep_temp_files(self.path)
        return self._write_locked(credential)

    def _write_locked(self, credential: Credential) -> SaveResult:
        text, document, moved = self._read_for_update()
        entry = credential.to_pi_entry(_obj(document.get(PI_PROVIDER_KEY)))
        new_text = splice_entry(text, PI_PROVIDER_KEY, entry)
        changed = write_private(self.path, new_text.encode("utf-8"))
        return SaveResult(self.path, changed, moved)

    def finish_interrupted_write(self) -> Credential | None:
        """Complete a save that a killed process of ours left in its temp file; returns the
        credential taken from it, if any.

        A writer killed during its fsync (seconds, on a busy disk) leaves the whole new file in
        its temp file. After a refresh that is the only copy of the rotated token: the issuer
        has already retired the old one, so dropping it means signing in again. A temp file cut
        short (killed mid-write, or power lost before the fsync) does not parse and is dropped;
        the file it was to replace was never touched.
        """
        if not temp_files(self.path):
            return None  # the usual case, decided without taking the lock
        with self.lock:
            return self.finish_interrupted_write_locked()

    def finish_interrupted_write_locked(self) -> Credential | None:
        """:meth:`finish_interrupted_write` for a caller that holds :attr:`lock`. Only our
        entry is taken from the orphan, and only if it is newer for the same account (or the
        file has none); other providers' entries stay as the file has them now."""
        found = [c for c in map(_credential_in, temp_files(self.path)) if c is not None]
        if not found:
            sweep_temp_files(self.path)
            return None
        newest = max(found, key=lambda c: c.expires_ms)
        try:
            current = self.load()
        except SkillError:
            current = None  # corrupt: save_locked moves it aside and reports that
        if current is not None and (
            current.account_id != newest.account_id or current.expires_ms >= newest.expires_ms
        ):
            sweep_temp_files(self.path)
            return None
        self._write_locked(newest)
        sweep_temp_files(self.path)  # only now: until written, the orphan is the one copy
        log.warning("finished a credential write a killed process left in %s", self.path.parent)
        return newest

    def remove(self) -> RemoveResult:
        """Remove our entry, keeping every other provider's byte for byte."""
        if not self.path.exists():
            return RemoveResult(self.path, removed=False)
        with self.lock:
            text, document, moved = self._read_for_update()
            if PI_PROVIDER_KEY not in document:
                return RemoveResult(self.path, removed=False, moved_aside=moved)
            write_private(self.path, splice_entry(text, PI_PROVIDER_KEY, None).encode("utf-8"))
            return RemoveResult(self.path, removed=True)

    def _read_for_update(self) -> tuple[str, dict[str, Any], Path | None]:
        try:
            found = read_settled(self.path, _parse_object)
        except SkillError:
            return "", {}, move_aside(self.path)
        if found is None:
            return "", {}, None
        return found[0].decode("utf-8"), found[1], None


def _credential_in(orphan: Path) -> Credential | None:
    """Our entry in an orphaned temp file of the pi file, or None if it has no valid one."""
    try:
        return Credential.from_pi_entry(_parse_object(orphan.read_bytes())[PI_PROVIDER_KEY])
    except (OSError, ValueError, KeyError, SkillError):
        return None


class CodexAuthFile:
    """``$CODEX_HOME/auth.json``: the whole file is one credential."""

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    @property
    def lock(self) -> FlockLock:
        return FlockLock(self.path, timeout=self.timeout)

    def load(self) -> Credential | None:
        found = read_settled(self.path, _parse_object)
        if found is None or not found[1].get("tokens"):
            return None
        return Credential.from_codex(found[1])

    def save(self, credential: Credential) -> SaveResult:
        ensure_private_dir(self.path.parent)
        with self.lock:
            sweep_temp_files(self.path)
            moved = None
            try:
                found = read_settled(self.path, _parse_object)
            except SkillError:
                found, moved = None, move_aside(self.path)
            document = credential.to_codex(found[1] if found else None)
            data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
            return SaveResult(self.path, write_private(self.path, data), moved)

    def set_api_key(self, key: str | None) -> None:
        """Put an API key in (or, with None, take it out of) the file codex reads it from,
        leaving the rest as it is."""
        with self.lock:
            found = read_settled(self.path, _parse_object)
            if found is None:
                raise SkillError("local_error", f"{self.path} is gone; sign in again.")
            document = {**found[1], "OPENAI_API_KEY": key}
            data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
            write_private(self.path, data)

    def api_key(self) -> str | None:
        found = read_settled(self.path, _parse_object)
        key = found[1].get("OPENAI_API_KEY") if found else None
        return key if isinstance(key, str) and key else None

    def remove(self) -> RemoveResult:
        """Remove what we write (the ChatGPT tokens and their fields) and keep everything else
        (an API key, codex's own fields): a file left with nothing of value goes; one that
        cannot be read is moved aside, never deleted."""
        if not self.path.exists():
            return RemoveResult(self.path, removed=False)
        with self.lock:
            try:
                found = read_settled(self.path, _parse_object)
            except SkillError:
                return RemoveResult(self.path, removed=False, moved_aside=move_aside(self.path))
            if found is None or not found[1].get("tokens"):
                return RemoveResult(self.path, removed=False)
            rest = {k: v for k, v in found[1].items() if k not in _CODEX_FIELDS}
            if not any(value not in (None, "", [], {}) for value in rest.values()):
                self.path.unlink(missing_ok=True)
            else:
                if rest.get("OPENAI_API_KEY"):
                    rest["auth_mode"] = "apikey"  # what codex calls a file with a key only
                write_private(self.path, (json.dumps(rest, indent=2) + "\n").encode("utf-8"))
            return RemoveResult(self.path, removed=True)


# What CodexAuthFile.save writes (Credential.to_codex), and so what logout takes back.
_CODEX_FIELDS = frozenset({"tokens", "last_refresh", "auth_mode"})


def auth_files(
    settings: Settings, formats: frozenset[CredentialFormat] | None = None
) -> list[AuthFile]:
    """The credential files a login writes, pi first."""
    chosen = settings.credential_files if formats is None else formats
    files: list[AuthFile] = []
    if "pi" in chosen:
        files.append(
            PiAuthFile(
                settings.pi_auth_file, stale=settings.lock_stale, timeout=settings.lock_timeout
            )
        )
    if "codex" in chosen:
        files.append(CodexAuthFile(settings.codex_auth_file, timeout=settings.lock_timeout))
    return files


def splice_entry(text: str, key: str, value: object | None) -> str:
    """Set (or with None, drop) top-level ``key`` in the JSON object ``text``.

    Every other top-level entry keeps its exact original text. The result is laid out as
    ``JSON.stringify(obj, null, 2)`` lays it out, which is how pi writes the file.
    """
    entries = _top_level_entries(text) if text.strip() else []
    rendered = None if value is None else _indent(json.dumps(value, indent=2, ensure_ascii=False))
    out: list[tuple[str, str]] = []
    for name, raw in entries:
        if name != key:
            out.append((name, raw))
        elif rendered is not None:
            out.append((name, rendered))
            rendered = None  # later duplicates of the key are dropped
    if rendered is not None:
        out.append((key, rendered))
    if not out:
        return "{}"
    body = ",\n".join(f"  {json.dumps(name, ensure_ascii=False)}: {raw}" for name, raw in out)
    return "{\n" + body + "\n}"


def _indent(rendered: str) -> str:
    return rendered.replace("\n", "\n  ")


def _top_level_entries(text: str) -> list[tuple[str, str]]:
    """(key, original value text) for each entry of a JSON object, in order."""
    decoder = json.JSONDecoder()
    scan = json.decoder.scanstring  # type: ignore[attr-defined]
    ws = " \t\n\r"
    i = len(text) - len(text.lstrip(ws))
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i += 1
    entries: list[tuple[str, str]] = []
    while True:
        while text[i] in ws:
            i += 1
        if text[i] == "}":
            return entries
        if text[i] == ",":
            i += 1
            continue
        name, i = scan(text, i + 1)
        while text[i] in ws:
            i += 1
        i += 1  # the colon
        while text[i] in ws:
            i += 1
        _, end = decoder.raw_decode(text, i)
        entries.append((name, text[i:end]))
        i = end


def _obj(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None
