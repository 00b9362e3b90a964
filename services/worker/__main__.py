"""`python -m services.worker --id valve1` (or FEDAD_WORKER_ID=valve1): serve one edge node's worker. An id that is
not in config.yaml's workers is a fleet node: it enrolls with enrollment.token (or its certificate) on its first start
and runs with enrollment.node's settings (services/worker/enrollment.py)."""

import argparse
import os

import uvicorn

from services.config import ConfigError, load_or_exit
from services.logs import setup_logging
from services.worker.app import create_app
from services.worker.enrollment import EnrollmentRefused, enrolled_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", default=os.environ.get("FEDAD_WORKER_ID"), help="worker id from config.yaml")
    parser.add_argument("--config", help="config file (default: $FEDAD_CONFIG or config.yaml)")
    args = parser.parse_args()
    settings = load_or_exit(args.config)
    if not args.id:
        parser.error("give the worker id: --id ID or FEDAD_WORKER_ID")
    setup_logging("worker", settings.logging.level, settings.logging.format, worker=args.id)
    try:
        worker = settings.worker(args.id) if args.id in {w.id for w in settings.workers} else \
            enrolled_worker(settings, args.id)
    except ConfigError as exc:
        parser.exit(2, f"config error: {exc}\n")
    except EnrollmentRefused as exc:
        parser.exit(2, f"{exc}\n")
    except OSError as exc:  # the state dir that holds the identity cannot be written
        parser.exit(1, f"cannot keep this node's identity: {exc.strerror or exc} ({exc.filename or ''})\n")
    if worker.token is None:
        parser.exit(2, f"config error: workers.{worker.id}.token is required on the worker (token_sha256 is what the "
                       "aggregator keeps)\n")
    try:
        app = create_app(settings, worker)
    except OSError as exc:  # a read-only or full state disk at start-up: say which folder, not a traceback
        parser.exit(1, f"cannot use the state dir {worker.state_dir}: {exc.strerror or exc} ({exc.filename or ''})\n")
    uvicorn.run(app, host=worker.host, port=worker.port, log_level="warning",
                access_log=False, log_config=None)  # uvicorn's own lines in our format


if __name__ == "__main__":
    main()
