"""What the middleware costs a web app, with N decisions loaded (``make bench``: 1M).

Two measures, in one run:

1. **Real servers under load**: a minimal Starlette app under uvicorn (one worker) and a
   minimal Flask app under gunicorn (one sync worker), each bare and behind capi_fast's
   middleware (a follower of the N-decision snapshot), and the Flask app behind pycrowdsec's
   Flask middleware (the existing Python choice; its cache filled with the same decisions).
   ``wrk`` (Debian's package) sends mostly clean traffic (5% of addresses hold a decision of the
   community blocklist's shape, as ``bench_community.py``) in ``X-Forwarded-For`` from 127.0.0.1, the trusted proxy, and
   reports requests/s and latency percentiles. The configurations run in turns, for
   ``BENCH_WRK_ROUNDS`` rounds of ``BENCH_WRK_SECONDS`` each, and the median round is kept:
   a shared machine's noise then hits every configuration alike.
2. **The middleware alone, in process**: each request's full pass through the WSGI and ASGI
   middleware to a no-op app, in ns per request, with the same traffic.

Figures are printed (and the README's table is made from them), never asserted.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchsupport import EXTRA, SEED, N
from capi_fast import RemediationEngine
from capi_fast.asgi import BouncerMiddleware as AsgiBouncer
from capi_fast.workload import community_blocklist, mostly_clean_queries
from capi_fast.wsgi import BouncerMiddleware as WsgiBouncer

APPS = Path(__file__).resolve().parent / "apps"
SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "5" if N >= 100_000 else "1"))
ROUNDS = int(os.environ.get("BENCH_WRK_ROUNDS", "5" if N >= 100_000 else "1"))
CONNECTIONS = 4
TRAFFIC = 20_000


@pytest.fixture(scope="module")
def decisions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The community blocklist's shape: the snapshot capi_fast's followers read, the text file
    pycrowdsec's cache is filled from, and the traffic (5% of the addresses hold a decision)."""
    workload = community_blocklist(N, SEED)
    root = tmp_path_factory.mktemp("middleware")
    engine = RemediationEngine(None, snapshot_path=root / "decisions.snapshot")
    engine.index.add_many(workload, strict=False)
    assert engine._save() is None
    lines = "".join(f"{value} {rem}\n" for value, rem, _, _ in workload)
    (root / "decisions.txt").write_text(lines)
    traffic = mostly_clean_queries(workload, TRAFFIC, SEED + 7)
    return {"root": root, "snapshot": root / "decisions.snapshot", "txt": root / "decisions.txt", "traffic": traffic}


# -- 1. real servers under wrk ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lua(traffic: list[str], path: Path) -> Path:
    """A wrk script sending each address of ``traffic`` in turn as X-Forwarded-For."""
    ips = ",".join(f'"{ip}"' for ip in traffic)
    path.write_text(
        f"local ips = {{{ips}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #ips + 1\n"
        '  return wrk.format("GET", "/", {["X-Forwarded-For"] = ips[i]})\nend\n'
    )
    return path


