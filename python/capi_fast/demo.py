"""The demo behind ``capi-fast demo``: load a blocklist-shaped workload and answer lookups."""

from __future__ import annotations

import ipaddress
import random
import tempfile
import time
from pathlib import Path
from typing import TextIO

from capi_fast._native import DecisionIndex

__all__ = ["run_demo", "synthetic_decisions"]


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


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def run_demo(decisions: int, seed: int, out: TextIO) -> None:
    """Builds an index of ``decisions`` decisions, answers lookups, exports and snapshots it."""
    items = synthetic_decisions(decisions, seed)
    idx = DecisionIndex()
    t = time.perf_counter()
    res = idx.add_many(items)
    out.write(f"loaded {res.added} decisions in {_ms(time.perf_counter() - t)}: {idx!r}\n")
    rng = random.Random(seed + 1)
    probes = [v.split("/")[0] for v, *_ in rng.sample(items, 5)] + ["192.0.2.1", "::ffff:" + items[0][0].split("/")[0]]
    for ip in probes:
        out.write(f"  {ip:<40} -> {idx.lookup(ip)}\n")
    queries = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(200_000)]
    t = time.perf_counter()
    answers = idx.lookup_many(queries)
    dt = time.perf_counter() - t
    hits = sum(a is not None for a in answers)
    out.write(f"lookup_many: {len(queries)} addresses in {_ms(dt)} ({len(queries) / dt / 1e6:.1f} M/s), {hits} hits\n")
    packed = b"".join(int(ipaddress.IPv4Address(q)).to_bytes(4, "big") for q in queries)
    t = time.perf_counter()
    idx.lookup_many(packed, family=4)
    dt = time.perf_counter() - t
    out.write(f"lookup_many(packed): {len(queries) / dt / 1e6:.1f} M addresses/s\n")
    t = time.perf_counter()
    cidrs = idx.export_cidrs("ban", family=4)
    out.write(f"export_cidrs(ban, v4): {len(cidrs)} CIDRs in {_ms(time.perf_counter() - t)}\n")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "index.snap"
        t = time.perf_counter()
        idx.save(path)
        saved = time.perf_counter() - t
        t = time.perf_counter()
        back = DecisionIndex.load(path)
        out.write(
            f"snapshot: {path.stat().st_size / 1e6:.1f} MB saved in {_ms(saved)}, "
            f"loaded in {_ms(time.perf_counter() - t)} ({len(back)} decisions)\n"
        )
    expired = idx.purge_expired(now=time.time() + 2 * 86400)
    out.write(f"purge_expired(+2 days): {expired} removed, {len(idx)} left\n")
