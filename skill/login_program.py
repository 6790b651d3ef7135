"""Our own login program: ``chatgpt-login oauth-login [--method browser|device]``.

A terminal program the skill runner drives in tmux, and that a person can run by hand.

Browser method: print the sign-in link on a line of its own, then wait for the code from
either of two sources at once, whichever brings a valid one first:

- the loopback listener on 127.0.0.1:1455 (1457 if taken), which the browser reaches when it
  runs on this machine, and which the skill runner calls with a relayed URL;
- standard input, where a person pastes the address of the page that failed to load (or the
  bare code). Echo is off while reading so the pasted code stays out of the scrollback.

A bad paste or callback prints a rejection and the attempt goes on. On success the program
says who signed in and each file it saved, and exits 0; on failure it prints an error line and
exits with the code from :mod:`skill.errors`. The lines are :mod:`skill.protocol`'s, which the
runner reads.

Device method: print the verification URL and one-time code, poll until approved.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

from skill import protocol
from skill.authorize import CALLBACK_PATH, authorize_url, redirect_uri
from skill.errors import RECOVERABLE, ExitCode, SkillError
from skill.pkce import Pkce, new_state
from skill.premade import PremadeLink
from skill.procs import peer_uid
from skill.redirect import Callback, parse_redirect
from skill.settings import Settings

if TYPE_CHECKING:
    from skill.claims import Claims
    from skill.oauth import OAuthClient
    from skill.tokens import TokenSet

Method = Literal["browser", "device"]


class _InterruptedError(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class _Event:
    """Something that arrived: a callback from the listener, a paste, or a request to stop."""

    kind: Literal["callback", "paste", "eof", "cancel"]
    text: str = ""
    callback: Callback | None = None
    done: threading.Event = field(default_factory=threading.Event)
    sent: threading.Event = field(default_factory=threading.Event)  # the answer went out
    outcome: tuple[int, str, str | None] = (500, "", None)

    def reply(self, status: int, message: str, code: str | None = None) -> None:
        self.outcome = (status, message, code)
        self.done.set()

    def last_reply(self, status: int, message: str, code: str | None = None) -> None:
        """Reply, and before the program ends wait for the answer to go out: the listener's
        threads die with the program, and the runner reads its verdict from this answer."""
        self.reply(status, message, code)
        if self.kind in ("callback", "cancel"):
            self.sent.wait(1.0)


class _Console:
    """Serialised line output (the listener thread prints too)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def say(self, line: str = "") -> None:
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def run(
    settings: Settings,
    *,
    method: Method = "browser",
    premade: Path | None = None,
    stdin: IO[str] | None = None,
    out: IO[str] | None = None,
) -> int:
    """Run one sign-in attempt; returns the process exit code."""
    console = _Console(out or sys.stdout)
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in _STOP_SIGNALS}
    try:
        if method == "device":
            saved = _device_login(settings, console)
        else:
            made = PremadeLink.take(premade) if premade else None
            saved = _browser_login(settings, console, stdin or sys.stdin, made)
    except _InterruptedError as stop:
        console.say(protocol.error_line("the sign-in was canceled. Start again when ready."))
        return 128 + stop.signum
    except SkillError as exc:
        console.say(protocol.error_line(exc.message))
        return exc.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for line in saved:
        console.say(line)
    return ExitCode.OK


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _InterruptedError(signum)


# Browser method ---------------------------------------------------------------------------------


def _browser_login(
    settings: Settings, console: _Console, stdin: IO[str], premade: PremadeLink | None
) -> list[str]:
    pkce, state = (premade.pkce, premade.state) if premade else (Pkce(), new_state())
    events: queue.Queue[_Event] = queue.Queue()
    # A premade attempt's link already names its port: bind that one or none.
    ports = (premade.port,) if premade else settings.callback_ports
    server = _bind_listener(
        settings, ports, events, state, console, control=premade.control if premade else None
    )
    port = server.server_address[1] if server else ports[0]
    redirect = redirect_uri(settings, port)
    console.say("Open this link in a browser and sign in to ChatGPT:")
    console.say(authorize_url(settings, pkce=pkce, state=state, redirect=redirect))
    console.say()
    console.say(
        f"Then paste here the full address of the page that fails to load "
        f"(http://{settings.callback_host}:{port}{CALLBACK_PATH}?code=...) and press Enter."
    )
    minutes = settings.login_timeout / 60
    where = f"listening on 127.0.0.1:{port}" if server else "no listener: paste only"

    # Imported only now: the link is already on screen, so the user never waits for the OAuth
    # client; the credential-file modules are loaded here too, while the user is still signing in.
    import skill.authfiles  # noqa: F401, PLC0415
    from skill.oauth import OAuthClient  # noqa: PLC0415

    if server:
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    threading.Thread(target=_read_pastes, args=(stdin, events), daemon=True).start()
    expecting = _Expecting(pkce, state, port, redirect, listening=server is not None)
    try:
        with _echo_off(stdin), OAuthClient(settings) as client:
            # Said only now that echo is off: the skill runner types a paste after this line
            # (protocol.READY), and a paste typed earlier would be echoed into the scrollback.
            console.say(protocol.ready_line(where, minutes))
            return _await_code(settings, client, events, console, expecting)
    finally:
        if server:
            server.shutdown()
            server.server_close()


