"""The workload users have: the community blocklist's shape, queried by mostly clean traffic.

``benchsupport``'s default workload puts hundreds of /8 ranges over the IPv4 space, so most
random queries there are answered by one bit of a block summary: a workload no user has. Here
the decisions are what CAPI's community blocklist holds (almost only single addresses, a few
thousand ranges of /24 or longer, a little IPv6) and 95% of the queries are clean, as on a
proxy. This is the headline of README's tables; both workloads are reported in one run.

Peers are built as in ``bench_index`` (shared builders): the ``set`` in one comprehension;
pytricia and py-radix have no bulk load, so they are built item by item.
"""

from __future__ import annotations

import ipaddress

import pytest

from bench_index import NOW, build_native, build_pytricia, build_radix, build_set, single_loop
from benchsupport import QUERIES, SEED, N, record
from capi_fast.workload import community_blocklist, mostly_clean_queries


@pytest.fixture(scope="module")
def community() -> list[tuple[str, str, float, str]]:
    return community_blocklist(N, SEED)


@pytest.fixture(scope="module")
def clean_queries(community) -> list[str]:
    """Each a new str, made in query order (as a proxy builds the client address it checks)."""
    return [ip.encode().decode() for ip in mostly_clean_queries(community, QUERIES, SEED + 2)]


BUILDERS = {"native": build_native, "set": build_set, "pytricia": build_pytricia, "py-radix": build_radix}


@pytest.fixture(scope="module")
def built(community):
    return {name: b(community) for name, b in BUILDERS.items()}


@pytest.mark.parametrize("impl", list(BUILDERS))
def test_build_community(benchmark, community, impl):
    rounds = 1 if impl == "py-radix" else 5
    benchmark.pedantic(BUILDERS[impl], args=(community,), rounds=rounds, iterations=1)
    record(benchmark, "build:community blocklist", impl, len(community))


@pytest.mark.parametrize("impl", list(BUILDERS))
def test_single_lookup_mostly_clean(benchmark, built, clean_queries, impl):
    benchmark.pedantic(single_loop(impl, built[impl], clean_queries), rounds=10, iterations=1)
    record(benchmark, "single:community blocklist, 95% clean", impl, len(clean_queries))


def test_batch_packed_mostly_clean(benchmark, built, clean_queries):
    packed = b"".join(ipaddress.IPv4Address(ip).packed for ip in clean_queries) * 10
    idx = built["native"]
    benchmark.pedantic(lambda: idx.lookup_many(packed, family=4, now=NOW), rounds=10, iterations=1)
    record(benchmark, "batch:community blocklist, 95% clean", "native packed", len(clean_queries) * 10)


def test_answers_agree_with_the_set(built, clean_queries):
    """Single addresses only in the queries' hits: the native answer and the set agree there."""
    idx, members = built["native"], built["set"]
    for ip in clean_queries[:20_000]:
        if ip in members:
            assert idx.lookup(ip, NOW) == "ban"
