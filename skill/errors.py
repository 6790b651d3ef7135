"""The ``skill`` package's errors: one type with a stable code, made of a small class tree.

Every failure a user can see is a :class:`SkillError` with a stable ``code``; ``SkillError(code)``
is an instance of its code's family (:class:`NetworkError`, :class:`SignInError`,
:class:`PasteError`, :class:`CredentialFileError`, :class:`LockError`), so callers catch a
class. The table below gives each code its kind, the CLI exit code and a default message that
says what happened and what to do next. Messages never contain token, code or ``state`` values.

Kinds:

- ``permanent``: retrying cannot help (a dead refresh token); the user must sign in again.
- ``transient``: network trouble, 5xx, 429; the same call may work later.
- ``user``: the sign-in itself was refused or the input was wrong; the user can act on it.
- ``local``: a problem with files or processes on this machine.

Each code also says what an agent relaying a chat does next (``next``, in every ``--json``
error, so that no agent has to parse prose): ``ask_user`` (ask for the address again),
``send_current_link`` (send the live attempt's sign-in link again; it is in the error as
``auth_url``), ``start_again`` (``chatgpt-login start`` and send the new link), ``retry`` (the
same command again after a moment), ``tell_user`` (nothing to retry: say what the message says)
or ``report`` (a fault of this tool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["permanent", "transient", "user", "local"]
Next = Literal["ask_user", "send_current_link", "start_again", "retry", "tell_user", "report"]


class ExitCode:
    """CLI exit codes (documented in README.md)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    REFUSED = 3
    TRANSIENT = 4
    RELOGIN = 5
    TIMEOUT = 6
    LOCAL = 7
    PERSIST_PENDING = 10
    CANCELED = 130


# What each exit code means: `--help` prints these, README.md's table says the same
# (tests/test_docs.py keeps them in step). CANCELED is one case of "stopped by signal N".
MEANINGS: dict[int, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "unexpected failure",
    ExitCode.USAGE: "bad input (a wrong paste, a bad option or setting)",
    ExitCode.REFUSED: "the sign-in was refused (declined, plan, entitlement)",
    ExitCode.TRANSIENT: "network or server trouble: try again",
    ExitCode.RELOGIN: "the sign-in is dead: sign in again",
    ExitCode.TIMEOUT: "timed out",
    ExitCode.LOCAL: "a local file or lock problem",
    ExitCode.PERSIST_PENDING: "signed in on this machine, but persisting to the secrets store "
    "is pending",
}


def exit_code_help() -> str:
    """The ``exit codes:`` section of ``--help``."""
    lines = [f"  {code:<4} {meaning}" for code, meaning in MEANINGS.items()]
    return "\n".join(["exit codes:", *lines, "  128+N  stopped by signal N", ""])


@dataclass(frozen=True)
class _Spec:
    kind: Kind
    exit_code: int
    message: str
    next: Next = "retry"


_RELOGIN = "Sign in again with `chatgpt-login start`."

