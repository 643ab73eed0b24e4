"""Background refresh: when the next refresh is due, and what the engine's health is.

Both engines use these rules: ``RemediationEngine.start()`` runs them on a thread,
``AsyncRemediationEngine.start()`` on a task. A good refresh waits ``interval`` (with up to
``jitter`` of it added or taken, so a fleet does not refresh in step); a failed one is retried
sooner, doubling from ``min(interval, 30 s)`` up to ``interval``; the last good decisions keep
being served meanwhile. The defaults follow CrowdSec's remediation-component rules: a LAPI
stream every 10 s, CAPI every 2 hours (its minimum).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["LAPI_INTERVAL", "Health", "RefreshSchedule"]

#: Seconds between two LAPI stream pulls by default (the remediation-component spec's 10 s).
LAPI_INTERVAL = 10.0


@dataclass(frozen=True)
class Health:
    """How the engine's decisions stand.

    Attributes:
        running: a background refresher is running.
        last_good_refresh: Unix time of the last refresh that applied an answer, or None.
        age: seconds since then, or None.
        last_error: why the last refresh failed, or None after a good one.
        stale: ``max_staleness`` has passed without a good refresh, so ``stale_action`` answers.
    """

    running: bool
    last_good_refresh: float | None
    age: float | None
    last_error: str | None
    stale: bool


class RefreshSchedule:
    """The wait before the next background refresh."""

    def __init__(self, interval: float, jitter: float = 0.1, rng: random.Random | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be more than 0 seconds, got {interval!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be from 0 to less than 1, got {jitter!r}")
        self.interval, self.jitter = interval, jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, ok: bool) -> float:
        """Seconds to wait after a refresh that went well (``ok``) or not."""
        if ok:
            self.failures = 0
            return self.interval * (1 + self.jitter * (2 * self._rng.random() - 1))
        self.failures += 1
        first = min(self.interval, 30.0)
        return float(min(self.interval, first * 2 ** (self.failures - 1)))
