"""Asking the service to persist the credential to the secrets store.

The agent's commands never hold the secrets API token: they call the local service, which does.
The service writes a bearer token for local callers to ``<state_dir>/service.token`` (0600).
When the service is not running, the sign-in still stands locally and persistence is pending:
the service pushes the newer local credential when it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from skill.relay import loopback_request
from skill.settings import Settings

PERSIST_PATH = "/v1/credentials/persist"


@dataclass(frozen=True)
class PersistResult:
    persisted: bool
    message: str


def request_persist(settings: Settings) -> PersistResult:
    token_file = settings.state_dir / "service.token"
    try:
        token = token_file.read_text().strip()
    except OSError:
        token = ""
    if not token:
        return PersistResult(False, _pending("the chatgpt-login service is not running"))
    try:
        answer = loopback_request(
            "POST",
            settings.service_url.rstrip("/") + PERSIST_PATH,
            timeout=30.0,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            body=b"{}",
        )
    except OSError:
        return PersistResult(False, _pending("the chatgpt-login service did not answer"))
    if answer.status == 200:
        return PersistResult(True, "Credentials persisted to the secrets store.")
    try:
        reason = str(answer.json().get("message") or "")
    except (ValueError, AttributeError):
        reason = ""
    return PersistResult(False, _pending(reason or f"the service answered HTTP {answer.status}"))


def _pending(why: str) -> str:
    return (
        f"Persistence pending: {why.rstrip('.')}. The credential is saved on this machine; the "
        "service stores it as soon as it runs."
    )
