"""The login programs the runner can drive: one :class:`Driver` each, owning how its program is
launched, how a pasted address reaches it and how its verdict is read.

- :class:`NativeDriver`: our own login program (``chatgpt-login oauth-login``); browser and
  device. It speaks :mod:`skill.protocol` and writes the configured files itself.
- :class:`PiAiDriver`: the real ``@mariozechner/pi-ai`` 0.73.1 CLI; browser only. It writes
  ``./auth.json`` (mode 0644) in its working directory; we move the entry into the configured
  files at 0600 and remove the stray copy. It ignores typed input while its listener is up
  (PROTOCOL.md §2).
- :class:`CodexDriver`: the real ``@openai/codex`` 0.169.0 CLI, browser and device, with file
  storage forced and a private ``CODEX_HOME``; it completes only after its ``/success`` redirect.

The runner never asks a driver's name: it asks what the driver says of itself (the class
attributes below) and calls its methods. A fourth login program is a new subclass and one line
in :data:`DRIVERS`; nothing else changes (``tests/test_drivers.py`` adds a toy one).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

from skill import protocol, statedir
from skill.errors import CODES, SkillError

if TYPE_CHECKING:  # kept out of the import: the CLI reads the drivers' names on every run
    from skill.credentials import Credential
    from skill.premade import PremadeLink
    from skill.relay import Answer
    from skill.settings import Settings

DriverName = str  # a key of DRIVERS
Method = Literal["browser", "device"]
PI_AI_PACKAGE = "@mariozechner/pi-ai@0.73.1"


class Launch(NamedTuple):
    """How to run a login program: its argv, its whole environment, and for our own program's
    browser sign-in the attempt made in advance (its link is known before the program runs)."""

    argv: list[str]
    env: dict[str, str]
    premade: PremadeLink | None = None


class Saved(NamedTuple):
    """What a successful sign-in left: the files written, notes for the user, and who signed in
    (``<email> (<plan> plan)``)."""

    paths: list[str]
    notes: list[str]
    who: str | None


class Driver:
    name: ClassVar[DriverName]
    methods: ClassVar[tuple[Method, ...]]
    success: ClassVar[re.Pattern[str]]  # its success line, on screen
    failure: ClassVar[re.Pattern[str]]  # its failure line; group 1 is its own message
    rejected: ClassVar[re.Pattern[str] | None] = None  # a recoverable complaint: it goes on
    paste_prompt: ClassVar[re.Pattern[str] | None] = None  # where a paste may be typed
    # It answers a relayed callback only once it is done, with its verdict in the answer; the
    # others answer the browser with a page and say their verdict on screen.
    verdict_over_http: ClassVar[bool] = False
    # Its success line comes once per file written and then it exits: success is the exit.
    exits_on_success: ClassVar[bool] = False
    # What is typed at its prompt shows on screen: the pane log stops before a paste is typed,
    # and the screen is wiped when the attempt goes on after it.
    echoes_paste: ClassVar[bool] = True
    # It may still be starting when `complete` comes (its link was made in advance): wait for
    # its listener or its ready line before relaying.
    starts_late: ClassVar[bool] = False
    # Its own issuer and callback port are built in (auth.openai.com, 1455): ours do not reach it.
    built_in_address: ClassVar[bool] = False

    def ignored_settings(self, settings: Settings) -> list[str]:
        """Our settings that this program does not follow, when they are not the defaults."""
        if not self.built_in_address:
            return []
        from skill.settings import DEFAULT_ISSUER, Settings  # noqa: PLC0415

        ignored = [] if settings.issuer == DEFAULT_ISSUER else ["CHATGPT_LOGIN_ISSUER"]
        default_ports = Settings.model_fields["callback_ports"].default
        if settings.callback_ports != default_ports:
            ignored.append("CHATGPT_LOGIN_CALLBACK_PORTS")
        return ignored

    def launch(self, settings: Settings, method: Method, workdir: Path) -> Launch:
        """The program to run in ``workdir`` (private, made by the runner) for ``method``."""
        if method not in self.methods:
            raise SkillError(
                "unsupported_method",
                f"The {self.name} driver has no {method} sign-in. Use --method "
                f"{self.methods[0]}, or --driver native.",
            )
        env = {**settings.child_env, "HOME": str(Path.home()), "TERM": "xterm-256color"}
        return self._launch(settings, method, workdir, env)

    def _launch(
        self, settings: Settings, method: Method, workdir: Path, env: dict[str, str]
    ) -> Launch:
        raise NotImplementedError

    def relay_verdict(self, settings: Settings, answer: Answer) -> Saved | None:
        """The verdict in the program's answer to a relayed callback, if it gives one there
        (raises for a rejected address); None: read it from the screen."""
        return None

    def save(self, settings: Settings, workdir: Path, output: Callable[[], str]) -> Saved:
        """After its success line: write what the program produced (in ``workdir``) into the
        configured files, refusing a plan that cannot use Codex. ``output()`` reads its screen,
        which may show a typed paste: only a driver that needs it reads it."""
        from skill.authfiles import auth_files  # noqa: PLC0415 - not on the start path

        credential = self.collect(workdir)
        if credential is None:
            raise SkillError("internal", f"{self.name} left no credential. Start again.")
        claims = credential.claims()
        plan = protocol.refuse_plan(claims.plan_type, settings.refused_plans)
        saved = Saved([], [], f"{claims.email or 'unknown'} ({plan} plan)")
        for auth_file in auth_files(settings):
            try:
                result = auth_file.save(credential)
            except SkillError as exc:
                if exc.code != "credentials_invalid":  # a pi entry cannot make a codex file
                    raise
                continue
            saved.paths.append(str(result.path))
            if result.moved_aside is not None:
                saved.notes.append(f"{result.path} was not valid JSON; moved it aside to "
                                   f"{result.moved_aside}.")  # fmt: skip
        return saved

    def collect(self, workdir: Path) -> Credential | None:
        """The credential the program wrote in ``workdir``."""
        raise NotImplementedError

    def _read_json(self, path: Path) -> dict[str, object]:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SkillError(
                "internal",
                f"{self.name} reported success but its credential file is unreadable. Start again.",
            ) from exc
        return document if isinstance(document, dict) else {}


class NativeDriver(Driver):
    name = "native"
    methods = ("browser", "device")
    success = re.compile(r"^Credentials saved to ", re.MULTILINE)
    failure = protocol.ERROR_RE
    rejected = protocol.REJECTED_RE
    paste_prompt = protocol.READY_RE
    verdict_over_http = True
    exits_on_success = True
    echoes_paste = False  # it turns echo off before its ready line
    starts_late = True

    def _launch(
        self, settings: Settings, method: Method, workdir: Path, env: dict[str, str]
    ) -> Launch:
        from skill.premade import PremadeLink  # noqa: PLC0415

        argv = [settings.python_executable, "-m", "skill.cli", "oauth-login", "--method", method]
        premade = None
        if method == "browser":
            premade = PremadeLink.new(settings)
            premade.save(workdir / statedir.PREMADE)
            argv += ["--premade", str(workdir / statedir.PREMADE)]
        return Launch(argv, {**env, **_native_env(settings, workdir)}, premade)

    def relay_verdict(self, settings: Settings, answer: Answer) -> Saved | None:
        if answer.status == 400:
            # The attempt stays live: a bad paste, or an exchange that failed on the way (the
            # same address may work again once the network is back).
            code = answer.error_code if answer.error_code in CODES else "bad_paste"
            raise SkillError(code, answer.body.strip() or "The address was rejected.")
        if answer.status == 200:  # it answers only after saving; the answer lists the files
            return self._said(settings, answer.body)
        return None  # its verdict is on screen

    def save(self, settings: Settings, workdir: Path, output: Callable[[], str]) -> Saved:
        return self._said(settings, output())  # it wrote the files itself (echo was off)

    def _said(self, settings: Settings, output: str) -> Saved:
        notes = protocol.warnings(output)
        if settings.api_key_exchange and protocol.api_key_saved(output, settings.codex_auth_file):
            from skill.apikey import note_api_key  # noqa: PLC0415 - rarely used

            notes.append(note_api_key(settings))  # remembered as this sign-in's key
        return Saved(protocol.saved_paths(output), notes, protocol.signed_in_as(output))


class PiAiDriver(Driver):
    name = "pi-ai"
    methods = ("browser",)
    built_in_address = True
    success = re.compile(r"^Credentials saved to auth\.json", re.MULTILINE)
    failure = re.compile(r"^Error:? (.+)$", re.MULTILINE)
    paste_prompt = re.compile(r"Paste the authorization code")

    def _launch(
        self, settings: Settings, method: Method, workdir: Path, env: dict[str, str]
    ) -> Launch:
        found = shutil.which(settings.pi_ai_command, path=settings.child_env.get("PATH"))
        program = [found] if found else ["npx", "-y", PI_AI_PACKAGE]
        return Launch([*program, "login", "openai-codex"], env)

    def collect(self, workdir: Path) -> Credential | None:
        from skill.credentials import PI_PROVIDER_KEY, Credential  # noqa: PLC0415

        return Credential.from_pi_entry(self._read_json(workdir / "auth.json").get(PI_PROVIDER_KEY))


class CodexDriver(Driver):
    name = "codex"
    methods = ("browser", "device")
    built_in_address = True
    success = re.compile(r"Successfully logged in")
    failure = re.compile(r"(?:Error logging in|Login failed|Error): (.+)$", re.MULTILINE)

    def _launch(
        self, settings: Settings, method: Method, workdir: Path, env: dict[str, str]
    ) -> Launch:
        codex_home = workdir / "codex"
        codex_home.mkdir(mode=0o700, exist_ok=True)
        argv = [settings.codex_command, "-c", 'cli_auth_credentials_store="file"', "login"]
        if method == "device":
            argv.append("--device-auth")
        return Launch(argv, {**env, "CODEX_HOME": str(codex_home)})

    def collect(self, workdir: Path) -> Credential | None:
        from skill.credentials import Credential  # noqa: PLC0415

        return Credential.from_codex(self._read_json(workdir / "codex" / "auth.json"))


def _native_env(settings: Settings, workdir: Path) -> dict[str, str]:
    """Our settings, handed to our own login program through its environment."""
    return {
        "CHATGPT_LOGIN_ISSUER": settings.issuer,
        "CHATGPT_LOGIN_CLIENT_ID": settings.client_id,
        "CHATGPT_LOGIN_CALLBACK_PORTS": ",".join(map(str, settings.callback_ports)),
        "CHATGPT_LOGIN_CALLBACK_HOST": settings.callback_host,
        "CHATGPT_LOGIN_CREDENTIAL_FILES": ",".join(sorted(settings.credential_files)),
        "CHATGPT_LOGIN_API_KEY_EXCHANGE": "true" if settings.api_key_exchange else "false",
        "CHATGPT_LOGIN_PROXY_CA": settings.proxy_ca or "",  # a CA is public: the program's env
        "CHATGPT_LOGIN_REFUSED_PLANS": ",".join(sorted(settings.refused_plans)),
        "CHATGPT_LOGIN_LOGIN_TIMEOUT": str(settings.login_timeout),
        "CHATGPT_LOGIN_CONNECT_TIMEOUT": str(settings.connect_timeout),
        "CHATGPT_LOGIN_READ_TIMEOUT": str(settings.read_timeout),
        "CHATGPT_LOGIN_LOCK_TIMEOUT": str(settings.lock_timeout),
        "PI_CODING_AGENT_DIR": str(settings.pi_agent_dir),
        "CODEX_HOME": str(settings.codex_home),
        "XDG_STATE_HOME": str(workdir),
    }


DRIVERS: dict[str, Driver] = {d.name: d for d in (NativeDriver(), PiAiDriver(), CodexDriver())}


def known_driver(name: str) -> str:
    """``name`` if it is a registered driver (a pydantic validator of the state file and the
    API's start); a ValueError naming the ones there are otherwise."""
    if name not in DRIVERS:
        raise ValueError(f"not a login program this version drives; one of {sorted(DRIVERS)}")
    return name
