"""AsyncRemediationEngine over AsyncCapiClient, against the simulator through real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from capi_fast import AsyncCapiClient, AsyncRemediationEngine, MemoryStorage
from capi_fast.errors import ConfigurationError
from capi_fast.testing import CapiSimulator
from support import Clock


@pytest.fixture
def sim(clock: Clock):
    with CapiSimulator(clock=clock, token_lifetime=10 * 86400) as s:
        yield s


def _client(sim: CapiSimulator, clock: Clock) -> AsyncCapiClient:
    async def no_wait(_: float) -> None:
        return None

    return AsyncCapiClient(
        user_agent="t/1", scenarios=["mywaf/x"], base_url=sim.url, clock=clock, storage=MemoryStorage(), sleep=no_wait
    )


def test_startup_deltas_lists_and_the_two_hour_rule(sim, clock):
    sim.add_decisions(["192.0.2.1", "198.51.100.0/24"], duration=86400)
    sim.add_blocklist("tor", ["203.0.113.5", "203.0.113.6"], remediation="captcha")
    sim.add_blocklist("scanners", ["203.0.113.7"])

    async def main() -> None:
        async with _client(sim, clock) as client:
            e = AsyncRemediationEngine(client, clock=clock)
            r = await e.refresh_decisions()
            assert r.performed and r.startup and r.added == 5 and r.error is None, r
            assert sorted(r.lists_updated) == ["scanners", "tor"]
            assert e.get_ip_remediation("198.51.100.9") == "ban"
            assert e.get_ip_remediation("203.0.113.5") == "captcha"
            assert (await e.refresh_decisions()).error == "too soon"
            sim.delete_decisions(["192.0.2.1"])
            sim.remove_blocklist("scanners")
            clock.now += 2 * 3600
            r = await e.refresh_decisions()
            assert r.performed and not r.startup and r.deleted == 2 and r.lists_removed == ("scanners",), r
            assert e.get_ip_remediation("192.0.2.1") == "bypass"
            assert e.get_ip_remediation("203.0.113.7") == "bypass"
            assert e.counters[("lists:tor", "captcha")] == 1

    asyncio.run(main())


def test_a_failed_refresh_keeps_serving_and_a_restart_loads_the_snapshot(sim, clock, tmp_path: Path):
    sim.add_decisions(["192.0.2.1"], duration=86400)
    path = tmp_path / "engine.snap"

    async def main() -> None:
        async with _client(sim, clock) as client:
            e = AsyncRemediationEngine(client, clock=clock, min_interval=0, snapshot_path=path)
            assert (await e.refresh_decisions()).performed
            sim.fail_next(5, status=503, path="/decisions/stream")
            r = await e.refresh_decisions()
            assert not r.performed and "503" in (r.error or "")
            assert e.get_ip_remediation("192.0.2.1") == "ban"
            again = AsyncRemediationEngine(client, clock=clock, min_interval=0, snapshot_path=path)
            assert again.get_ip_remediation("192.0.2.1") == "ban"
            assert not (await again.refresh_decisions()).startup, "the snapshot carries the stream state"

    asyncio.run(main())


def test_the_loop_keeps_answering_while_a_large_refresh_is_applied(sim, clock):
    sim.add_decisions([f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(200_000)], duration=86400)

    async def main() -> tuple[int, list[str]]:
        async with _client(sim, clock) as client:
            e = AsyncRemediationEngine(client, clock=clock)
            refresh = asyncio.ensure_future(e.refresh_decisions())
            answers: list[str] = []
            while not refresh.done():
                answers.append(e.get_ip_remediation("10.0.0.1"))
                await asyncio.sleep(0)
            report = refresh.result()
            assert report.added == 200_000
            return len(answers), answers

    turns, answers = asyncio.run(main())
    assert turns > 1, "the event loop was blocked for the whole refresh"
    assert set(answers) <= {"bypass", "ban"}, "answers are the old or the new decisions, never anything else"


def test_refresh_runs_one_at_a_time_and_a_follower_does_not_refresh(sim, clock, tmp_path: Path):
    sim.add_decisions(["192.0.2.1"], duration=86400)

    async def main() -> None:
        async with _client(sim, clock) as client:
            e = AsyncRemediationEngine(client, clock=clock)
            first, second = await asyncio.gather(e.refresh_decisions(), e.refresh_decisions())
            assert first.performed and first.startup
            assert not second.performed and second.error == "too soon", "the second waited for the first"
            calls = [r for r in sim.requests if r.path.endswith("/decisions/stream")]
            assert len(calls) == 1
        follower = AsyncRemediationEngine.follow(tmp_path / "none.snap")
        with pytest.raises(ConfigurationError):
            await follower.refresh_decisions()

    asyncio.run(main())
