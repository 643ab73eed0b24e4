"""End to end: Debian's crowdsec as the LAPI, a refreshing engine, the ASGI middleware under
uvicorn, requests through a trusted proxy header. ``cscli decisions add`` bans the address at the
next refresh; ``cscli decisions delete`` lets it in again. crowdsec 1.4.6 has no usage-metrics
route: the engine turns pushes off after its 404.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from capi_fast import LapiClient, RemediationEngine
from capi_fast.asgi import BouncerMiddleware
from crowdsec_support import local_api, require_crowdsec, run_cscli
from servers import uvicorn_serving
from test_middleware import starlette_app

require_crowdsec()

INTERVAL = 1.0
ATTACKER = "192.0.2.77"


@pytest.fixture
def lapi(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    with local_api(tmp_path) as found:
        yield found


def first_time(check: Callable[[], bool], limit: float) -> float:
    """Seconds until ``check()`` holds (polled); fails past ``limit``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, "not within the limit"
        time.sleep(0.05)  # polling a real server's answer
    return time.monotonic() - start


def test_cscli_decisions_reach_the_middleware_within_a_refresh(lapi):
    config, url, key = lapi
    with LapiClient(url, key) as client, RemediationEngine(client) as engine:
        engine.start(interval=INTERVAL, jitter=0)
        app = BouncerMiddleware(starlette_app(), engine, trusted_proxies=["127.0.0.1"])
        with uvicorn_serving(app) as base, httpx.Client(base_url=base, timeout=10) as http:

            def status() -> int:
                return http.get("/", headers={"x-forwarded-for": f"{ATTACKER}, 127.0.0.1"}).status_code

            first_time(lambda: engine.health().last_good_refresh is not None, 30)
            assert status() == 200
            run_cscli(config, "decisions", "add", "--ip", ATTACKER, "--type", "ban", "--duration", "1h")
            # The next refresh starts at most INTERVAL later, and takes milliseconds.
            took = first_time(lambda: status() == 403, 10 * INTERVAL)
            assert http.get("/", headers={"x-forwarded-for": "192.0.2.78"}).status_code == 200
            run_cscli(config, "decisions", "delete", "--ip", ATTACKER)
            first_time(lambda: status() == 200, 10 * INTERVAL)
        assert took < 10 * INTERVAL
        health = engine.health()
        assert health.running and health.last_error is None and not health.stale
    assert engine.counters[("cscli", "ban")] >= 1


def test_crowdsec_before_1_6_3_has_no_usage_metrics_route(lapi):
    _, url, key = lapi
    with LapiClient(url, key, retries=0) as client:
        engine = RemediationEngine(client)
        assert not engine.push_usage_metrics()
        assert engine.usage_metrics is not None and engine.usage_metrics.disabled
