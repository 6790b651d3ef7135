"""``chatgpt-login secrets-server``, the reference secrets API, as a real gunicorn process; the
``http`` secrets store is used against it unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import ServiceError
from service.secrets import HttpSecretsStore
from service.secrets_server import merge_patch, parse_tokens
from tests.conftest import PYTHON, free_port, wait_until
from tests.loopback import status_of

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef01"


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.db = tmp_path / "db" / "secrets.db"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "CHATGPT_LOGIN_SECRETS_DIR": str(tmp_path / "no-secrets"),
            "CHATGPT_LOGIN_SECRETS_SERVER_DB": str(self.db),
            "CHATGPT_LOGIN_SECRETS_SERVER_TOKENS": f"# two agents\nalice:{ALICE}\nbob: {BOB}\n",
        }
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "service.cli", "secrets-server", "--bind", f"127.0.0.1:{self.port}"],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait_until(lambda: self.status("GET", "/healthz") == 200, 20, "secrets server up")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/agent/secrets"

    def status(self, method: str, path: str, body: bytes | None = None, **headers: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers
        )
        return status_of(request)

    def store(self, token: str) -> HttpSecretsStore:
        return HttpSecretsStore(url=self.url, token=token, timeout=5, attempts=2, deadline=5)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        output, _ = self.proc.communicate(timeout=20)
        return output


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    yield running
    if running.proc.poll() is None:
        running.stop()


def document(store: HttpSecretsStore) -> dict[str, object]:
    found = store.read()
    assert found is not None
    return found.document


def test_store_round_trip_per_agent(server: Server) -> None:
    alice, bob = server.store(ALICE), server.store(BOB)
    assert document(alice) == {}
    entry = {"type": "oauth", "access": "a", "refresh": "r", "expires": 1, "accountId": "x"}
    alice.write({"codex_credentials": entry})
    assert document(alice) == {"codex_credentials": entry}
    assert document(bob) == {}, "each agent has its own document"
    alice.write({"codex_credentials": None})
    assert document(alice) == {}


def test_versions_make_polls_cheap_and_writes_exact(server: Server) -> None:
    """ETag on every answer; 304 for an unchanged document; 412 (a conflict) for a write
    against a version that is no longer current, which then changes nothing."""
    alice = server.store(ALICE)
    first = alice.read()
    assert first is not None and first.etag == '"0"'
    assert alice.read(if_none_match=first.etag) is None  # unchanged: 304, no body
    tag = alice.write({"k": 1}, if_match=first.etag)
    assert tag == '"1"'
    with pytest.raises(ServiceError) as caught:
        alice.write({"k": 2}, if_match=first.etag)  # a lost race
    assert caught.value.code == "store_conflict"
    assert document(alice) == {"k": 1}
    again = alice.read(if_none_match=first.etag)
    assert again is not None and again.etag == '"1"' and again.document == {"k": 1}
    assert alice.write({"k": 3}, if_match='W/"1"') == '"2"'  # a weak tag of ours compares
    for odd in ('"\u00b2"', '"-1"', '"1e3"', '"99"'):  # digits int() refuses, and the like
        with pytest.raises(ServiceError) as caught:
            alice.write({"k": 4}, if_match=odd)
        assert caught.value.code == "store_conflict"  # a 412, never a 500
        assert alice.read(if_none_match=odd) is not None
    assert alice.compare_and_set() is True
    assert document(alice) == {"k": 3}, "the compare-and-set probe changes nothing"
    plain = HttpSecretsStore(url=server.url, token=ALICE, cas="off")
    assert plain.compare_and_set() is False  # told: no If-Match is sent


def test_merge_patch_keeps_other_keys(server: Server) -> None:
    headers = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}
    for patch in ({"a": 1, "b": {"x": 1, "y": 2}}, {"b": {"y": None, "z": 3}, "c": [1]}):
        assert (
            server.status("PATCH", "/api/agent/secrets", json.dumps(patch).encode(), **headers)
            == 200
        )
    request = urllib.request.Request(server.url, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.load(answer) == {"a": 1, "b": {"x": 1, "z": 3}, "c": [1]}
        assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({}, b"{}", 401),
        ({"Authorization": "Bearer wrong-token-0123456789"}, b"{}", 401),
        ({"Authorization": f"Basic {ALICE}"}, b"{}", 401),
        ({"Authorization": f"Bearer {ALICE}", "Content-Type": "text/plain"}, b"{}", 415),
        ({"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}, b"[1]", 400),
        ({"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}, b"{", 400),
        ({"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"},
         b'{"a":' * 20000 + b"1" + b"}" * 20000, 400),  # nested past any parser's recursion
        ({"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"},
         b'{"k": "' + b"x" * 300_000 + b'"}', 413),
    ],
)  # fmt: skip
def test_bad_requests_are_refused(
    server: Server, headers: dict[str, str], body: bytes, expected: int
) -> None:
    assert server.status("PATCH", "/api/agent/secrets", body, **headers) == expected
    assert document(server.store(ALICE)) == {}, "a refused request changes nothing"


def test_wrong_token_is_a_clear_store_error(server: Server) -> None:
    with pytest.raises(ServiceError) as caught:
        server.store("not-a-known-token-at-all").read()
    assert caught.value.code == "secrets_forbidden"


def test_concurrent_patches_lose_nothing(server: Server) -> None:
    """40 writers on 2 workers with 4 threads, each its own key: every key is there afterwards."""
    headers = {"Authorization": f"Bearer {BOB}", "Content-Type": "application/json"}
    results: list[int] = []

    def write(n: int) -> None:
        body = json.dumps({f"key{n}": n}).encode()
        results.append(server.status("PATCH", "/api/agent/secrets", body, **headers))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 40
    request = urllib.request.Request(server.url, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.load(answer) == {f"key{n}": n for n in range(40)}


def test_files_are_private_and_logs_hold_no_secret(server: Server) -> None:
    server.store(ALICE).write({"codex_credentials": {"refresh": "refresh-canary-5f2a"}})
    assert server.db.stat().st_mode & 0o777 == 0o600
    assert server.db.parent.stat().st_mode & 0o777 == 0o700
    for extra in server.db.parent.iterdir():
        assert extra.stat().st_mode & 0o077 == 0, f"{extra.name} is readable by others"
    output = server.stop()
    assert "PATCH" in output, "the access log is on"
    for secret in (ALICE, BOB, "refresh-canary-5f2a"):
        assert secret not in output


def test_without_tokens_it_refuses_to_start(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "CHATGPT_LOGIN_SECRETS_DIR": str(tmp_path / "none")}  # fmt: skip
    done = subprocess.run([PYTHON, "-m", "service.cli", "secrets-server"], env=env, check=False,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert "no token is configured" in done.stderr


def test_token_file_format() -> None:
    assert parse_tokens("a:0123456789abcdef\n\n# c\n b : 0123456789abcdef9 ") == {
        "a": b"0123456789abcdef",
        "b": b"0123456789abcdef9",
    }
    for bad in ("just-a-token-without-agent", "a:short", ":0123456789abcdef"):
        with pytest.raises(ValueError, match="line 1"):
            parse_tokens(bad)


def test_merge_patch_is_rfc_7396() -> None:
    # The RFC's appendix A examples (a selection).
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_a_document_never_grows_past_what_a_client_reads(server: Server) -> None:
    """Each PATCH fits, but together they would make a document no client could read back (or
    clean up): the one that would is refused, and a PATCH that removes keys still works."""
    headers = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}

    def patch(body: dict[str, object]) -> int:
        return server.status("PATCH", "/api/agent/secrets", json.dumps(body).encode(), **headers)

    assert patch({"junk1": "x" * 200_000}) == 200
    assert patch({"junk2": "x" * 200_000}) == 413
    assert set(document(server.store(ALICE))) == {"junk1"}
    assert patch({"junk1": None, "codex_credentials": {"generation": 1}}) == 200
    assert document(server.store(ALICE)) == {"codex_credentials": {"generation": 1}}
