"""What the service remembers across workers and restarts, in small 0600 files.

- ``service.json``: when the credential was last persisted, whether a persist is pending.
- ``metrics.json``: counters and secrets-API latency totals for ``/metrics``.

Gunicorn runs several workers; keeping these in files under a lock (not in memory) means every
worker reports the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skill.files import ensure_private_dir, read_settled, write_private
from skill.lock import FlockLock


class JsonState:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            found = read_settled(self.path, json.loads, settle=0.1)
        except Exception:
            return {}
        return found[1] if found and isinstance(found[1], dict) else {}

    @contextmanager
    def updating(self) -> Iterator[dict[str, Any]]:
        ensure_private_dir(self.path.parent)
        with FlockLock(self.path, timeout=5):
            data = self.read()
            yield data
            write_private(self.path, json.dumps(data, default=str, indent=1).encode())


class PersistState(JsonState):
    def mark(self, *, persisted: bool) -> None:
        with self.updating() as data:
            data["persist_pending"] = not persisted
            if persisted:
                data["last_persisted_at"] = datetime.now(UTC).isoformat()


class Metrics(JsonState):
    def count(self, name: str, outcome: str) -> None:
        with self.updating() as data:
            key = f'{name}{{outcome="{outcome}"}}'
            data[key] = data.get(key, 0) + 1

    def observe(self, name: str, seconds: float) -> None:
        with self.updating() as data:
            data[f"{name}_seconds_sum"] = data.get(f"{name}_seconds_sum", 0.0) + seconds
            data[f"{name}_seconds_count"] = data.get(f"{name}_seconds_count", 0) + 1

    def timed(self, name: str, call: Callable[[], Any]) -> Any:
        import time  # noqa: PLC0415

        started = time.monotonic()
        try:
            return call()
        finally:
            self.observe(name, time.monotonic() - started)

    def render(self) -> str:
        """Prometheus text exposition format."""
        lines, seen = [], set()
        for key, value in sorted(self.read().items()):
            family = key.split("{", 1)[0]
            if family not in seen:
                seen.add(family)
                kind = "counter" if "{" in key or family.endswith("_count") else "gauge"
                lines.append(f"# TYPE chatgpt_login_{family} {kind}")
            lines.append(f"chatgpt_login_{key} {value}")
        return "\n".join(lines) + "\n"
