"""Turning CAPI/LAPI stream answers into index operations, skipping (and counting) bad items."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StreamBatch", "parse_go_duration", "parse_stream"]

_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^([+-])?((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$", re.ASCII)
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", re.ASCII)
_SCOPES = {"ip", "range"}


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (``"147h3m2.5s"``, ``"-1s"``, ``"500ms"``).

    Raises:
        ValueError: not a Go duration.
    """
    if not isinstance(text, str) or not _DURATION.fullmatch(text):
        raise ValueError(f"not a Go duration: {str(text)[:40]!r}")
    total = sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))
    return -total if text.startswith("-") else total


@dataclass
class StreamBatch:
    """Index operations from one stream answer."""

    add: list[tuple[str, str, float, str]] = field(default_factory=list)  # (value, type, ttl, origin)
    remove: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # (value, origin, type)
    skipped: int = 0
    links: list[dict[str, Any]] = field(default_factory=list)


def _scope_ok(scope: Any) -> bool:
    return isinstance(scope, str) and scope.lower() in _SCOPES


def _origin(item: dict[str, Any], default: str) -> str:
    origin = item.get("origin")
    if origin is None or origin == "":
        return default
    if not isinstance(origin, str):
        raise TypeError("origin")
    return origin


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def parse_stream(doc: dict[str, Any], *, default_origin: str = "CAPI") -> StreamBatch:
    """Reads a v3 (grouped) or v2/LAPI (flat) stream answer; malformed items are skipped and counted.

    The pure-Python twin of ``capi_fast._native.parse_stream`` (which reads the raw bytes and is
    what the engine uses): same rules, compared in tests. Values are not checked as IPs here; the
    index skips and counts bad ones when the batch is applied.
    """
    out = StreamBatch()
    for item in _items(doc.get("new")):
        if isinstance(item, dict) and "decisions" in item:  # v3 group
            decisions = item["decisions"]
            if not _scope_ok(item.get("scope")):
                out.skipped += len(decisions) if isinstance(decisions, list) else 1
                continue
            for d in _items(decisions):
                try:
                    out.add.append((_text(d["value"]), "ban", parse_go_duration(d["duration"]), default_origin))
                except (KeyError, TypeError, ValueError):
                    out.skipped += 1
        elif isinstance(item, dict):  # v2 / LAPI flat
            try:
                if not _scope_ok(item.get("scope")):
                    raise ValueError("scope")
                origin = _origin(item, default_origin)
                out.add.append((_text(item["value"]), _text(item["type"]), parse_go_duration(item["duration"]), origin))
            except (KeyError, TypeError, ValueError):
                out.skipped += 1
        else:
            out.skipped += 1
    for item in _items(doc.get("deleted")):
        if isinstance(item, dict) and "decisions" in item:  # v3 group: a list of values
            decisions = item["decisions"]
            if not _scope_ok(item.get("scope")):
                out.skipped += len(decisions) if isinstance(decisions, list) else 1
                continue
            for v in _items(decisions):
                if isinstance(v, str):
                    out.remove.append((v, default_origin, None))
                else:
                    out.skipped += 1
        elif isinstance(item, dict):
            try:
                if not _scope_ok(item.get("scope")):
                    raise ValueError("scope")
                kind = item.get("type")
                if kind is not None and not isinstance(kind, str):
                    raise TypeError("type")
                out.remove.append((_text(item["value"]), _origin(item, default_origin), kind))
            except (KeyError, TypeError, ValueError):
                out.skipped += 1
        else:
            out.skipped += 1
    links = doc.get("links")
    if isinstance(links, dict):
        out.links = _blocklist_dicts(links)
    return out


def _blocklist_dicts(links: Any) -> list[dict[str, Any]]:
    """The blocklist links of a stream answer's ``links`` member as given (``capi_fast.lists`` checks them)."""
    if not isinstance(links, dict):
        return []
    return [b for b in _items(links.get("blocklists")) if isinstance(b, dict)]


def _items(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else ()
