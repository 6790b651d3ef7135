"""gunicorn's access log, one line per request whatever the request held.

The path is logged percent-decoded (``%(U)s``), so an unauthenticated caller could write a
newline into it and forge a line of its own, or an escape sequence that drives the terminal of
whoever reads the log. Control characters (and the backslash, so an escape cannot be faked)
are written as ``\\xNN`` escapes; gunicorn's own wrapper then escapes the quotes.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger, SafeAtoms  # type: ignore[import-untyped]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def escaped(value: str) -> str:
    return _UNSAFE.sub(lambda found: f"\\x{ord(found.group()):02x}", value)


class _Atoms(SafeAtoms):  # type: ignore[misc]
    def __init__(self, atoms: dict[str, Any]) -> None:
        super().__init__({k: escaped(v) if isinstance(v, str) else v for k, v in atoms.items()})


class AccessLogger(Logger):  # type: ignore[misc]
    atoms_wrapper_class = _Atoms
