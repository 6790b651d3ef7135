"""A fourth login program is local: a new :class:`~skill.drivers.Driver` subclass and its line
in ``DRIVERS``, nothing else. The toy below is a real program in the runner's tmux server: it
prints a sign-in link, waits at a prompt of its own for the address, and leaves a credential in
its working directory, which the runner writes into the configured files."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from skill.credentials import Credential
from skill.drivers import DRIVERS, Driver, Launch, Method
from skill.errors import SkillError
from skill.runner import Runner
from skill.settings import Settings
from skill.tokens import TokenSet
from tests.fake_issuer import FakeIssuer

# The toy program: the link from our own modules, then "Toy paste> " (echo off, so a typed
# address never shows), then the credential it was given once the address carries its state.
TOY = """
import getpass, json, os, shutil, sys
from urllib.parse import parse_qs, urlsplit
from skill.authorize import authorize_url, redirect_uri
from skill.pkce import Pkce, new_state
from skill.settings import Settings

if os.environ.get("TOY_BROKEN"):
    print("Toy error: the toy is broken today.", flush=True)
    sys.exit(3)
settings = Settings(issuer=os.environ["TOY_ISSUER"])
state = new_state()
print(authorize_url(settings, pkce=Pkce(), state=state,
                    redirect=redirect_uri(settings, int(os.environ["TOY_PORT"]))), flush=True)
query = parse_qs(urlsplit(getpass.getpass("Toy paste> ")).query)  # echo off while typed
if query.get("state") != [state] or not query.get("code"):
    print("Toy error: that is not the address of this sign-in", flush=True)
    sys.exit(2)
shutil.copy(os.environ["TOY_CREDENTIAL"], "toy.json")
print("Toy: signed in", flush=True)
"""


class ToyDriver(Driver):
    name = "toy"
    methods: tuple[Method, ...] = ("browser",)
    success = re.compile(r"^Toy: signed in$", re.MULTILINE)
    failure = re.compile(r"^Toy error: (.+)$", re.MULTILINE)
    paste_prompt = re.compile(r"Toy paste> ")
    echoes_paste = False

    def __init__(self, issuer: str, credential: Path, *, broken: bool = False) -> None:
        self.issuer, self.credential, self.broken = issuer, credential, broken

    def _launch(
        self, settings: Settings, method: Method, workdir: Path, env: dict[str, str]
    ) -> Launch:
        return Launch([settings.python_executable, "-c", TOY], {
            **env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            "TOY_ISSUER": self.issuer, "TOY_CREDENTIAL": str(self.credential),
            "TOY_PORT": str(settings.callback_ports[0]),
            **({"TOY_BROKEN": "1"} if self.broken else {})})  # fmt: skip

    def collect(self, workdir: Path) -> Credential | None:
        return Credential.from_codex(self._read_json(workdir / "toy.json"))


@pytest.fixture
def toy(
    runner_settings: Settings, issuer: FakeIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Credential:
    """The toy, registered: the one line a real fourth driver adds to ``DRIVERS``."""
    credential = Credential.from_tokens(TokenSet.model_validate(issuer.seed_refresh_token()))
    given = tmp_path / "toy-credential.json"
    given.write_text(json.dumps(credential.to_codex()))
    monkeypatch.setitem(DRIVERS, "toy", ToyDriver(issuer.url, given))
    return credential


def test_a_fourth_driver_signs_in_through_the_runner(
    runner_settings: Settings, issuer: FakeIssuer, toy: Credential
) -> None:
    runner = Runner(runner_settings)
    attempt, _ = runner.start(driver="toy")
    assert attempt.driver == "toy" and attempt.auth_url
    assert attempt.redirect_port == runner_settings.callback_ports[0]
    done = runner.complete(issuer.sign_in(attempt.auth_url))
    assert done.status == "succeeded" and done.saved == [str(runner_settings.pi_auth_file)]
    written = runner.settings.pi_auth_file
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert json.loads(written.read_text())["openai-codex"]["refresh"] == toy.refresh_token
    assert runner.tmux.sessions() == []  # its session, processes and working directory went


def test_its_own_failure_line_is_what_the_user_is_told(
    runner_settings: Settings, toy: Credential, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = ToyDriver(DRIVERS["toy"].issuer, DRIVERS["toy"].credential, broken=True)  # type: ignore[attr-defined]
    monkeypatch.setitem(DRIVERS, "toy", broken)
    runner = Runner(runner_settings)
    with pytest.raises(SkillError) as failed:
        runner.start(driver="toy")
    assert failed.value.code == "program_failed"
    assert "The toy login program failed: the toy is broken today." in failed.value.message
    assert runner.tmux.sessions() == []


def test_the_settings_a_real_client_does_not_follow_are_named(tmp_path: Path) -> None:
    """pi-ai and codex sign in at auth.openai.com on port 1455 whatever ours say: `start`
    says so when they are set (the new-user review found the pi-ai driver silent about it)."""
    from skill.settings import Settings  # noqa: PLC0415

    ours = Settings(state_dir=tmp_path, issuer="http://127.0.0.1:9", callback_ports=(23455,))
    both = ["CHATGPT_LOGIN_ISSUER", "CHATGPT_LOGIN_CALLBACK_PORTS"]
    assert DRIVERS["pi-ai"].ignored_settings(ours) == both
    assert DRIVERS["codex"].ignored_settings(ours) == both
    assert DRIVERS["native"].ignored_settings(ours) == []
    assert DRIVERS["pi-ai"].ignored_settings(Settings(state_dir=tmp_path)) == []
