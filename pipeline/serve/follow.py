"""Follow the registry's champion: read the alias every few seconds; when it points to another
version, load that version beside the served one and hand it over in one assignment.

The swap never waits for requests and never interrupts them: a batch holds the model it started
with until it finishes, later batches get the new one. A failed read or load keeps the served model
and is tried again at the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pipeline.serve.model import ServedModel
from pipeline.serve.source import ModelSource

log = logging.getLogger(__name__)


class ChampionFollower:
    """A daemon thread polling ``source``'s alias every ``interval_s`` seconds; ``swap(new)`` is
    called with each newly loaded version."""

    def __init__(
        self,
        source: ModelSource,
        current: ServedModel,
        interval_s: float,
        swap: Callable[[ServedModel], None],
    ) -> None:
        self.source = source
        self.current = current
        self.interval_s = interval_s
        self.swap = swap
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-follower", daemon=True)

    def poll_once(self) -> bool:
        """Swap in the alias's version if it changed; True when it did."""
        version = self.source.current_version()
        if version == self.current.version:
            return False
        new = self.source.load(version)
        log.warning("champion moved: %s -> %s, swapping", self.current.label, new.label)
        self.swap(new)
        self.current = new
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception as exc:  # keep serving the current model; try again next time
                log.warning("champion check failed, still serving %s: %s", self.current.label, exc)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
