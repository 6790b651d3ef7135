"""Sign-ins counted for /metrics from the event journal, once each, whoever reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.metrics import Metrics
from skill import statedir
from skill.events import emit


def test_every_sign_in_is_counted_once_whoever_ended_it_and_whoever_counts(tmp_path: Path) -> None:
    """Counted from the journal: a paste through the CLI or the API, a status read that found
    the attempt expired, a cancel. Counting where the API ended one missed the others (a device
    sign-in settled by a status read was never counted). Two counters of one file (two workers,
    a keep-alive leader and ``/metrics``, a new leader after a restart) take turns: nothing is
    counted twice, nothing ended between their looks is missed. A status the journal makes up
    is not a label."""
    state = tmp_path / "state"
    first, second = Metrics(state / "metrics.json"), Metrics(state / "metrics.json")
    emit(state, "login.started", login_id="a", method="browser")
    emit(state, "login.completed", login_id="a", ok=True, status="succeeded", error=None)
    emit(state, "credential.updated", why="sign-in", login_id="a")
    emit(state, "login.started", login_id="b", method="device")
    emit(state, "login.completed", login_id="b", ok=False, status="expired", error="login_timeout")
    emit(state, "login.completed", login_id="x", ok=False, status='"}\n# forged', error=None)
    first.count_journal(state)
    first.count_journal(state)  # a second look at the same journal counts nothing more
    second.count_journal(state)
    emit(state, "login.started", login_id="c", method="browser")
    emit(state, "login.canceled", login_id="c")  # by the CLI while the service was down
    second.count_journal(state)
    first.count_journal(state)
    counts = {k: v for k, v in first.read().items() if k.startswith("logins_")}
    assert counts == {
        'logins_started{outcome="new"}': 3,
        'logins_completed{outcome="succeeded"}': 1,
        'logins_completed{outcome="expired"}': 1,
        'logins_completed{outcome="canceled"}': 1,
    }
    assert "journal" not in first.render() and "forged" not in first.render()


def test_a_journal_that_started_over_is_counted_from_its_start(tmp_path: Path) -> None:
    """The state directory's journal removed (its ids start at 1 again): counted, not skipped
    as already seen."""
    state = tmp_path / "state"
    metrics = Metrics(state / "metrics.json")
    for login in "abc":
        emit(state, "login.started", login_id=login, method="browser")
    metrics.count_journal(state)
    (state / statedir.EVENTS).unlink()
    emit(state, "login.started", login_id="d", method="browser")
    metrics.count_journal(state)
    assert metrics.read()['logins_started{outcome="new"}'] == 4


def test_counting_where_the_state_directory_is_a_file_says_so_and_raises_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/metrics still answers and the keep-alive's tick goes on."""
    state = tmp_path / "state"
    state.write_text("not a directory")
    Metrics(state / "metrics.json").count_journal(state)
    assert "sign-ins not counted" in caplog.text
    assert state.read_text() == "not a directory"
