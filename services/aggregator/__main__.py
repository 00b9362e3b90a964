"""`python -m services.aggregator`: serve the aggregator configured in config.yaml (or $FEDAD_CONFIG)."""

import argparse

import uvicorn

from services.aggregator.app import create_app
from services.config import load_or_exit
from services.logs import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="config file (default: $FEDAD_CONFIG or config.yaml)")
    args = parser.parse_args()
    settings = load_or_exit(args.config)
    setup_logging("aggregator")
    app = create_app(settings)
    uvicorn.run(app, host=settings.aggregator.host, port=settings.aggregator.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
