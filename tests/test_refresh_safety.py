"""Once a stream answer arrived, a refresh never raises and never drops its delta.

CAPI (and a LAPI) move this machine's stream position when they answer, so a refresh that raised
after the answer would lose that delta for good. Hostile or unusual answers come through real
HTTP on loopback: the simulator, or a small server answering a fixed LAPI body.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from capi_fast import CapiClient, DecisionIndex, LapiClient, MemoryStorage, RemediationEngine
from capi_fast.async_engine import AsyncRemediationEngine
from capi_fast.lapi import AsyncLapiClient
from capi_fast.lists import MAX_LINKS, blocklist_links
from capi_fast.testing import CapiSimulator
from support import Clock


@pytest.fixture
def sim(clock: Clock) -> Iterator[CapiSimulator]:
    with CapiSimulator(clock=clock, token_lifetime=30 * 86400) as s:
        yield s


def capi(sim: CapiSimulator, clock: Clock) -> CapiClient:
    return CapiClient(
        user_agent="mywaf/2.1",
        base_url=sim.url,
        clock=clock,
        sleep=lambda _: None,
        retries=1,
        storage=MemoryStorage(),
        metrics_interval=None,
        scenarios=["mywaf/login-bruteforce"],
    )


def test_hostile_blocklist_links_never_cost_the_stream_delta(sim, clock):
    sim.add_decisions(["203.0.113.1"])
    sim.add_blocklist("a" * 300, ["192.0.2.1"])
    sim.add_blocklist("bad\nname", ["192.0.2.2"])
    sim.add_blocklist("tor", ["192.0.2.3"])
    with capi(sim, clock) as c:
        engine = RemediationEngine(c, clock=clock)
        r = engine.refresh_decisions()
    assert r.performed and r.skipped == 2, "the two unusable links are skipped and counted"
    assert r.lists_updated == ("tor",)
    assert engine.get_ip_remediation("203.0.113.1") == "ban", "the stream delta was applied"
    assert engine.get_ip_remediation("192.0.2.3") == "ban"
    assert engine.get_ip_remediation("192.0.2.1") == "bypass"


def test_links_past_the_cap_and_repeated_names_are_skipped_and_counted():
    link = {"url": "https://x/l", "remediation": "ban", "scope": "ip", "duration": "1h"}
    links = {"blocklists": [{**link, "name": f"l{i}"} for i in range(MAX_LINKS + 500)] + [{**link, "name": "l0"}]}
    kept, skipped = blocklist_links(links)
    assert len(kept) == MAX_LINKS and skipped == 501
    assert len({k.name for k in kept}) == MAX_LINKS


def hostile_lapi_body(n: int) -> bytes:
    """A LAPI stream answer whose decisions carry ``n`` distinct origins, and one of 300 characters."""
    new = [
        {"value": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "scope": "Ip", "type": "ban", "origin": f"o{i}"}
        for i in range(n)
    ]
    new.append({"value": "198.51.100.7", "scope": "Ip", "type": "ban", "origin": "x" * 300})
    new.append({"value": "198.51.100.8", "scope": "Ip", "type": "ban", "origin": "cscli"})
    for d in new:
        d.update(duration="4h", scenario="test", id=1)
    return orjson.dumps({"new": new, "deleted": None})


@pytest.fixture
def lapi() -> Iterator[tuple[str, dict[str, Any]]]:
    """A server on loopback answering ``GET /v1/decisions/stream`` with ``state["body"]``."""
    state: dict[str, Any] = {"body": b'{"new": null, "deleted": null}', "calls": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state["calls"] += 1
            body = state["body"] if self.path.startswith("/v1/decisions/stream") else b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", state
    finally:
        server.shutdown()
        server.server_close()


def test_more_origins_than_the_index_holds_are_skipped_not_raised(lapi, clock):
    url, state = lapi
    state["body"] = hostile_lapi_body(70_000)
    with LapiClient(url, api_key="k", retries=0) as c:
        engine = RemediationEngine(c, clock=clock)
        r = engine.refresh_decisions()
    assert r.performed and r.error is None
    assert r.added > 65_000 and r.skipped >= 70_002 - 65_535, "what cannot be held is counted, the rest applied"
    assert r.added + r.skipped == 70_002
    assert engine.get_ip_remediation("10.0.0.1") == "ban"
    assert engine.get_ip_remediation("198.51.100.7") == "bypass", "the 300-character origin was skipped"


def test_async_engine_applies_a_hostile_lapi_answer_too(lapi, clock):
    import asyncio

    url, state = lapi
    state["body"] = hostile_lapi_body(66_000)

    async def run() -> Any:
        async with AsyncLapiClient(url, api_key="k", retries=0) as c:
            engine = AsyncRemediationEngine(c, clock=clock)
            return engine, await engine.refresh_decisions()

    engine, r = asyncio.run(run())
    assert r.performed and r.added + r.skipped == 66_002
    assert engine.get_ip_remediation("10.0.0.5") == "ban"


def test_a_snapshot_that_cannot_be_written_keeps_the_delta_in_memory(sim, clock, tmp_path):
    snap = tmp_path / "state" / "decisions.snap"
    snap.parent.mkdir()
    sim.add_decisions(["203.0.113.1"])
    with capi(sim, clock) as c:
        engine = RemediationEngine(c, clock=clock, snapshot_path=snap)
        assert engine.refresh_decisions().snapshot_saved
        sim.add_decisions(["203.0.113.2"])
        snap.unlink()
        snap.mkdir()  # the path is now a directory: the atomic replace fails
        clock.now += 3 * 3600
        r = engine.refresh_decisions()
        assert r.performed and not r.snapshot_saved and "snapshot not saved" in (r.error or "")
        assert engine.get_ip_remediation("203.0.113.2") == "ban", "the delta is served from memory"
        snap.rmdir()
        clock.now += 3 * 3600
        assert engine.refresh_decisions().snapshot_saved, "the next refresh writes the snapshot"
    index = DecisionIndex.load(snap)
    assert index.lookup("203.0.113.2", now=clock.now) == "ban", "the delta reached the snapshot"


def test_unreadable_links_keep_the_lists_and_apply_the_stream(sim, clock):
    sim.add_blocklist("tor", ["192.0.2.3"])
    with capi(sim, clock) as c:
        engine = RemediationEngine(c, clock=clock)
        engine.refresh_decisions()
        sim.add_decisions(["203.0.113.9"])
        original = sim.encode

        def broken_links(answer: Any) -> bytes:
            body = original(answer)
            return body.replace(b'"links":{"blocklists":', b'"links":{"blocklists":"nope","was":')

        sim.encode = broken_links  # type: ignore[method-assign]
        clock.now += 3 * 3600
        r = engine.refresh_decisions()
    assert r.performed and "lists unchanged" in (r.error or "")
    assert engine.get_ip_remediation("203.0.113.9") == "ban", "the stream delta was applied"
    assert engine.get_ip_remediation("192.0.2.3") == "ban", "the blocklist stays"