@dataclass(frozen=True)
class _Expecting:
    """What a callback must match (``state``, port) and what its code is exchanged with."""

    pkce: Pkce
    state: str
    port: int
    redirect: str
    listening: bool


def _await_code(
    settings: Settings,
    client: OAuthClient,
    events: queue.Queue[_Event],
    console: _Console,
    expecting: _Expecting,
) -> list[str]:
    """Take events until one brings a code that exchanges; rejected ones print why."""
    deadline = time.monotonic() + settings.login_timeout
    while True:
        try:
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise SkillError("login_timeout") from None
        if event.kind == "cancel":
            event.last_reply(200, "The sign-in was canceled.")
            raise SkillError("canceled", "The sign-in was canceled by another login program.")
        if event.kind == "eof":
            if expecting.listening:
                continue  # the listener can still bring the code
            raise SkillError(
                "canceled", "Input ended and no listener is running, so no code can arrive."
            )
        try:
            callback = event.callback or _parse_paste(event.text, expecting, console)
            tokens = client.exchange_code(
                code=callback.code,
                verifier=expecting.pkce.verifier,
                redirect_uri=expecting.redirect,
            )
            saved = _finish(settings, tokens)
        except SkillError as exc:
            if exc.code not in RECOVERABLE:
                event.last_reply(500, exc.message, exc.code)
                raise
            event.reply(400, exc.message, exc.code)
            console.say(protocol.rejected_line(exc.message, exc.code))  # the runner reads it
            console.say("Waiting for another try...")
            continue
        event.last_reply(200, "\n".join(["Signed in. You can close this page.", *saved]))
        return saved


def _parse_paste(text: str, expecting: _Expecting, console: _Console) -> Callback:
    pasted = text.strip()
    what = "address" if "://" in pasted or "?" in pasted else "code"  # a bare code is allowed here
    console.say(f"Received a pasted {what} ({len(pasted)} characters); checking it...")
    # A person at this terminal pastes the address (or the bare code) and nothing else; the
    # runner types only the address it rebuilt. Chat replies are read by `complete`.
    return parse_redirect(text, state=expecting.state, port=expecting.port, allow_bare_code=True)


def _read_pastes(stdin: IO[str], events: queue.Queue[_Event]) -> None:
    """Forward every non-empty input line; report end of input once."""
    with contextlib.suppress(ValueError, OSError):
        for line in stdin:
            if line.strip():
                events.put(_Event("paste", text=line))
    events.put(_Event("eof"))


@contextlib.contextmanager
def _echo_off(stdin: IO[str]) -> Iterator[None]:
    """Keep pasted codes out of the terminal's scrollback, like a password prompt."""
    import termios  # noqa: PLC0415

    try:
        fd = stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError, AttributeError):  # not a terminal
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


# The loopback listener ----------------------------------------------------------------------------


class _Listener(http.server.ThreadingHTTPServer):
    """The callback listener. Its callers are this user's: the relay of a pasted address, or
    a browser of this user outside a container. A connection from another user's process is
    closed unread: a few of them, each sending a byte now and then, would otherwise hold every
    slot until the code expired. What this user's connections may hold is bounded too: at most
    ``MAX_OPEN`` at once (more are closed at once, not queued), each dropped after
    ``_CallbackHandler.timeout`` seconds without a byte."""

    daemon_threads = True
    allow_reuse_address = True  # TIME_WAIT only; two live listeners still cannot share a port
    MAX_OPEN = 8

    def __init__(
        self,
        port: int,
        events: queue.Queue[_Event],
        state: str,
        console: _Console,
        *,
        wait: float,
        control: str | None,
    ) -> None:
        super().__init__(("127.0.0.1", port), _CallbackHandler)
        self.events, self.state, self.console, self.wait = events, state, console, wait
        self.control = control  # /cancel's secret; None: nobody may cancel over HTTP
        self._open = threading.BoundedSemaphore(self.MAX_OPEN)

    def process_request(self, request: Any, client_address: Any) -> None:
        # None: not in the kernel's tables, so closed already: nothing to keep either.
        if peer_uid(request) != os.getuid() or not self._open.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._open.release()