CODES: dict[str, _Spec] = {
    # Talking to the issuer.
    "network_error": _Spec(
        "transient",
        ExitCode.TRANSIENT,
        "Could not reach the sign-in server. Check the network and proxy settings "
        "(HTTPS_PROXY, NO_PROXY, SSL_CERT_FILE), then try again.",
        next="retry",
    ),
    "response_timeout": _Spec(
        "transient",
        ExitCode.TRANSIENT,
        "The sign-in server did not answer in time. Try again in a minute.",
        next="retry",
    ),
    "server_error": _Spec(
        "transient",
        ExitCode.TRANSIENT,
        "The sign-in server had a problem. Try again in a minute.",
        next="retry",
    ),
    "rate_limited": _Spec(
        "transient",
        ExitCode.TRANSIENT,
        "The sign-in server is limiting requests. Wait a minute, then try again.",
        next="retry",
    ),
    "invalid_response": _Spec(
        "transient",
        ExitCode.TRANSIENT,
        "The sign-in server sent an answer this tool does not understand. Try again; "
        "if it keeps happening, the protocol may have changed: report it.",
        next="retry",
    ),
    # Refresh failures that no retry can fix (PROTOCOL.md §4).
    "refresh_token_reused": _Spec(
        "permanent",
        ExitCode.RELOGIN,
        f"The refresh token was already used by another program, so this sign-in ended. {_RELOGIN}",
        next="start_again",
    ),
    "refresh_token_expired": _Spec(
        "permanent",
        ExitCode.RELOGIN,
        f"The sign-in has expired. {_RELOGIN}",
        next="start_again",
    ),
    "refresh_token_invalidated": _Spec(
        "permanent",
        ExitCode.RELOGIN,
        f"The sign-in was revoked (signed out elsewhere or password changed). {_RELOGIN}",
        next="start_again",
    ),
    "invalid_grant": _Spec(
        "permanent",
        ExitCode.RELOGIN,
        f"The sign-in server no longer accepts this sign-in. {_RELOGIN}",
        next="start_again",
    ),
    "refresh_rejected": _Spec(
        "permanent",
        ExitCode.RELOGIN,
        f"The sign-in server refused to renew the sign-in. {_RELOGIN}",
        next="start_again",
    ),
    # The sign-in itself.
    "state_mismatch": _Spec(
        "user",
        ExitCode.USAGE,
        "That address belongs to a different sign-in attempt. Open the newest sign-in link, "
        "sign in, and paste the address of the page that fails to load.",
        next="send_current_link",
    ),
    "access_denied": _Spec(
        "user",
        ExitCode.REFUSED,
        "The sign-in was declined. Open the sign-in link again and approve access.",
        next="send_current_link",
    ),
    "missing_codex_entitlement": _Spec(
        "user",
        ExitCode.REFUSED,
        "Codex is not enabled for this ChatGPT workspace. Ask the workspace admin to enable "
        "Codex, or sign in with a personal Plus/Pro account.",
        next="tell_user",
    ),
    "code_rejected": _Spec(
        "user",
        ExitCode.USAGE,
        "The sign-in server rejected the code (it expires within minutes and works once). "
        "Open the sign-in link again, sign in, and paste the new address promptly.",
        next="send_current_link",
    ),
    "plan_not_supported": _Spec(
        "user",
        ExitCode.REFUSED,
        "This ChatGPT plan cannot use Codex models. A Plus, Pro, Team, Business, Edu or "
        "Enterprise plan is needed: upgrade, or sign in with another account.",
        next="tell_user",
    ),
    "device_auth_disabled": _Spec(
        "user",
        ExitCode.REFUSED,
        "Device-code sign-in is not enabled for this account. Enable it in ChatGPT under "
        "Settings > Security (or ask the workspace admin), or use the browser method.",
        next="tell_user",
    ),
    "device_code_expired": _Spec(
        "user",
        ExitCode.TIMEOUT,
        "The device code expired before it was approved. Start a new sign-in.",
        next="start_again",
    ),
    "approval_pending": _Spec(
        "user",
        ExitCode.TIMEOUT,
        "The user has not approved the device code yet. Remind them, then run "
        "`chatgpt-login wait` again.",
        next="retry",
    ),
    "login_timeout": _Spec(
        "user",
        ExitCode.TIMEOUT,
        "The sign-in attempt timed out. Start a new sign-in and finish it within the time limit.",
        next="start_again",
    ),
    "canceled": _Spec(
        "user",
        ExitCode.CANCELED,
        "The sign-in was canceled. Start again when ready.",
        next="start_again",
    ),
    "bad_paste": _Spec(
        "user",
        ExitCode.USAGE,
        "That is not the address of the sign-in result page. Paste the full address of the page "
        "that failed to load (it starts with http://localhost:1455/auth/callback?code=).",
        next="ask_user",
    ),
    # The skill runner.
    "already_signed_in": _Spec(
        "user",
        ExitCode.USAGE,
        "The user is already signed in: the last sign-in finished, and this reply is not the "
        "address it used. Check `chatgpt-login status`; start a new sign-in only to sign in "
        "again or to switch accounts.",
        next="tell_user",
    ),
    "unsupported_method": _Spec(
        "user",
        ExitCode.USAGE,
        "That driver cannot do that sign-in method. Start again with another --method or --driver.",
        next="start_again",
    ),
    "no_login": _Spec(
        "user",
        ExitCode.USAGE,
        "No sign-in is in progress. Start one with `chatgpt-login start`.",
        next="start_again",
    ),
    "login_ended": _Spec(
        "user",
        ExitCode.USAGE,  # a paste for a sign-in that is over, like one with none (no_login)
        "That sign-in attempt has already ended. Start a new one with `chatgpt-login start`.",
        next="start_again",
    ),
    "program_failed": _Spec(
        "user",
        ExitCode.FAILED,
        "The login program reported a failure. Start a new sign-in with `chatgpt-login start`.",
        next="start_again",
    ),
    "program_timeout": _Spec(
        "transient",
        ExitCode.TIMEOUT,
        "The login program did not answer in time. Check `chatgpt-login status`, or start again.",
        next="retry",
    ),
    "listener_not_ours": _Spec(
        "local",
        ExitCode.LOCAL,
        "Another program is listening on the sign-in port, so the address was not sent to it. "
        "Stop that program (another sign-in?), then `chatgpt-login start --restart`.",
        next="start_again",
    ),
    "service_unavailable": _Spec(
        "transient",
        ExitCode.TRANSIENT,
        "The service (`chatgpt-login serve`) is not running here. It starts with the container; "
        "check `chatgpt-login status`, or start it.",
        next="retry",
    ),
    "refresh_busy": _Spec(
        "transient",
        ExitCode.TRANSIENT,
        "Another container is renewing this sign-in and has not stored the result yet. Retry "
        "in a minute.",
        next="retry",
    ),
    # The store of the copy kept for restarts, as the service reports it (``refresh``).
    "store_unavailable": _Spec(
        "transient",
        ExitCode.TRANSIENT,
        "The secrets store (the secrets API or Vault) did not answer; the service keeps trying "
        "and nothing was lost. Retry in a minute.",
        next="retry",
    ),
    "store_misconfigured": _Spec(
        "user",
        ExitCode.USAGE,
        "The secrets store refused the service (a token that ran out or lacks a permission, a "
        "wrong address or path). Tell the user what the message says; an operator must fix it.",
        next="tell_user",
    ),
    "invalid_setting": _Spec(
        "user",
        ExitCode.USAGE,
        "A setting is not valid. Fix it (its name is in the message) and retry.",
        next="tell_user",
    ),
    # Files and processes on this machine.
    "credentials_corrupt": _Spec(
        "local",
        ExitCode.LOCAL,
        "The credential file is not valid JSON. It was moved aside; sign in again.",
        next="start_again",
    ),
    "credentials_missing": _Spec(
        "local",
        ExitCode.RELOGIN,  # nothing to renew: what is needed is a sign-in
        f"No ChatGPT credential is stored on this machine. {_RELOGIN}",
        next="start_again",
    ),
    "credentials_invalid": _Spec(
        "local",
        ExitCode.LOCAL,
        f"The stored ChatGPT credential is incomplete or malformed. {_RELOGIN}",
        next="start_again",
    ),
    "account_mismatch": _Spec(
        "local",
        ExitCode.LOCAL,
        "The credential belongs to a different ChatGPT account than the one on this machine. "
        "Log out first (`chatgpt-login logout`) if you mean to switch accounts.",
        next="tell_user",
    ),
    "lock_timeout": _Spec(
        "local",
        ExitCode.LOCAL,
        "Another program held the credential file lock for too long. Retry; if it persists, "
        "check for a stuck pi or codex process.",
        next="retry",
    ),
    "port_unavailable": _Spec(
        "local",
        ExitCode.LOCAL,
        "None of the callback ports (1455, 1457) could be opened. Stop the program using "
        "them (another sign-in?) or paste the address instead.",
        next="start_again",
    ),
    "local_error": _Spec(
        "local",
        ExitCode.LOCAL,
        "A file or directory on this machine could not be used. Check its owner, permissions "
        "and the free space, then retry.",
        next="tell_user",
    ),
    "bad_usage": _Spec(
        "user",
        ExitCode.USAGE,
        "The command line is wrong (an unknown option or value). Check `chatgpt-login --help`.",
        next="report",
    ),
    "internal": _Spec(
        "local",
        ExitCode.FAILED,
        "Something unexpected went wrong. Please report this.",
        next="report",
    ),
}


