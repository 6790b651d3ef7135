"""The container's HEALTHCHECK: ``python -m service.healthcheck`` exits 0 when the service's
``/healthz`` answers 200 on this machine's loopback (the image has no curl)."""

from __future__ import annotations

import sys
import urllib.request

from service.settings import ServiceSettings


def main() -> int:
    port = ServiceSettings.from_env().bind.rsplit(":", 1)[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"healthz: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
