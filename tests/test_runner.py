"""The skill runner with the native driver: real tmux, real login processes, the fake issuer."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from skill.attempt import AttemptFile
from skill.errors import SkillError
from skill.procs import descendants, listener_pids
from skill.runner import Runner
from skill.settings import Settings
from skill.tmux import TmuxServer
from tests.conftest import port_is_free, wait_until
from tests.fake_issuer import FakeIssuer
from tests.process import kill


def leftovers(runner: Runner, settings: Settings) -> dict[str, object]:
    """What a finished attempt must not leave behind. A listener gets up to 3 s to go: ending
    an attempt waits for its processes with a bound (SIGTERM, 1 s, SIGKILL, 1 s), and on a
    loaded machine the kernel's socket table was once seen a moment behind (1 CI run in many)."""
    deadline = time.monotonic() + 3
    while any(not port_is_free(p) for p in settings.callback_ports) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "sessions": runner.tmux.sessions(),
        "listeners": [_holder(p) for p in settings.callback_ports if not port_is_free(p)],
        "logs": sorted(os.listdir(settings.state_dir / "logs")),
        "work": sorted(os.listdir(settings.state_dir / "work")),
    }


CLEAN = {"sessions": [], "listeners": [], "logs": [], "work": []}


def _holder(port: int) -> str:
    """``port`` and which processes listen on it, so a failure says who (ours, or a stranger
    that took the same free port)."""
    pids = {int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    found = []
    for pid in sorted(listener_pids(port, pids)):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        found.append(f"{pid} {cmd[:100]}")
    return f"{port} held by {found or 'no process (socket still closing)'}"


def test_start_complete_end_to_end(runner_settings: Settings, issuer: FakeIssuer) -> None:
    runner = Runner(runner_settings)
    state, reused = runner.start()
    assert not reused and state.status == "waiting" and state.auth_url
    assert state.redirect_port == runner_settings.callback_ports[0]
    assert runner.tmux.sessions() == [state.tmux_session]
    log_file = runner_settings.state_dir / "logs" / f"{state.id}.log"
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    wait_until(lambda: not port_is_free(runner_settings.callback_ports[0]), what="listener")

    callback = issuer.sign_in(state.auth_url)
    done = runner.complete(f"  <{callback}>\n")
    assert done.status == "succeeded"
    assert done.saved == [str(runner_settings.pi_auth_file)]
    assert stat.S_IMODE(runner_settings.pi_auth_file.stat().st_mode) == 0o600
    assert leftovers(runner, runner_settings) == CLEAN
    record = json.loads((runner_settings.state_dir / "login.json").read_text())
    assert record["oauth_state"] is None and record["auth_url"] is None
    assert stat.S_IMODE((runner_settings.state_dir / "login.json").stat().st_mode) == 0o600

    again = runner.complete(callback)  # the same address a second time: the first result
    assert (again.status, again.id, again.saved) == ("succeeded", done.id, done.saved)
    assert issuer.calls["grant:authorization_code"] == 1


def test_an_attempt_the_state_file_no_longer_names_is_ended_by_the_next_start(
    runner_settings: Settings, issuer: FakeIssuer
) -> None:
    """login.json damaged (or naming a driver no longer registered) while a program runs: the
    next start ends that program, its session, log and working directory, then signs in."""
    runner = Runner(runner_settings)
    lost, _ = runner.start()
    wait_until(lambda: not port_is_free(runner_settings.callback_ports[0]), what="listener")
    record = runner_settings.state_dir / "login.json"
    record.write_text(record.read_text().replace('"driver": "native"', '"driver": "retired"'))
    fresh, reused = runner.start()
    assert not reused and fresh.id != lost.id
    assert runner.tmux.sessions() == [fresh.tmux_session]
    assert sorted(os.listdir(runner_settings.state_dir / "work")) == [fresh.id]
    assert sorted(os.listdir(runner_settings.state_dir / "logs")) == [f"{fresh.id}.log"]
    assert fresh.auth_url and runner.complete(issuer.sign_in(fresh.auth_url)).status == "succeeded"
    assert leftovers(runner, runner_settings) == CLEAN


def test_bad_pastes_leave_the_attempt_live(runner_settings: Settings, issuer: FakeIssuer) -> None:
    runner = Runner(runner_settings)
    state, _ = runner.start()
    assert state.auth_url
    port = state.redirect_port
    bad = [
        state.auth_url,
        f"http://localhost:{port}/auth/callback?code=abc&state=old",
        f"http://localhost:{port}/success",
        f"http://localhost:{port}/auth/callback?error=access_denied&state={state.oauth_state}",
        "hello",
    ]
    for paste in bad:
        with pytest.raises(SkillError):
            runner.complete(paste)
        current = runner.status()
        assert current is not None and current.status == "waiting"
    assert runner.complete(issuer.sign_in(state.auth_url)).status == "succeeded"


def test_a_spent_code_is_rejected_by_the_program_and_the_attempt_goes_on(
    runner_settings: Settings, issuer: FakeIssuer
) -> None:
    runner = Runner(runner_settings)
    state, _ = runner.start()
    assert state.auth_url
    wait_until(lambda: not port_is_free(state.redirect_port or 0), what="listener")
    callback = issuer.sign_in(state.auth_url)
    issuer.codes[parse_qs(urlsplit(callback).query)["code"][0]].used = True
    with pytest.raises(SkillError, match="rejected the code") as caught:
        runner.complete(callback)
    assert caught.value.code == "code_rejected"  # the program's own code, not "bad paste"
    assert runner.status().status == "waiting"  # type: ignore[union-attr]
    assert runner.complete(issuer.sign_in(state.auth_url)).status == "succeeded"


def test_no_login_and_ended_login(runner_settings: Settings) -> None:
    runner = Runner(runner_settings)
    with pytest.raises(SkillError) as caught:
        runner.complete("http://localhost:1455/auth/callback?code=a&state=b")
    assert caught.value.code == "no_login"
    runner.start()
    runner.cancel()
    with pytest.raises(SkillError) as caught:
        runner.complete("http://localhost:1455/auth/callback?code=a&state=b")
    assert caught.value.code == "login_ended" and "canceled" in caught.value.message


def test_second_start_returns_the_live_one_and_restart_replaces_it(
    runner_settings: Settings,
) -> None:
    runner = Runner(runner_settings)
    first, _ = runner.start()
    same, reused = runner.start()
    assert reused and same.id == first.id and same.auth_url == first.auth_url
    fresh, reused = runner.start(restart=True)
    assert not reused and fresh.id != first.id
    assert runner.tmux.sessions() == [fresh.tmux_session]
    runner.cancel()


def test_fifty_start_cancel_cycles_leave_nothing(runner_settings: Settings) -> None:
    runner = Runner(runner_settings)
    pids: set[int] = set()
    for _ in range(50):
        state, _ = runner.start()
        pids |= descendants(state.pane_pid) if state.pane_pid else set()
        runner.cancel()
    assert leftovers(runner, runner_settings) == CLEAN
    wait_until(lambda: not [p for p in pids if Path(f"/proc/{p}").exists()], what="processes gone")


def test_a_dead_program_gives_a_clear_error(runner_settings: Settings, issuer: FakeIssuer) -> None:
    runner = Runner(runner_settings)
    state, _ = runner.start()
    assert state.auth_url and state.pane_pid
    wait_until(lambda: not port_is_free(state.redirect_port or 0), what="listener")
    program = max(descendants(state.pane_pid))
    kill(program)
    with pytest.raises(SkillError) as caught:
        runner.complete(issuer.sign_in(state.auth_url))
    assert caught.value.code in {"program_failed", "login_ended"}
    assert "start" in caught.value.message
    final = runner.status()
    assert final is not None and final.status == "failed"
    assert leftovers(runner, runner_settings) == CLEAN


def test_an_expired_attempt_is_reported_and_cleaned(runner_settings: Settings) -> None:
    quick = runner_settings.model_copy(update={"login_timeout": 0.5})
    runner = Runner(quick)
    runner.start()
    time.sleep(0.6)
    state = runner.status()
    assert state is not None and state.status == "expired"
    assert leftovers(runner, quick) == CLEAN


def test_a_foreign_listener_never_receives_the_code(
    runner_settings: Settings, issuer: FakeIssuer
) -> None:
    """Both callback ports are held by another program: the address is typed into our
    program's terminal instead, and the foreign listener gets nothing."""
    seen: list[str] = []

    class Spy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    spies = [
        http.server.ThreadingHTTPServer(("127.0.0.1", p), Spy)
        for p in runner_settings.callback_ports
    ]
    for spy in spies:
        threading.Thread(target=spy.serve_forever, daemon=True).start()
    try:
        runner = Runner(runner_settings)
        state, _ = runner.start()
        assert state.auth_url
        wait_until(
            lambda: "paste only" in runner.tmux.screen(state.tmux_session), what="paste-only mode"
        )
        done = runner.complete(issuer.sign_in(state.auth_url))
        assert done.status == "succeeded"
    finally:
        for spy in spies:
            spy.shutdown()
            spy.server_close()
    assert seen == []


def test_the_log_keeps_the_last_lines_and_is_removed_at_the_end(
    runner_settings: Settings, issuer: FakeIssuer
) -> None:
    runner = Runner(runner_settings)
    state, _ = runner.start()
    log_file = runner_settings.state_dir / "logs" / f"{state.id}.log"
    wait_until(lambda: b"Waiting (listening" in log_file.read_bytes(), what="log lines")
    assert state.auth_url
    runner.complete(issuer.sign_in(state.auth_url))
    assert not log_file.exists()


@pytest.mark.parametrize("listener", [True, False], ids=["listener", "paste-only"])
def test_a_complete_at_once_never_echoes_the_address(
    runner_settings: Settings, issuer: FakeIssuer, listener: bool
) -> None:
    """``start`` returns before our program runs. A ``complete`` right away must wait for its
    listener, or (ports taken: paste only) for its ready line, which comes once echo is off; a
    paste typed earlier was echoed into the scrollback and the pane log."""
    holders = []
    for port in () if listener else runner_settings.callback_ports:
        holder = socket.socket()
        holder.bind(("127.0.0.1", port))
        holder.listen()
        holders.append(holder)
    runner = Runner(runner_settings)
    seen: list[str] = []
    stop = threading.Event()
    try:
        state, _ = runner.start()
        assert state.auth_url
        log_file = runner_settings.state_dir / "logs" / f"{state.id}.log"

        def watch() -> None:  # what the terminal shows and logs while the paste goes in
            while not stop.wait(0.002):
                with contextlib.suppress(OSError):
                    seen.append(log_file.read_text(errors="replace"))
                with contextlib.suppress(Exception):  # the session ends with the sign-in
                    seen.append(runner.tmux.screen(state.tmux_session))

        watcher = threading.Thread(target=watch)
        watcher.start()
        callback = issuer.sign_in(state.auth_url)
        done = runner.complete(callback)
    finally:
        stop.set()
        for holder in holders:
            holder.close()
    watcher.join()
    assert done.status == "succeeded"
    code = parse_qs(urlsplit(callback).query)["code"][0]
    assert any("Open this link" in text for text in seen)  # the watch did see the terminal
    outside_link = [text.replace(state.auth_url, "<link>") for text in seen]
    assert not [text for text in outside_link if code in text or state.oauth_state in text]


def test_tmux_server_has_a_clean_environment(runner_settings: Settings) -> None:
    os.environ["CHATGPT_LOGIN_TEST_CANARY"] = "canary-secret-env"
    try:
        runner = Runner(runner_settings)
        state, _ = runner.start()
        assert state.pane_pid
        environ = Path(f"/proc/{max(descendants(state.pane_pid))}/environ").read_bytes()
        assert b"canary-secret-env" not in environ
        assert b"HTTPS_PROXY=" in environ, "the proxy reaches the program (not through argv)"
        # One variable asked for by name: the whole listing would print the proxy's password.
        shown = runner.tmux._run("show-environment", "-g", "CHATGPT_LOGIN_TEST_CANARY", check=False)
        assert "canary-secret-env" not in shown.stdout + shown.stderr
        runner.cancel()
    finally:
        del os.environ["CHATGPT_LOGIN_TEST_CANARY"]


def test_device_method(runner_settings: Settings, issuer: FakeIssuer) -> None:
    runner = Runner(runner_settings)
    state, _ = runner.start(method="device")
    assert state.verification_url and state.verification_url.endswith("/codex/device")
    assert state.user_code
    wait_until(lambda: issuer.calls["/api/accounts/deviceauth/token"] >= 1, what="first poll")
    issuer.approve_device(state.user_code)
    done = runner.wait(timeout=20)
    assert done.status == "succeeded"
    assert runner_settings.pi_auth_file.exists()
    assert leftovers(runner, runner_settings) == CLEAN


def test_an_approved_device_code_ends_without_anyone_waiting(
    runner_settings: Settings, issuer: FakeIssuer
) -> None:
    """Approved while no `wait` runs: the program saves the credential and exits, and the next
    look (`status`, as the API's GET and the service's keep-alive make) says succeeded."""
    runner = Runner(runner_settings)
    state, _ = runner.start(method="device")
    assert state.user_code
    issuer.approve_device(state.user_code)
    wait_until(lambda: not runner.tmux.status(state.tmux_session).alive, 20, "the program's exit")
    assert AttemptFile(runner_settings.state_dir).load().status == "waiting"  # type: ignore[union-attr]
    done = runner.status()
    assert done is not None and (done.status, done.saved) == (
        "succeeded",
        [str(runner_settings.pi_auth_file)],
    )
    assert runner.wait(timeout=1).status == "succeeded"  # a late wait finds it done
    assert leftovers(runner, runner_settings) == CLEAN


def test_device_wait_that_runs_out_says_not_approved_yet(
    runner_settings: Settings, issuer: FakeIssuer
) -> None:
    """`wait` outlasting the user is not a failure: the code stays valid for the device
    timeout (not the browser attempt's), the attempt stays live, and a later wait finishes."""
    runner = Runner(runner_settings)
    state, _ = runner.start(method="device")
    lifetime = (state.expires_at - state.started_at).total_seconds()
    assert lifetime == pytest.approx(runner_settings.device_timeout, abs=1)
    with pytest.raises(SkillError) as caught:
        runner.wait(timeout=0.6)
    assert caught.value.code == "approval_pending"
    assert f"{state.expires_at:%H:%M}" in caught.value.message
    assert runner.status().live
    assert state.user_code
    issuer.approve_device(state.user_code)
    assert runner.wait(timeout=20).status == "succeeded"


@pytest.mark.parametrize(
    "payload",
    [
        "; run-shell 'touch {marker}'",
        "a\nb",
        "-N 5",
        "\x1b[31m\x1b]0;title\x07",
        "C-c",
        "foo; kill-server",
        "$(touch {marker})",
    ],
)
def test_typed_text_never_runs_anything(state_dir: Path, tmp_path: Path, payload: str) -> None:
    """Text typed into a pane is only text: no tmux command, key name or shell expansion."""
    marker = tmp_path / "ran"
    text = payload.format(marker=marker)
    tmux = TmuxServer(state_dir / "tmux.sock", base_env={"PATH": os.environ["PATH"]})
    (state_dir / "logs").mkdir()
    received = tmp_path / "received"
    tmux.start(
        "inject", ["sh", "-c", f"stty -echo; head -c {len(text.encode()) + 1} > {received}"],
        env={"PATH": os.environ["PATH"]}, cwd=tmp_path, log_file=state_dir / "logs" / "x.log",
    )  # fmt: skip
    tmux.type_line("inject", text)
    wait_until(lambda: received.exists() and received.stat().st_size > 0, what="typed text")
    wait_until(lambda: not tmux.status("inject").alive, what="reader done")
    assert tmux.sessions() == ["inject"]  # no kill-server ran
    assert not marker.exists()
    # The terminal turns CR into LF; otherwise every byte arrives exactly as given.
    assert received.read_bytes() == (text + "\n").replace("\r", "\n").encode()


def test_an_echoing_prompt_gets_no_log_and_a_wiped_screen(state_dir: Path, tmp_path: Path) -> None:
    """pi-ai's paste prompt echoes what is typed: the runner stops the pane log before typing
    and wipes screen and scrollback when the attempt goes on."""
    tmux = TmuxServer(state_dir / "tmux.sock", base_env={"PATH": os.environ["PATH"]})
    log_file = state_dir / "logs" / "echo.log"
    log_file.parent.mkdir()
    tmux.start("echo", ["sh", "-c", "echo before-typing; cat"], env={"PATH": os.environ["PATH"]},
               cwd=tmp_path, log_file=log_file)  # fmt: skip
    wait_until(lambda: b"before-typing" in log_file.read_bytes(), what="the log")
    tmux.stop_log("echo")
    tmux.type_line("echo", "typed-secret")
    wait_until(lambda: tmux.screen("echo").count("typed-secret") == 2, what="echo and cat")
    time.sleep(0.2)  # what a still-open pipe would have copied by now
    assert b"typed-secret" not in log_file.read_bytes()
    tmux.wipe("echo")
    wait_until(lambda: "before-typing" not in tmux.screen("echo"), what="the wipe")
    assert "typed-secret" not in tmux.screen("echo")
    tmux.kill("echo")


def test_listener_ownership_is_read_from_proc(ports: tuple[int, int]) -> None:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", ports[0]), http.server.BaseHTTPRequestHandler
    )
    try:
        assert listener_pids(ports[0], {os.getpid()}) == {os.getpid()}
        assert listener_pids(ports[0], {1}) == set()
        assert listener_pids(ports[1], {os.getpid()}) == set()
    finally:
        server.server_close()


