"""Unauthenticated /readyz calls against a slow store cannot stall the operator API, nor make
the service call the store for each of them (scripts/readyz_load.py, in a short run)."""

from __future__ import annotations

import pytest

from scripts.readyz_load import measure

pytestmark = pytest.mark.slow


def test_a_readyz_flood_neither_stalls_the_api_nor_reads_the_store() -> None:
    seconds = 5.0
    quiet, paced, flood = measure(seconds, clients=24)
    print(
        f"\nREADYZ clients=24 seconds={seconds:.0f} p99_alone_ms={quiet.percentile(0.99):.1f} "
        f"p99_paced_ms={paced.percentile(0.99):.1f} p99_flood_ms={flood.percentile(0.99):.1f} "
        f"readyz_answered={paced.readyz + flood.readyz} "
        f"store_reads_added={paced.store_reads + flood.store_reads}"
    )
    # Before, each call held a worker thread for the store's whole deadline: the operator's
    # requests waited tens of seconds. A second at the 99th percentile is CPU, not waiting.
    assert paced.percentile(0.99) < 1000 and flood.percentile(0.99) < 2000
    assert paced.readyz > 24 and flood.readyz > paced.readyz
    # At most one look at the store per worker (two) per 10 s, per phase.
    assert paced.store_reads <= 4 and flood.store_reads <= 4
