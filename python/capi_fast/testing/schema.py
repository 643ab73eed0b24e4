"""The request schemas the simulator enforces, as CrowdSec's CAPI swagger defines them.

Sources: crowdsec ``pkg/modelscapi/centralapi_swagger.yaml`` (``LoginRequest``,
``AddSignalsRequestItem`` and its source and decision items) and, for ``/v3/usage-metrics``,
``pkg/models/localapi_swagger.yaml`` (``AllMetrics``: crowdsec posts the same model to CAPI).
Each function returns why a body breaks the schema, or None. The scenario rule is the client's
own (``capi_fast.signals.SCENARIO_RE``, php-common's); times must be RFC 3339, which is what
every official client writes.
"""

from __future__ import annotations

import re
from typing import Any

from capi_fast.signals import SCENARIO_RE

__all__ = ["RFC3339", "login_problem", "signal_problem", "usage_metrics_problem"]

#: RFC 3339 date-time; the offset may also lack its colon (``+0000``, as cscapi writes it and
#: Go's go-openapi date-time parser accepts).
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:?\d{2})$",
    re.ASCII,
)
_LOGIN_ID = re.compile(r"^[A-Za-z0-9]{48}$", re.ASCII)

_SIGNAL_REQUIRED = ("message", "scenario", "scenario_hash", "scenario_version", "source", "start_at", "stop_at")
_SIGNAL_STRINGS = (
    "created_at",
    "machine_id",
    "uuid",
    "scenario_trust",
    "kind",
    *(k for k in _SIGNAL_REQUIRED if k != "source"),
)
_SOURCE_STRINGS = ("scope", "value", "ip", "range", "as_name", "as_number", "cn")
_DECISION_REQUIRED = ("duration", "id", "origin", "scenario", "scope", "type", "value")
_DECISION_STRINGS = ("duration", "origin", "scenario", "scope", "type", "value", "uuid", "until")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _strings(doc: dict[str, Any], keys: tuple[str, ...], where: str) -> str | None:
    for k in keys:
        if k in doc and doc[k] is not None and not isinstance(doc[k], str):
            return f"{where}{k} must be a string"
    return None


def login_problem(body: Any) -> str | None:
    """``LoginRequest``: machine_id of exactly 48 letters or digits, a password, scenario names."""
    if not isinstance(body, dict):
        return "a JSON object is required"
    if not isinstance(body.get("machine_id"), str) or not _LOGIN_ID.fullmatch(body["machine_id"]):
        return "machine_id must be exactly 48 letters or digits"
    if not isinstance(body.get("password"), str):
        return "password is required"
    scenarios = body.get("scenarios")
    if scenarios is None:
        return None
    if not isinstance(scenarios, list):
        return "scenarios must be a list"
    for s in scenarios:
        if not isinstance(s, str) or not SCENARIO_RE.fullmatch(s):
            return f"scenario {str(s)[:80]!r} is not <product>/<name>"
    return None


def _decision_problem(d: Any, where: str) -> str | None:
    if not isinstance(d, dict):
        return f"{where} must be an object"
    for k in _DECISION_REQUIRED:
        if d.get(k) is None:
            return f"{where}.{k} is required"
    if not _is_int(d["id"]):
        return f"{where}.id must be an integer"
    if "simulated" in d and d["simulated"] is not None and not isinstance(d["simulated"], bool):
        return f"{where}.simulated must be a boolean"
    return _strings(d, _DECISION_STRINGS, f"{where}.")


