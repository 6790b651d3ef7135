"""A browser sign-in's link, made ahead of the login program (the "premade" link).

The skill runner makes the PKCE pair, ``state`` and port itself, so ``chatgpt-login start`` can
show the link at once instead of waiting for the login program to boot; the program then takes
the attempt over. It travels in a 0600 file in the attempt's private directory (never argv or
the environment) and is deleted once read.
"""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from skill.authorize import authorize_url, redirect_uri
from skill.errors import SkillError
from skill.files import write_private
from skill.pkce import Pkce, new_state
from skill.settings import Settings


@dataclass(frozen=True, repr=False)
class PremadeLink:
    """The secrets behind one sign-in link (PKCE pair, ``state``, port, and the token the
    program's ``/cancel`` wants); ``repr`` shows none of them."""

    pkce: Pkce
    state: str
    port: int
    # What the program's /cancel wants: only the runner, which made the attempt, may end it so.
    control: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def __repr__(self) -> str:
        return f"PremadeLink(port={self.port})"

    @classmethod
    def new(cls, settings: Settings) -> PremadeLink:
        return cls(Pkce(), new_state(), first_free_port(settings.callback_ports))

    def save(self, path: Path) -> None:
        data = {"verifier": self.pkce.verifier, "state": self.state, "port": self.port,
                "control": self.control}  # fmt: skip
        write_private(path, json.dumps(data).encode())

    @classmethod
    def take(cls, path: Path) -> PremadeLink:
        try:
            data = json.loads(path.read_text())
            path.unlink()
            return cls(Pkce(data["verifier"]), str(data["state"]), int(data["port"]),
                       str(data["control"]))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SkillError("internal", "The prepared sign-in attempt is unreadable.") from exc


def premade_link(settings: Settings, premade: PremadeLink) -> str:
    redirect = redirect_uri(settings, premade.port)
    return authorize_url(settings, pkce=premade.pkce, state=premade.state, redirect=redirect)


def first_free_port(ports: tuple[int, ...]) -> int:
    """The first port nothing listens on; the first one if all are taken (the program then
    takes the address typed at its prompt instead)."""
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return ports[0]
