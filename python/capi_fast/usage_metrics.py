"""Usage metrics a bouncer reports to its LAPI (``POST /v1/usage-metrics``, crowdsec 1.6.3+).

CrowdSec's remediation-component metrics specification (crowdsec-docs,
``docs/contributing/specs/bouncer_metrics_specs.mdx``) and the LAPI's swagger
(``pkg/models/localapi_swagger.yaml``: ``RemediationComponentsMetrics``) define the body: one
remediation component with its ``version``, ``utc_startup_timestamp``, ``os`` and one metrics
window (``window_size_seconds``, ``utc_now_timestamp``) of items:

- ``dropped`` (unit ``request``): the requests answered with a remediation, by ``origin`` of the
  deciding decision (``lists:<name>`` for a blocklist) and final ``remediation``;
- ``processed`` (unit ``request``): every request checked, bypasses included;
- ``active_decisions`` (unit ``ip``): decisions in force, by ``origin``.

The counts are the final answers: a solved captcha is a bypass. ``UsageMetrics`` holds the
window; the counts taken from the engine stay pending until a push succeeds, so a failed push
loses nothing (they go in the next window). A LAPI that does not know the route (404, crowdsec
before 1.6.3) turns the pushes off, with one log line.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Mapping
from typing import Any

from capi_fast._native import __version__
from capi_fast.errors import CapiError, ConfigurationError

__all__ = [
    "MIN_USAGE_METRICS_INTERVAL",
    "USAGE_METRICS_INTERVAL",
    "UsageMetrics",
    "usage_metrics_body",
]

log = logging.getLogger("capi_fast.usage_metrics")

#: Seconds between two pushes by default (the specification's 30 minutes).
USAGE_METRICS_INTERVAL = 30 * 60.0
#: The shortest interval accepted.
MIN_USAGE_METRICS_INTERVAL = 10 * 60.0

Counts = Mapping[tuple[str, str], int]


def usage_metrics_body(
    *,
    name: str,
    kind: str,
    startup: float,
    window: float,
    now: float,
    answers: Counts,
    active: Counts,
) -> dict[str, Any]:
    """The ``POST /v1/usage-metrics`` body.

    Args:
        name: the component's name.
        kind: its type (e.g. ``capi-fast-bouncer``).
        startup: Unix time the component started.
        window: seconds the counts cover.
        now: Unix time of the push.
        answers: answers given by (origin of the deciding decision or ``clean``, final answer).
        active: decisions in force by (origin, remediation).
    """
    items: list[dict[str, Any]] = []
    for (origin, answer), n in sorted(answers.items()):
        if answer != "bypass" and n > 0:
            labels = {"origin": origin, "remediation": answer}
            items.append({"name": "dropped", "value": n, "unit": "request", "labels": labels})
    items.append({"name": "processed", "value": sum(answers.values()), "unit": "request"})
    by_origin: dict[str, int] = {}
    for (origin, _), n in active.items():
        by_origin[origin] = by_origin.get(origin, 0) + n
    for origin, n in sorted(by_origin.items()):
        items.append({"name": "active_decisions", "value": n, "unit": "ip", "labels": {"origin": origin}})
    return {
        "remediation_components": [
            {
                "name": name,
                "type": kind,
                "version": __version__,
                "os": {"name": platform.system().lower() or "unknown", "version": platform.release() or "unknown"},
                "feature_flags": [],
                "utc_startup_timestamp": int(startup),
                "metrics": [
                    {
                        "meta": {"window_size_seconds": max(0, int(window)), "utc_now_timestamp": int(now)},
                        "items": items,
                    }
                ],
            }
        ]
    }


class UsageMetrics:
    """The metrics window of one engine: when the next push is due, what it holds, what it did.

    Args:
        interval: seconds between pushes (at least ``MIN_USAGE_METRICS_INTERVAL``); 0 turns them off.
        name: the component's name in the LAPI (``cscli metrics`` shows it).
        kind: the component's type.
        clock: Unix time source.
    """

    def __init__(
        self,
        interval: float = USAGE_METRICS_INTERVAL,
        *,
        name: str = "capi-fast",
        kind: str = "capi-fast-bouncer",
        clock: Callable[[], float],
    ) -> None:
        if not isinstance(interval, int | float) or not (
            interval == 0 or MIN_USAGE_METRICS_INTERVAL <= interval < float("inf")
        ):
            raise ConfigurationError(
                f"metrics_interval must be 0 (off) or at least {MIN_USAGE_METRICS_INTERVAL:.0f} s, got {interval!r}"
            )
        self.interval = float(interval)
        self.name, self.kind = name, kind
        self.clock = clock
        self.started = clock()
        self.window_start = self.started
        self.next_at = self.started + self.interval
        #: Counts taken from the engine that no push has delivered yet.
        self.pending: dict[tuple[str, str], int] = {}
        #: Pushes turned off (interval 0, or a LAPI without the route).
        self.disabled = self.interval == 0
        self.pushed = 0
        self.last_error: str | None = None

    def due(self) -> bool:
        """Whether a push is due now."""
        return not self.disabled and self.clock() >= self.next_at

    def take(self, answers: Counts, active: Counts) -> dict[str, Any]:
        """Adds ``answers`` (just taken from the engine) to the pending counts; the body to push."""
        for key, n in answers.items():
            self.pending[key] = self.pending.get(key, 0) + n
        now = self.clock()
        return usage_metrics_body(
            name=self.name,
            kind=self.kind,
            startup=self.started,
            window=now - self.window_start,
            now=now,
            answers=self.pending,
            active=active,
        )

    def done(self, error: Exception | None) -> None:
        """Records a push's outcome: counts are dropped only after a success."""
        now = self.clock()
        self.next_at = now + self.interval
        if error is None:
            self.pending.clear()
            self.window_start = now
            self.pushed += 1
            self.last_error = None
            return
        if isinstance(error, CapiError) and error.status == 404:
            self.disabled = True
            log.warning("the LAPI has no usage-metrics endpoint (crowdsec before 1.6.3): metrics pushes are off")
            return
        self.last_error = f"{type(error).__name__}: {error}"
        log.warning("usage metrics push failed (%s); the counts go in the next push", self.last_error)
