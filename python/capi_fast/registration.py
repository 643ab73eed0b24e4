"""What ``capi-fast register`` was given, kept so later commands and the daemon need not repeat it.

``<home>/cli.json`` holds the scenarios, the machine_id prefix and the CAPI URL of the last
registration (0600, written atomically). A missing or damaged file reads as nothing remembered.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from capi_fast.files import write_atomic

__all__ = ["FILE", "Registration", "load_registration", "save_registration"]

FILE = "cli.json"


@dataclass(frozen=True)
class Registration:
    """The scenarios, prefix and CAPI URL ``register`` was given (empty when none)."""

    scenarios: tuple[str, ...] = ()
    prefix: str = ""
    url: str | None = None


def load_registration(home: str | os.PathLike[str]) -> Registration:
    """What was remembered in ``home`` (``Registration()`` when nothing usable is there)."""
    try:
        doc = json.loads((Path(home) / FILE).read_text())
    except (OSError, ValueError):
        return Registration()
    if not isinstance(doc, dict):
        return Registration()
    scenarios = doc.get("scenarios")
    url = doc.get("url")
    return Registration(
        scenarios=tuple(s for s in scenarios if isinstance(s, str)) if isinstance(scenarios, list) else (),
        prefix=str(doc.get("prefix") or ""),
        url=url if isinstance(url, str) and url else None,
    )


def save_registration(home: str | os.PathLike[str], registration: Registration) -> None:
    """Remembers ``registration`` in ``home`` (raises ``StorageError`` if it cannot be written)."""
    doc = {"scenarios": list(registration.scenarios), "prefix": registration.prefix, "url": registration.url}
    write_atomic(Path(home) / FILE, json.dumps(doc).encode())
