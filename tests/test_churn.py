"""Memory follows what the index holds, not how much it has changed (issue: growth under churn)."""

from __future__ import annotations

import random

from capi_fast import DecisionIndex

NOW = 1_800_000_000.0


def test_memory_stays_near_a_fresh_index_through_steady_churn():
    rng = random.Random(5)

    def value() -> str:
        kind = rng.randrange(10)
        if kind == 0:
            return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
        if kind == 1:
            return f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):x}"
        return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"

    live = list({value() for _ in range(20_000)})
    index = DecisionIndex()
    index.add_many(live, ttl=86_400, now=NOW)
    now, worst = NOW, 0.0
    for batch in range(300):  # 600,000 removals, each replaced by a new decision
        now += 10
        gone = [live.pop(rng.randrange(len(live))) for _ in range(2_000)]
        held = set(live)
        new = [v for v in {value() for _ in range(2_000)} if v not in held]
        live.extend(new)
        index.apply(add=new, remove=gone, ttl=86_400, now=now)
        if batch % 30 == 29:
            fresh = DecisionIndex()
            fresh.add_many(live, ttl=86_400, now=now)
            assert len(index) == len(fresh) == len(live)
            ratio = index.stats()["memory_bytes"] / fresh.stats()["memory_bytes"]
            worst = max(worst, ratio)
            assert ratio <= 2.0, f"batch {batch}: {ratio:.2f}x a fresh index"
    assert all(index.lookup(v.partition("/")[0], now=now) == "ban" for v in live[-3_000:])
    assert worst > 1.0