# Failures after which the same attempt can still succeed: the user pastes again or reopens
# the link (the link stays valid; a spent or expired code does not).
RECOVERABLE = frozenset(
    {
        "bad_paste",
        "state_mismatch",
        "access_denied",
        "missing_codex_entitlement",
        "code_rejected",
        "network_error",
        "response_timeout",
        "server_error",
        "rate_limited",
        "invalid_response",
    }
)


class SkillError(Exception):
    """A failure with a stable ``code`` from :data:`CODES`.

    ``message`` defaults to the table's text; callers may pass a more specific one, which must
    still say what to do next and must not contain secrets.

    ``SkillError(code)`` makes an instance of the code's family (:data:`FAMILIES`), so that a
    caller catches a class (``except LockError``) rather than comparing code strings; the code
    stays the stable name an agent or a script reads.
    """

    def __new__(cls, code: str, *args: object, **kwargs: object) -> SkillError:
        family = FAMILIES.get(code, cls) if cls is SkillError else cls
        return super().__new__(family)

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        status: int | None = None,
        details: dict[str, str] | None = None,
    ):
        spec = CODES.get(code) or CODES["internal"]
        self.code = code
        self.kind: Kind = spec.kind
        self.exit_code = spec.exit_code
        self.next: Next = spec.next
        self.message = message or spec.message
        self.status = status
        # Facts for the caller besides the message: the live attempt's sign-in link for
        # ``send_current_link``. Never a code, a token or a pasted address.
        self.details = dict(details or {})
        super().__init__(self.message)

    @property
    def transient(self) -> bool:
        return self.kind == "transient"

    @property
    def permanent(self) -> bool:
        return self.kind == "permanent"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Copied or pickled, it is made again from its code (the default would pass the
        # message where the code goes).
        return (SkillError, (self.code, self.message),
                {"status": self.status, "details": self.details})  # fmt: skip


class NetworkError(SkillError):
    """The issuer, the service or the secrets store could not be reached, or answered badly:
    the same call may work later."""


class SignInError(SkillError):
    """The sign-in itself: refused, expired, its program failed, or the sign-in is dead and
    must be done again."""


class PasteError(SkillError):
    """What the user pasted is not the address of this sign-in (or its code was refused)."""


class CredentialFileError(SkillError):
    """A credential file is missing, cannot be read, or holds another account."""


class LockError(SkillError):
    """A lock we wait for is held too long, or no callback port is free. (A port held by a
    stranger while a sign-in waits is ``listener_not_ours``, a :class:`SignInError`.)"""


_FAMILY_CODES: dict[type[SkillError], tuple[str, ...]] = {
    NetworkError: ("network_error", "response_timeout", "server_error", "rate_limited",
                   "invalid_response", "service_unavailable", "store_unavailable"),
    SignInError: ("refresh_token_reused", "refresh_token_expired", "refresh_token_invalidated",
                  "invalid_grant", "refresh_rejected", "refresh_busy", "access_denied",
                  "missing_codex_entitlement", "plan_not_supported", "device_auth_disabled",
                  "device_code_expired", "approval_pending", "login_timeout", "canceled",
                  "already_signed_in", "unsupported_method", "no_login", "login_ended",
                  "program_failed", "program_timeout", "listener_not_ours"),
    PasteError: ("state_mismatch", "bad_paste", "code_rejected"),
    CredentialFileError: ("credentials_corrupt", "credentials_missing", "credentials_invalid",
                          "account_mismatch"),
    LockError: ("lock_timeout", "port_unavailable"),
}  # fmt: skip
# Each code's class; codes in none (a bad setting, a local or internal fault) are SkillError.
FAMILIES: dict[str, type[SkillError]] = {
    code: family for family, codes in _FAMILY_CODES.items() for code in codes
}


def from_os_error(exc: OSError) -> SkillError:
    """A ``local_error`` that says which file and what is wrong with it (a path, never a
    file's contents)."""
    import errno  # noqa: PLC0415 - only on this rare path

    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "not permitted (owned by another user?)",
        errno.ENOTDIR: "a file is where a directory should be",
        errno.EISDIR: "a directory is where a file should be",
        errno.ENOENT: "it does not exist",
    }.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    where = f" {exc.filename}" if exc.filename else ""
    return SkillError(
        "local_error",
        f"Could not use{where}: {what}. Check its owner, permissions and the free space, then "
        "retry.",
    )
