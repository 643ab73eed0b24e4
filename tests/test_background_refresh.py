"""engine.start(): refreshes on a thread, backs off on failure, reports health, and after
max_staleness without a good refresh answers with stale_action. Waits are injected: the
refresher's ``wait`` is a function the test drives, so nothing sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from capi_fast import CapiClient, ConfigurationError, MemoryStorage, RemediationEngine
from capi_fast.refresher import RefreshSchedule
from capi_fast.testing import CapiSimulator
from support import Clock


@pytest.fixture
def sim(clock: Clock):
    with CapiSimulator(clock=clock, token_lifetime=30 * 86400) as s:
        yield s


def client(sim: CapiSimulator, clock: Clock) -> CapiClient:
    return CapiClient(
        user_agent="mywaf/2.1",
        scenarios=["mywaf/login-bruteforce"],
        base_url=sim.url,
        storage=MemoryStorage(),
        clock=clock,
        sleep=lambda _: None,
        retries=0,
        metrics_interval=None,
    )


def driven(
    steps: list[Callable[[], Any]], clock: Clock
) -> tuple[Callable[[float], bool], list[float], threading.Event]:
    """A ``wait`` that advances the clock by each delay, runs the next step, and stops after the last."""
    delays: list[float] = []
    done = threading.Event()

    def wait(delay: float) -> bool:
        delays.append(delay)
        clock.now += delay
        if len(delays) > len(steps):
            done.set()
            return True
        steps[len(delays) - 1]()
        return False

    return wait, delays, done


def test_refreshes_in_the_background_and_backs_off_on_failure(sim, clock):
    sim.add_decisions(["203.0.113.1"])
    with client(sim, clock) as c:
        engine = RemediationEngine(c, clock=clock, min_interval=0)
        seen: dict[str, Any] = {}
        steps = [
            lambda: sim.add_decisions(["203.0.113.2"]),
            lambda: sim.fail_next(3, status=503),
            lambda: seen.update(failing=engine.health()),
            lambda: None,
            lambda: None,  # the next refresh goes through
            lambda: seen.update(recovered=engine.health()),
        ]
        wait, delays, done = driven(steps, clock)
        engine.start(interval=120, jitter=0, wait=wait)
        assert done.wait(30), "the refresher ran every step"
        engine.stop()
    assert engine.get_ip_remediation("203.0.113.1") == "ban" and engine.get_ip_remediation("203.0.113.2") == "ban"
    assert delays == [120, 120, 30, 60, 120, 120, 120], "good: the interval; failed: 30 s doubling up to it"
    assert seen["failing"].last_error and "503" in seen["failing"].last_error
    assert seen["failing"].age is not None and seen["failing"].age >= 30, "the last good decisions keep answering"
    assert seen["recovered"].last_error is None and not seen["recovered"].stale
    assert not engine.health().running


@pytest.mark.parametrize("action", ["bypass", "ban"])
def test_stale_action_answers_after_max_staleness(sim, clock, action):
    sim.add_decisions(["203.0.113.1"])
    with client(sim, clock) as c:
        engine = RemediationEngine(c, clock=clock, min_interval=0, max_staleness=300, stale_action=action)
        assert engine.refresh_decisions().performed
        assert engine.get_ip_remediation("203.0.113.1") == "ban"
        assert engine.get_ip_remediation("198.51.100.1") == "bypass"
        sim.fail_next(10, status=503)
        clock.now += 200
        engine.refresh_decisions()
        assert not engine.health().stale, "within max_staleness the last good decisions answer"
        clock.now += 200
        engine.refresh_decisions()
        health = engine.health()
        assert health.stale and health.age == pytest.approx(400)
        expected = {"bypass": ("bypass", "bypass"), "ban": ("ban", "ban")}[action]
        assert (engine.get_ip_remediation("203.0.113.1"), engine.get_ip_remediation("198.51.100.1")) == expected
        sim.fail_next(0)
        for _ in range(10):  # use up the injected failures
            if engine.refresh_decisions().performed:
                break
        assert not engine.health().stale
        assert engine.get_ip_remediation("203.0.113.1") == "ban"
        assert engine.get_ip_remediation("198.51.100.1") == "bypass"


def test_start_checks_its_options(sim, clock):
    with client(sim, clock) as c:
        with pytest.raises(ConfigurationError):
            RemediationEngine(c, stale_action="shrug")
        with pytest.raises(ConfigurationError):
            RemediationEngine(c, max_staleness=0)
        with pytest.raises(ValueError):
            RemediationEngine(c).start(interval=0)
    with pytest.raises(ConfigurationError):
        RemediationEngine.follow("/nonexistent.snap").start()


def test_schedule_jitter_stays_within_bounds():
    import random

    s = RefreshSchedule(100, jitter=0.1, rng=random.Random(3))
    delays = [s.next_delay(True) for _ in range(1000)]
    assert 90 <= min(delays) < 92 and 108 < max(delays) <= 110


def test_the_async_engine_refreshes_in_a_task(sim, clock):
    import asyncio

    from capi_fast import AsyncCapiClient
    from capi_fast.async_engine import AsyncRemediationEngine

    sim.add_decisions(["203.0.113.1"])
    delays: list[float] = []

    async def main() -> AsyncRemediationEngine:
        async with AsyncCapiClient(
            user_agent="mywaf/2.1",
            scenarios=["mywaf/login-bruteforce"],
            base_url=sim.url,
            storage=MemoryStorage(),
            clock=clock,
            retries=0,
            metrics_interval=None,
        ) as c:
            engine = AsyncRemediationEngine(c, clock=clock, min_interval=0)
            done = asyncio.Event()
            steps = [lambda: sim.add_decisions(["203.0.113.2"]), lambda: sim.fail_next(1, status=503), lambda: None]

            async def wait(delay: float) -> bool:
                delays.append(delay)
                clock.now += delay
                if len(delays) > len(steps):
                    done.set()
                    return True
                steps[len(delays) - 1]()
                return False

            engine.start(interval=60, jitter=0, wait=wait)
            await asyncio.wait_for(done.wait(), 30)
            await engine.stop()
            return engine

    engine = asyncio.run(main())
    assert engine.get_ip_remediation("203.0.113.2") == "ban"
    assert delays == [60, 60, 30, 60]
    assert not engine.health().running and engine.health().last_error is None
