"""The demo behind ``capi-fast demo``: load a blocklist-shaped workload and answer lookups."""

from __future__ import annotations

import ipaddress
import random
import tempfile
import time
from pathlib import Path
from typing import TextIO

from capi_fast.workload import synthetic_decisions

__all__ = ["run_demo", "synthetic_decisions"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def run_demo(decisions: int, seed: int, out: TextIO) -> None:
    """The whole flow against the bundled simulator, on loopback only, with timings.

    Starts a CAPI simulator holding ``decisions`` community decisions and a blocklist, registers a
    machine, refreshes a ``RemediationEngine``, pushes signals through the durable batcher,
    answers lookups, exports nftables-ready CIDRs and restarts from the snapshot.
    """
    from capi_fast.client import CapiClient
    from capi_fast.engine import RemediationEngine
    from capi_fast.signals import Signal
    from capi_fast.storage import FileStorage
    from capi_fast.testing import CapiSimulator

    rng = random.Random(seed)
    items = synthetic_decisions(decisions, seed)
    with CapiSimulator() as sim, tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        sim.add_decisions([v for v, r, _, _ in items if r == "ban"], duration=86400)
        blocklist = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2000)]
        sim.add_blocklist("firehol-level1", blocklist, remediation="captcha", duration=86400)
        banned = [v for v, r, _, _ in items if r == "ban" and "/" not in v and ":" not in v]
        if len(banned) < 2:  # a tiny run: two documentation addresses to show the answers on
            extra = ["203.0.113.10", "203.0.113.11"][len(banned) :]
            sim.add_decisions(extra, duration=86400)
            banned += extra
        sim.add_allowlist("office", banned[:1], expiration=time.time() + 86400)  # the console's allowlist
        out.write(
            f"simulator at {sim.url}: {len(items)} community decisions, 1 blocklist, 1 allowlist "
            f"({_ms(time.perf_counter() - t)})\n"
        )

        client = CapiClient(
            user_agent="capi-fast-demo/1.0",
            scenarios=["capifast/demo-bruteforce"],
            base_url=sim.url,
            storage=FileStorage(Path(d) / "capi"),
            machine_id_prefix="demo",
        )
        t = time.perf_counter()
        client.login()
        out.write(f"registered and logged in as {client.machine_id} ({_ms(time.perf_counter() - t)})\n")

        snapshot = Path(d) / "decisions.snap"
        engine = RemediationEngine(client, snapshot_path=snapshot)
        r = engine.refresh_decisions()
        out.write(
            f"startup refresh: +{r.added} decisions, {r.skipped} skipped, lists {list(r.lists_updated)} "
            f"in {_ms(r.duration)} (HTTP, parse, index, snapshot)\n"
        )
        again = engine.refresh_decisions()
        wait = again.next_refresh_at - time.time()
        out.write(f"refresh again at once: refused ({again.error}); next allowed in {wait:.0f} s\n")

        probes = [banned[1], blocklist[0], "192.0.2.1", "::ffff:" + blocklist[1]]
        for ip in probes:
            out.write(f"  get_ip_remediation({ip!r}) -> {engine.get_ip_remediation(ip)}\n")
        out.write(f"  get_ip_remediation({banned[0]!r}) -> {engine.get_ip_remediation(banned[0])} (allowlisted)\n")
        queries = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(200_000)]
        t = time.perf_counter()
        for q in queries[:50_000]:
            engine.get_ip_remediation(q)
        dt = time.perf_counter() - t
        out.write(f"get_ip_remediation: {dt / 50_000 * 1e9:.0f} ns per call\n")
        packed = b"".join(ipaddress.IPv4Address(q).packed for q in queries)
        t = time.perf_counter()
        engine.index.lookup_many(packed, family=4)
        dt = time.perf_counter() - t
        out.write(f"lookup_many(packed): {len(queries) / dt / 1e6:.1f} M addresses/s\n")
        t = time.perf_counter()
        cidrs = engine.index.export_cidrs("ban", family=4)
        out.write(f"export_cidrs('ban', 4): {len(cidrs)} CIDRs for nft/ipset in {_ms(time.perf_counter() - t)}\n")

        batcher = client.signal_batcher()
        t = time.perf_counter()
        for i in range(1000):
            ip = str(ipaddress.IPv4Address(rng.getrandbits(32)))
            batcher.add(Signal.decision(ip, "capifast/demo-bruteforce", duration=3600, message=f"demo {i}"))
        added = time.perf_counter() - t
        batcher.close()  # drains: 4 calls of at most 250
        calls = sum(1 for q in sim.requests if q.path.endswith("/signals"))
        out.write(
            f"signals: 1000 queued durably in {_ms(added)}, delivered in {calls} calls; CAPI holds {len(sim.signals)}\n"
        )

        t = time.perf_counter()
        restarted = RemediationEngine(client, snapshot_path=snapshot)
        out.write(
            f"restart from snapshot: {len(restarted.index)} decisions back in {_ms(time.perf_counter() - t)}, "
            f"no startup pull needed ({snapshot.stat().st_size / 1e6:.1f} MB)\n"
        )
        client.close()
