"""Usage metrics to a LAPI: the body the specification defines, pushed on schedule from the
background refresh, counts kept until a push succeeds, and off against a LAPI without the route.

The fake LAPI (tests/servers.py) checks each body against the LAPI swagger's ``AllMetrics`` and
answers as crowdsec 1.6.3+ does (201); Debian's crowdsec 1.4.6, which has no such route, is the
404 case (tests/test_bouncer_crowdsec.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import pytest

from capi_fast import AsyncLapiClient, AsyncRemediationEngine, ConfigurationError, LapiClient, RemediationEngine
from capi_fast.asgi import BouncerMiddleware as AsgiBouncer
from capi_fast.testing.schema import usage_metrics_problem
from capi_fast.usage_metrics import UsageMetrics, usage_metrics_body
from servers import FakeLapi, FakeVerify, uvicorn_serving
from test_middleware import BANNED, CAPTCHA_IP, CLEAN, captcha, post_token, starlette_app


@pytest.fixture
def lapi():
    with FakeLapi() as fake:
        yield fake


def items(body: dict) -> list[dict]:
    (component,) = body["remediation_components"]
    (window,) = component["metrics"]
    return window["items"]


def by_name(body: dict, name: str) -> dict[tuple[str, ...], float]:
    return {tuple(sorted((i.get("labels") or {}).items())): i["value"] for i in items(body) if i["name"] == name}


def test_body_counts_final_answers_through_the_middleware(lapi, clock):
    # Real traffic through the ASGI middleware, then a push: dropped by origin and final
    # remediation, processed with bypasses, a solved captcha counted as bypass, active decisions.
    with LapiClient(lapi.url, FakeLapi.KEY, retries=0) as client:
        engine = RemediationEngine(client, clock=clock)
        engine.index.add(BANNED, "ban", origin="crowdsec", now=clock.now)
        engine.index.add("198.51.100.0/24", "captcha", origin="lists:tor-exit", now=clock.now)
        engine.index.add("2001:db8::/32", "ban", origin="cscli", now=clock.now)
        with FakeVerify() as verify:
            app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"], captcha=captcha(verify.url))
            with uvicorn_serving(app) as url, httpx.Client(timeout=10) as http:
                for ip in (BANNED, BANNED, CLEAN, CAPTCHA_IP):
                    http.get(url + "/", headers={"x-forwarded-for": ip})
                post_token(http, url + "/", CAPTCHA_IP, "cf-turnstile-response", FakeVerify.TOKEN)
        clock.now += 1800
        assert engine.push_usage_metrics()
    (body,) = lapi.metrics
    assert usage_metrics_problem(body) is None
    component = body["remediation_components"][0]
    assert component["type"] == "capi-fast-bouncer" and component["version"]
    assert component["metrics"][0]["meta"] == {"window_size_seconds": 1800, "utc_now_timestamp": int(clock.now)}
    dropped = by_name(body, "dropped")
    assert dropped == {
        (("origin", "crowdsec"), ("remediation", "ban")): 2,
        (("origin", "lists:tor-exit"), ("remediation", "captcha")): 1,
    }
    assert by_name(body, "processed") == {(): 5}, "2 bans, 1 clean, 1 captcha page, 1 solve (a bypass)"
    assert by_name(body, "active_decisions") == {
        (("origin", "crowdsec"),): 1,
        (("origin", "cscli"),): 1,
        (("origin", "lists:tor-exit"),): 1,
    }
    assert all(i["unit"] == ("ip" if i["name"] == "active_decisions" else "request") for i in items(body))
    assert "capi-fast" in lapi.user_agents[0]


def test_counts_stay_until_a_push_succeeds_then_start_again(lapi, clock):
    with LapiClient(lapi.url, FakeLapi.KEY, retries=0) as client:
        engine = RemediationEngine(client, clock=clock)
        engine.index.add(BANNED, "ban", origin="crowdsec")
        engine.get_ip_remediation(BANNED)
        lapi.metrics_status = 500
        assert not engine.push_usage_metrics()
        assert engine.usage_metrics is not None and "500" in (engine.usage_metrics.last_error or "")
        engine.get_ip_remediation(BANNED)
        engine.get_ip_remediation(CLEAN)
        lapi.metrics_status = 201
        assert engine.push_usage_metrics()
        assert by_name(lapi.metrics[0], "dropped") == {(("origin", "crowdsec"), ("remediation", "ban")): 2}
        assert by_name(lapi.metrics[0], "processed") == {(): 3}
        assert engine.push_usage_metrics()
        assert by_name(lapi.metrics[1], "dropped") == {} and by_name(lapi.metrics[1], "processed") == {(): 0}


def test_schedule_default_minimum_and_off(clock):
    m = UsageMetrics(clock=clock)
    assert m.interval == 1800 and not m.due()
    clock.now += 1799
    assert not m.due()
    clock.now += 1
    assert m.due()
    for bad in (300, -1, float("nan"), float("inf"), "1800"):
        with pytest.raises(ConfigurationError, match="metrics_interval"):
            UsageMetrics(bad, clock=clock)  # type: ignore[arg-type]
    assert UsageMetrics(600, clock=clock).interval == 600
    off = UsageMetrics(0, clock=clock)
    clock.now += 10**6
    assert off.disabled and not off.due()


def test_background_refresh_pushes_when_due(lapi, clock):
    with LapiClient(lapi.url, FakeLapi.KEY, retries=0) as client:
        engine = RemediationEngine(client, clock=clock, metrics_interval=600)
        engine.index.add(BANNED, "ban", origin="crowdsec")
        engine.get_ip_remediation(BANNED)
        done = threading.Event()
        waits: list[float] = []

        def wait(delay: float) -> bool:  # each wait moves the clock; stop after 100 refreshes
            waits.append(delay)
            clock.now += delay
            if len(waits) >= 100:
                done.set()
                return True
            return False

        engine.start(interval=10, jitter=0, wait=wait)
        assert done.wait(60)
        engine.stop()
    # 100 refreshes 10 s apart span 990 s: one push at 600 s.
    assert len(lapi.metrics) == 1
    assert by_name(lapi.metrics[0], "dropped") == {(("origin", "crowdsec"), ("remediation", "ban")): 1}


def test_async_engine_pushes_too(lapi, clock):
    async def main() -> None:
        async with AsyncLapiClient(lapi.url, FakeLapi.KEY, retries=0) as client:
            engine = AsyncRemediationEngine(client, clock=clock)
            engine.index.add(BANNED, "ban", origin="crowdsec")
            engine.get_ip_remediation(BANNED)
            assert not await engine.push_usage_metrics(force=False), "not due yet"
            clock.now += 1800
            assert await engine.push_usage_metrics(force=False)

    asyncio.run(main())
    assert by_name(lapi.metrics[0], "processed") == {(): 1}


def test_a_lapi_without_the_route_turns_pushes_off_with_one_line(lapi, clock, caplog):
    lapi.metrics_status = 404
    with LapiClient(lapi.url, FakeLapi.KEY, retries=0) as client:
        engine = RemediationEngine(client, clock=clock)
        with caplog.at_level(logging.WARNING, logger="capi_fast.usage_metrics"):
            assert not engine.push_usage_metrics()
            assert not engine.push_usage_metrics()
    assert engine.usage_metrics is not None and engine.usage_metrics.disabled
    assert len(lapi.user_agents) == 1, "no second attempt"
    assert [r.getMessage() for r in caplog.records] == [
        "the LAPI has no usage-metrics endpoint (crowdsec before 1.6.3): metrics pushes are off"
    ]


def test_body_without_traffic_is_still_valid():
    body = usage_metrics_body(name="x", kind="y", startup=1.0, window=0, now=2.0, answers={}, active={})
    assert usage_metrics_problem(body) is None
    assert by_name(body, "processed") == {(): 0}


def test_no_metrics_from_capi_sources_or_followers(tmp_path):
    engine = RemediationEngine(None)
    assert engine.usage_metrics is None and not engine.push_usage_metrics()
