"""What the CAPI simulator holds and logs.

Faults to inject, logged requests, decisions, lists and watchers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fault", "Logged"]

MAX_BODY = 16 << 20
ROUTE = re.compile(
    r"^/(v2|v3)/(watchers/login|watchers/enroll|watchers|signals|decisions/stream|metrics|usage-metrics)/?$"
)
LIST_DOWNLOAD = re.compile(r"^/(blocklists|allowlists)/([A-Za-z0-9_-]+)/download$")
MACHINE_ID = re.compile(r"^[A-Za-z0-9]+$", re.ASCII)


@dataclass(frozen=True)
class Fault:
    """How the simulator misbehaves on one coming call.

    Attributes:
        kind: ``status`` (answer ``status``), ``timeout`` (answer nothing for ``delay`` seconds,
            then drop the connection), ``malformed`` (200 with a body that is not JSON),
            ``truncated`` (200 whose body stops before its Content-Length) or ``lost`` (the call
            is carried out, then the connection dropped before the answer: a register that CAPI
            stored although the client never learnt it).
        status: the HTTP status of a ``status`` fault (500, 503, 429, 401...).
        retry_after: the Retry-After header sent with it, in seconds.
        path: only calls whose path contains this text are affected.
        delay: how long a ``timeout`` fault stalls.
    """

    kind: str = "status"
    status: int = 500
    retry_after: float | None = None
    path: str | None = None
    delay: float = 10.0


@dataclass(frozen=True)
class Logged:
    """One request the simulator received."""

    method: str
    path: str
    status: int
    user_agent: str
    authorized: bool
    content_type: str = ""
    content_encoding: str = ""


@dataclass
class _Decision:
    value: str
    scenario: str
    scope: str
    type: str
    origin: str
    expires: float
    id: int


@dataclass
class _Blocklist:
    id: str
    name: str
    values: list[str]
    remediation: str
    duration: float | None
    scope: str | None
    modified: float
    redirect: bool | str = False


@dataclass
class _Allowlist:
    id: str
    name: str
    entries: list[dict[str, Any]]
    modified: float


@dataclass
class _Watcher:
    password: str
    scenarios: list[str] = field(default_factory=list)
    enrolled: dict[str, Any] | None = None
    seen_seq: int | None = None  # stream position; None until the startup pull


def _scope(value: str) -> str:
    return "range" if "/" in value else "ip"
