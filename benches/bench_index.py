"""DecisionIndex against the pure-Python reference, a plain set, pytricia and py-radix.

pytricia and py-radix answer longest-prefix match only (a weaker question than "every decision
covering the address, highest priority wins"); they are here as the speed bar of C tries.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchsupport import EXTRA, SEED, N, record
from capi_fast import DecisionIndex
from capi_fast.engine import RemediationEngine
from capi_fast.reference import ReferenceIndex

NOW = 1_800_000_000.0

pytricia = pytest.importorskip("pytricia")
radix = pytest.importorskip("radix")


def build_native(items):
    idx = DecisionIndex()
    idx.add_many(items, now=NOW)
    return idx


def build_reference(items):
    idx = ReferenceIndex()
    idx.add_many(items, now=NOW)
    return idx


def build_set(items):
    return {v for v, *_ in items}


def build_pytricia(items):
    t4, t6 = pytricia.PyTricia(32), pytricia.PyTricia(128)
    for v, rem, _, _ in items:
        (t6 if ":" in v else t4)[v] = rem
    return t4, t6


def build_radix(items):
    r = radix.Radix()
    for v, rem, _, _ in items:
        r.add(v).data["r"] = rem
    return r


BUILDERS = {
    "native": build_native,
    "reference": build_reference,
    "set": build_set,
    "pytricia": build_pytricia,
    "py-radix": build_radix,
}


@pytest.fixture(scope="module")
def built(workload):
    return {name: b(workload) for name, b in BUILDERS.items()}


@pytest.mark.parametrize("impl", list(BUILDERS))
def test_build(benchmark, workload, impl):
    # One round where a build takes seconds; the fast ones take the median of five (noisy VM).
    rounds = 1 if impl in ("reference", "py-radix") else 5
    benchmark.pedantic(BUILDERS[impl], args=(workload,), rounds=rounds, iterations=1)
    record(benchmark, "build", impl, len(workload) / 1e6 * 1e6)


def single_loop(impl, obj, q):
    if impl == "native" or impl == "reference":
        lookup = obj.lookup
        return lambda: [lookup(ip, NOW) for ip in q]
    if impl == "set":
        return lambda: [ip in obj for ip in q]
    if impl == "pytricia":
        t4 = obj[0]
        return lambda: [t4.get(ip) for ip in q]
    search = obj.search_best
    return lambda: [search(ip) for ip in q]


@pytest.mark.parametrize("impl", list(BUILDERS))
def test_single_lookup(benchmark, built, queries, impl):
    q = queries if impl != "reference" else queries[:2000]
    fn = single_loop(impl, built[impl], q)
    benchmark.pedantic(fn, rounds=3 if impl == "reference" else 10, iterations=1)
    record(benchmark, "single", impl, len(q))


@pytest.mark.parametrize("impl", ["native", "set"])
def test_single_lookup_stored_objects(benchmark, built, stored_queries, impl):
    """The loop above on the very str objects the structures were built from (cold, scattered;
    the set then matches its keys by identity). Reported beside the goal, which uses ``queries``."""
    fn = single_loop(impl, built[impl], stored_queries)
    benchmark.pedantic(fn, rounds=10, iterations=1)
    record(benchmark, "single:stored objects", impl, len(stored_queries))


@pytest.mark.parametrize("path", ["DecisionIndex.lookup", "get_ip_remediation"])
def test_engine_answer(benchmark, built, queries, path):
    """The engine's per-request call against the bare index lookup, both at the current time."""
    engine = RemediationEngine(None)
    engine.index = built["native"]
    get = engine.get_ip_remediation if path == "get_ip_remediation" else built["native"].lookup
    benchmark.pedantic(lambda: [get(ip) for ip in queries], rounds=10, iterations=1)
    record(benchmark, "engine", path, len(queries))
    if path == "get_ip_remediation":
        total = sum(engine.counters.values())
        assert total > 0 and total % len(queries) == 0, "every call counted once"


