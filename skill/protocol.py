"""What our login program (``skill/login_program.py``) says and the runner reads back: every
line of that protocol written and parsed here, once.

The program prints to its tmux pane, and answers a relayed callback over HTTP with the same
lines in the body (plus :data:`ERROR_HEADER` naming the error code of a rejected one):

- ``Waiting (<where>; times out in N min)...`` (N s under a minute): a typed paste is safe from
  here on (terminal echo is off, so it never reaches the scrollback); the runner types nothing
  before it.
- ``Rejected: <message> (<code>)``: this paste or callback failed, the attempt goes on.
- ``Signed in as <email> (plan: <plan>).``, then ``Credentials saved to <path>`` once per file
  written (``Warning: <message>`` beside, for a file moved aside), then the API key line when
  one was saved; then it exits 0.
- ``Error: <message>``: the attempt is over; it exits with the code from :mod:`skill.errors`.

The plan rule (which plans cannot use Codex models) is here too: the program applies it before
writing anything, the runner to what pi-ai and codex wrote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from skill.errors import SkillError

ERROR_HEADER = "X-Chatgpt-Login-Error"
READY = "Waiting"
SAVED = "Credentials saved to {path}"
API_KEY_SAVED = "API key saved as OPENAI_API_KEY in {path}."

READY_RE = re.compile(rf"^{READY} \(", re.MULTILINE)
SAVED_RE = re.compile(r"^Credentials saved to (.+)$", re.MULTILINE)
ERROR_RE = re.compile(r"^Error: (.+)$", re.MULTILINE)
# The code is optional: a rejection by the listener itself names none.
REJECTED_RE = re.compile(r"^Rejected: (.+?)(?: \(([a-z_]+)\))?$", re.MULTILINE)
_SIGNED_IN_RE = re.compile(r"^Signed in as (.+) \(plan: (.+)\)\.$", re.MULTILINE)
_WARNING_RE = re.compile(r"^Warning: (.+)$", re.MULTILINE)


def ready_line(where: str, minutes: float) -> str:
    left = f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"  # never "0 min"
    return f"{READY} ({where}; times out in {left})..."


def signed_in_line(email: str | None, plan: str) -> str:
    return f"Signed in as {email or 'unknown email'} (plan: {plan})."


def saved_line(path: object) -> str:
    return SAVED.format(path=path)


def warning_line(message: str) -> str:
    return f"Warning: {message}"


def rejected_line(message: str, code: str | None = None) -> str:
    return f"Rejected: {message} ({code})" if code else f"Rejected: {message}"


def error_line(message: str) -> str:
    return f"Error: {message}"


def saved_paths(output: str) -> list[str]:
    return SAVED_RE.findall(output)


def signed_in_as(output: str) -> str | None:
    """``<email> (<plan> plan)``, as status shows it."""
    found = _SIGNED_IN_RE.search(output)
    return f"{found.group(1)} ({found.group(2)} plan)" if found else None


def warnings(output: str) -> list[str]:
    return _WARNING_RE.findall(output)


def api_key_saved(output: str, path: object) -> bool:
    return API_KEY_SAVED.format(path=path) in output


def refuse_plan(plan_type: str | None, refused: Iterable[str]) -> str:
    """The plan, lower case; raises ``plan_not_supported`` for one that cannot use Codex."""
    plan = (plan_type or "unknown").lower()
    if plan in refused:
        raise SkillError(
            "plan_not_supported",
            f"This account is on the ChatGPT {plan} plan, which cannot use Codex models. A Plus, "
            "Pro, Team, Business, Edu or Enterprise plan is needed: upgrade, or sign in with "
            "another account.",
        )
    return plan
