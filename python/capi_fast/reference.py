"""A deliberately simple pure-Python decision index with the native ``DecisionIndex``'s API.

It is the oracle of the property tests and the baseline of the benchmarks: plain dicts keyed by
prefix length, the stdlib ``ipaddress`` for parsing, no cleverness. Its rules are the native
index's rules, written the obvious way.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from capi_fast.errors import InvalidDecision, InvalidIP, SnapshotError
from capi_fast.files import write_atomic

__all__ = ["ReferenceBatchResult", "ReferenceIndex", "parse_addr", "parse_net"]

NEVER = (1 << 48) - 1
MAX_TEXT = 64
MAX_NAME = 256
_MAPPED = 0xFFFF
_DIGITS = frozenset("0123456789")

Net = tuple[int, int, int]  # (family, network int, prefix length)


def _invalid(s: str, why: str) -> InvalidIP:
    shown = s[:MAX_TEXT] + ("..." if len(s) > MAX_TEXT else "")
    return InvalidIP(f"invalid IP address or network {shown!r}: {why}")


def _host(s: str, whole: str) -> tuple[int, int]:
    try:
        if ":" in s:
            if "%" in s:
                raise ValueError("zone index")
            v = int(ipaddress.IPv6Address(s))
            if v >> 32 == _MAPPED:
                return 4, v & 0xFFFFFFFF
            return 6, v
        return 4, int(ipaddress.IPv4Address(s))
    except ValueError:
        raise _invalid(whole, "not an IP address") from None


def _text(value: object, what: str = "value") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def parse_addr(value: object) -> tuple[int, int]:
    """Parses an address into (family, int), folding IPv4-mapped IPv6 to IPv4."""
    s = _text(value, "ip")
    if not s:
        raise _invalid(s, "empty")
    if len(s) > MAX_TEXT:
        raise _invalid(s, "too long")
    return _host(s, s)


def parse_net(value: object) -> tuple[Net, bool]:
    """Parses an address or CIDR into ((family, network, length), host bits were set)."""
    s = _text(value)
    if not s:
        raise _invalid(s, "empty")
    if len(s) > MAX_TEXT:
        raise _invalid(s, "too long")
    host, slash, length = s.partition("/")
    if slash and (not length or len(length) > 3 or not set(length) <= _DIGITS):
        raise _invalid(s, "prefix length is not a number")
    was_v6 = ":" in host
    fam, v = _host(host, s)
    bits = 128 if was_v6 else (32 if fam == 4 else 128)
    n = int(length) if slash else bits
    if n > bits:
        raise _invalid(s, "prefix length out of range")
    if fam == 4 and was_v6:
        if n < 96:
            fam, v = 6, (_MAPPED << 32) | v
        else:
            n -= 96
    width = 32 if fam == 4 else 128
    mask = ((1 << n) - 1) << (width - n)
    return (fam, v & mask, n), (v & mask) != v


def _ms(t: float) -> int:
    return min(max(math.floor(t * 1000.0), 0), NEVER - 1)


def _clock(now: float | None) -> float:
    if now is None:
        return time.time()
    if not math.isfinite(now) or now < 0:
        raise ValueError(f"now must be a finite, non-negative Unix time, got {now}")
    return float(now)


def _expiry(now: float, ttl: float | None) -> int:
    if ttl is None or ttl == math.inf:
        return NEVER
    if math.isnan(ttl):
        raise ValueError("ttl must be a number of seconds, got NaN")
    return _ms(now + ttl)


def _check_name(what: str, s: str) -> None:
    if not s or len(s.encode()) > MAX_NAME or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in s):
        raise InvalidDecision(f"{what} must be 1 to {MAX_NAME} printable characters, got {s[:40]!r}")


def format_net(net: Net) -> str:
    """Formats (family, network, length) as ``ipaddress`` does."""
    fam, v, n = net
    addr = ipaddress.IPv4Address(v) if fam == 4 else ipaddress.IPv6Address(v)
    return f"{addr}/{n}"


@dataclass(frozen=True)
class ReferenceBatchResult:
    """Same fields as the native ``BatchResult``."""

    added: int = 0
    refreshed: int = 0
    removed: int = 0
    skipped: int = 0
    normalized: int = 0


class ReferenceExport:
    """``ExportBlocks``' twin: one export, as CIDR -> end."""

    def __init__(self, family: int, ends: dict[str, float | None]) -> None:
        self.family, self._ends = family, ends

    def __len__(self) -> int:
        return len(self._ends)

    def content(self) -> dict[str, float | None]:
        """CIDR -> end of its answer."""
        return dict(self._ends)


