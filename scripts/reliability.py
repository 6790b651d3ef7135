#!/usr/bin/env python3
"""The reliability suite in one run, written to RELIABILITY.md (``make reliability``).

    .venv/bin/python scripts/reliability.py           # full (about an hour) -> RELIABILITY.md
    .venv/bin/python scripts/reliability.py --short   # small counts, checks it all still works
                                                      # (CI); written to --output

Each line is a count: cases tried, failures, and what a failure means. The cases are the
repo's own tests and scripts, run with larger counts than CI uses: network faults from a real
TCP proxy (tests/test_faults.py) and the fake servers' fault matrices, SIGKILL crash runs,
bad input (the pasted-address table and property tests, schemathesis over the OpenAPI document,
hypothesis fuzzing), the secrets canary sweep, and a load run (scripts/load_test.py).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Line:
    what: str
    tried: str
    failures: int
    failure_means: str
    command: str


def pytest_run(selection: list[str], env: dict[str, str]) -> tuple[int, int, str, float]:
    """(cases, failures, captured output, seconds) of one pytest run."""
    with tempfile.NamedTemporaryFile(suffix=".xml") as junit:
        started = time.monotonic()
        done = subprocess.run(
            [
                PYTHON,
                "-m",
                "pytest",
                "-q",
                "-s",
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit.name}",
                *selection,
            ],
            cwd=REPO,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.monotonic() - started
        try:
            suite = ET.parse(junit.name).getroot()  # noqa: S314 - pytest's own report
        except ET.ParseError:
            return 0, 1, done.stdout + done.stderr, took
    node = suite if suite.tag == "testsuite" else suite[0]
    cases = int(node.get("tests", 0))
    failed = sum(int(node.get(k, 0)) for k in ("failures", "errors", "skipped"))
    # Every pytest run is a canary sweep too (tests/canary.py); a find fails the run.
    leaks = re.search(r"canary sweep: .*; leaks: (\d+)", done.stdout)
    failed += int(leaks.group(1)) if leaks else 1
    return cases, failed, done.stdout + done.stderr, took


def _after_heading(text: str) -> list[str]:
    """A script's Markdown output without anything before its heading, nor the heading."""
    lines = text.strip().splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith("# ")]
    body = lines[starts[0] + 1 :] if starts else lines
    return "\n".join(body).strip().splitlines()


