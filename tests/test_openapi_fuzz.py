"""schemathesis over the served OpenAPI document: no operation answers 5xx, and no protected
operation accepts a missing or wrong token (schemathesis's ``ignored_auth`` check)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth

from service.app import create_app
from service.settings import ServiceSettings
from skill.settings import Settings

TOKEN = "fuzz-operator-token"


@pytest.fixture
def fuzz_app(runner_settings: Settings) -> Flask:
    overrides = {
        "start_timeout": 5,
        "complete_timeout": 5,
        "operator_token": TOKEN,
        # The real CLIs are not what is fuzzed here: a program that fails at once stands in.
        "pi_ai_command": "/bin/false",
        "codex_command": "/bin/false",
    }
    settings = ServiceSettings(**{**runner_settings.model_dump(), **overrides})
    return create_app(settings)


def test_no_server_errors_and_auth_enforced(fuzz_app: Flask) -> None:
    """Every documented operation, 25 generated requests each. (schemathesis's pytest plugin
    does not run under pytest 9, so its Python API drives hypothesis directly.)"""
    schema = schemathesis.openapi.from_wsgi(
        "/v1/openapi.json", fuzz_app, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # schemathesis leaves out the document itself
    # The event stream never ends, and the test client would wait for its end: its auth and
    # its answers are tested with a real server (tests/test_events.py).
    operations = [op for op in operations if op.path != "/v1/events"]
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=25, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=[not_a_server_error, ignored_auth],
            )

        check()
