"""Many workers, one snapshot: followers that map the writer's file against followers that load it.

``BENCH_N`` decisions of the community blocklist's shape (``make bench``: 1,000,000), saved once
in the mapped layout (what engines write now) and once in the loaded layout (what they wrote
before, and what a follower then had to rebuild into an index of its own). For each, 8 follower
processes (``RemediationEngine.follow``) answer 10,000 mostly clean lookups and stay alive while
their memory is read from ``/proc/<pid>/smaps_rollup``: USS (``Private_Clean + Private_Dirty``),
PSS and RSS, each minus an empty follower's. Also, in this process: the time for a follower to
pick up a new snapshot, one lookup through the engine (mostly clean traffic), and the writer's
cost per refresh (``save_mapped`` against ``save``). Figures are printed, never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchsupport import EXTRA, SEED, N
from capi_fast import DecisionIndex, RemediationEngine
from capi_fast.workload import community_blocklist, mostly_clean_queries

FOLLOWERS = 8
LOOKUPS = 10_000

CHILD = textwrap.dedent(
    """
    import sys
    from capi_fast import RemediationEngine
    engine = RemediationEngine.follow(sys.argv[1])
    ips = open(sys.argv[2]).read().split()
    for ip in ips:
        engine.get_ip_remediation(ip)
    print("ready", flush=True)
    sys.stdin.read()  # alive until the parent has read its memory
    """
)


def _rollup(pid: int) -> dict[str, float]:
    """USS, PSS and RSS of ``pid`` in MB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return {
        "USS": fields["Private_Clean"] + fields["Private_Dirty"],
        "PSS": fields["Pss"],
        "RSS": fields["Rss"],
    }


def _followers(snapshot: Path, queries: Path, n: int) -> list[dict[str, float]]:
    """Starts ``n`` followers of ``snapshot``, reads their memory once all answered, stops them."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(snapshot), str(queries)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return [_rollup(p.pid) for p in procs]
    finally:
        for p in procs:
            p.communicate("", timeout=60)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs /proc/<pid>/smaps_rollup")
def test_followers_map_instead_of_loading(tmp_path: Path) -> None:
    group = EXTRA[f"followers ({N:,} decisions, {FOLLOWERS} processes)"]
    community = community_blocklist(N, SEED)
    ix = DecisionIndex(["allow", "ban", "captcha"])
    ix.add_many(community, strict=False)
    mapped, loaded, empty = tmp_path / "mapped.snap", tmp_path / "loaded.snap", tmp_path / "empty.snap"
    meta = b'{"startup_done": true, "lists": {}}'
    # The writer's cost per refresh: each layout written three times, the best kept.
    for name, save, path in (("save_mapped", ix.save_mapped, mapped), ("save", ix.save, loaded)):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            save(path, metadata=meta)
            best = min(best, time.perf_counter() - t)
        group[f"writer {name}, ms"] = best * 1000
    DecisionIndex(["allow", "ban", "captcha"]).save_mapped(empty, metadata=meta)
    queries = tmp_path / "queries.txt"
    clean = mostly_clean_queries(community, LOOKUPS, SEED + 2)
    queries.write_text("\n".join(clean))

    # The baseline: as many followers of an empty snapshot (PSS splits shared pages by sharers).
    base = _followers(empty, queries, FOLLOWERS)
    for name, path in (("mapped", mapped), ("loaded", loaded)):
        each = _followers(path, queries, FOLLOWERS)
        for kind in ("USS", "PSS", "RSS"):
            extra = max(m[kind] for m in each) - max(m[kind] for m in base)
            group[f"{name}: {kind} per follower beyond an empty one, MB"] = extra

    # Picking up a new snapshot, in this process: map it, or load it.
    follower = RemediationEngine.follow(mapped)
    reloads = []
    for _ in range(20):
        os.utime(mapped, ns=(time.time_ns(), time.time_ns() + 1))
        t = time.perf_counter()
        follower._reload_if_changed()
        reloads.append(time.perf_counter() - t)
    group["mapped: pick up a new snapshot, us (median of 20)"] = sorted(reloads)[10] * 1e6
    t = time.perf_counter()
    DecisionIndex.load_with_metadata(loaded)
    group["loaded: pick up a new snapshot, ms"] = (time.perf_counter() - t) * 1000

    # One lookup through the engine, mostly clean traffic (fresh strings), both ways.
    memory = RemediationEngine.follow(loaded)
    fresh = [ip.encode().decode() for ip in clean] * 10
    for name, engine in (("mapped", follower), ("loaded", memory)):
        get = engine.get_ip_remediation
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for ip in fresh:
                get(ip)
            best = min(best, (time.perf_counter() - t) / len(fresh))
        group[f"{name}: engine lookup, ns"] = best * 1e9
    group["lookup ratio mapped / loaded"] = group["mapped: engine lookup, ns"] / group["loaded: engine lookup, ns"]
