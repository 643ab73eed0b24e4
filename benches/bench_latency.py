"""How long a lookup waits while another thread loads N decisions.

A proxy answers requests on some threads while a refresh runs on another. Every Python thread
needs the GIL, so any stretch of native work that holds it makes every request wait. A reader
thread looks addresses up in a tight loop and records the time between two consecutive answers
(what a request arriving then would wait); the writer meanwhile does one of:

- the engine's whole startup refresh (HTTP from the simulator, run in its own process so its
  serving does not compete for this process's GIL; parse; apply; snapshot);
- the same native steps alone on a body already in memory (parse_stream, apply, save);
- ``add_many`` of N Python strings (the one step that must read Python objects with the GIL).

The "idle" row is the same reader with nothing else running: the floor of this machine. The
figures are wall-clock, on a shared machine: reported, never asserted.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(1200):
            try:
                httpx.get(url, timeout=1.0)
                break
            except httpx.TransportError:
                if child.poll() is not None:
                    raise RuntimeError("the simulator did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=30)


def _client(url: str) -> CapiClient:
    c = CapiClient(
        user_agent="bench/1", scenarios=["mywaf/x"], base_url=url, storage=MemoryStorage(), metrics_interval=None
    )
    c.login()
    return c


def waits_during(work: Callable[[], Any], lookup: Callable[[str], Any]) -> dict[str, float]:
    """Runs ``work`` while a reader thread loops on ``lookup``; its waits between answers, in us."""
    ips = [f"198.51.{i // 256}.{i % 256}" for i in range(4096)]
    gaps: list[int] = []
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
    gaps.sort()

    def q(p: float) -> float:
        return gaps[min(len(gaps) - 1, int(p * len(gaps)))] / 1e3

    return {"p99 us": q(0.99), "p99.9 us": q(0.999), "max us": gaps[-1] / 1e3, "work s": took}


def test_lookup_waits_during_a_refresh_and_add_many(sim_url, tmp_path: Path, workload) -> None:
    client = _client(sim_url)
    body = client.get_stream_raw(startup=True)  # also warms the simulator's cached answer
    rows: dict[str, dict[str, float]] = {}

    idle = DecisionIndex()
    rows["idle (floor)"] = waits_during(lambda: time.sleep(0.3), idle.lookup)

    engine = RemediationEngine(client, snapshot_path=tmp_path / "a.snap")
    report: list[Any] = []
    rows["engine refresh"] = waits_during(lambda: report.append(engine.refresh_decisions()), engine.get_ip_remediation)
    assert report[0].performed and report[0].added > 0

    index = DecisionIndex(["allow", "ban", "captcha"])

    def native_steps() -> None:
        parsed = parse_stream(body)
        index.apply(stream=parsed, fallback="captcha", stream_types=["ban", "captcha"], strict=False)
        index.save(tmp_path / "b.snap")

    rows["parse+apply+save"] = waits_during(native_steps, index.lookup)
    assert len(index) > 0

    values = [v for v, *_ in workload]
    fresh = DecisionIndex()
    rows["add_many"] = waits_during(lambda: fresh.add_many(values, ttl=3600), fresh.lookup)
    assert len(fresh) > 0

    for name, figures in rows.items():
        EXTRA[f"lookup wait during {name} ({N:,})"] = figures
