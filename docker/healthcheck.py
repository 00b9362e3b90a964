"""Container HEALTHCHECK: exit 0 when this container's service answers GET /healthz with 200, else 1.

Standard library only (the base image may have no curl). The URL comes from the file entrypoint.py wrote at start;
without it, from the configuration (the same loader and overrides the service used).
"""

import os
import sys
import urllib.request
from pathlib import Path


def health_url() -> str:
    try:
        return Path("/tmp/fedad-healthz-url").read_text().strip()
    except OSError:
        from services.config import load_settings

        settings = load_settings()
        if os.environ.get("FEDAD_SERVICE") == "aggregator":
            port = settings.aggregator.port
        else:
            port = settings.worker(os.environ["FEDAD_WORKER_ID"]).port
        return f"http://127.0.0.1:{port}/healthz"


def main() -> int:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        with opener.open(health_url(), timeout=2) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # noqa: BLE001  any failure means unhealthy; say why in `docker inspect`
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