# On a machine with two cores or more, the servers run on CPU 0 and wrk on CPU 1, so the
# scheduler does not move them onto each other between runs (the noise that is left is the
# machine's own).
_PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def _on_cpu(cpu: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if _PIN else cmd


def _serve(kind: str, mode: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    path = f"{APPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, **env, "BENCH_MODE": mode, "PYTHONPATH": path}
    if kind == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "asgi_app:app", "--port", str(port), "--no-proxy-headers"]
        cmd += ["--no-access-log", "--log-level", "warning", "--lifespan", "off"]
    else:
        cmd = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
        cmd.append("wsgi_app:app")
    return subprocess.Popen(_on_cpu(0, cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            httpx.get(url, timeout=5)  # any answer: the address may well hold a decision
            return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # waiting for a server process to load N decisions
    raise TimeoutError("server did not answer")


_UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _wrk(url: str, script: Path, seconds: int, connections: int) -> dict[str, float]:
    """requests/s and latency percentiles (us) from one wrk run."""
    out = subprocess.run(
        _on_cpu(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    lat = {p: float(v) * _UNIT[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": float(errors[1]) if errors else 0.0}


CONFIGS = [
    ("uvicorn", "bare"),
    ("uvicorn", "capi_fast"),
    ("gunicorn", "bare"),
    ("gunicorn", "capi_fast"),
    ("gunicorn", "pycrowdsec"),
]


@pytest.fixture(scope="module")
def servers(decisions: dict[str, Any]) -> Iterator[dict[tuple[str, str], str]]:
    env = {"BENCH_SNAPSHOT": str(decisions["snapshot"]), "BENCH_DECISIONS": str(decisions["txt"])}
    procs, urls = [], {}
    try:
        for kind, mode in CONFIGS:
            port = _free_port()
            procs.append(proc := _serve(kind, mode, port, env))
            urls[(kind, mode)] = f"http://127.0.0.1:{port}/"
            _ready(urls[(kind, mode)], proc)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs Debian's wrk)")
def test_servers_under_wrk(benchmark: Any, servers: dict[tuple[str, str], str], decisions: dict[str, Any]) -> None:
    # One timed pass (pytest-benchmark runs it under `make bench`'s --benchmark-only too).
    benchmark.pedantic(_servers_under_wrk, args=(servers, decisions), rounds=1, iterations=1)


def _servers_under_wrk(servers: dict[tuple[str, str], str], decisions: dict[str, Any]) -> None:
    script = _lua(decisions["traffic"], decisions["root"] / "traffic.lua")
    for url in servers.values():
        _wrk(url, script, 1, CONNECTIONS)  # warm-up: imports, caches, the follower's first check
    # Throughput with CONNECTIONS requests in flight; latency one request at a time (with more
    # in flight, a one-worker server's latency is mostly the queue in front of it).
    busy: dict[tuple[str, str], list[dict[str, float]]] = {c: [] for c in CONFIGS}
    calm: dict[tuple[str, str], list[dict[str, float]]] = {c: [] for c in CONFIGS}
    for _ in range(ROUNDS):
        for config in CONFIGS:
            busy[config].append(_wrk(servers[config], script, SECONDS, CONNECTIONS))
            calm[config].append(_wrk(servers[config], script, SECONDS, 1))
    rows = {}
    for config in CONFIGS:
        done = sum(r["rps"] * SECONDS for r in busy[config])
        rows[config] = {
            "rps": statistics.median(r["rps"] for r in busy[config]),
            "p50": statistics.median(r["p50"] for r in calm[config]),
            "p99": statistics.median(r["p99"] for r in calm[config]),
            "blocked %": 100 * sum(r["non2xx"] for r in busy[config]) / max(1.0, done),
        }
    for kind in ("uvicorn", "gunicorn"):
        bare = rows[(kind, "bare")]
        group = EXTRA[f"{kind} ({N:,} decisions; req/s at -c{CONNECTIONS}, latency at -c1; {SECONDS} s x {ROUNDS})"]
        for (k, mode), row in rows.items():
            if k != kind:
                continue
            group[f"{mode} req/s"] = row["rps"]
            group[f"{mode} p50 us"] = row["p50"]
            group[f"{mode} p99 us"] = row["p99"]
            if mode != "bare":
                group[f"{mode} cost %"] = 100 * (1 - row["rps"] / bare["rps"])
                group[f"{mode} +p50 us"] = row["p50"] - bare["p50"]
                group[f"{mode} blocked %"] = row["blocked %"]
    # Both bouncers answered: the traffic holds decisions, so some requests were refused.
    assert rows[("uvicorn", "capi_fast")]["blocked %"] > 0 and rows[("gunicorn", "pycrowdsec")]["blocked %"] > 0


# -- 2. the middleware alone, in process ---------------------------------------------------------


def _time_per_request(fn: Any, n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def test_middleware_alone(benchmark: Any, decisions: dict[str, Any]) -> None:
    benchmark.pedantic(_middleware_alone, args=(decisions,), rounds=1, iterations=1)


def _middleware_alone(decisions: dict[str, Any]) -> None:
    engine = RemediationEngine.follow(decisions["snapshot"])
    traffic = decisions["traffic"]
    environs = [{"REMOTE_ADDR": "127.0.0.1", "PATH_INFO": "/", "HTTP_X_FORWARDED_FOR": ip} for ip in traffic]
    peers = [{"REMOTE_ADDR": ip, "PATH_INFO": "/"} for ip in traffic]

    def app(environ: Any, start_response: Any) -> list[bytes]:
        return []

    def start(status: str, headers: Any) -> None:
        pass

    behind_proxy = WsgiBouncer(app, engine, trusted_proxies=["127.0.0.1"])
    direct = WsgiBouncer(app, engine)
    bare = _time_per_request(lambda: [app(e, start) for e in peers], len(peers))
    w_proxy = _time_per_request(lambda: [behind_proxy(e, start) for e in environs], len(environs))
    w_direct = _time_per_request(lambda: [direct(e, start) for e in peers], len(peers))

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        pass

    async def nothing(*_: Any) -> Any:
        return {"type": "http.request"}

    a_mw = AsgiBouncer(asgi_app, engine, trusted_proxies=["127.0.0.1"])
    scopes = [
        {"type": "http", "path": "/", "client": ("127.0.0.1", 5000), "headers": [(b"x-forwarded-for", ip.encode())]}
        for ip in traffic
    ]

    async def run_asgi(mw: Any) -> None:
        for s in scopes:
            await mw(s, nothing, nothing)

    a_bare = _time_per_request(lambda: asyncio.run(run_asgi(asgi_app)), len(scopes))
    a_proxy = _time_per_request(lambda: asyncio.run(run_asgi(a_mw)), len(scopes))
    group = EXTRA[f"middleware alone, ns per request ({N:,} decisions)"]
    group["WSGI, peer"] = (w_direct - bare) * 1e9
    group["WSGI, behind proxy"] = (w_proxy - bare) * 1e9
    group["ASGI, behind proxy"] = (a_proxy - a_bare) * 1e9
