"""CAPI metrics: what this process tells CAPI about itself, and the schema CAPI checks them against.

crowdsec pushes ``POST /v3/metrics`` at start and then every 30 minutes, php-capi-client after
each login; the body has two required lists, ``bouncers`` (what pulls decisions) and
``machines`` (what pushes signals), whose items CrowdSec's CAPI swagger defines
(``pkg/modelscapi/centralapi_swagger.yaml``). ``capi_metrics`` builds it from an ``Activity``;
``metrics_problem`` is the one schema check, used by the client before sending and by the
simulator on receipt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capi_fast.signals import rfc3339

__all__ = ["METRICS_INTERVAL", "Activity", "capi_metrics", "metrics_problem"]

#: Seconds between two automatic metrics pushes (crowdsec's interval).
METRICS_INTERVAL = 30 * 60.0

_BOUNCER_FIELDS = ("custom_name", "last_pull", "name", "version")
_MACHINE_FIELDS = ("last_push", "last_update", "name", "version")


@dataclass
class Activity:
    """When this process last pulled decisions and pushed signals (Unix seconds, None: never)."""

    last_pull: float | None = None
    last_push: float | None = None


def capi_metrics(name: str, version: str, activity: Activity, now: float) -> dict[str, Any]:
    """The ``POST /v3/metrics`` body for an integration called ``name`` at ``version``.

    It is listed as a bouncer once it has pulled decisions and as a machine once it has pushed
    signals (both lists are always present, as the schema requires).
    """
    bouncers = []
    machines = []
    if activity.last_pull is not None:
        bouncers.append(
            {"custom_name": name, "name": name, "version": version, "last_pull": rfc3339(activity.last_pull)}
        )
    if activity.last_push is not None:
        machines.append(
            {"name": name, "version": version, "last_push": rfc3339(activity.last_push), "last_update": rfc3339(now)}
        )
    return {"bouncers": bouncers, "machines": machines}


def _items_problem(doc: dict[str, Any], key: str, fields: tuple[str, ...]) -> str | None:
    items = doc.get(key)
    if not isinstance(items, list):
        return f"{key} must be a list"
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return f"{key}[{i}] must be an object"
        for f in fields:
            if f in item and not isinstance(item[f], str):
                return f"{key}[{i}].{f} must be a string"
    return None


def metrics_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a metrics body CAPI's schema accepts, or None when it is."""
    if not isinstance(doc, dict):
        return "the body must be an object"
    return _items_problem(doc, "bouncers", _BOUNCER_FIELDS) or _items_problem(doc, "machines", _MACHINE_FIELDS)