def _bind_listener(
    settings: Settings,
    ports: tuple[int, ...],
    events: queue.Queue[_Event],
    state: str,
    console: _Console,
    *,
    control: str | None,
) -> _Listener | None:
    # Outcome of one callback: exchange plus writes, each bounded by the HTTP timeouts.
    wait = 2 * (settings.connect_timeout + settings.read_timeout) + settings.lock_timeout
    for port in ports:
        try:
            return _Listener(port, events, state, console, wait=wait, control=control)
        except OSError:
            continue
    return None


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: _Listener
    timeout = 10  # seconds a connection may stay silent (a socket timeout on every read)
    server_version = "chatgpt-login"
    sys_version = ""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if path == "/cancel":
            # Anyone on this machine can reach 127.0.0.1: ending the sign-in takes the secret
            # the runner made with the attempt (in the query, as codex's own /cancel is a GET).
            given = parse_qs(parts.query).get("secret", [""])[0].encode()
            control = self.server.control
            if control is None or not hmac.compare_digest(given, control.encode()):
                self._send(403, "Ending this sign-in takes its secret. Stop the program instead.")
                return
            self._ask(_Event("cancel"))
            return
        if path != CALLBACK_PATH:
            self._send(404, "Not found. This server only takes the sign-in callback.")
            return
        port = self.server.server_address[1]
        try:
            callback = parse_redirect(
                f"http://localhost:{port}{self.path}", state=self.server.state, port=port
            )
        except SkillError as exc:
            self.server.console.say(protocol.rejected_line(exc.message))
            self._send(400, exc.message)
            return
        self._ask(_Event("callback", callback=callback))

    def _ask(self, event: _Event) -> None:
        """Hand the event to the main loop and answer with its outcome."""
        self.server.events.put(event)
        if not event.done.wait(self.server.wait):
            self._send(504, "The sign-in is still being processed. Check the terminal.")
            return
        try:
            self._send(*event.outcome)
        finally:
            event.sent.set()

    def _send(self, status: int, message: str, code: str | None = None) -> None:
        body = (message + "\n").encode("utf-8")
        self.send_response(status)
        if code:  # the runner reports our error code, not a generic "bad paste"
            self.send_header(protocol.ERROR_HEADER, code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silenced: the default logs the request line, which holds the code and state."""


# Device method ----------------------------------------------------------------------------------


def _device_login(settings: Settings, console: _Console) -> list[str]:
    from skill.oauth import OAuthClient  # noqa: PLC0415

    with OAuthClient(settings) as client:
        device = client.request_device_code()
        console.say("To sign in, open this page in a browser:")
        console.say(device.verification_url)
        console.say("and enter this one-time code:")
        console.say(device.user_code)
        console.say()
        console.say(
            "The code expires in 15 minutes. If the page says device sign-in is off, enable it "
            "in ChatGPT under Settings > Security (or ask your workspace admin)."
        )
        console.say("Waiting for approval...")
        grant = client.wait_for_device_approval(device, timeout=settings.device_timeout)
        return _finish(settings, client.exchange_device_grant(grant))


# Both methods -----------------------------------------------------------------------------------


def _finish(settings: Settings, tokens: TokenSet) -> list[str]:
    """Check the plan and write every configured credential file; return the lines to print."""
    from skill.authfiles import auth_files  # noqa: PLC0415
    from skill.credentials import Credential  # noqa: PLC0415

    credential = Credential.from_tokens(tokens)
    claims = credential.claims()
    plan = protocol.refuse_plan(claims.plan_type, settings.refused_plans)
    lines = [protocol.signed_in_line(claims.email, plan)]
    for auth_file in auth_files(settings):
        result = auth_file.save(credential)
        if result.moved_aside:
            moved = f"{result.path} was not valid JSON; moved it aside to {result.moved_aside}."
            lines.append(protocol.warning_line(moved))
        lines.append(protocol.saved_line(result.path))
    if settings.api_key_exchange:
        lines.append(_api_key(settings, tokens, claims))
    return lines


def _api_key(settings: Settings, tokens: TokenSet, claims: Claims) -> str:
    """Trade the id_token for an API key and keep it where codex reads it; whatever happens,
    the sign-in stands. Returns the line to print (never the key)."""
    from skill.authfiles import CodexAuthFile  # noqa: PLC0415
    from skill.oauth import OAuthClient  # noqa: PLC0415

    if not claims.organization_id or not claims.project_id:
        return protocol.warning_line(
            "no API key: this account has no OpenAI API organization and project (set one up "
            "at platform.openai.com to get one). The sign-in itself works.")  # fmt: skip
    codex = CodexAuthFile(settings.codex_auth_file, timeout=settings.lock_timeout)
    if codex.api_key() is not None:  # a key of the user's (or of an earlier sign-in) stays
        return protocol.warning_line(
            f"no new API key: {settings.codex_auth_file} holds one already, left as it is "
            "(remove it to get one from the next sign-in). The sign-in itself works.")  # fmt: skip
    try:
        with OAuthClient(settings) as client:
            key = client.exchange_api_key(tokens.id_token or "")
        codex.set_api_key(key)
    except SkillError as exc:
        return protocol.warning_line(
            f"no API key: the exchange failed ({exc.code}: {exc.message.rstrip('.')}). "
            "The sign-in itself works.")  # fmt: skip
    return protocol.API_KEY_SAVED.format(path=settings.codex_auth_file)