def test_a_restart_during_a_sign_in_leaves_a_clear_status(runner_settings: Settings) -> None:
    """The container (and with it the tmux server) went away mid-sign-in: the next look at the
    attempt says so, and nothing is left listening or running."""
    runner = Runner(runner_settings)
    state, _ = runner.start()
    assert state.pane_pid
    pids = descendants(state.pane_pid)
    runner.tmux._run("kill-server", check=False)
    wait_until(lambda: not [p for p in pids if Path(f"/proc/{p}").exists()], what="all gone")
    after = Runner(runner_settings).status()
    assert after is not None and after.status == "failed"
    assert after.message and "restarted" in after.message and "chatgpt-login start" in after.message
    assert leftovers(runner, runner_settings) == CLEAN


def test_a_state_file_written_before_oauth_state_was_named_so_still_loads(tmp_path: Path) -> None:
    """A sign-in live across an upgrade: its OAuth state and tmux session were stored as
    `state` and `session`; they are read under their new names and written back so."""
    store = AttemptFile(tmp_path)
    old = {"id": "a1b2c3d4", "driver": "native", "method": "browser", "status": "waiting",
           "session": "login-a1b2c3d4", "started_at": "2026-11-29T10:00:00Z",
           "expires_at": "2026-11-29T10:15:00Z", "state": "s" * 43,
           "redirect_port": 1455}  # fmt: skip
    (tmp_path / "login.json").write_text(json.dumps(old))
    loaded = store.load()
    assert loaded is not None and loaded.oauth_state == "s" * 43
    store.save(loaded)
    written = json.loads((tmp_path / "login.json").read_text())
    assert (written["oauth_state"], written["tmux_session"]) == ("s" * 43, "login-a1b2c3d4")


def test_wait_on_a_browser_sign_in_does_not_hold_the_agent_for_the_whole_attempt(
    runner_settings: Settings, issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Those end with a paste: `wait` gives them BROWSER_WAIT (30 s), not the attempt's 10
    minutes, unless told otherwise (second new-user review)."""
    import skill.runner  # noqa: PLC0415

    monkeypatch.setattr(skill.runner, "BROWSER_WAIT", 1.0)
    runner = Runner(runner_settings)
    runner.start(method="browser")
    started = time.monotonic()
    with pytest.raises(SkillError) as caught:
        runner.wait()
    assert caught.value.code == "approval_pending" and time.monotonic() - started < 10
    assert runner.status().live  # type: ignore[union-attr]
    runner.cancel()
