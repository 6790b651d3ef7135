"""The login programs the runner can drive, and what each one prints.

- ``native``: our own login program (``chatgpt-login oauth-login``); browser and device.
- ``pi-ai``: the real ``@mariozechner/pi-ai`` 0.73.1 CLI; browser only. It writes ``./auth.json``
  (mode 0644) in its working directory; we move the entry into the configured files at 0600 and
  remove the stray copy. It ignores typed input while its listener is up (PROTOCOL.md §2).
- ``codex``: the real ``@openai/codex`` 0.169.0 CLI, browser and device, with file storage
  forced and a private ``CODEX_HOME``; it completes only after its ``/success`` redirect.

Every driver runs in a private working directory; afterwards :meth:`Driver.collect` reads what
the program wrote there and returns it as a :class:`~skill.credentials.Credential`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from skill.errors import SkillError
from skill.relay import READY_LINE
from skill.settings import Settings

if TYPE_CHECKING:
    from skill.credentials import Credential

DriverName = Literal["native", "pi-ai", "codex"]
Method = Literal["browser", "device"]
PI_AI_PACKAGE = "@mariozechner/pi-ai@0.73.1"


@dataclass(frozen=True)
class Driver:
    name: DriverName
    methods: tuple[Method, ...]
    success: re.Pattern[str]
    failure: re.Pattern[str]  # group 1 is the program's own message
    rejected: re.Pattern[str] | None = None  # a recoverable complaint; the attempt goes on
    paste_prompt: re.Pattern[str] | None = None

    def command(
        self, settings: Settings, method: Method, workdir: Path
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and the complete environment to run the program with."""
        if method not in self.methods:
            raise SkillError(
                "unsupported_method",
                f"The {self.name} driver has no {method} sign-in. Use --method "
                f"{self.methods[0]}, or --driver native.",
            )
        env = {**settings.child_env, "HOME": str(Path.home()), "TERM": "xterm-256color"}
        if self.name == "native":
            argv = [
                settings.python_executable,
                "-m",
                "skill.cli",
                "oauth-login",
                "--method",
                method,
            ]
            return argv, {**env, **_native_env(settings, workdir)}
        if self.name == "pi-ai":
            return [*_pi_ai(settings), "login", "openai-codex"], env
        codex_home = workdir / "codex"
        codex_home.mkdir(mode=0o700, exist_ok=True)
        argv = [settings.codex_command, "-c", 'cli_auth_credentials_store="file"', "login"]
        if method == "device":
            argv.append("--device-auth")
        return argv, {**env, "CODEX_HOME": str(codex_home)}

    def collect(self, workdir: Path) -> Credential | None:
        """The credential the program wrote in ``workdir`` (None for ``native``, which writes
        the configured files itself)."""
        if self.name == "native":
            return None
        from skill.credentials import PI_PROVIDER_KEY, Credential  # noqa: PLC0415

        path = workdir / ("auth.json" if self.name == "pi-ai" else "codex/auth.json")
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SkillError(
                "internal",
                f"{self.name} reported success but its credential file is unreadable. Start again.",
            ) from exc
        if self.name == "pi-ai":
            return Credential.from_pi_entry(document.get(PI_PROVIDER_KEY))
        return Credential.from_codex(document)


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


def _pi_ai(settings: Settings) -> list[str]:
    found = shutil.which(settings.pi_ai_command, path=settings.child_env.get("PATH"))
    if found:
        return [found]
    return ["npx", "-y", PI_AI_PACKAGE]


DRIVERS: dict[str, Driver] = {
    "native": Driver(
        name="native",
        methods=("browser", "device"),
        success=re.compile(r"^Credentials saved to ", re.MULTILINE),
        failure=re.compile(r"^Error: (.+)$", re.MULTILINE),
        # "Rejected: <message> (<error code>)"; the code is optional (a listener rejection).
        rejected=re.compile(r"^Rejected: (.+?)(?: \(([a-z_]+)\))?$", re.MULTILINE),
        paste_prompt=re.compile(rf"^{READY_LINE} \(", re.MULTILINE),
    ),
    "pi-ai": Driver(
        name="pi-ai",
        methods=("browser",),
        success=re.compile(r"^Credentials saved to auth\.json", re.MULTILINE),
        failure=re.compile(r"^Error:? (.+)$", re.MULTILINE),
        paste_prompt=re.compile(r"Paste the authorization code"),
    ),
    "codex": Driver(
        name="codex",
        methods=("browser", "device"),
        success=re.compile(r"Successfully logged in"),
        failure=re.compile(r"(?:Error logging in|Login failed|Error): (.+)$", re.MULTILINE),
    ),
}
