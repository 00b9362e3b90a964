"""`python -m services.security certs | hash-token | new-token`: identity helpers for operators.

  certs [--dir DIR] [--host NAME ...] [--node ID ...] [--force]
                                                  CA + aggregator + one certificate per worker in config.yaml and
                                                  per --node (a fleet node that enrolls with its certificate)
  new-token                                       a fresh random worker token (give it to the worker)
  hash-token                                      SHA-256 of a token read from stdin (give it to the aggregator as
                                                  workers[i].token_sha256)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.config import load_or_exit
from services.security.tokens import hash_token, new_token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.security", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file (default: $FEDAD_CONFIG or config.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser("certs", help="create a CA and per-node certificates for mutual TLS")
    certs.add_argument("--dir", type=Path, help="output folder (default: tls.dir from the config)")
    certs.add_argument("--host", action="append", default=[], help="extra DNS name or IP for the aggregator")
    certs.add_argument("--node", action="append", default=[], help="a fleet node's id: a client certificate "
                       "for it too (its common name is the id it enrolls under)")
    certs.add_argument("--force", action="store_true", help="make a new CA even if one exists")
    sub.add_parser("new-token", help="print a fresh random worker token")
    sub.add_parser("hash-token", help="print the SHA-256 of the token on stdin")
    args = parser.parse_args(argv)
    if args.command == "new-token":
        print(new_token())
    elif args.command == "hash-token":
        token = sys.stdin.readline().strip()
        if len(token) < 8:
            parser.exit(2, "hash-token: give a token of at least 8 characters on stdin\n")
        print(hash_token(token))
    else:
        from services.security.certs import make_certs
        settings = load_or_exit(args.config)
        folder = args.dir or settings.tls.dir
        nodes = list(dict.fromkeys([*(w.id for w in settings.workers), *args.node]))
        for path in make_certs(folder, nodes, args.host, args.force):
            print(path)


if __name__ == "__main__":
    main()
