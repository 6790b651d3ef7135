"""The docs cannot drift: README's commands, options and exit codes are checked against the CLI."""

from __future__ import annotations

import re
import typing

from service.cli import build_parser
from skill.errors import CODES, MEANINGS, ExitCode, Next
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def subcommands() -> dict[str, object]:
    parser = build_parser()
    for action in parser._actions:  # argparse offers no public way to list subparsers
        if action.dest == "command":
            choices = action.choices
            assert isinstance(choices, dict)
            return dict(choices)
    raise AssertionError("no subcommands")


def test_quick_start_is_exactly_two_commands_that_exist() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["scripts/run", "scripts/test"]
    for command in commands:
        assert (REPO / command).stat().st_mode & 0o111
    assert (REPO / ".ci" / "run").read_text().strip().endswith("exec scripts/test")


def test_every_command_in_the_readme_exists_with_its_options() -> None:
    known = subcommands()
    for name, rest in re.findall(r"chatgpt-login ([a-z][a-z-]+)([^\n`]*)", README):
        assert name in known, name
        help_text = known[name].format_help()  # type: ignore[attr-defined]
        for option in re.findall(r"--[a-z-]+", rest):
            assert option in help_text, (name, option)


def test_every_command_has_help_with_an_example() -> None:
    for name, sub in subcommands().items():
        assert "example:" in sub.format_help(), name  # type: ignore[attr-defined]
        assert f"chatgpt-login {name}" in sub.format_help()  # type: ignore[attr-defined]


def test_exit_code_table_matches_the_code() -> None:
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|$", README, re.MULTILINE))
    values = {v for k, v in vars(ExitCode).items() if k.isupper()} - {ExitCode.CANCELED}
    assert {int(k) for k in table} == values
    assert "128+N" in README
    assert {spec.exit_code for spec in CODES.values()} <= values | {ExitCode.CANCELED}
    assert {int(k): v.strip() for k, v in table.items()} == MEANINGS  # --help says the same


def test_every_error_message_says_what_to_do() -> None:
    verbs = (
        "sign in",
        "try",
        "open",
        "ask",
        "start",
        "paste",
        "check",
        "wait",
        "retry",
        "log out",
        "report",
        "stop",
        "enable",
        "upgrade",
        "fix",
    )
    for code, spec in CODES.items():
        assert any(verb in spec.message.lower() for verb in verbs), code


def test_unofficial_notice() -> None:
    assert "Unofficial" in README and "app_EMoamEEZ73f0CkXaXp7hrann" in README


SKILL = (REPO / "SKILL.md").read_text()


def test_skill_md_front_matter() -> None:
    front = SKILL.split("---")[1]
    assert re.search(r"^name: chatgpt-login$", front, re.MULTILINE)
    description = re.search(r"^description: (.+)$", front, re.MULTILINE)
    assert description and "Use when" in description.group(1)


def test_skill_md_commands_exist() -> None:
    known = subcommands()
    mentioned = re.findall(r"chatgpt-login ([a-z][a-z-]+)((?: --?[a-z-]+(?: [a-z-]+)?)*)", SKILL)
    assert {name for name, _ in mentioned} >= {
        "start",
        "complete",
        "wait",
        "status",
        "cancel",
        "logout",
    }
    for name, rest in mentioned:
        assert name in known, name
        help_text = known[name].format_help()  # type: ignore[attr-defined]
        for option in re.findall(r"--[a-z-]+", rest):
            assert option in help_text, (name, option)


def test_skill_md_walks_every_error_code_to_a_step() -> None:
    """Every code the commands can return has a row in SKILL.md with the ``next`` the code
    carries in its JSON error, and every such ``next`` has a row saying what the agent does."""
    rows = re.findall(r"^\| `([a-z_]+)` \| `([a-z_]+)` \| (.+?) \|$", SKILL, re.MULTILINE)
    table = {code: step for code, step, _ in rows}
    assert set(table) == set(CODES), set(table) ^ set(CODES)
    steps = dict(re.findall(r"^\| `([a-z_]+)` \| ([^`|][^|]+) \|$", SKILL, re.MULTILINE))
    steps.pop("next", None)  # the table's heading
    for code, spec in CODES.items():
        assert table[code] == spec.next, (code, table[code], spec.next)
        assert spec.next in steps, (code, spec.next)
        assert len(steps[spec.next]) > 20, spec.next
    assert set(steps) == set(typing.get_args(Next))


def test_skill_md_exit_codes_match() -> None:
    """Each "- exit N ..." item of SKILL.md names a code `complete` can exit with, and every
    error code it names there exits with that N."""
    items = re.findall(r"^- exit (\d+)(.*(?:\n  .*)*)", SKILL, re.MULTILINE)
    assert items
    for number, text in items:
        assert int(number) in {ExitCode.OK, ExitCode.PERSIST_PENDING, ExitCode.USAGE,
                               ExitCode.TRANSIENT}  # fmt: skip
        for error in re.findall(r"`([a-z_]+)`", text):
            if error in CODES:
                assert CODES[error].exit_code == int(number), (error, number)


def test_the_readme_names_every_login_program() -> None:
    """A driver registered without a word in the README's `start` row is a driver nobody finds."""
    from skill.drivers import DRIVERS  # noqa: PLC0415

    row = re.search(r"`chatgpt-login start .*?--driver ((?:[a-z-]+\\\|)*[a-z-]+)\]", README)
    assert row is not None
    assert sorted(row.group(1).split("\\|")) == sorted(DRIVERS)


def test_every_protocol_citation_names_a_section_of_the_protocol_document() -> None:
    """The code cites "PROTOCOL.md §N" for what it follows; each N must be a section there."""
    sections = set(re.findall(r"^## (\d+)\. ", (REPO / "skill" / "PROTOCOL.md").read_text(), re.M))
    cited: dict[str, set[str]] = {}
    sources = [*REPO.glob("skill/*.py"), *REPO.glob("service/**/*.py"), *REPO.glob("tests/*.py"),
               REPO / "README.md", REPO / "SKILL.md"]  # fmt: skip
    for path in sources:
        for first, last in re.findall(r"PROTOCOL\.md §(\d+)(?:-(\d+))?", path.read_text()):
            for n in range(int(first), int(last or first) + 1):
                cited.setdefault(str(n), set()).add(path.name)
    assert cited, "no citations found: the pattern no longer matches how the code cites"
    assert not {n: files for n, files in cited.items() if n not in sections}
