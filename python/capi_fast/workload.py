"""Seeded decision workloads, for the demo, the simulator's preload and the benchmarks."""

from __future__ import annotations

import ipaddress
import random

__all__ = ["synthetic_decisions"]


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
            net = ipaddress.IPv4Network((rng.getrandbits(32) >> (32 - length) << (32 - length), length))
            out.append((str(net), rng.choice(["ban", "ban", "captcha"]), ttl, "lists:firehol"))
        else:
            v = (0x2001 << 112) | rng.getrandbits(100)
            if rng.random() < 0.5:
                out.append((str(ipaddress.IPv6Address(v)), "ban", ttl, "CAPI"))
            else:
                length = rng.randint(48, 64)
                out.append(
                    (str(ipaddress.IPv6Network((v >> (128 - length) << (128 - length), length))), "ban", ttl, "CAPI")
                )
    return out
