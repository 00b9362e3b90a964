"""The fleet's model directive, followed here: an admin asked every worker to serve a version, pin one or unpin
(``POST /v1/admin/fleet/...`` on the aggregator). Workers hear of it in the answers to their reports and in ``GET
/v1/round``; each directive (``seq``) is followed once, through the same ModelShelf calls as the
worker's own admin routes, and its outcome goes back with the next report (applied, or refused and why: no such
version kept here, another one pinned locally).

The outcome is kept in ``directive.json`` in the state dir, so a restarted worker neither follows an old directive
again (undoing a local change made since) nor forgets what it reported.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from services import atomic
from services.protocol.messages import DirectiveResult, FleetDirective
from services.worker.models import ModelShelf, PinnedElsewhere, UnknownVersion

log = logging.getLogger("fedad.worker")
FILE = "directive.json"


class DirectiveFollower:
    def __init__(self, state_dir: Path, models: ModelShelf):
        self.path = Path(state_dir) / FILE
        self.models = models
        self._lock = threading.Lock()  # the loop and the reporter thread both pass directives on
        kept = atomic.read_json(self.path)
        self.result: DirectiveResult | None = DirectiveResult.model_validate(kept) if kept else None

    def follow(self, directive: FleetDirective | dict | None) -> bool:
        """Follow ``directive`` if it is newer than the last one; True if it was (its result changed)."""
        if directive is None:
            return False
        if isinstance(directive, dict):
            directive = FleetDirective.model_validate(directive)
        with self._lock:
            if self.result is not None and directive.seq <= self.result.seq:
                return False
            self.result = self._apply(directive)
            try:
                atomic.write_json(self.path, self.result.model_dump())
            except OSError as exc:  # followed all the same; a restart may follow it again
                log.error("cannot persist the fleet directive's outcome: %s", exc.strerror or exc)
            return True

    def _apply(self, directive: FleetDirective) -> DirectiveResult:
        what = f"fleet directive {directive.seq}: {directive.action} {directive.version or ''}".rstrip()
        try:
            if directive.action == "serve":
                self.models.serve(str(directive.version), by="fleet")
            elif directive.action == "pin":
                self.models.pin(str(directive.version), by="fleet")
            else:
                self.models.unpin(by="fleet")
        except (UnknownVersion, PinnedElsewhere) as exc:
            log.warning("%s refused: %s", what, exc)
            return DirectiveResult(seq=directive.seq, status="refused", detail=str(exc)[:500])
        log.info("%s applied%s", what, f" ({directive.reason})" if directive.reason else "")
        return DirectiveResult(seq=directive.seq, status="applied", detail=f"serving {self.models.served_id}")
