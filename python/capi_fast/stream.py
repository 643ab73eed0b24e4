"""Turning CAPI/LAPI stream answers into index operations, skipping (and counting) bad items."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StreamBatch", "parse_go_duration", "parse_stream"]

_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^([+-])?((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
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


def parse_stream(doc: dict[str, Any], *, default_origin: str = "CAPI") -> StreamBatch:
    """Reads a v3 (grouped) or v2/LAPI (flat) stream answer; malformed items are skipped and counted."""
    out = StreamBatch()
    for item in _items(doc.get("new")):
        if isinstance(item, dict) and "decisions" in item:  # v3 group
            if not _scope_ok(item.get("scope")):
                out.skipped += len(item["decisions"]) if isinstance(item.get("decisions"), list) else 1
                continue
            for d in _items(item.get("decisions")):
                try:
                    out.add.append((str(d["value"]), "ban", parse_go_duration(d["duration"]), default_origin))
                except (KeyError, TypeError, ValueError):
                    out.skipped += 1
        elif isinstance(item, dict):  # v2 / LAPI flat
            try:
                if not _scope_ok(item.get("scope")):
                    raise ValueError("scope")
                origin = str(item.get("origin") or default_origin)
                out.add.append((str(item["value"]), str(item["type"]), parse_go_duration(item["duration"]), origin))
            except (KeyError, TypeError, ValueError):
                out.skipped += 1
        else:
            out.skipped += 1
    for item in _items(doc.get("deleted")):
        if isinstance(item, dict) and "decisions" in item:  # v3 group: a list of values
            if not _scope_ok(item.get("scope")):
                out.skipped += 1
                continue
            for v in _items(item.get("decisions")):
                if isinstance(v, str):
                    out.remove.append((v, default_origin, None))
                else:
                    out.skipped += 1
        elif isinstance(item, dict) and isinstance(item.get("value"), str) and _scope_ok(item.get("scope")):
            out.remove.append((item["value"], str(item.get("origin") or default_origin), item.get("type")))
        else:
            out.skipped += 1
    links = doc.get("links")
    if isinstance(links, dict):
        out.links = [b for b in _items(links.get("blocklists")) if isinstance(b, dict)]
    return out


def _items(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else ()
