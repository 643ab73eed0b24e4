"""The hot paths of whatever capi_fast build this interpreter imports, timed once, as JSON.

Run by ``compare_builds.py`` under two interpreters (one venv per build) in alternation; not a
pytest module. Workload: the community blocklist's shape (``BENCH_N`` decisions, default 1M),
queried by mostly clean traffic (95% clean), each query a fresh ``str`` as a proxy makes it.

Timed: ``single`` ``DecisionIndex.lookup`` per address, ``remediator`` the engine's per-request
call (``Remediator.get``), ``batch_str`` ``lookup_many`` over a list of str, ``batch_packed``
``lookup_many`` over packed IPv4 bytes, ``stream`` parsing a CAPI startup answer of every
decision and applying it to an empty index. Figures are ns per address/decision; the best of
``BENCH_REPEAT`` runs inside this process (the parent takes the median across processes).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable

import orjson

import capi_fast
from capi_fast import DecisionIndex
from capi_fast._native import Remediator, parse_stream
from capi_fast.workload import community_blocklist, mostly_clean_queries

N = int(os.environ.get("BENCH_N", "1000000"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "200000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
SEED = 17


def best(run: Callable[[], object], per: int, repeat: int = REPEAT) -> float:
    """Best of ``repeat`` timings of ``run``, in ns per item."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - t)
    return min(times) / per


def startup_answer(items: list[tuple[str, str, float, str]]) -> bytes:
    """A CAPI startup answer holding every item (one scenario per scope, as CAPI groups them)."""
    groups: dict[str, list[dict[str, str]]] = {}
    for value, _, ttl, _ in items:
        scope = "range" if "/" in value else "ip"
        groups.setdefault(scope, []).append({"value": value, "duration": f"{int(ttl)}s"})
    new = [{"scenario": "crowdsecurity/community-blocklist", "scope": s, "decisions": d} for s, d in groups.items()]
    return orjson.dumps({"new": new, "deleted": []})


def main() -> None:
    items = community_blocklist(N, SEED)
    now = time.time()
    index = DecisionIndex()
    index.add_many(items, now=now)
    queries = mostly_clean_queries(items, QUERIES, SEED + 1)
    packed = b"".join(ipaddress.IPv4Address(q).packed for q in queries)
    doc = startup_answer(items)
    remediator = Remediator(index, {"ban": "ban", "captcha": "captcha"})

    def fresh() -> list[str]:
        return [q.encode().decode() for q in queries]

    def single() -> None:
        lookup = index.lookup
        for q in fresh_queries:
            lookup(q)

    def per_request() -> None:
        get = remediator.get
        for q in fresh_queries:
            get(q)

    def stream() -> None:
        DecisionIndex().apply(stream=parse_stream(doc), fallback="ban", now=now)

    results: dict[str, float] = {}
    fresh_queries = fresh()
    results["single"] = best(single, QUERIES)
    fresh_queries = fresh()
    results["remediator"] = best(per_request, QUERIES)
    fresh_queries = fresh()
    results["batch_str"] = best(lambda: index.lookup_many(fresh_queries), QUERIES)
    results["batch_packed"] = best(lambda: index.lookup_many(packed, family=4), QUERIES)
    results["stream"] = best(stream, N, repeat=max(1, REPEAT // 2))
    native = capi_fast._native.__file__ or ""
    print(json.dumps({"native": os.path.basename(native), "python": sys.version.split()[0], "ns": results}))


if __name__ == "__main__":
    main()