class ReferenceIndex:
    """Pure-Python twin of ``capi_fast.DecisionIndex`` (same methods, same answers)."""

    def __init__(self, priorities: Sequence[str] = ("ban", "captcha")) -> None:
        """Creates an empty index ranking ``priorities`` most severe first."""
        prios = list(priorities)
        for p in prios:
            _check_name("remediation", p)
        if len(set(prios)) != len(prios):
            raise InvalidDecision("a remediation is listed twice in priorities")
        self._priorities = prios
        self._remediations: list[str] = []
        for p in prios:
            self._intern(p)
        # (family, length) -> {network: {(origin, remediation): expiry_ms}}
        self._tables: dict[tuple[int, int], dict[int, dict[tuple[str, str], int]]] = {}
        self._normalized = 0

    def _intern(self, rem: str) -> None:
        if rem not in self._remediations:
            _check_name("remediation", rem)
            self._remediations.append(rem)

    def _rank(self, rem: str) -> tuple[int, str]:
        try:
            return (self._priorities.index(rem), "")
        except ValueError:
            return (len(self._priorities), rem)

    # -- writing -------------------------------------------------------------------------------

    def _parse_add(
        self, item: object, remediation: str, ttl: float | None, origin: str, now: float
    ) -> tuple[Net, bool, str, str, int]:
        if isinstance(item, str):
            value, rem, t, org = item, remediation, ttl, origin
        elif isinstance(item, tuple) and 1 <= len(item) <= 4:
            value = _text(item[0])
            rem = _text(item[1], "remediation") if len(item) > 1 else remediation
            t = item[2] if len(item) > 2 else ttl
            org = _text(item[3], "origin") if len(item) > 3 else origin
        else:
            raise TypeError("an add item must be a str or a tuple (value, remediation, ttl, origin)")
        if t is not None and not isinstance(t, int | float):
            raise TypeError("ttl must be a number of seconds or None")
        exp = _expiry(now, None if t is None else float(t))
        net, normalized = parse_net(value)
        return net, normalized, rem, org, exp

    def apply(
        self,
        add: Iterable[Any] | None = None,
        remove: Iterable[Any] | None = None,
        *,
        remediation: str = "ban",
        ttl: float | None = None,
        origin: str = "manual",
        now: float | None = None,
        strict: bool = True,
    ) -> ReferenceBatchResult:
        """Applies removals then additions as one batch."""
        t = _clock(now)
        now_ms = _ms(t)
        skipped = 0
        adds = []
        for item in add or ():
            try:
                adds.append(self._parse_add(item, remediation, ttl, origin, t))
            except InvalidIP:
                if strict:
                    raise
                skipped += 1
        removes = []
        for item in remove or ():
            if isinstance(item, str):
                value, o, r = item, None, None
            elif isinstance(item, tuple) and 1 <= len(item) <= 3:
                value = _text(item[0])
                o = _text(item[1], "filter") if len(item) > 1 and item[1] is not None else None
                r = _text(item[2], "filter") if len(item) > 2 and item[2] is not None else None
            else:
                raise TypeError("a remove item must be a str or a tuple (value, origin, remediation)")
            try:
                removes.append((parse_net(value)[0], o, r))
            except InvalidIP:
                if strict:
                    raise
                skipped += 1
        for _, _, rem, org, _ in adds:
            _check_name("origin", org)
            self._intern(rem)
        removed = sum(self._remove(net, o, r) for net, o, r in removes)
        added = refreshed = 0
        for net, _, rem, org, exp in adds:
            if exp <= now_ms:
                removed += self._remove(net, org, rem)
                continue
            decs = self._tables.setdefault((net[0], net[2]), {}).setdefault(net[1], {})
            if (org, rem) in decs:
                refreshed += 1
            else:
                added += 1
            decs[(org, rem)] = exp
        normalized = sum(1 for a in adds if a[1])
        self._normalized += normalized
        return ReferenceBatchResult(added, refreshed, removed, skipped, normalized)

    def add(
        self,
        value: str,
        remediation: str = "ban",
        *,
        ttl: float | None = None,
        origin: str = "manual",
        now: float | None = None,
    ) -> bool:
        """Adds one decision; True if it was not held."""
        return self.apply([(_text(value), remediation, ttl, origin)], now=now).added == 1

    def add_many(
        self,
        items: Iterable[Any],
        remediation: str = "ban",
        *,
        ttl: float | None = None,
        origin: str = "manual",
        now: float | None = None,
        strict: bool = True,
    ) -> ReferenceBatchResult:
        """Adds many decisions in one batch."""
        return self.apply(items, None, remediation=remediation, ttl=ttl, origin=origin, now=now, strict=strict)

    def _remove(self, net: Net, origin: str | None, rem: str | None) -> int:
        table = self._tables.get((net[0], net[2]))
        decs = table.get(net[1]) if table else None
        if not decs or table is None:
            return 0
        gone = [k for k in decs if (origin is None or k[0] == origin) and (rem is None or k[1] == rem)]
        for k in gone:
            del decs[k]
        if not decs:
            del table[net[1]]
        return len(gone)

    def remove(self, value: str, origin: str | None = None, remediation: str | None = None) -> int:
        """Removes decisions on exactly ``value``."""
        return self._remove(parse_net(value)[0], origin, remediation)

    def purge_expired(self, now: float | None = None) -> int:
        """Removes expired decisions (a full scan: this is the reference)."""
        now_ms = _ms(_clock(now))
        n = 0
        for table in self._tables.values():
            for net in list(table):
                decs = table[net]
                for k in [k for k, e in decs.items() if e <= now_ms]:
                    del decs[k]
                    n += 1
                if not decs:
                    del table[net]
        return n

    # -- reading -------------------------------------------------------------------------------

    def _best(self, fam: int, v: int, now_ms: int) -> str | None:
        width = 32 if fam == 4 else 128
        best: str | None = None
        for (f, n), table in self._tables.items():
            if f != fam:
                continue
            decs = table.get(v & (((1 << n) - 1) << (width - n)))
            if not decs:
                continue
            for (_, rem), exp in decs.items():
                if exp > now_ms and (best is None or self._rank(rem) < self._rank(best)):
                    best = rem
        return best

    def lookup(self, ip: str, now: float | None = None) -> str | None:
        """The remediation for ``ip``, or None."""
        fam, v = parse_addr(ip)
        return self._best(fam, v, _ms(_clock(now)))

    def lookup_many(self, ips: Any, *, family: int | None = None, now: float | None = None) -> Any:
        """A list of str gives a list; a packed buffer gives bytes of codes."""
        now_ms = _ms(_clock(now))
        if isinstance(ips, bytes | bytearray | memoryview):
            if family not in (4, 6):
                raise ValueError("a packed buffer needs family=4 or family=6")
            width = 4 if family == 4 else 16
            data = bytes(ips)
            if len(data) % width:
                raise ValueError(f"buffer length {len(data)} is not a multiple of {width} bytes")
            out = bytearray()
            for i in range(0, len(data), width):
                v = int.from_bytes(data[i : i + width], "big")
                fam = family
                if fam == 6 and v >> 32 == _MAPPED:
                    fam, v = 4, v & 0xFFFFFFFF
                rem = self._best(fam, v, now_ms)
                out.append(0 if rem is None else self._remediations.index(rem) + 1)
            return bytes(out)
        if family is not None:
            raise TypeError("family= applies to a packed buffer")
        return [self._best(*parse_addr(ip), now_ms) for ip in ips]

    def __len__(self) -> int:
        """Decisions held, including expired ones not purged yet."""
        return sum(len(d) for t in self._tables.values() for d in t.values())

    def __contains__(self, ip: str) -> bool:
        """True when ``ip`` has an active decision now."""
        return self.lookup(ip) is not None

    @property
    def codes(self) -> tuple[str | None, ...]:
        """Remediation by packed-lookup code; 0 is None."""
        return (None, *self._remediations)

    @property
    def priorities(self) -> list[str]:
        """Remediations from most to least severe."""
        return list(self._priorities)

    def stats(self) -> dict[str, Any]:
        """Counts by family and kind."""

        def count(fam: int, host: bool) -> int:
            full = 32 if fam == 4 else 128
            return sum(len(t) for (f, n), t in self._tables.items() if f == fam and (n == full) == host)

        return {
            "decisions": len(self),
            "ipv4_addresses": count(4, True),
            "ipv4_ranges": count(4, False),
            "ipv6_addresses": count(6, True),
            "ipv6_ranges": count(6, False),
            "normalized": self._normalized,
            "remediations": list(self._remediations),
        }

    def _active(self, now_ms: int) -> list[tuple[Net, str, str, int]]:
        return [
            ((fam, net, n), org, rem, exp)
            for (fam, n), table in self._tables.items()
            for net, decs in table.items()
            for (org, rem), exp in decs.items()
            if exp > now_ms
        ]

    def active_counts(self, now: float | None = None) -> dict[tuple[str, str], int]:
        """Active decisions at ``now`` by (origin, remediation)."""
        out: dict[tuple[str, str], int] = {}
        for _, org, rem, _ in self._active(_ms(_clock(now))):
            out[(org, rem)] = out.get((org, rem), 0) + 1
        return out

    def export_cidrs(self, remediation: str = "ban", family: int = 4, now: float | None = None) -> list[str]:
        """The fewest CIDRs covering exactly the addresses answering ``remediation``."""
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {family}")
        now_ms = _ms(_clock(now))
        width = 32 if family == 4 else 128
        cuts = set()
        for (fam, net, n), _, _, _ in self._active(now_ms):
            if fam == family:
                cuts.add(net)
                cuts.add(net + (1 << (width - n)))
        edges = sorted(cuts)
        cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        nets: list[Any] = []
        for a, b in zip(edges, edges[1:], strict=False):
            if self._best(family, a, now_ms) == remediation:
                nets.extend(ipaddress.summarize_address_range(cls(a), cls(b - 1)))
        return [str(n) for n in ipaddress.collapse_addresses(nets)]

    def export_until(
        self, remediation: str = "ban", family: int = 4, now: float | None = None
    ) -> dict[str, float | None]:
        """``export_cidrs`` with when each CIDR stops answering ``remediation``.

        That is the latest expiry among the active decisions of ``remediation`` meeting the
        CIDR (None: one never expires).
        """
        now_ms = _ms(_clock(now))
        active = [
            (net, n, exp) for (fam, net, n), _, rem, exp in self._active(now_ms) if fam == family and rem == remediation
        ]
        width = 32 if family == 4 else 128
        out: dict[str, float | None] = {}
        for cidr in self.export_cidrs(remediation, family, now):
            block = ipaddress.ip_network(cidr)
            start, n = int(block.network_address), block.prefixlen
            last = max(exp for net, m, exp in active if start >> (width - min(n, m)) == net >> (width - min(n, m)))
            out[cidr] = None if last >= NEVER else last / 1000.0
        return out

    def export_changes(
        self,
        remediation: str = "ban",
        family: int = 4,
        now: float | None = None,
        previous: Any = None,
        until: bool = True,
    ) -> tuple[ReferenceExport, dict[str, float | None], dict[str, float | None]]:
        """The export now and what changed since ``previous`` (added with new ends, deleted with old)."""
        if until:
            current = self.export_until(remediation, family, now)
        else:
            current = dict.fromkeys(self.export_cidrs(remediation, family, now))
        before: dict[str, float | None] = previous.content() if previous is not None else {}
        added = {c: end for c, end in current.items() if c not in before or before[c] != end}
        deleted = {c: end for c, end in before.items() if c not in current or current[c] != end}
        return ReferenceExport(family, current), added, deleted

    def save_mapped(
        self, path: str | os.PathLike[str], metadata: bytes | None = None, now: float | None = None
    ) -> None:
        """The reference has one file format: ``save``'s."""
        self.save(path, metadata=metadata, now=now)

    def save(self, path: str | os.PathLike[str], *, metadata: bytes | None = None, now: float | None = None) -> None:
        """Writes the active decisions as JSON, atomically."""
        now_ms = _ms(_clock(now))
        doc = {
            "priorities": self._priorities,
            "metadata": (metadata or b"").hex(),
            "decisions": [[format_net(n), o, r, e] for n, o, r, e in self._active(now_ms)],
        }
        write_atomic(path, json.dumps(doc).encode())

    @staticmethod
    def load(path: str | os.PathLike[str]) -> ReferenceIndex:
        """Reads what ``save`` wrote."""
        return ReferenceIndex.load_with_metadata(path)[0]

    @staticmethod
    def load_with_metadata(path: str | os.PathLike[str]) -> tuple[ReferenceIndex, bytes]:
        """Reads what ``save`` wrote, with its metadata."""
        try:
            with open(path) as f:
                doc = json.load(f)
            ix = ReferenceIndex(doc["priorities"])
            for value, origin, rem, exp in doc["decisions"]:
                ix._intern(rem)
                (fam, net, n), _ = parse_net(value)
                ix._tables.setdefault((fam, n), {}).setdefault(net, {})[(origin, rem)] = int(exp)
            meta = bytes.fromhex(doc["metadata"])
        except (ValueError, KeyError, TypeError) as e:
            raise SnapshotError(f"{os.fspath(path)}: corrupt reference snapshot: {e}") from None
        return ix, meta
