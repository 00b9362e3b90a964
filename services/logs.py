"""One log format for both services: time, level, service, message."""

import logging


def setup_logging(service: str, level: str = "INFO") -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {service} %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the round progress
