"""How long a lookup waits while another thread loads N decisions.

A proxy answers requests on some threads while a refresh runs on another. Every Python thread
needs the GIL, so any stretch of native work that holds it makes every request wait. A reader
thread looks addresses up in a tight loop and records the time between two consecutive answers
(what a request arriving then would wait); the writer meanwhile does one of:

- the engine's whole startup refresh (HTTP from the simulator, run in its own process so its
  serving does not compete for this process's GIL; parse; apply; snapshot);
- the same native steps alone on a body already in memory (parse_stream, apply, save);
- ``add_many`` of N Python strings (the one step that must read Python objects with the GIL).

Each is run three times and the waits of the three runs pooled. The "idle" row is the same
reader with nothing else running: the floor of this machine (a shared VM's scheduler). The
benchmark's own million Python objects are frozen out of the garbage collector first, so its
pauses are not counted against the library. While the refresh runs the HTTP client's Python
code, any other thread waits up to the interpreter's switch interval (5 ms) for its turn: that
is CPython's scheduling, the same for every Python library; the native steps hold the GIL at
most about 1 ms at a time. The figures are wall-clock: reported, never asserted.
"""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchsupport import EXTRA, N
from capi_fast import CapiClient, DecisionIndex, MemoryStorage, RemediationEngine
from capi_fast._native import parse_stream


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """``capi-fast simulate`` with N decisions, in a child process."""
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "capi_fast.cli", "simulate", "--port", str(port), "--decisions", str(N)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready = child.stdout.readline()  # printed once the decisions are loaded
        if "CAPI simulator at" not in ready:
            raise RuntimeError(f"the simulator did not start: {ready!r}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        child.terminate()
        child.wait(timeout=30)


def _client(url: str) -> CapiClient:
    c = CapiClient(
        user_agent="bench/1", scenarios=["mywaf/x"], base_url=url, storage=MemoryStorage(), metrics_interval=None
    )
    c.login()
    return c


ROUNDS = 3


def waits_during(work: Callable[[], Any], lookup: Callable[[str], Any], rounds: int = ROUNDS) -> dict[str, float]:
    """Runs ``work`` ``rounds`` times while a reader thread loops on ``lookup``: the waits, in us."""
    # An array, not a list: the garbage collector walks a list's millions of items on every
    # full collection, a pause the harness would then blame on the work it measures.
    gaps = array("q")
    took = 0.0
    for _ in range(rounds):
        took += _waits_once(work, lookup, gaps)
    gaps = array("q", sorted(gaps))

    def q(p: float) -> float:
        return gaps[min(len(gaps) - 1, int(p * len(gaps)))] / 1e3

    return {
        "p99 us": q(0.99),
        "p99.9 us": q(0.999),
        "p99.99 us": q(0.9999),
        "max us": gaps[-1] / 1e3,
        "waits over 5 ms": float(len(gaps) - bisect_right(gaps, 5_000_000)),
        "work s": took / rounds,
    }


def _waits_once(work: Callable[[], Any], lookup: Callable[[str], Any], gaps: array[int]) -> float:
    ips = [f"198.51.{i // 256}.{i % 256}" for i in range(4096)]
    stop = threading.Event()
    running = threading.Event()

    def reader() -> None:
        clock = time.perf_counter_ns
        i, prev = 0, clock()
        running.set()
        while not stop.is_set():
            lookup(ips[i & 4095])
            i += 1
            now = clock()
            gaps.append(now - prev)
            prev = now

    t = threading.Thread(target=reader)
    t.start()
    running.wait()
    started = time.perf_counter()
    work()
    took = time.perf_counter() - started
    stop.set()
    t.join()
    return took


def test_lookup_waits_during_a_refresh_and_add_many(benchmark: Any, sim_url, tmp_path: Path, workload) -> None:
    # One timed pass (pytest-benchmark runs it under `make bench`'s --benchmark-only too).
    benchmark.pedantic(_lookup_waits, args=(sim_url, tmp_path, workload), rounds=1, iterations=1)


def _lookup_waits(sim_url: str, tmp_path: Path, workload: list[tuple[str, str, float, str]]) -> None:
    gc.collect()
    gc.freeze()  # the harness's million tuples are not the library's garbage-collector pauses
    try:
        _measure(sim_url, tmp_path, workload)
    finally:
        gc.unfreeze()


def _measure(sim_url: str, tmp_path: Path, workload: list[tuple[str, str, float, str]]) -> None:
    client = _client(sim_url)
    body = client.get_stream_raw(startup=True)  # also warms the simulator's cached answer
    rows: dict[str, dict[str, float]] = {}

    idle = DecisionIndex()
    rows["idle (floor)"] = waits_during(lambda: time.sleep(0.3), idle.lookup)

    engines = iter(RemediationEngine(client, snapshot_path=tmp_path / f"{i}.snap") for i in range(ROUNDS))
    engine = next(engines)
    reports: list[Any] = []

    def refresh() -> None:  # each round a startup refresh into a new engine
        nonlocal engine
        reports.append(engine.refresh_decisions())
        engine = next(engines, engine)

    rows["engine refresh"] = waits_during(refresh, lambda ip: engine.get_ip_remediation(ip))
    assert all(r.performed and r.added > 0 for r in reports)

    index = DecisionIndex(["allow", "ban", "captcha"])

    def native_steps() -> None:
        parsed = parse_stream(body)
        index.apply(stream=parsed, fallback="captcha", stream_types=["ban", "captcha"], strict=False)
        index.save(tmp_path / "b.snap")

    rows["parse+apply+save"] = waits_during(native_steps, index.lookup)
    assert len(index) > 0

    values = [v for v, *_ in workload]
    fresh = DecisionIndex()
    fresh.add_many(values[:1000], ttl=3600)
    rows["add_many"] = waits_during(lambda: DecisionIndex().add_many(values, ttl=3600), fresh.lookup)
    assert len(fresh) > 0

    for name, figures in rows.items():
        EXTRA[f"lookup wait during {name} ({N:,})"] = figures