def signal_problem(s: Any) -> str | None:
    """``AddSignalsRequestItem``: required fields, types, RFC 3339 times, the scenario rule."""
    if not isinstance(s, dict):
        return "not an object"
    for k in _SIGNAL_REQUIRED:
        if s.get(k) is None:
            return f"{k} is required"
    problem = _strings(s, _SIGNAL_STRINGS, "")
    if problem:
        return problem
    if not SCENARIO_RE.fullmatch(s["scenario"]):
        return f"scenario {s['scenario'][:80]!r} is not <product>/<name>"
    for k in ("start_at", "stop_at", "created_at"):
        if s.get(k) is not None and not RFC3339.fullmatch(s[k]):
            return f"{k} {s[k][:40]!r} is not an RFC 3339 time"
    if "alert_id" in s and s["alert_id"] is not None and not _is_int(s["alert_id"]):
        return "alert_id must be an integer"
    source = s["source"]
    if not isinstance(source, dict):
        return "source must be an object"
    for k in ("scope", "value"):
        if source.get(k) is None:
            return f"source.{k} is required"
    problem = _strings(source, _SOURCE_STRINGS, "source.")
    if problem:
        return problem
    for k in ("latitude", "longitude"):
        if source.get(k) is not None and not _is_number(source[k]):
            return f"source.{k} must be a number"
    context = s.get("context")
    if context is not None:
        if not isinstance(context, list) or not all(isinstance(c, dict) for c in context):
            return "context must be a list of {key, value} objects"
        for i, c in enumerate(context):
            problem = _strings(c, ("key", "value"), f"context[{i}].")
            if problem:
                return problem
    decisions = s.get("decisions")
    if decisions is not None:
        if not isinstance(decisions, list):
            return "decisions must be a list"
        for i, d in enumerate(decisions):
            problem = _decision_problem(d, f"decisions[{i}]")
            if problem:
                return problem
    return None


def _base_metrics_problem(m: Any, where: str) -> str | None:
    """``BaseMetrics``: version and utc_startup_timestamp required; os, metrics, feature_flags."""
    if not isinstance(m, dict):
        return f"{where} must be an object"
    if not isinstance(m.get("version"), str) or len(m["version"]) > 255:
        return f"{where}.version is required (a string of at most 255 characters)"
    # crowdsec (1.6+) sends utc_startup_timestamp as null: null counts as absent, not as an error.
    if m.get("utc_startup_timestamp") is not None and not _is_int(m["utc_startup_timestamp"]):
        return f"{where}.utc_startup_timestamp must be an integer"
    os_ = m.get("os")
    if os_ is not None and (
        not isinstance(os_, dict) or not isinstance(os_.get("name"), str) or not isinstance(os_.get("version"), str)
    ):
        return f"{where}.os needs a name and a version"
    flags = m.get("feature_flags")
    if flags is not None and (not isinstance(flags, list) or not all(isinstance(f, str) for f in flags)):
        return f"{where}.feature_flags must be a list of strings"
    details = m.get("metrics")
    if details is None:
        return None
    if not isinstance(details, list):
        return f"{where}.metrics must be a list"
    for i, d in enumerate(details):
        w = f"{where}.metrics[{i}]"
        if not isinstance(d, dict) or not isinstance(d.get("items"), list) or not isinstance(d.get("meta"), dict):
            return f"{w} needs items and meta"
        meta = d["meta"]
        if not _is_int(meta.get("window_size_seconds")) or not _is_int(meta.get("utc_now_timestamp")):
            return f"{w}.meta needs integer window_size_seconds and utc_now_timestamp"
        for j, item in enumerate(d["items"]):
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("name"), str)
                or not _is_number(item.get("value"))
                or not isinstance(item.get("unit"), str)
            ):
                return f"{w}.items[{j}] needs a name, a numeric value and a unit"
            labels = item.get("labels")
            if labels is not None and (
                not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values())
            ):
                return f"{w}.items[{j}].labels must map names to strings"
    return None


def usage_metrics_problem(body: Any) -> str | None:
    """``AllMetrics``: remediation_components, log_processors and lapi, each a ``BaseMetrics``."""
    if not isinstance(body, dict):
        return "the body must be an object"
    for key in ("remediation_components", "log_processors"):
        items = body.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            return f"{key} must be a list"
        for i, m in enumerate(items):
            problem = _base_metrics_problem(m, f"{key}[{i}]")
            if problem:
                return problem
            if key == "log_processors" and any(
                m.get(f) is not None and not isinstance(m[f], dict) for f in ("hub_items", "datasources")
            ):
                return f"{key}[{i}].hub_items and datasources must be objects"
            if key == "remediation_components" and m.get("last_pull") is not None and not _is_int(m["last_pull"]):
                return f"{key}[{i}].last_pull must be an integer"
    lapi = body.get("lapi")
    if lapi is not None:
        return _base_metrics_problem(lapi, "lapi")
    return None
