"""Seeded decision workloads, for the demo, the simulator's preload and the benchmarks."""

from __future__ import annotations

import ipaddress
import random

__all__ = ["community_blocklist", "mostly_clean_queries", "synthetic_decisions"]


def _net(family: int, bits: int, length: int) -> str:
    """The network of ``length`` holding address ``bits`` of IP version ``family``."""
    width = 32 if family == 4 else 128
    key = bits >> (width - length) << (width - length)
    return str(ipaddress.IPv4Network((key, length)) if family == 4 else ipaddress.IPv6Network((key, length)))


def synthetic_decisions(n: int, seed: int) -> list[tuple[str, str, float, str]]:
    """A community-blocklist-shaped list of ``(value, remediation, ttl, origin)``.

    About 95% IPv4 addresses, 3% IPv4 ranges (/8 to /31, mostly long), 2% IPv6 (/128 and
    /48 to /64); durations up to a week, as CAPI sends them.
    """
    rng = random.Random(seed)
    out: list[tuple[str, str, float, str]] = []
    for _ in range(n):
        roll = rng.random()
        ttl = rng.uniform(3600, 7 * 86400)
        if roll < 0.95:
            out.append((str(ipaddress.IPv4Address(rng.getrandbits(32))), "ban", ttl, "CAPI"))
        elif roll < 0.98:
            length = rng.choice([8] + [16] * 3 + [20] * 4 + list(range(22, 32)) * 6)
            out.append(
                (_net(4, rng.getrandbits(32), length), rng.choice(["ban", "ban", "captcha"]), ttl, "lists:firehol")
            )
        else:
            v = (0x2001 << 112) | rng.getrandbits(100)
            if rng.random() < 0.5:
                out.append((str(ipaddress.IPv6Address(v)), "ban", ttl, "CAPI"))
            else:
                out.append((_net(6, v, rng.randint(48, 64)), "ban", ttl, "CAPI"))
    return out


def community_blocklist(n: int, seed: int) -> list[tuple[str, str, float, str]]:
    """The community blocklist's shape: ``(value, remediation, ttl, origin)`` items.

    What CAPI sends: almost only single IPv4 addresses; about 0.3% ranges, almost all /24 or
    longer (a few /16 to /23); about 0.2% IPv6, mostly /128 with some /64. All ``ban``.
    """
    rng = random.Random(seed)
    out: list[tuple[str, str, float, str]] = []
    for _ in range(n):
        roll = rng.random()
        ttl = rng.uniform(3600, 7 * 86400)
        if roll < 0.995:
            out.append((str(ipaddress.IPv4Address(rng.getrandbits(32))), "ban", ttl, "CAPI"))
        elif roll < 0.998:
            length = rng.choice([16, 20, 22, 23] + [24] * 20 + list(range(25, 32)) * 2)
            out.append((_net(4, rng.getrandbits(32), length), "ban", ttl, "CAPI"))
        else:
            v = (0x2001 << 112) | rng.getrandbits(100)
            out.append((_net(6, v, 128 if rng.random() < 0.8 else 64), "ban", ttl, "CAPI"))
    return out


def mostly_clean_queries(items: list[tuple[str, str, float, str]], n: int, seed: int, hits: float = 0.05) -> list[str]:
    """``n`` IPv4 queries as a proxy sees them, shuffled.

    ``hits`` of them are listed addresses, the rest random addresses (almost all clean, i.e.
    covered by nothing).
    """
    rng = random.Random(seed)
    listed = [v for v, *_ in items if "/" not in v and ":" not in v]
    listed_n = min(len(listed), int(n * hits))
    q = rng.sample(listed, listed_n) + [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(n - listed_n)]
    rng.shuffle(q)
    return q
