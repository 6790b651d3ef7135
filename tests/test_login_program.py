"""The login program as a real process against the fake issuer: paste, loopback and device
paths, every kind of bad paste, timeouts and signals, and nothing left listening afterwards."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import port_is_free, wait_until
from tests.fake_issuer import FakeIssuer
from tests.process import Program


def start(env: dict[str, str], *args: str) -> Program:
    return Program(["oauth-login", *args], env)


def callback_get(url: str) -> tuple[int, str]:
    """What the skill runner does: request the callback on loopback."""
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def pi_entry(tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "pi" / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    entry = json.loads(path.read_text())["openai-codex"]
    assert isinstance(entry, dict)
    return entry


def test_paste_path_writes_pi_file(
    login_env: dict[str, str], issuer: FakeIssuer, tmp_path: Path, ports: tuple[int, int]
) -> None:
    program = start(login_env)
    url = program.authorize_url()
    query = parse_qs(urlsplit(url).query)
    assert query["redirect_uri"] == [f"http://localhost:{ports[0]}/auth/callback"]
    program.type(issuer.sign_in(url))
    program.wait_for(r"^Credentials saved to .*pi/auth.json$")
    assert program.finish() == 0
    entry = pi_entry(tmp_path)
    assert entry["type"] == "oauth"
    assert entry["accountId"] == issuer.account.account_id
    assert entry["access"] == issuer.issued_access[-1]
    assert isinstance(entry["expires"], int)
    assert port_is_free(ports[0])
    assert issuer.calls["grant:authorization_code"] == 1


def test_loopback_path_answers_with_the_outcome(
    login_env: dict[str, str], issuer: FakeIssuer, tmp_path: Path, ports: tuple[int, int]
) -> None:
    program = start(login_env)
    callback = issuer.sign_in(program.authorize_url())
    relayed = callback.replace("localhost", "127.0.0.1", 1)
    status, body = callback_get(relayed)
    assert status == 200
    lines = body.strip().splitlines()
    assert lines[0] == "Signed in. You can close this page."
    assert lines[-1] == f"Credentials saved to {tmp_path / 'pi' / 'auth.json'}"
    assert program.finish() == 0
    assert pi_entry(tmp_path)["accountId"] == issuer.account.account_id
    assert port_is_free(ports[0])


def test_writes_codex_file_too_when_asked(
    login_env: dict[str, str], issuer: FakeIssuer, tmp_path: Path
) -> None:
    program = start(login_env, "--write", "pi,codex")
    program.type(issuer.sign_in(program.authorize_url()))
    program.wait_for(r"^Credentials saved to .*codex/auth.json$")
    assert program.finish() == 0
    codex = tmp_path / "codex" / "auth.json"
    assert stat.S_IMODE(codex.stat().st_mode) == 0o600
    document = json.loads(codex.read_text())
    assert document["auth_mode"] == "chatgpt"
    assert document["OPENAI_API_KEY"] is None
    assert document["tokens"]["account_id"] == issuer.account.account_id
    assert document["last_refresh"].endswith("Z")


def test_device_path(login_env: dict[str, str], issuer: FakeIssuer, tmp_path: Path) -> None:
    program = start(login_env, "--method", "device")
    program.wait_for(r"/codex/device$")
    user_code = program.wait_for(r"^([0-9A-F]{4}-[0-9A-F]{6})$").group(1)
    program.wait_for(r"^Waiting for approval")
    # Answered "pending" once (a poll counts under the lock approve_device takes: counting the
    # request as it arrives raced the approval on a loaded machine).
    wait_until(lambda: any(d.polls >= 1 for d in list(issuer.devices.values())), what="a poll")
    issuer.approve_device(user_code)
    program.wait_for(r"^Credentials saved to ", timeout=15)
    assert program.finish() == 0
    assert pi_entry(tmp_path)["accountId"] == issuer.account.account_id
    assert issuer.calls["/api/accounts/deviceauth/token"] >= 2  # pending at least once


def test_device_disabled_says_how_to_enable(login_env: dict[str, str], issuer: FakeIssuer) -> None:
    issuer.device_enabled = False
    program = start(login_env, "--method", "device")
    program.wait_for(r"^Error: Device-code sign-in is not enabled .*Settings > Security")
    assert program.finish() == 3


BAD_PASTES = [
    ("not a url at all", r"not a web address|characters a code never has"),
    ("https://auth.openai.com/oauth/authorize?client_id=x&state=y", r"the sign-in link itself"),
    ("http://localhost:{port}/success?id_token=x", r"page shown after a sign-in finished"),
    ("http://localhost:{port}/auth/callback?code=abc&state=WRONG", r"different sign-in attempt"),
    ("http://localhost:{port}/auth/callback?state={state}", r"has no code"),
    ("http://example.com:{port}/auth/callback?code=a&state={state}", r"not this sign-in's local"),
    ("http://localhost:9/auth/callback?code=a&state={state}", r"older attempt"),
    (
        "http://localhost:{port}/auth/callback?error=access_denied&state={state}",
        r"sign-in was declined",
    ),
    (
        "http://localhost:{port}/auth/callback?error=access_denied"
        "&error_description=missing_codex_entitlement&state={state}",
        r"Codex is not enabled for this ChatGPT workspace",
    ),
]


def test_bad_pastes_are_explained_and_the_attempt_goes_on(
    login_env: dict[str, str], issuer: FakeIssuer, ports: tuple[int, int]
) -> None:
    program = start(login_env)
    url = program.authorize_url()
    state = parse_qs(urlsplit(url).query)["state"][0]
    for paste, why in BAD_PASTES:
        mark = len(program.lines)
        program.type(paste.format(port=ports[0], state=state))
        program.wait_for(r"^Rejected: .*(" + why + ")", start=mark)
        assert program.proc.poll() is None
    program.type(issuer.sign_in(url))
    program.wait_for(r"^Credentials saved to ")
    assert program.finish() == 0
    assert issuer.calls["grant:authorization_code"] == 1  # no bad paste reached the issuer


def test_bad_callback_on_listener_gets_400_and_attempt_goes_on(
    login_env: dict[str, str], issuer: FakeIssuer, ports: tuple[int, int]
) -> None:
    program = start(login_env)
    url = program.authorize_url()
    status, body = callback_get(f"http://127.0.0.1:{ports[0]}/auth/callback?code=x&state=nope")
    assert status == 400 and "different sign-in attempt" in body
    status, _ = callback_get(f"http://127.0.0.1:{ports[0]}/elsewhere")
    assert status == 404
    status, body = callback_get(issuer.sign_in(url).replace("localhost", "127.0.0.1"))
    assert status == 200
    assert program.finish() == 0


def test_spent_code_is_rejected_then_a_fresh_sign_in_works(
    login_env: dict[str, str], issuer: FakeIssuer
) -> None:
    program = start(login_env)
    url = program.authorize_url()
    callback = issuer.sign_in(url)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    issuer.codes[code].used = True  # as if it had been spent already
    program.type(callback)
    program.wait_for(r"^Rejected: The sign-in server rejected the code")
    program.type(issuer.sign_in(url))  # the same link still works
    program.wait_for(r"^Credentials saved to ")
    assert program.finish() == 0


def test_free_plan_is_refused_and_nothing_is_written(
    login_env: dict[str, str], issuer: FakeIssuer, tmp_path: Path
) -> None:
    issuer.account.plan = "free"
    program = start(login_env)
    program.type(issuer.sign_in(program.authorize_url()))
    program.wait_for(r"^Error: .*free plan.*Plus, Pro, Team")
    assert program.finish() == 3
    assert not (tmp_path / "pi" / "auth.json").exists()


def test_port_fallback_names_the_port_it_got(
    login_env: dict[str, str], issuer: FakeIssuer, ports: tuple[int, int]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[0]))
        busy.listen()
        program = start(login_env)
        url = program.authorize_url()
        assert parse_qs(urlsplit(url).query)["redirect_uri"] == [
            f"http://localhost:{ports[1]}/auth/callback"
        ]
        status, _ = callback_get(issuer.sign_in(url).replace("localhost", "127.0.0.1"))
        assert status == 200
        assert program.finish() == 0


def test_no_port_at_all_still_takes_a_paste(
    login_env: dict[str, str], issuer: FakeIssuer, ports: tuple[int, int]
) -> None:
    with socket.socket() as one, socket.socket() as two:
        for sock, port in ((one, ports[0]), (two, ports[1])):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        program = start(login_env)
        url = program.authorize_url()
        program.wait_for(r"no listener: paste only")
        program.type(issuer.sign_in(url))
        assert program.finish() == 0


def test_timeout_ends_cleanly(login_env: dict[str, str], ports: tuple[int, int]) -> None:
    program = start(login_env, "--timeout", "1")
    program.authorize_url()
    program.wait_for(r"; times out in 1 s\)\.\.\.$")  # not "in 0 min"
    program.wait_for(r"^Error: The sign-in attempt timed out", timeout=10)
    assert program.finish() == 6
    assert port_is_free(ports[0])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_end_cleanly(
    login_env: dict[str, str], ports: tuple[int, int], signum: signal.Signals
) -> None:
    program = start(login_env)
    program.authorize_url()
    program.signal(signum)
    program.wait_for(r"^Error: the sign-in was canceled")
    assert program.finish() == 128 + signum
    assert port_is_free(ports[0])


def test_cancel_takes_the_attempts_secret(
    login_env: dict[str, str], ports: tuple[int, int], tmp_path: Path
) -> None:
    """Anyone on the machine can reach 127.0.0.1 (codex sends GET /cancel to whatever holds
    1455): a bare or wrong /cancel is refused and the sign-in goes on; the secret the runner
    made with the attempt ends it."""
    from skill.pkce import Pkce, new_state  # noqa: PLC0415
    from skill.premade import PremadeLink  # noqa: PLC0415

    premade = PremadeLink(Pkce(), new_state(), ports[0])
    premade.save(tmp_path / "premade.json")
    program = start(login_env, "--premade", str(tmp_path / "premade.json"))
    program.authorize_url()
    program.wait_for(r"^Waiting \(listening")
    for bad in ("", "?secret=", "?secret=guess"):
        status, body = callback_get(f"http://127.0.0.1:{ports[0]}/cancel{bad}")
        assert status == 403 and "takes its secret" in body
    assert program.proc.poll() is None, "still signing in"
    status, _ = callback_get(f"http://127.0.0.1:{ports[0]}/cancel?secret={premade.control}")
    assert status == 200
    assert program.finish() == 130
    assert port_is_free(ports[0])


def test_without_a_runner_nobody_cancels_over_http(
    login_env: dict[str, str], ports: tuple[int, int]
) -> None:
    program = start(login_env)
    program.authorize_url()
    program.wait_for(r"^Waiting \(listening")
    status, _ = callback_get(f"http://127.0.0.1:{ports[0]}/cancel")
    assert status == 403 and program.proc.poll() is None
    program.kill()


def test_end_of_input_does_not_end_a_listening_attempt(
    login_env: dict[str, str], issuer: FakeIssuer
) -> None:
    """pi exits 0 without saving at EOF; we keep waiting for the listener instead."""
    program = start(login_env)
    url = program.authorize_url()
    program.close_stdin()
    status, _ = callback_get(issuer.sign_in(url).replace("localhost", "127.0.0.1"))
    assert status == 200
    assert program.finish() == 0


def test_corrupt_pi_file_is_moved_aside_and_reported(
    login_env: dict[str, str], issuer: FakeIssuer, tmp_path: Path
) -> None:
    pi_dir = tmp_path / "pi"
    pi_dir.mkdir()
    (pi_dir / "auth.json").write_text('{"anthropic": {"type": "oauth"')  # cut short
    program = start(login_env)
    program.type(issuer.sign_in(program.authorize_url()))
    program.wait_for(r"^Warning: .*auth.json was not valid JSON; moved it aside to .*corrupt-")
    assert program.finish() == 0
    aside = list(pi_dir.glob("auth.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"anthropic": {"type": "oauth"'
    assert pi_entry(tmp_path)["accountId"] == issuer.account.account_id


def test_no_secret_reaches_output_or_logs(
    login_env: dict[str, str], issuer: FakeIssuer, tmp_path: Path
) -> None:
    program = Program(["-v", "oauth-login"], login_env)
    url = program.authorize_url()
    state = parse_qs(urlsplit(url).query)["state"][0]
    callback = issuer.sign_in(url)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    program.type(callback)
    assert program.finish() == 0
    entry = pi_entry(tmp_path)
    after_url = program.output.split(url, 1)[1]
    for secret in (code, state, str(entry["access"]), str(entry["refresh"])):
        assert secret not in after_url
        assert secret not in program.stderr


def test_connections_that_never_finish_are_bounded(
    login_env: dict[str, str], issuer: FakeIssuer, ports: tuple[int, int]
) -> None:
    """Any local user can connect to the listener: thirty connections that send 60 KB of one
    header line and stop hold at most eight threads (the rest are closed at once), and the
    real callback still gets through."""
    program = start(login_env)
    url = program.authorize_url()
    program.wait_for(r"^Waiting \(listening")
    tasks = Path(f"/proc/{program.proc.pid}/task")
    before = len(list(tasks.iterdir()))
    stalled = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", ports[0]))
        with contextlib.suppress(OSError):  # closed at once when too many are open
            sock.sendall(b"GET /auth/callback HTTP/1.1\r\nX-Pad: " + b"a" * 60000)
        stalled.append(sock)
    time.sleep(0.5)
    assert len(list(tasks.iterdir())) <= before + 8
    for sock in stalled:
        sock.close()
    wait_until(lambda: len(list(tasks.iterdir())) <= before + 1, 15, "threads to end")
    status, _ = callback_get(issuer.sign_in(url).replace("localhost", "127.0.0.1"))
    assert status == 200
    assert program.finish() == 0


# Another local user (uid 65534, Debian's python3): opens connections to the listener, sends a
# byte on each, then says how many the listener closed unread within 2 s.
STRANGER = """
import socket, sys
port, count, over = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
host = "::ffff:127.0.0.1" if over == "v6" else "127.0.0.1"  # v6: an IPv6 socket, mapped address
held = [socket.create_connection((host, port)) for _ in range(count)]
closed = 0
for sock in held:
    sock.settimeout(2)
    try:
        sock.sendall(b"G")
        closed += sock.recv(1) == b""
    except TimeoutError:  # held open: not closed
        pass
    except OSError:  # reset: closed
        closed += 1
print(closed, flush=True)
input()  # held open until the test ends
"""


@pytest.mark.parametrize("over", ["v4", "v6"])
def test_another_users_connections_are_closed_unread(
    login_env: dict[str, str], issuer: FakeIssuer, ports: tuple[int, int], over: str
) -> None:
    """A few connections of another local user, each dripping a byte, held every slot until
    the code expired (attacker's review): now each is closed unread, and the real callback gets
    through while they stay open."""
    import subprocess  # noqa: PLC0415

    program = start(login_env)
    url = program.authorize_url()
    program.wait_for(r"^Waiting \(listening")
    stranger = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
         "-c", STRANGER, str(ports[0]), "12", over],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert stranger.stdout is not None and stranger.stdout.readline().strip() == "12"
        status, _ = callback_get(issuer.sign_in(url).replace("localhost", "127.0.0.1"))
        assert status == 200
        assert program.finish() == 0
    finally:
        stranger.kill()
        stranger.wait()
