"""Every command in hostile environments: a state directory owned by another user or on a
read-only file system, a file where a directory should be and a directory where a file should
be, a full disk, a read-only home, HOME unset. Whatever breaks, a command answers with one line
(or one JSON object with --json) and a documented exit code, never a traceback, and loses no
file that was there.

The machine is played for real, and kept apart from the host: a user namespace in which the
state directory's owner is unmapped (so even root gets "permission denied"), and a mount
namespace for the tiny or read-only file systems (``unshare``, root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from skill.errors import ExitCode
from tests.conftest import PYTHON, REPO

EXIT_CODES = {v for k, v in vars(ExitCode).items() if k.isupper()}

COMMANDS: list[tuple[str, list[str], bool]] = [
    ("start", ["skill.cli", "start", "--json"], True),
    ("complete", ["skill.cli", "complete", "-", "--json"], True),
    ("wait", ["skill.cli", "wait", "--json", "--timeout", "1"], True),
    ("status", ["skill.cli", "status", "--json"], True),
    ("cancel", ["skill.cli", "cancel", "--json"], True),
    ("logout", ["skill.cli", "logout", "--json"], True),
    ("refresh", ["service.cli", "refresh"], False),
    ("restore", ["service.cli", "restore", "--strict"], False),
]

Prepare = Callable[[Path, dict[str, str]], list[str]]  # -> a command prefix (namespaces)


def unowned_state(root: Path, env: dict[str, str]) -> list[str]:
    state = Path(env["CHATGPT_LOGIN_STATE_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, 65534, 65534)
    return ["unshare", "--user", "--map-root-user"]


def unreadable_file_secret(root: Path, env: dict[str, str]) -> list[str]:
    """A compose secret mounted with another owner's 0600 (what make-secrets leaves for uid
    10001, seen from any other user)."""
    secrets = Path(env["CHATGPT_LOGIN_SECRETS_DIR"])
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "operator_token").write_text("an-operator-token-of-32-characters\n")
    (secrets / "operator_token").chmod(0o600)
    os.chown(secrets / "operator_token", 65534, 65534)
    return ["unshare", "--user", "--map-root-user"]


def read_only_state(root: Path, env: dict[str, str]) -> list[str]:
    state = env["CHATGPT_LOGIN_STATE_DIR"]
    return _in_mounts(f"mount -t tmpfs -o ro,size=64k tmpfs {state}")


def full_disk(root: Path, env: dict[str, str]) -> list[str]:
    home, state = env["HOME"], env["CHATGPT_LOGIN_STATE_DIR"]
    fill = "mount -t tmpfs -o size=64k tmpfs {0} && dd if=/dev/zero of={0}/fill bs=4k 2>/dev/null"
    return _in_mounts(fill.format(home) + "; true", fill.format(state) + "; true")


def read_only_home(root: Path, env: dict[str, str]) -> list[str]:
    return _in_mounts(f"mount -t tmpfs -o ro,size=64k tmpfs {env['HOME']}")


def pi_dir_is_a_file(root: Path, env: dict[str, str]) -> list[str]:
    pi = Path(env["PI_CODING_AGENT_DIR"])
    pi.parent.mkdir(parents=True, exist_ok=True)
    pi.write_text("not a directory\n")
    return []


def auth_json_is_a_directory(root: Path, env: dict[str, str]) -> list[str]:
    (Path(env["PI_CODING_AGENT_DIR"]) / "auth.json").mkdir(parents=True)
    return []


def state_files_are_directories(root: Path, env: dict[str, str]) -> list[str]:
    state = Path(env["CHATGPT_LOGIN_STATE_DIR"])
    for name in ("login.json", "service.token", "logout.pending", "login.json.lock"):
        (state / name).mkdir(parents=True)
    return []


def no_home(root: Path, env: dict[str, str]) -> list[str]:
    del env["HOME"]
    return []


def _in_mounts(*mounts: str) -> list[str]:
    script = " && ".join(mounts) + ' && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


ENVIRONMENTS: list[tuple[str, Prepare]] = [
    ("state dir owned by another user", unowned_state),
    ("state dir read-only", read_only_state),
    ("a file secret it may not read", unreadable_file_secret),
    ("disk full", full_disk),
    ("home read-only", read_only_home),
    ("pi dir is a file", pi_dir_is_a_file),
    ("auth.json is a directory", auth_json_is_a_directory),
    ("state files are directories", state_files_are_directories),
    ("HOME unset", no_home),
]


def files_under(*roots: Path) -> dict[Path, bytes | None]:
    """Every file below ``roots`` with its bytes (None for a directory): what must not be lost."""
    found: dict[Path, bytes | None] = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            if path.is_symlink() or path.is_socket():
                continue
            found[path] = None if path.is_dir() else path.read_bytes()
    return found


@pytest.mark.parametrize(("where", "prepare"), ENVIRONMENTS, ids=[e[0] for e in ENVIRONMENTS])
def test_every_command_fails_in_one_line_and_loses_nothing(
    where: str, prepare: Prepare, login_env: dict[str, str], tmp_path: Path
) -> None:
    failures = []
    for name, argv, as_json in COMMANDS:
        root = tmp_path / name
        env = {
            **login_env,
            "HOME": str(root / "home"),
            "PI_CODING_AGENT_DIR": str(root / "home" / ".pi" / "agent"),
            "CHATGPT_LOGIN_STATE_DIR": str(root / "state"),
            "XDG_STATE_HOME": str(root / "state-home"),
            "CHATGPT_LOGIN_SECRETS_DIR": str(root / "no-secrets"),
            "CHATGPT_LOGIN_SERVICE_URL": "http://127.0.0.1:9",
            "CHATGPT_LOGIN_START_TIMEOUT": "5",
            "CHATGPT_LOGIN_RESTORE_LIMIT": "5",
        }
        for directory in ("home", "state"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        keep = root / "home" / "keep.txt"
        keep.write_text("the user's own file\n")
        prefix = prepare(root, env)
        before = files_under(root)
        done = subprocess.run(
            [*prefix, PYTHON, "-m", *argv], env=env, cwd=REPO, input="x\n",
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        subprocess.run(["tmux", "-S", str(root / "state" / "tmux.sock"), "kill-server"],
                       capture_output=True, check=False)  # fmt: skip
        text = done.stdout + done.stderr
        problems = []
        if "Traceback" in text:
            problems.append("a traceback")
        if done.returncode not in EXIT_CODES:
            problems.append(f"exit {done.returncode}")
        if as_json:
            try:
                answer = json.loads(done.stdout)
                assert isinstance(answer, dict) and "ok" in answer
            except (ValueError, AssertionError):
                problems.append("not one JSON object")
        elif done.returncode and len(done.stderr.strip().splitlines()) != 1:
            problems.append("not one line")
        after = files_under(root)
        lost = [str(p) for p, data in before.items() if data is not None and after.get(p) != data
                and p.name not in ("login.json", "service.json")]  # fmt: skip
        if lost:
            problems.append(f"lost {lost}")
        if problems:
            failures.append((name, done.returncode, problems, text[-300:]))
        _unmount_leftovers(root)
    assert not failures, f"{where}: {failures}"


def _unmount_leftovers(root: Path) -> None:
    for path in (root / "state", root / "home", root / "no-secrets" / "operator_token"):
        if path.exists():
            os.chown(path, 0, 0)
    shutil.rmtree(root, ignore_errors=True)


def test_a_sign_in_that_could_not_be_saved_is_refused_before_the_user_signs_in(
    login_env: dict[str, str], tmp_path: Path
) -> None:
    """A read-only pi directory: the login program would end the sign-in after the user's part,
    and the agent was told to start again, forever. Now start says so, and so does doctor."""
    pi = tmp_path / "pi-read-only"
    pi.mkdir()
    env = {**login_env, "PI_CODING_AGENT_DIR": str(pi),
           "CHATGPT_LOGIN_STATE_DIR": str(tmp_path / "state"),
           "CHATGPT_LOGIN_SERVICE_URL": "http://127.0.0.1:9"}  # fmt: skip
    read_only = _in_mounts(f"mount -t tmpfs -o ro,size=64k tmpfs {pi}")
    try:
        started = subprocess.run([*read_only, PYTHON, "-m", "skill.cli", "start", "--json"],
                                 env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                                 check=False)  # fmt: skip
    finally:  # a sign-in started anyway (the defect) must not outlive the test
        subprocess.run(["tmux", "-S", str(tmp_path / "state" / "tmux.sock"), "kill-server"],
                       capture_output=True, check=False)  # fmt: skip
    answer = json.loads(started.stdout)
    assert started.returncode == 7 and answer["error"] == "local_error", started.stdout
    assert f"{pi} is on a read-only file system" in answer["message"]
    assert answer["next"] == "tell_user" and not (tmp_path / "state" / "login.json").exists()
    doctor = subprocess.run([*read_only, PYTHON, "-m", "service.cli", "doctor"], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert doctor.returncode == 1 and "a sign-in could not be saved" in doctor.stdout, doctor.stdout