def test_answers_agree(built, queries):
    """The benchmarked structures hold the same data: native agrees with the reference."""
    q = queries[:2000]
    assert built["native"].lookup_many(q, now=NOW) == built["reference"].lookup_many(q, now=NOW)


def test_batch_lookup_list(benchmark, built, queries):
    idx = built["native"]
    benchmark.pedantic(idx.lookup_many, args=(queries,), kwargs={"now": NOW}, rounds=10, iterations=1)
    record(benchmark, "batch", "native list[str]", len(queries))


def test_batch_lookup_packed(benchmark, built, queries):
    idx = built["native"]
    packed = b"".join(ipaddress.IPv4Address(q).packed for q in queries) * 10
    codes = benchmark.pedantic(
        idx.lookup_many, args=(packed,), kwargs={"family": 4, "now": NOW}, rounds=20, iterations=1
    )
    assert len(codes) == len(queries) * 10
    record(benchmark, "batch", "native packed", len(queries) * 10)


def test_batch_lookup_reference(benchmark, built, queries):
    q = queries[:2000]
    benchmark.pedantic(built["reference"].lookup_many, args=(q,), kwargs={"now": NOW}, rounds=3, iterations=1)
    record(benchmark, "batch", "reference", len(q))


def test_batch_lookup_pytricia(benchmark, built, queries):
    t4 = built["pytricia"][0]
    benchmark.pedantic(lambda: [t4.get(ip) for ip in queries], rounds=5, iterations=1)
    record(benchmark, "batch", "pytricia loop", len(queries))


MEMORY = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {benches!r})
    from capi_fast.workload import synthetic_decisions
    import bench_index as b
    items = synthetic_decisions({n}, {seed})
    hosts = [i for i in items if "/" not in i[0] and ":" not in i[0]]
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    before = rss()
    obj = b.BUILDERS[{impl!r}](hosts)
    after = rss()
    out = {{"bytes_per_entry": (after - before) / len(hosts)}}
    if {impl!r} == "native":
        out["stats_bytes_per_entry"] = obj.stats()["memory_bytes"] / len(hosts)
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("impl", list(BUILDERS))
def test_memory_per_single_address(benchmark, impl):
    """RSS growth per IPv4 single-address decision, each structure built in a fresh process.

    Reported, not asserted: memory is a measured figure like the timings. (It goes through the
    benchmark fixture only so that ``--benchmark-only`` runs it.)
    """
    n = N if impl != "reference" else min(N, 200_000)
    code = MEMORY.format(benches=os.path.dirname(__file__), n=n, seed=SEED, impl=impl)

    def measure():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
        return json.loads(out.stdout)

    res = benchmark.pedantic(measure, rounds=1, iterations=1)
    assert res["bytes_per_entry"] > 0
    for k, v in res.items():
        EXTRA["bytes per IPv4 address entry (RSS)"][
            f"{impl} {k.replace('bytes_per_entry', '').strip('_') or 'rss'}"
        ] = v


def build_with_allow(items, allowlisted: int):
    """The engine's index: "allow" ranked above ban, ``allowlisted`` console allowlist entries."""
    idx = DecisionIndex(["allow", "ban", "captcha"])
    idx.add_many(items, now=NOW)
    hosts = [v for v, *_ in items if "/" not in v and ":" not in v]
    idx.add_many(hosts[:allowlisted], "allow", origin="lists:office", now=NOW)
    return idx


@pytest.fixture(scope="module")
def allow_built(workload):
    return {
        "no allow rank": build_native(workload),
        "allow ranked first": build_with_allow(workload, 0),
        "allow + 200 entries": build_with_allow(workload, 200),
    }


@pytest.mark.parametrize("config", ["no allow rank", "allow ranked first", "allow + 200 entries"])
def test_single_lookup_with_allowlists(benchmark, allow_built, queries, config):
    """The engine ranks allowlist entries above ban: lookups must keep their block fast path."""
    lookup = allow_built[config].lookup
    benchmark.pedantic(lambda: [lookup(ip, NOW) for ip in queries], rounds=10, iterations=1)
    record(benchmark, "single:allowlists", config, len(queries))
