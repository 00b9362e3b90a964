"""`python -m services.aggregator`: serve the aggregator configured in config.yaml (or $FEDAD_CONFIG)."""

import argparse

import uvicorn

from services.aggregator.app import create_app
from services.config import ConfigError, load_or_exit
from services.logs import setup_logging
from services.security.tls import peer_certificate_protocol, uvicorn_ssl_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="config file (default: $FEDAD_CONFIG or config.yaml)")
    args = parser.parse_args()
    settings = load_or_exit(args.config)
    setup_logging("aggregator", settings.logging.level, settings.logging.format)
    try:
        ssl_options = uvicorn_ssl_options(settings.tls)
        app = create_app(settings)
    except ConfigError as exc:
        parser.exit(2, f"config error: {exc}\n")
    except OSError as exc:  # a read-only or full state disk at start-up: say which folder, not a traceback
        parser.exit(1, f"cannot use the state dir {settings.aggregator.state_dir}: {exc.strerror or exc} "
                       f"({exc.filename or ''})\n")
    # timeout_graceful_shutdown: pending long-polls must not hold up a stop
    if ssl_options:  # the app learns each TLS client's certificate (enrollment by certificate)
        ssl_options["http"] = peer_certificate_protocol()
    uvicorn.run(app, host=settings.aggregator.host, port=settings.aggregator.port, log_level="warning",
                access_log=False, log_config=None, timeout_graceful_shutdown=3, **ssl_options)


if __name__ == "__main__":
    main()
