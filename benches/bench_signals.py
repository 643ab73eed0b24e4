"""Signal intake: capi_fast's durable batcher against cscapi (the official pure-Python SDK).

Both paths build a signal for an IP and store it durably for later sending: capi_fast with
``Signal.decision`` + ``SignalBatcher.add`` (append-only spool), cscapi with ``create_signal`` +
``CAPIClient.add_signals`` (SQLAlchemy over SQLite). No network is involved in either.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

import pytest

from benchsupport import EXTRA, N, record
from capi_fast import CapiClient, FileStorage, Signal

cscapi_client = pytest.importorskip("cscapi.client")
cscapi_sql = pytest.importorskip("cscapi.sql_storage")
cscapi_utils = pytest.importorskip("cscapi.utils")

SIGNALS = 20_000 if N >= 100_000 else 500
_counter = itertools.count()


def ips(n: int) -> list[str]:
    return [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in (next(_counter) for _ in range(n))]


@pytest.fixture
def batcher(tmp_path):
    client = CapiClient(user_agent="bench/1", scenarios=["mywaf/login-bruteforce"], storage=FileStorage(tmp_path))
    b = client.signal_batcher(start=False)
    yield b
    b.spool.close()
    client.close()


@pytest.fixture
def cscapi(tmp_path):
    storage = cscapi_sql.SQLStorage(f"sqlite:///{tmp_path / 'cscapi.db'}")
    return cscapi_client.CAPIClient(storage, cscapi_client.CAPIClientConfig(scenarios=["mywaf/login-bruteforce"]))


def capi_fast_add(b, addresses):
    for ip in addresses:
        b.add(Signal.decision(ip, "mywaf/login-bruteforce", duration=3600, message="bench"))


def cscapi_add(c, addresses):
    now = datetime.now(UTC)
    for ip in addresses:
        c.add_signals([cscapi_utils.create_signal(ip, "mywaf/login-bruteforce", now, "m" * 48, message="bench")])


def latencies(fn, target, n):
    out = []
    for ip in ips(n):
        t = time.perf_counter()
        fn(target, [ip])
        out.append(time.perf_counter() - t)
    out.sort()
    return out


def test_capi_fast_add(benchmark, batcher):
    """``add()`` alone, signals built beforehand: the cost on a request path that already has one."""
    rounds = [[Signal.decision(ip, "mywaf/login-bruteforce", duration=3600) for ip in ips(SIGNALS)] for _ in range(3)]
    it = iter(rounds)

    def add_round() -> None:
        for s in next(it):
            batcher.add(s)

    benchmark.pedantic(add_round, rounds=3, iterations=1)
    record(benchmark, "signals", "capi_fast add()", SIGNALS)
    lat = []
    for s in [Signal.decision(ip, "mywaf/login-bruteforce", duration=3600) for ip in ips(SIGNALS)]:
        t = time.perf_counter()
        batcher.add(s)
        lat.append(time.perf_counter() - t)
    lat.sort()
    EXTRA["signal add latency, us"]["capi_fast add p50"] = lat[len(lat) // 2] * 1e6
    EXTRA["signal add latency, us"]["capi_fast p99"] = lat[int(len(lat) * 0.99)] * 1e6


def test_capi_fast_build_and_add(benchmark, batcher):
    rounds = []

    def one_round() -> None:
        rounds.append(1)
        capi_fast_add(batcher, ips(SIGNALS))

    benchmark.pedantic(one_round, rounds=3, iterations=1)
    record(benchmark, "signals", "capi_fast build+add", SIGNALS)
    lat = latencies(capi_fast_add, batcher, SIGNALS)
    EXTRA["signal add latency, us"]["capi_fast build+add p99"] = lat[int(len(lat) * 0.99)] * 1e6
    assert len(batcher.spool) == (len(rounds) + 1) * SIGNALS, "every signal is in the spool"


def test_cscapi_signal_intake(benchmark, cscapi):
    n = max(50, SIGNALS // 20)  # it is two orders of magnitude slower
    benchmark.pedantic(lambda: cscapi_add(cscapi, ips(n)), rounds=3, iterations=1)
    record(benchmark, "signals", "cscapi", n)
    lat = latencies(cscapi_add, cscapi, n)
    EXTRA["signal add latency, us"]["cscapi build+add p99"] = lat[int(len(lat) * 0.99)] * 1e6
