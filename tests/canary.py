"""The canary sweep, over the whole test suite: every pytest run is one.

Secrets are made recognisable where they are born. The fake issuer puts :data:`MARK` into every
authorization code, device code and token it mints; the fakes and fixtures :func:`register` the
secrets they cannot mark (the ``state`` and PKCE verifier our code generates, the bearer tokens
of the operator, of the secrets API and of the local service).

While the suite runs, :class:`Sweep` captures everything a leak could reach:

- every log record of the test process (root logger at DEBUG);
- the output of every subprocess run through ``communicate`` (every CLI command, gunicorn);
- every response body and header the Flask apps produce in the test process;
- log files and event journals in the state directories (the tmux pane logs included), sampled
  while they exist and read again when a test ends; what tests read from ``GET /v1/events``
  and what the on-change hook was given (tests add these);
- the argument list of every process on the machine, sampled every 50 ms.

At the end it searches all of it and fails the run on any find, naming where. The one place a
``state`` belongs is the sign-in link, so authorize links are blanked before the search.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# In every code and token the fake issuer mints (base64url-safe, so it survives any encoding).
MARK = "Cnry7Q"
_REGISTERED: dict[str, str] = {}  # secret value -> what it is
_LOCK = threading.Lock()
# Runs of characters a token is made of; a registered secret is found when it is such a run.
_RUN = re.compile(r"[A-Za-z0-9_\-]{16,}")
_BLANK = re.compile(r"[A-Za-z0-9_\-.]{16,}")  # dots too: a JWT is blanked whole
# The sign-in link carries the state by design: start prints it, the login program shows it.
_AUTHORIZE_LINK = re.compile(r"https?://[^\s\"'<>]*/oauth/authorize\?[^\s\"'<>]*")

# Harness processes that print or take secrets on purpose, never the product: the network
# namespace flow reports the written credential back to its test as JSON.
HARNESS = ("tests.netns_flow",)
# Programs a test writes to play another party (``python -c`` snippets; tests/npm/*.mjs run
# pi's own functions) take credentials in their argv and print results, tokens included, on
# stdout for the test: those two are the test talking to itself; their stderr is still searched.
# The product never runs that way (its programs are ``-m skill.cli`` and the console script).
TEST_PROGRAM = re.compile(r"python3?(\.\d+)? -c |tests/npm/[\w-]+\.mjs")
# ``complete <address>``: the caller chose to pass the address as an argument (it may; SKILL.md
# has agents pipe it on stdin). Anything else holding a code or state in its argv is a leak.
CALLER_ARGV = re.compile(r"\scomplete\s+https?://")
# Variables that hand a process a bearer token (``<agent>:<token>`` lines for the server's).
SECRET_ENV = (
    "CHATGPT_LOGIN_OPERATOR_TOKEN", "FAT_TOOLS_TOKEN", "CHATGPT_LOGIN_SECRETS_API_TOKEN",
    "CHATGPT_LOGIN_SECRETS_SERVER_TOKENS", "VAULT_TOKEN", "CHATGPT_LOGIN_VAULT_TOKEN",
)  # fmt: skip


def register(value: str | None, what: str) -> None:
    """Add a secret the sweep must not find anywhere (too short ones would match by chance)."""
    if value and len(value) >= 16:
        with _LOCK:
            _REGISTERED.setdefault(value, what)


@dataclass
class Sweep:
    captures: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    kinds: Counter[str] = field(default_factory=Counter)
    argv_seen: dict[bytes, str] = field(default_factory=dict)  # argv -> the test it ran in
    current: str = "(no test)"  # the running test, named in each find
    _files: dict[Path, tuple[str, str]] = field(default_factory=dict)  # path -> (test, text)
    thread: threading.Thread | None = None
    sampler_failed: str | None = None  # why the sampling thread ended before stop(), if it did
    _stop: threading.Event = field(default_factory=threading.Event)
    _leaks: list[str] | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and not self._stop.is_set()

    def add(self, kind: str, where: str, text: str) -> None:
        if text:
            with _LOCK:
                self.captures.append((f"{kind} in {self.current}: {where}", text))
                self.kinds[kind] += 1

    # Sources -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._hook_logging()
        self._hook_subprocess()
        self._hook_flask()
        self.thread = threading.Thread(target=self._sample, name="canary-sweep", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join()
        for path, (test, text) in self._files.items():
            self.current = test
            self.add("log file", str(path), text)

    def _hook_logging(self) -> None:
        sweep = self

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    sweep.add("log record", record.name, self.format(record))
                except Exception:  # a record that cannot format is no leak
                    return

        root = logging.getLogger()
        root.addHandler(Capture(logging.DEBUG))
        root.setLevel(logging.DEBUG)

    def _hook_subprocess(self) -> None:
        original_init, original = subprocess.Popen.__init__, subprocess.Popen.communicate
        sweep = self

        def init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
            for name in SECRET_ENV:  # bearer tokens handed to a served app or a command
                for line in str((kwargs.get("env") or {}).get(name, "")).splitlines():
                    register(line.rsplit(":", 1)[-1].strip(), f"bearer token from {name}")
            original_init(self, *args, **kwargs)

        def communicate(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
            out, err = original(self, *args, **kwargs)
            argv = self.args if isinstance(self.args, list | tuple) else [self.args]
            where = " ".join(str(a) for a in argv)[:160]
            if any(h in where for h in HARNESS):
                streams = []
            else:
                streams = [err] if TEST_PROGRAM.search(where) else [out, err]
            for stream in streams:
                text = stream.decode(errors="replace") if isinstance(stream, bytes) else stream
                sweep.add("process output", where, text or "")
            return out, err

        subprocess.Popen.__init__ = init  # type: ignore[method-assign]
        subprocess.Popen.communicate = communicate  # type: ignore[method-assign]

    def _hook_flask(self) -> None:
        from flask import Flask, request  # noqa: PLC0415

        original = Flask.process_response
        sweep = self

        def process_response(app: Flask, response: Any) -> Any:
            response = original(app, response)
            context = app.extensions.get("chatgpt_login")
            for token in getattr(context, "tokens", ()):  # the operator and local tokens
                register(token.decode(), "operator or local service token")
            # The reference secrets server's GET hands the stored record back: that is its job.
            if not (request.method == "GET" and request.path == "/api/agent/secrets"):
                body = "" if response.is_streamed else response.get_data(as_text=True)
                where = f"{request.method} {request.path} -> {response.status_code}"
                sweep.add("response", where, f"{response.headers}\n{body}")
            return response

        Flask.process_response = process_response  # type: ignore[method-assign]

    def _sample(self) -> None:
        try:
            self._sample_until_stopped()
        except Exception as exc:  # the sweep must not say "0 leaks" after sampling stopped
            self.sampler_failed = f"{type(exc).__name__} in {self.current}"
            raise

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(0.05):
            for cmdline in _all_argv():
                self.argv_seen.setdefault(cmdline, self.current)
            try:
                for path in Path("/tmp").glob("cgl-*/logs/*"):  # the state_dir fixture's
                    self.read_file(path)
            except OSError:  # a test's directory removed during the walk: look again next time
                continue  # (raised, it ended this thread, and with it the sampling of argv)

    def read_file(self, path: Path) -> None:
        """Keep the longest text seen in ``path`` (pane logs are trimmed and then removed)."""
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return
        if path.name == "service.token":  # the token's own 0600 file: where it belongs
            register(text.strip(), "local service token")
        elif len(text) >= len(self._files.get(path, ("", ""))[1]):
            self._files[path] = (self.current, text)

    def read_dir(self, root: Path) -> None:
        """A test's directory at its end: its log files, event journals, and the local service
        tokens."""
        for pattern in ("**/logs/*", "**/*.log", "**/events.jsonl", "**/service.token"):
            for path in root.glob(pattern):
                if path.is_file():
                    self.read_file(path)

    # The search ----------------------------------------------------------------------------------

    def leaks(self) -> list[str]:
        """Every find, as "<what> in <where>" (searched once, after :meth:`stop`)."""
        if self._leaks is None:
            self._leaks = self._search()
        return self._leaks

    def _search(self) -> list[str]:
        with _LOCK:
            registered = dict(_REGISTERED)
            captures = list(self.captures)
        for cmdline, test in self.argv_seen.items():
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            if not any(h in argv for h in HARNESS) and not (
                CALLER_ARGV.search(argv) or TEST_PROGRAM.search(argv)
            ):
                captures.append((f"process argv in {test}", argv))
        found: list[str] = []
        if self.sampler_failed:
            found.append(f"the sweep's sampling stopped early ({self.sampler_failed}): argv and "
                         "log files after it were not searched")  # fmt: skip
        for where, raw in captures:
            text = _AUTHORIZE_LINK.sub("<sign-in link>", raw)
            hits = {"a marked code or token": MARK} if MARK in text else {}
            hits |= {registered[run]: run for run in _RUN.findall(text) if run in registered}
            found += [
                f"{what} in {_redacted(where)}: {_context(text, value)}"
                for what, value in hits.items()
            ]
        return found

    def summary(self) -> str:
        kinds = [f"{kind}s {n}" for kind, n in sorted(self.kinds.items())]
        kinds.append(f"process argument lists {len(self.argv_seen)}")
        size = sum(len(text) for _, text in self.captures)
        return (
            f"canary sweep: {len(self.captures) + len(self.argv_seen)} captures "
            f"({', '.join(kinds)}), {size / 1e6:.1f} MB searched for "
            f"the marked codes and tokens and {len(_REGISTERED)} registered secrets"
        )


def _context(text: str, value: str) -> str:
    """The line around the first find, with every run holding a secret blanked."""
    at = text.index(value)
    line = text[text.rfind("\n", 0, at) + 1 : (text.find("\n", at) + 1 or len(text) + 1) - 1]
    return repr(_redacted(line)[:200])


def _redacted(text: str) -> str:
    """``text`` with every run holding a secret blanked (the report must not leak either)."""
    text = _BLANK.sub(lambda m: "<SECRET>" if MARK in m.group() else m.group(), text)
    return _RUN.sub(lambda m: "<SECRET>" if m.group() in _REGISTERED else m.group(), text)


def _all_argv() -> Iterable[bytes]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield (entry / "cmdline").read_bytes()
            except OSError:
                continue
