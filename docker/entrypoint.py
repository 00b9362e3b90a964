"""Container entry point: apply the container defaults, check the config, then exec the service.

    entrypoint.py aggregator [args...]     -> python -m services.aggregator [args...]
    entrypoint.py worker [--id ID] [...]   -> python -m services.worker [args...]   (or FEDAD_WORKER_ID=ID)

Defaults, each only when not set already (by id or by index): the service listens on 0.0.0.0 (the container's
network is its boundary; publish ports on 127.0.0.1 on the host) and keeps its state in the /state volume; with
FEDAD_WORKER_MODE (docker/worker-detect.Dockerfile sets detect_only) the worker's mode.
The health-check URL is written to /tmp so that the HEALTHCHECK needs no config parsing every few seconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HEALTH_URL_FILE = Path("/tmp/fedad-healthz-url")


def _worker_id(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--id" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--id="):
            return arg.split("=", 1)[1]
    return os.environ.get("FEDAD_WORKER_ID")


def _worker_keys(worker_id: str) -> list[str]:
    """Both env spellings that address this worker: by id and by its index in the config file's list."""
    import yaml

    keys = [worker_id.upper()]
    try:
        raw = yaml.safe_load(Path(os.environ.get("FEDAD_CONFIG", "/etc/fedad/config.yaml")).read_text()) or {}
        ids = [str(w.get("id", "")).lower() for w in raw.get("workers", []) if isinstance(w, dict)]
        if worker_id.lower() in ids:
            keys.append(str(ids.index(worker_id.lower())))
    except (OSError, yaml.YAMLError, AttributeError):
        pass  # the service itself reports a broken config, with a better message
    return keys


def _set_default(keys: list[str], field: str, value: str, section: str = "WORKERS") -> None:
    names = [f"FEDAD__{section}__{k}__{field}" for k in keys]
    if not any(n in os.environ for n in names):
        os.environ[names[0]] = value


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("aggregator", "worker"):
        print("usage: entrypoint.py aggregator|worker [args...]", file=sys.stderr)
        return 2
    service, args = argv[0], argv[1:]
    if service == "aggregator":
        os.environ.setdefault("FEDAD__AGGREGATOR__HOST", "0.0.0.0")
        os.environ.setdefault("FEDAD__AGGREGATOR__STATE_DIR", "/state")
    else:
        worker_id = _worker_id(args)
        if not worker_id:
            print("worker: set FEDAD_WORKER_ID (or pass --id ID) to this node's id in config.yaml", file=sys.stderr)
            return 2
        os.environ["FEDAD_WORKER_ID"] = worker_id
        keys = _worker_keys(worker_id)
        _set_default(keys, "HOST", "0.0.0.0")
        _set_default(keys, "STATE_DIR", "/state")
        if os.environ.get("FEDAD_WORKER_MODE"):  # the detect-only image: a node that cannot train
            _set_default(keys, "MODE", os.environ["FEDAD_WORKER_MODE"])

    from services.config import ConfigError, load_settings

    try:
        settings = load_settings()
        port = settings.aggregator.port if service == "aggregator" else settings.worker(worker_id).port
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        HEALTH_URL_FILE.write_text(f"http://127.0.0.1:{port}/healthz\n")
    except OSError:
        pass  # read-only /tmp: healthcheck.py falls back to reading the config
    os.execvp(sys.executable, [sys.executable, "-m", f"services.{service}", *args])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
