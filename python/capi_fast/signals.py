"""Signals: what this software tells CAPI about the IPs it remediated.

A **decision signal** carries the remediation it caused (ban, captcha...); a **whisper** reports
a trivial behaviour (a 404) and carries none. ``Signal.to_payload`` gives the JSON object CAPI's
``POST /v3/signals`` takes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import threading
import uuid as uuid_mod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from capi_fast.errors import InvalidSignal

__all__ = [
    "MAX_SIGNALS_PER_CALL",
    "GUIDE_SCENARIO_RE",
    "SCENARIO_RE",
    "SCENARIO_TRUSTS",
    "Signal",
    "SignalDecision",
    "format_duration",
    "parse_rfc3339",
    "rfc3339",
    "scenario_problem",
]

#: Most signals CAPI takes in one ``POST /signals`` (the SDK guide's rule), so the most one
#: batch sends.
MAX_SIGNALS_PER_CALL = 250

#: The rule for scenario names: ``<product>/<name>``, the product 1-16 and the name 1-64 letters,
#: digits, ``_`` or ``-``, either case. It is the official SDK's (php-common's ``Constants``),
#: whose product part is alphanumeric only, widened to the hub authors CAPI serves scenarios of
#: (``Dominic-Wagner/vaultwarden-bf``, ``gauth-fr/immich-bf``). Hub scenarios such as
#: ``crowdsecurity/CVE-2022-26134`` carry capitals.
SCENARIO_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}/[A-Za-z0-9_-]{1,64}$", re.ASCII)
#: The convention the vendor's guide asks integrators to name their own scenarios by. Names
#: outside it but inside ``SCENARIO_RE`` are accepted, with one warning per name.
GUIDE_SCENARIO_RE = re.compile(r"^[a-z0-9_-]+/[a-z0-9_-]+$", re.ASCII)
#: Values crowdsec gives ``scenario_trust`` (hub state of the scenario; ``manual`` for cscli).
SCENARIO_TRUSTS = ("certified", "manual", "tainted", "custom")
MAX_MESSAGE = 4096
MAX_CONTEXT = 64

log = logging.getLogger("capi_fast.signals")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def scenario_problem(name: object) -> str | None:
    """Why ``name`` is not a scenario name CAPI takes, or None when it is.

    Logs one warning per process for a name outside the vendor guide's lowercase convention.
    """
    if not isinstance(name, str) or not SCENARIO_RE.fullmatch(name):
        return (
            f"scenario {str(name)[:80]!r} must be <product>/<name>: a product of 1 to 16 and a name of "
            "1 to 64 letters, digits, '_' or '-' (e.g. mywaf/login-bruteforce)"
        )
    if not GUIDE_SCENARIO_RE.fullmatch(name) and name not in _warned:
        with _warned_lock:
            if name not in _warned:
                _warned.add(name)
                log.warning(
                    "scenario %r is accepted, but the vendor's guide asks integrators to name their own "
                    "scenarios in lowercase (%s)",
                    name,
                    GUIDE_SCENARIO_RE.pattern,
                )
    return None


def rfc3339(t: datetime | float | None = None) -> str:
    """Formats a time as RFC 3339 UTC with a ``Z``, microsecond precision (CAPI's format)."""
    if t is None:
        dt = datetime.now(UTC)
    elif isinstance(t, datetime):
        if t.tzinfo is None:
            raise InvalidSignal("timestamps must be timezone-aware (a naive datetime is ambiguous)")
        dt = t.astimezone(UTC)
    else:
        dt = datetime.fromtimestamp(float(t), UTC)
    # isoformat is C code and several times quicker than strftime; in UTC it ends in "+00:00".
    return dt.isoformat(timespec="microseconds")[:-6] + "Z"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 time as an aware datetime; raises ValueError.

    Go writes nanoseconds: the fraction is cut to microseconds. A time (or date) without a zone
    is UTC, as crowdsec's date parser reads it.
    """
    t = datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00").replace("z", "+00:00")))
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """Formats seconds as a Go duration string, as CrowdSec writes them (``3600`` -> ``1h0m0s``)."""
    if seconds <= 0:
        raise InvalidSignal(f"a decision duration must be positive, got {seconds}")
    whole = int(seconds)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    frac = seconds - whole
    sec = f"{s + frac:.3f}".rstrip("0").rstrip(".") if frac else str(s)
    return f"{h}h{m}m{sec}s"


def _source(value: str) -> tuple[str, str]:
    """Returns (scope, normalised value) for an IP or a range; raises InvalidSignal otherwise."""
    if not isinstance(value, str):
        raise InvalidSignal(f"the source must be an IP address or range as str, got {type(value).__name__}")
    try:
        # The common case, a canonical dotted quad, without building an ipaddress object: it is
        # one exactly when inet_pton takes it and inet_ntoa gives it back unchanged.
        canonical = socket.inet_ntoa(socket.inet_pton(socket.AF_INET, value))
        if canonical == value:
            return "Ip", canonical
    except (OSError, ValueError):
        pass
    try:
        if "/" in value:
            net = ipaddress.ip_network(value, strict=False)
            if net.num_addresses > 1:
                return "Range", str(net)
            return "Ip", str(net.network_address)
        return "Ip", str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidSignal(f"the source {value[:64]!r} is not an IP address or range") from None


def _uuid4() -> str:
    """A random UUID (version 4, RFC 4122 variant) as text: ``str(uuid.uuid4())`` minus the object."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _scenario(name: str) -> str:
    problem = scenario_problem(name)
    if problem is not None:
        raise InvalidSignal(problem)
    return name


def _trust(trust: str) -> str:
    if trust not in SCENARIO_TRUSTS:
        raise InvalidSignal(f"scenario_trust must be one of {SCENARIO_TRUSTS}, got {str(trust)[:40]!r}")
    return trust


@dataclass(frozen=True, slots=True)
class SignalDecision:
    """The remediation a decision signal caused."""

    remediation: str
    duration: float
    origin: str = "crowdsec"
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal. Build it with ``Signal.decision(...)`` or ``Signal.whisper(...)``.

    Attributes:
        scenario: ``<product>/<scenario>``, matching ``SCENARIO_RE``.
        scope: ``Ip`` or ``Range``.
        value: the normalised IP or CIDR.
        message: free text for humans.
        start_at: RFC 3339 UTC of the first event.
        stop_at: RFC 3339 UTC of the last event.
        created_at: RFC 3339 UTC of the signal's creation.
        uuid: unique id, CAPI's de-duplication key.
        remediation: the remediation caused, or None for a whisper.
        context: ``(key, value)`` pairs shown in the console.
        scenario_hash: hash of the scenario's definition, if any.
        scenario_version: version of the scenario's definition, if any.
        scenario_trust: one of ``SCENARIO_TRUSTS``: ``manual`` (the default) unless the scenario is
            ``certified`` (a hub scenario as published), ``tainted`` (modified) or ``custom``.
    """

    scenario: str
    scope: str
    value: str
    message: str
    start_at: str
    stop_at: str
    created_at: str
    uuid: str
    remediation: SignalDecision | None = None
    context: tuple[tuple[str, str], ...] = field(default=())
    scenario_hash: str = ""
    scenario_version: str = ""
    scenario_trust: str = "manual"

    @classmethod
    def _build(
        cls,
        ip: str,
        scenario: str,
        remediation: SignalDecision | None,
        message: str,
        start_at: datetime | float | None,
        stop_at: datetime | float | None,
        context: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        scenario_hash: str,
        scenario_version: str,
        uuid: str | None,
        scenario_trust: str,
    ) -> Signal:
        scope, value = _source(ip)
        if not isinstance(message, str) or len(message) > MAX_MESSAGE:
            raise InvalidSignal(f"message must be a str of at most {MAX_MESSAGE} characters")
        pairs = tuple((context.items() if isinstance(context, Mapping) else context) or ())
        if len(pairs) > MAX_CONTEXT or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            raise InvalidSignal(f"context must be at most {MAX_CONTEXT} (str, str) pairs")
        created = rfc3339()
        start = rfc3339(start_at) if start_at is not None else created
        stop = rfc3339(stop_at) if stop_at is not None else start
        if stop < start:
            raise InvalidSignal(f"stop_at {stop} is before start_at {start}")
        if uuid is not None:
            try:
                uuid = str(uuid_mod.UUID(uuid))
            except (ValueError, TypeError, AttributeError):
                raise InvalidSignal(f"uuid {uuid!r} is not a UUID") from None
        return cls(
            scenario=_scenario(scenario),
            scope=scope,
            value=value,
            message=message,
            start_at=start,
            stop_at=stop,
            created_at=created,
            uuid=uuid or _uuid4(),
            remediation=remediation,
            context=pairs,
            scenario_hash=scenario_hash,
            scenario_version=scenario_version,
            scenario_trust=_trust(scenario_trust),
        )

    @classmethod
    def decision(
        cls,
        ip: str,
        scenario: str,
        *,
        remediation: str = "ban",
        duration: float = 86400,
        message: str = "",
        start_at: datetime | float | None = None,
        stop_at: datetime | float | None = None,
        origin: str = "crowdsec",
        context: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        scenario_hash: str = "",
        scenario_version: str = "",
        scenario_trust: str = "manual",
        uuid: str | None = None,
    ) -> Signal:
        """A signal about an IP or range this software remediated (banned, challenged...).

        Raises:
            InvalidSignal: bad scenario name, source, duration, timestamps or context.
        """
        if not isinstance(remediation, str) or not remediation:
            raise InvalidSignal("remediation must be a non-empty str such as 'ban' or 'captcha'")
        format_duration(duration)  # validates
        d = SignalDecision(remediation=remediation, duration=float(duration), origin=origin)
        return cls._build(
            ip, scenario, d, message, start_at, stop_at, context, scenario_hash, scenario_version, uuid, scenario_trust
        )

    @classmethod
    def whisper(
        cls,
        ip: str,
        scenario: str,
        *,
        message: str = "",
        start_at: datetime | float | None = None,
        stop_at: datetime | float | None = None,
        context: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        scenario_hash: str = "",
        scenario_version: str = "",
        scenario_trust: str = "manual",
        uuid: str | None = None,
    ) -> Signal:
        """A signal about a trivial behaviour (a 404, say) that caused no remediation.

        Raises:
            InvalidSignal: bad scenario name, source, timestamps or context.
        """
        return cls._build(
            ip,
            scenario,
            None,
            message,
            start_at,
            stop_at,
            context,
            scenario_hash,
            scenario_version,
            uuid,
            scenario_trust,
        )

    @property
    def is_whisper(self) -> bool:
        """True when the signal carries no decision."""
        return self.remediation is None

    def to_payload(self, machine_id: str) -> dict[str, Any]:
        """The JSON object CAPI expects for this signal, sent by machine ``machine_id``."""
        source: dict[str, Any] = {"scope": self.scope, "value": self.value}
        if self.scope == "Ip":
            source["ip"] = self.value
        else:
            source["range"] = self.value
        decisions = []
        if self.remediation is not None:
            decisions.append(
                {
                    "id": 0,
                    "uuid": self.uuid,
                    "duration": format_duration(self.remediation.duration),
                    "scenario": self.scenario,
                    "origin": self.remediation.origin,
                    "scope": self.scope,
                    "value": self.value,
                    "type": self.remediation.remediation,
                    "simulated": self.remediation.simulated,
                }
            )
        return {
            "machine_id": machine_id,
            "uuid": self.uuid,
            "scenario": self.scenario,
            "scenario_hash": self.scenario_hash,
            "scenario_version": self.scenario_version,
            "scenario_trust": self.scenario_trust,
            "message": self.message,
            "source": source,
            "start_at": self.start_at,
            "stop_at": self.stop_at,
            "created_at": self.created_at,
            "context": [{"key": k, "value": v} for k, v in self.context],
            "decisions": decisions,
        }
