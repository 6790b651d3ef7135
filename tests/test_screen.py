"""Finding the sign-in link and the device code on a real tmux screen: 80 columns, colours."""

from __future__ import annotations

import os
from pathlib import Path

from skill.screen import find_authorize_link, find_device_code, parse_authorize_link
from skill.tmux import TmuxServer
from tests.conftest import wait_until

LINK = (
    "https://auth.openai.com/oauth/authorize?response_type=code&client_id=app_EMoamEEZ73f0CkXaXp7hrann"
    "&redirect_uri=http%3A%2F%2F127.0.0.1%3A1457%2Fauth%2Fcallback&code_challenge="
    + "c" * 43
    + "&code_challenge_method=S256&state="
    + "s" * 43
    + "&scope=openid+profile+email+offline_access"
)


def test_link_wrapped_in_an_80_column_pane_with_colours(state_dir: Path, tmp_path: Path) -> None:
    tmux = TmuxServer(state_dir / "tmux.sock", base_env={"PATH": os.environ["PATH"]})
    (state_dir / "logs").mkdir()
    script = tmp_path / "show.sh"
    script.write_text(
        "printf '\\033[1;32mStarting local login server\\033[0m\\n'\n"
        f"printf '\\033[4;36m%s\\033[0m\\n' '{LINK}'\n"
        "printf '\\033[33mTo sign in, open \\033[1mhttps://auth.openai.com/codex/device\\033[0m\\n'\n"
        "printf 'and enter this one-time code \\033[1;35m\\n  ABCD-EF123\\033[0m\\n'\n"
        "sleep 30\n"
    )
    tmux.start("colours", ["sh", str(script)], env={"PATH": os.environ["PATH"]}, cwd=tmp_path,
               log_file=state_dir / "logs" / "c.log", width=80)  # fmt: skip
    wait_until(lambda: "ABCD-EF123" in tmux.screen("colours"), what="output on screen")
    screen = tmux.screen("colours")
    assert "\x1b" not in screen
    link = find_authorize_link(screen)
    assert link is not None and link.url == LINK
    assert (link.state, link.redirect_port) == ("s" * 43, 1457)
    device = find_device_code(screen)
    assert device is not None, screen and device.user_code == "ABCD-EF123"
    assert device.verification_url == "https://auth.openai.com/codex/device"
    raw_log = (state_dir / "logs" / "c.log").read_bytes()
    assert b"\x1b[4;36m" in raw_log  # the log keeps the raw output
    tmux.kill("colours")


def test_links_that_are_not_usable_are_ignored() -> None:
    assert parse_authorize_link(LINK.replace("127.0.0.1", "evil.example")) is None
    assert parse_authorize_link(LINK.replace("&state=" + "s" * 43, "")) is None
    assert find_authorize_link("no link here") is None
    cut = LINK[:60]
    assert find_authorize_link(f"{cut}\nlater {LINK}") is not None