def figure(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    return found.group(1) if found else "?"


def fleet_lines(out: str, failed: int) -> list[Line]:
    """The lines of tests/test_many_containers.py's reports (FLEET, ROLLING, PARTITION, LOGOUT)."""
    command = "FLEET_SIZES=1,2,4,8 FLEET_SECONDS=180 FLEET_OVERLAPS=20 FLEET_ALL_STORES=1 " \
        "pytest -s tests/test_many_containers.py"  # fmt: skip
    found: list[Line] = []
    for run in re.finditer(r"^FLEET (.*)$", out, re.MULTILINE):
        f = dict(item.split("=", 1) for item in run.group(1).split())
        bad = int(f["reused"]) + int(f["relogin_samples"]) + (float(f["live_min"]) < 0.99) + (
            int(f["refreshes"]) > float(f["bound"]))  # fmt: skip
        found.append(Line(
            f"{f['containers']} container(s) sharing one credential, {f['mode']} store, "
            f"{f['seconds']} s of 20-second tokens: {f['refreshes']} issuer refreshes (bound "
            f"{f['bound']}); live refresh token in {float(f['live_min']):.2%} of 50 ms samples "
            f"and {float(f['live_1s']):.2%} of 1 s samples (the worst container)",
            f"{f['samples']} samples", bad,
            "a refresh token presented twice, a needs_relogin, a container below 99% live, or "
            "more refreshes than two per lifetime plus one",
            command,
        ))  # fmt: skip
    for name, what in (("ROLLING", "rolling restarts: a new container restores while the old "
                        "one keeps refreshing, then the old one stops"),
                       ("PARTITION", "one of three containers cut off from the store for two "
                        "token lifetimes, then back"),
                       ("LOGOUT", "logout in one of four containers")):  # fmt: skip
        for run in re.finditer(rf"^{name} (.*)$", out, re.MULTILINE):
            f = dict(item.split("=", 1) for item in run.group(1).split())
            bad = sum(int(f.get(k, "0")) for k in ("reused", "relogin_samples", "lost"))
            extra = {k: v for k, v in f.items() if k not in ("mode",)}
            found.append(Line(
                f"{what}, {f['mode']} store ({', '.join(f'{k} {v}' for k, v in extra.items())})",
                f.get("overlaps", "1") + " run(s)", bad,
                "a refresh token presented twice, a needs_relogin or a credential lost; for "
                "the logout, a container not reporting logged_out within 5 s",
                command,
            ))  # fmt: skip
    if failed and not found:
        found.append(Line("many containers", "the whole module", failed, "a failed test", command))
    elif failed and not any(line.failures for line in found):
        found[-1].failures += failed  # a test failed after its line was printed
    return found


def vault_cluster_lines(out: str, failed: int, kills: str) -> list[Line]:
    """The lines of tests/test_vault_cluster.py's reports (FAILOVER, SEALED)."""
    command = f"VAULT_FAILOVER_KILLS={kills} pytest -s tests/test_vault_cluster.py"
    failover, sealed = (re.search(rf"^{name} (.*)$", out, re.MULTILINE)
                        for name in ("FAILOVER", "SEALED"))  # fmt: skip
    f = dict(item.split("=", 1) for item in failover.group(1).split()) if failover else {}
    g = dict(item.split("=", 1) for item in sealed.group(1).split()) if sealed else {}
    return [
        Line(
            "A three-node OpenBao Raft cluster under 3 containers (20-second tokens): the "
            f"leader killed with SIGKILL while they refresh and push, {kills} times; new "
            f"leader within {f.get('election_max', '?')}, {f.get('refreshes', '?')} issuer "
            "refreshes",
            f"{kills} kills",
            sum(int(f.get(k, "0")) for k in ("reused", "lost", "relogin_samples"))
            + (failed if not failover else 0),
            "an acknowledged rotation missing after the election (lost), a refresh token "
            "presented twice, or a needs_relogin",
            command,
        ),
        Line(
            "The whole cluster sealed under the same containers: /readyz 503 (store "
            f"unavailable) on every one after {g.get('readyz_503_after', '?')}, credentials "
            f"kept; 200 again {g.get('readyz_200_after_unseal', '?')} after the unseal",
            "1 seal",
            sum(int(g.get(k, "0")) for k in ("reused", "relogin_samples"))
            + (failed if failover and not sealed else 0),
            "a credential changed or lost while sealed, a refresh token presented twice, a "
            "needs_relogin, or a container not live after the unseal",
            command,
        ),
    ]


def main() -> int:  # noqa: PLR0915 - one straight list of sections reads best
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    short = args.short
    output = args.output or (
        Path(tempfile.mkstemp(prefix="reliability-", suffix=".md")[1])
        if short
        else REPO / "RELIABILITY.md"
    )
    kills, login_kills = ("20", "5") if short else ("200", "50")
    examples = "200" if short else "10000"
    load_seconds = "15" if short else "300"
    lines: list[Line] = []
    timings: list[str] = []

    def run(
        name: str, selection: list[str], env: dict[str, str] | None = None
    ) -> tuple[int, int, str]:
        print(f"== {name}", flush=True)
        cases, failed, out, took = pytest_run(selection, env or {})
        timings.append(f"{name}: {took:.0f} s")
        if failed:
            print(out[-3000:], file=sys.stderr)
        return cases, failed, out

    # Network faults --------------------------------------------------------------------------
    cases, failed, _ = run(
        "fault proxy", ["tests/test_faults.py", *(["-k", "persist or refresh"] if short else [])]
    )
    lines.append(
        Line(
            "Network faults from a TCP proxy (latency, timeout, reset, truncated answer, slow "
            "close, down; and down past the whole retry deadline) through persist, restore, "
            "sync-back and refresh",
            f"{cases} scenarios",
            failed,
            "a credential lost on disk or in the store, the store going back, or an unclear error",
            "pytest tests/test_faults.py",
        )
    )
    cases, failed, _ = run(
        "fault matrices",
        [
            "tests/test_secrets_store.py",
            "tests/test_oauth.py",
            "tests/test_service.py",
            "-k",
            "fault or retry or timeout or reset or truncat or malformed or persist",
        ],
    )
    lines.append(
        Line(
            "Faults answered by the fake secrets API and fake issuer (5xx, 429 with Retry-After, "
            "401/403, malformed and truncated bodies, resets, timeouts)",
            f"{cases} cases",
            failed,
            "a wrong retry decision (a refresh token or code resent after a timeout, a 401 "
            "retried), or a persist reported done that was not stored",
            "pytest tests/test_secrets_store.py tests/test_oauth.py tests/test_service.py -k ...",
        )
    )

    # Crashes -----------------------------------------------------------------------------------
    _, failed, out = run(
        "SIGKILL: credential writes", ["tests/test_crash.py"], {"CRASH_KILLS": kills}
    )
    torn = figure(r"unreadable or torn: (\d+)", out)
    lines.append(
        Line(
            "SIGKILL of a writer at random points of a credential write",
            f"{kills} kills",
            int(torn) if torn.isdigit() else failed or 1,
            "an unreadable, torn or non-0600 auth.json, or another provider's entry lost",
            f"CRASH_KILLS={kills} pytest -s tests/test_crash.py",
        )
    )
    _, failed, out = run(
        "SIGKILL: refresh to push",
        ["tests/test_keepalive_crash.py::test_sigkill_between_refresh_and_push"],
        {"CRASH_KILLS_REFRESH": kills},
    )
    window = figure(r"in the refresh-to-push window: (\d+)", out)
    not_newest = figure(r"newest not stored: (\d+)", out)
    backwards = figure(r"store went backwards: (\d+)", out)
    lost = figure(r"rotations lost: (\d+)", out)
    lost_written = figure(r"after the answer was written: (\d+)", out)
    lost_before = str(int(lost) - int(lost_written)) if (lost + lost_written).isdigit() else "?"
    counted = (not_newest, backwards, lost_written)
    bad = sum(int(x) for x in counted if x.isdigit()) if failed == 0 else failed
    lines.append(
        Line(
            "SIGKILL of the service between the issuer's refresh answer and the store's "
            f"acknowledgement, then a restart ({window} landed inside that window)",
            f"{kills} kills",
            bad,
            f"the newest credential on disk not in the store after the restart ({not_newest}), "
            f"the store going back ({backwards}), or a rotation lost after its answer was "
            f"written to a file ({lost_written}). Not counted as a failure: rotations lost "
            f"before that ({lost_before}), "
            "a kill after the issuer rotated the token and before our process had written its "
            "answer anywhere, which no client can recover",
            f"CRASH_KILLS_REFRESH={kills} pytest -s tests/test_keepalive_crash.py -k push",
        )
    )
    _, failed, out = run(
        "SIGKILL: holding the lease",
        ["tests/test_keepalive_crash.py::test_sigkill_while_holding_the_lease"],
        {"CRASH_KILLS_LEASE": "8" if short else kills},
    )
    taken = figure(r"taken over by the other container: (\d+)", out)
    spent = figure(r"after A had spent the token: (\d+)", out)
    lost = figure(r"rotations lost: (\d+)", out)
    lost_written = figure(r"after the answer was written: (\d+)", out)
    astray = figure(r"left out of step: (\d+)", out)
    counted = (lost_written, astray)
    lines.append(
        Line(
            "SIGKILL of a container while it holds the refresh lease (before or after spending "
            f"the token); the other container takes over once the lease runs out ({taken} "
            f"times, {spent} of them after the first had spent the token), then the first "
            "restarts",
            f"{kills} kills",
            sum(int(x) for x in counted if x.isdigit()) if failed == 0 else failed,
            f"a rotation lost after its answer was written ({lost_written}), or the two "
            f"containers and the store not ending on one live credential ({astray}). Not "
            f"counted: rotations lost before the answer was written ({lost})",
            f"CRASH_KILLS_LEASE={'8' if short else kills} pytest -s "
            "tests/test_keepalive_crash.py -k lease",
        )
    )
    _, failed, out = run(
        "SIGKILL: sign-in in progress",
        ["tests/test_crash_login.py"],
        {"CRASH_KILLS_LOGIN": login_kills},
    )
    lines.append(
        Line(
            "SIGKILL of the login program or the whole tmux server during a sign-in",
            f"{login_kills} kills",
            failed,
            "status not saying what happened, a process or listener left behind, or the next "
            "sign-in failing",
            f"CRASH_KILLS_LOGIN={login_kills} pytest -s tests/test_crash_login.py",
        )
    )

    # Many containers ---------------------------------------------------------------------------
    # The short mode runs the main test only, briefly (the default suite runs them all).
    fleet_env = (
        {"FLEET_SIZES": "2", "FLEET_SECONDS": "20"}
        if short
        else {"FLEET_SIZES": "1,2,4,8", "FLEET_SECONDS": "180", "FLEET_OVERLAPS": "20",
              "FLEET_ALL_STORES": "1"}
    )  # fmt: skip
    selection = ["tests/test_many_containers.py"]
    if short:
        selection += ["-k", "test_one_credential_many_containers and cas"]
    _, failed, out = run("many containers", selection, fleet_env)
    lines += fleet_lines(out, failed)
    if not short:  # the default suite runs it with one kill; CI runs that, not this again
        kills = "5"
        _, failed, out = run("vault cluster", ["tests/test_vault_cluster.py"],
                             {"VAULT_FAILOVER_KILLS": kills})  # fmt: skip
        lines += vault_cluster_lines(out, failed, kills)

    # Bad input ---------------------------------------------------------------------------------
    cases, failed, _ = run("pasted addresses", ["tests/test_redirect.py"])
    lines.append(
        Line(
            "Pasted addresses: the table of bad pastes and the property tests "
            "(2100 generated pastes)",
            f"{cases} pytest cases",
            failed,
            "a bad paste accepted, or a good one refused",
            "pytest tests/test_redirect.py",
        )
    )
    cases, failed, _ = run("schemathesis", ["tests/test_openapi_fuzz.py"])
    lines.append(
        Line(
            "schemathesis over /v1/openapi.json, every operation, with and without "
            "the token (25 generated requests per operation and case)",
            f"{cases} pytest cases",
            failed,
            "a 5xx, an answer that does not match the document, or an operation "
            "reachable without the token",
            "pytest tests/test_openapi_fuzz.py",
        )
    )
    cases, failed, _ = run("fuzz", ["tests/test_fuzz.py"], {"FUZZ_EXAMPLES": examples})
    lines.append(
        Line(
            "Fuzzing (hypothesis) of the paste parser, the pi and codex credential "
            "loaders, the pi-file splice and token claims",
            f"{cases} targets x {examples} examples",
            failed,
            "an exception other than our error type, or a result not in the input",
            f"FUZZ_EXAMPLES={examples} pytest tests/test_fuzz.py",
        )
    )

    # Hostile answers and environments ---------------------------------------------------------
    cases, failed, out = run(
        "hostile answers",
        ["tests/test_hostile_answers.py", *(["-k", "restore or drip"] if short else [])],
    )
    runs = re.findall(r"^HOSTILE path=(\S+) kind=(\S+) seconds=(\S+) peak_mib=(\S+)", out, re.M)
    longest = max((float(r[2]) for r in runs), default=0.0)
    in_process = max((float(r[3]) for r in runs if r[0] != "restore"), default=0.0)
    restore_rss = max((float(r[3]) for r in runs if r[0] == "restore"), default=0.0)
    lines.append(
        Line(
            "Hostile secrets-API answers (a valid answer or its headers a byte every 0.5 s, "
            "300 MB, JSON nested 100000 deep, wrong types) through restore (a whole process), "
            "persist, sync-back and /readyz, with a 3 s secrets deadline: longest wait "
            f"{longest:.1f} s, largest in-process peak {in_process:.1f} MiB, restore's peak "
            f"resident memory {restore_rss:.0f} MiB",
            f"{cases} cases",
            failed,
            "a traceback or a 500, a wait past twice the deadline plus one attempt, more than "
            "64 MiB held in process (64 MiB resident for the whole restore), or the local "
            "credential changed",
            "pytest -s tests/test_hostile_answers.py",
        )
    )
    cases, failed, _ = run(
        "hostile environments",
        ["tests/test_hostile_env.py", *(["-k", "disk or unset"] if short else [])],
    )
    lines.append(
        Line(
            "Every command (start, complete, wait, status, cancel, logout, refresh, restore) in "
            "hostile environments: state directory owned by another user or read-only, full "
            "disk, read-only home, a file where a directory should be and the reverse, HOME "
            "unset",
            f"{cases} environments x 8 commands",
            failed,
            "a traceback, output that is not one JSON object (--json) or one line, an "
            "undocumented exit code, or a file lost",
            "pytest tests/test_hostile_env.py",
        )
    )
    seconds = "3" if short else "30"
    print("== readyz load", flush=True)
    started = time.monotonic()
    done = subprocess.run([PYTHON, str(REPO / "scripts" / "readyz_load.py"), "--seconds",
                           seconds, "--clients", "24"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    timings.append(f"readyz load: {time.monotonic() - started:.0f} s")
    rows = re.findall(r"^\| ([^|]+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| (-?\d+) \|$",
                      done.stdout, re.M)  # fmt: skip
    allowed_reads = 2 * (float(seconds) / 10 + 1)  # one per worker per 10 s
    stalled = (
        done.returncode != 0
        or len(rows) != 3
        or any(float(r[3]) > 2000 or int(r[5]) > allowed_reads for r in rows[1:])
    )
    lines.append(
        Line(
            f"Unauthenticated /readyz from 24 clients for {seconds} s against a store that "
            "answers in 4 s: the operator's p99 "
            + (f"{rows[0][3]} ms alone, {rows[1][3]} ms with 10 calls/s per client, {rows[2][3]} "
               f"ms back to back; store reads the load added: {rows[1][5]}, {rows[2][5]}"
               if len(rows) == 3 else "(no figures)"),
            f"{sum(int(r[4]) for r in rows)} /readyz calls",
            int(stalled),
            "an operator request held for seconds (before: a minute), or more store reads than "
            "one per worker per 10 s",
            f"python scripts/readyz_load.py --seconds {seconds} --clients 24",
        )
    )  # fmt: skip

    # Secrets -----------------------------------------------------------------------------------
    # Every pytest run sweeps what it captured; this one runs the whole suite (a short run: the
    # sign-in, service and runner tests) and reports the sweep's figures.
    swept = ["tests/test_canaries.py", "tests/test_service.py"] if short else ["tests"]
    cases, failed, out = run("canary sweep", swept)
    captured = figure(r"canary sweep: (\d+) captures", out)
    argvs = figure(r"process argument lists (\d+)\)", out)
    lines.append(
        Line(
            "Canary sweep: every code and token the fake issuer minted, every state and PKCE "
            "verifier, and the operator, secrets API and local service tokens, searched for in "
            "every log record, command output, API response, log file (tmux pane logs too) and "
            "process argument list captured during "
            + ("the sign-in and service tests" if short else "the whole test suite"),
            f"{cases} tests; {captured} captures, {argvs} distinct process argument lists",
            failed,
            "a secret found anywhere it does not belong, or a failed test",
            "pytest " + " ".join(swept),
        )
    )

    # Load --------------------------------------------------------------------------------------
    print("== load", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        [PYTHON, str(REPO / "scripts" / "load_test.py"), "--seconds", load_seconds],
        capture_output=True,
        text=True,
        check=False,
    )
    timings.append(f"load: {time.monotonic() - started:.0f} s")
    errors = figure(r"\| errors \(not 200, or no answer in 5 s\) \| (\d+) \|", done.stdout)
    sent = figure(r"\| requests sent \| (\d+) \|", done.stdout)
    lines.append(
        Line(
            f"Load: the operator API at 50 requests/s for {load_seconds} s while the keep-alive "
            "refreshes every 10 s (table below)",
            f"{sent} requests",
            int(errors) if errors.isdigit() else 1,
            "a request not answered 200 within 5 s (also checked: no refresh token reused, the "
            "store ends with the credential on disk)",
            f"python scripts/load_test.py --seconds {load_seconds}",
        )
    )

    failures = sum(line.failures for line in lines)
    text = [
        "# Reliability",
        "",
        f"Written by `make reliability` (`scripts/reliability.py`), "
        f"{'short check (small counts)' if short else 'full run'}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on {os.cpu_count()} cores. Commands are "
        "run from the repo with `.venv/bin/python -m`.",
        "",
        "| what | tried | failures | a failure is | command |",
        "|---|---|---|---|---|",
        *(
            f"| {ln.what} | {ln.tried} | {ln.failures} | {ln.failure_means} | `{ln.command}` |"
            for ln in lines
        ),
        "",
        "## Load run",
        "",
        *_after_heading(done.stdout),
        "",
        "## Time taken",
        "",
        *(f"- {t}" for t in timings),
    ]
    output.write_text("\n".join(text).rstrip() + "\n")
    print(f"wrote {output}; failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
