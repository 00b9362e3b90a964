"""`python -m services.worker --id valve1` (or FEDAD_WORKER_ID=valve1): serve one edge node's worker."""

import argparse
import os

import uvicorn

from services.config import ConfigError, load_or_exit
from services.logs import setup_logging
from services.worker.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", default=os.environ.get("FEDAD_WORKER_ID"), help="worker id from config.yaml")
    parser.add_argument("--config", help="config file (default: $FEDAD_CONFIG or config.yaml)")
    args = parser.parse_args()
    settings = load_or_exit(args.config)
    if not args.id:
        parser.error("give the worker id: --id ID or FEDAD_WORKER_ID")
    try:
        worker = settings.worker(args.id)
    except ConfigError as exc:
        parser.exit(2, f"config error: {exc}\n")
    if worker.token is None:
        parser.exit(2, f"config error: workers.{worker.id}.token is required on the worker (token_sha256 is what the "
                       "aggregator keeps)\n")
    setup_logging("worker", settings.logging.level, settings.logging.format, worker=worker.id)
    try:
        app = create_app(settings, worker)
    except OSError as exc:  # a read-only or full state disk at start-up: say which folder, not a traceback
        parser.exit(1, f"cannot use the state dir {worker.state_dir}: {exc.strerror or exc} ({exc.filename or ''})\n")
    uvicorn.run(app, host=worker.host, port=worker.port, log_level="warning",
                access_log=False, log_config=None)  # uvicorn's own lines in our format


if __name__ == "__main__":
    main()
