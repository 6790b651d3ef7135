"""The one error type of the ``service`` package.

A :class:`ServiceError` has a stable ``code`` and the HTTP ``status`` the API answers with;
:func:`service.app.create_app` turns it into ``{"error": code, "message": ...}``. A
:class:`skill.errors.SkillError` raised below the API is answered the same way, with a status
chosen from its kind. Messages say what happened and what to do, and never hold a secret.
"""

from __future__ import annotations

from skill.errors import SkillError

# A local problem (no credential, a file or lock in the way) is a conflict with this machine's
# state, not a server fault; only "internal" is a 500.
_SKILL_STATUS = {"user": 400, "permanent": 409, "transient": 503, "local": 409}
_CODE_STATUS = {"no_login": 404, "internal": 500, "lock_timeout": 503, "local_error": 500}


class ServiceError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 500,
        transient: bool = False,
        next: str | None = None,
        details: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.transient = transient
        self.next = next or ("retry" if transient else None)
        self.details = dict(details or {})

    @classmethod
    def from_skill(cls, exc: SkillError) -> ServiceError:
        status = _CODE_STATUS.get(exc.code) or _SKILL_STATUS.get(exc.kind, 500)
        return cls(exc.code, exc.message, status=status, transient=exc.transient,
                   next=exc.next, details=exc.details)  # fmt: skip

    def __repr__(self) -> str:
        return f"ServiceError({self.code!r}, status={self.status})"


def unreachable(why: str, label: str = "The secrets API") -> ServiceError:
    return ServiceError(
        "secrets_unreachable",
        f"{label} could not be reached ({why}). Nothing was changed for it; the service keeps "
        "trying, and what waits for the store (a change here, a logout) reaches it as soon as "
        "it answers.",
        status=503,
        transient=True,
    )
