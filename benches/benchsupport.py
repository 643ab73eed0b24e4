"""Shared workload and the ratio report of the benchmark suites.

BENCH_N sets the number of decisions (``make bench`` uses 1,000,000; plain test runs use a
small workload and ``--benchmark-disable``, so the suites stay correct and fast).
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections import defaultdict
from typing import Any

import pytest

from capi_fast.workload import synthetic_decisions

N = int(os.environ.get("BENCH_N", "20000"))
QUERIES = 100_000 if N >= 100_000 else 5_000
SEED = 20261124

# group -> impl -> seconds per unit of work (mean)
RESULTS: dict[str, dict[str, float]] = defaultdict(dict)
EXTRA: dict[str, dict[str, float]] = defaultdict(dict)


def record(benchmark: Any, group: str, impl: str, per: int) -> None:
    """Stores median seconds per item of a finished benchmark (nothing when benchmarks are off).

    The median, not the mean: shared machines have noisy neighbours.
    """
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        RESULTS[group][impl] = stats.stats.median / per


@pytest.fixture(scope="session")
def workload() -> list[tuple[str, str, float, str]]:
    return synthetic_decisions(N, SEED)


@pytest.fixture(scope="session")
def stored_queries(workload: list[tuple[str, str, float, str]]) -> list[str]:
    """Half addresses that are in the index, half random IPv4 (mostly misses), shuffled.

    The in-index half are the very str objects the structures were built from: cold in
    memory, scattered, and identical objects to the set's keys (which then compares them by
    identity alone). Only the "stored objects" rows use them; see ``queries``.
    """
    rng = random.Random(SEED + 1)
    hosts = [v for v, *_ in workload if "/" not in v and ":" not in v]
    q = rng.sample(hosts, QUERIES // 2) + [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(QUERIES // 2)]
    rng.shuffle(q)
    return q


@pytest.fixture(scope="session")
def queries(stored_queries: list[str]) -> list[str]:
    """The same addresses as ``stored_queries``, each a new str made in query order.

    That is how a lookup meets an address in service: a proxy builds the client's address
    string for the request it is handling, just before asking, so it is fresh in cache and
    never the object the blocklist was loaded from.
    """
    return [ip.encode().decode() for ip in stored_queries]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS and not EXTRA:
        return
    w = terminalreporter
    w.section(f"capi_fast ratios ({N} decisions, {QUERIES} queries)")
    units = {
        "build": ("s per 1M decisions", 1e6),
        "single": ("ns per lookup(str)", 1e9),
        "batch": ("M lookups/s", None),
        "signals": ("signals/s", 0.0),
        "stream": ("s per 1M decisions, HTTP + parse + index", 1e6),
        "engine": ("ns per call", 1e9),
    }
    for group, impls in RESULTS.items():
        label, scale = units.get(group.split(":")[0], ("s", 1.0))
        base = impls.get("reference")
        w.write_line(f"[{group}] {label}")
        if group == "signals":
            base = impls.get("cscapi")
        for impl, sec in sorted(impls.items(), key=lambda kv: kv[1]):
            if scale == 0.0:
                shown = f"{1 / sec:10.0f}"
            else:
                shown = f"{1 / sec / 1e6:10.2f}" if scale is None else f"{sec * scale:10.2f}"
            peer = "cscapi" if group == "signals" else "reference"
            ratio = f"  {base / sec:7.1f}x faster than {peer}" if base else ""
            w.write_line(f"  {impl:<22}{shown}{ratio}")
    for group, vals in EXTRA.items():
        w.write_line(f"[{group}]")
        for k, v in vals.items():
            w.write_line(f"  {k:<22}{v:10.2f}")
    goals(w)


def goals(w: Any) -> None:
    """Prints each goal of the decision-index issue with the measured figure."""
    build, single, batch = RESULTS.get("build", {}), RESULTS.get("single", {}), RESULTS.get("batch", {})
    mem = EXTRA.get("bytes per IPv4 address entry (RSS)", {})
    rows: list[tuple[str, bool | None, str]] = []
    if "native" in single and "set" in single:
        r = single["native"] / single["set"]
        rows.append((f"single lookup(str) / set membership = {r:.2f}x", r <= 1.5, "<= 1.5x"))
    stored = RESULTS.get("single:stored objects", {})
    if "native" in stored and "set" in stored:
        r = stored["native"] / stored["set"]
        rows.append((f"single lookup / set on the stored str objects (cold) = {r:.2f}x", None, "none: reported"))
    if "native packed" in batch:
        m = 1 / batch["native packed"] / 1e6
        rows.append((f"batch packed lookups = {m:.1f} M/s", m >= 20, ">= 20 M/s"))
    if "native rss" in mem:
        rows.append((f"bytes per IPv4 address = {mem['native rss']:.1f}", mem["native rss"] <= 32, "<= 32"))
    if "native" in build:
        sec = build["native"] * 1e6
        rows.append((f"add_many = {sec:.2f} s per million decisions (N={N})", sec < 0.5, "< 0.5 s"))
    engine = RESULTS.get("engine", {})
    if len(engine) == 2:
        r = engine["get_ip_remediation"] / engine["DecisionIndex.lookup"]
        rows.append((f"get_ip_remediation / DecisionIndex.lookup = {r:.2f}x", r <= 1.3, "<= 1.3x"))
    stream = RESULTS.get("stream", {})
    if "capi_fast engine" in stream:
        sec = stream["capi_fast engine"] * N
        rows.append((f"startup stream of {N:,} decisions end to end = {sec:.2f} s", sec < 2 * N / 1e6, "< 2 s per 1M"))
    for peer in ("pytricia", "py-radix") if build or single else ():
        wins = [g for g, d in (("build", build), ("single", single)) if peer in d and d["native"] < d[peer]] + (
            ["memory"] if f"{peer} rss" in mem and mem["native rss"] < mem[f"{peer} rss"] else []
        )
        rows.append((f"ahead of {peer} on {', '.join(wins) or 'nothing'}", len(wins) == 3, "build, single, memory"))
    sig = RESULTS.get("signals", {})
    lat = EXTRA.get("signal add latency, us", {})
    if "capi_fast add()" in sig:
        rate = 1 / sig["capi_fast add()"]
        rows.append((f"durable SignalBatcher.add = {rate:,.0f} signals/s", rate >= 50_000, ">= 50,000/s"))
    if "capi_fast p99" in lat:
        rows.append((f"p99 add latency = {lat['capi_fast p99']:.0f} us", lat["capi_fast p99"] < 1000, "< 1 ms"))
    for work in ("engine refresh", "parse+apply+save", "add_many"):
        waits = EXTRA.get(f"lookup wait during {work} ({N:,})", {})
        if "max us" in waits:
            rows.append(
                (f"worst lookup wait during {work} = {waits['max us'] / 1e3:.2f} ms", waits["max us"] < 5000, "< 5 ms")
            )
            rows.append(
                (f"p99.9 lookup wait during {work} = {waits['p99.9 us']:.0f} us", waits["p99.9 us"] < 100, "< 100 us")
            )
    full = N >= 1_000_000
    w.write_line("[goals]" if full else f"[goals, indicative only: N={N:,}; the goals are set for 1M (make bench)]")
    for text, ok, goal in rows:
        mark = "info" if ok is None else ("met " if ok else "MISS") if full else ("ok  " if ok else "off ")
        w.write_line(f"  {mark} {text}  (goal {goal})")
