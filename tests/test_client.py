"""CapiClient and AsyncCapiClient against the simulator, through real sockets."""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Any

import pytest

from capi_fast import (
    AuthenticationError,
    CapiError,
    ConfigurationError,
    FileStorage,
    InvalidSignal,
    MemoryStorage,
    RateLimitError,
    ServerError,
    Signal,
)
from capi_fast.client import AsyncCapiClient, CapiClient
from capi_fast.testing import CapiSimulator
from support import Clock


@pytest.fixture
def sim(clock: Clock):
    with CapiSimulator(clock=clock, token_lifetime=3600) as s:
        yield s


def make(sim: CapiSimulator, clock: Clock, sleeps: list[float] | None = None, **kw: Any) -> CapiClient:
    record = sleeps if sleeps is not None else []
    kw.setdefault("storage", MemoryStorage())
    kw.setdefault("timeout", 2.0)
    kw.setdefault("metrics_interval", None)  # the automatic metrics push has its own tests
    return CapiClient(
        user_agent="mywaf/2.1",
        scenarios=["mywaf/login-bruteforce"],
        base_url=sim.url,
        clock=clock,
        sleep=record.append,
        **kw,
    )


def calls(sim: CapiSimulator, path: str) -> list[int]:
    return [r.status for r in sim.requests if r.path.endswith(path)]


def test_first_use_registers_logs_in_and_sends_user_agent(sim, clock):
    with make(sim, clock) as c:
        assert c.get_stream_decisions(startup=True)["new"] == []
    assert [r.path for r in sim.requests] == ["/v3/watchers", "/v3/watchers/login", "/v3/decisions/stream"]
    # The integration's own token first (the vendor tells integrations apart by it), then ours.
    assert all(r.user_agent.startswith("mywaf/2.1 capi-fast/") for r in sim.requests)
    assert list(sim.watchers.values()) == [["mywaf/login-bruteforce"]]


def test_stored_credentials_are_reused_by_a_second_client(sim, clock, tmp_path):
    with make(sim, clock, storage=FileStorage(tmp_path)) as c:
        c.login()
        first = c.machine_id
    with make(sim, clock, storage=FileStorage(tmp_path)) as c:
        c.get_stream_decisions()
        assert c.machine_id == first
    assert list(sim.watchers) == [first], "one watcher only"
    assert calls(sim, "/watchers") == [200], "registered once"
    assert calls(sim, "/watchers/login") == [200], "the stored token was reused too"
    for name in ("credentials.json", "token.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    assert "password" not in (tmp_path / "token.json").read_text()


def test_changed_prefix_raises_unless_reset(sim, clock, tmp_path):
    with make(sim, clock, storage=FileStorage(tmp_path), machine_id_prefix="waf") as c:
        c.login()
        old = c.machine_id
    with make(sim, clock, storage=FileStorage(tmp_path), machine_id_prefix="other") as c:
        with pytest.raises(ConfigurationError, match="reset_credentials"):
            c.login()
    with make(sim, clock, storage=FileStorage(tmp_path), machine_id_prefix="other", reset_credentials=True) as c:
        c.login()
        assert c.machine_id.startswith("other") and c.machine_id != old


def test_token_renewed_before_expiry(sim, clock):
    with make(sim, clock) as c:
        c.get_stream_decisions()
        clock.now += 3600 - 30  # inside the renewal margin
        c.get_stream_decisions()
        clock.now += 10
        c.get_stream_decisions()
    assert calls(sim, "/watchers/login") == [200, 200]
    assert 401 not in calls(sim, "/decisions/stream")


def test_revoked_token_relogs_once_and_replays(sim, clock):
    with make(sim, clock) as c:
        c.get_stream_decisions()
        sim.revoke_tokens()
        c.get_stream_decisions()
    assert calls(sim, "/decisions/stream") == [200, 401, 200]
    assert calls(sim, "/watchers/login") == [200, 200]


def test_persistent_401_raises_authentication_error(sim, clock):
    with make(sim, clock) as c:
        c.login()
        sim.fail_next(2, status=401, path="/decisions/stream")
        with pytest.raises(AuthenticationError):
            c.get_stream_decisions()


def test_scenario_change_means_new_login(sim, clock):
    storage = MemoryStorage()
    with make(sim, clock, storage=storage) as c:
        c.login()
    with CapiClient(
        user_agent="mywaf/2.1",
        scenarios=["mywaf/login-bruteforce", "mywaf/404-scan"],
        base_url=sim.url,
        clock=clock,
        storage=storage,
    ) as c:
        c.get_stream_decisions()
    assert calls(sim, "/watchers/login") == [200, 200]
    assert list(sim.watchers.values()) == [["mywaf/login-bruteforce", "mywaf/404-scan"]]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_backoff(sim, clock, status):
    sleeps: list[float] = []
    with make(sim, clock, sleeps, backoff=0.5) as c:
        c.login()
        sim.fail_next(3, status=status, path="/decisions/stream")
        c.get_stream_decisions()
    assert calls(sim, "/decisions/stream") == [status] * 3 + [200]
    assert len(sleeps) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0, sleeps


def test_retries_are_bounded(sim, clock):
    sleeps: list[float] = []
    with make(sim, clock, sleeps, retries=2) as c:
        c.login()
        sim.fail_next(5, status=503, path="/decisions/stream")
        with pytest.raises(ServerError) as e:
            c.get_stream_decisions()
    assert e.value.status == 503 and len(sleeps) == 2


def test_rate_limit_honours_retry_after(sim, clock):
    sleeps: list[float] = []
    with make(sim, clock, sleeps) as c:
        c.login()
        sim.fail_next(status=429, retry_after=7, path="/decisions/stream")
        c.get_stream_decisions()
        assert sleeps == [7.0]
        sim.fail_next(status=429, retry_after=3600, path="/decisions/stream")
        with pytest.raises(RateLimitError) as e:
            c.get_stream_decisions()
    assert e.value.retry_after == 3600


def test_timeouts_malformed_and_truncated_answers_are_retried(sim, clock):
    sleeps: list[float] = []
    with make(sim, clock, sleeps, timeout=0.3) as c:
        c.login()
        sim.fail_next(kind="timeout", delay=5, path="/decisions/stream")
        sim.fail_next(kind="malformed", path="/decisions/stream")
        sim.fail_next(kind="truncated", path="/decisions/stream")
        assert c.get_stream_decisions()["new"] == []
    assert len(sleeps) == 3


def test_other_4xx_raise_at_once(sim, clock):
    sleeps: list[float] = []
    with make(sim, clock, sleeps) as c:
        c.login()
        sim.fail_next(status=400, path="/signals")
        with pytest.raises(CapiError) as e:
            c.push_signals([Signal.whisper("192.0.2.1", "mywaf/404-scan")])
    assert e.value.status == 400 and sleeps == []


def test_unreachable_capi_is_a_server_error(clock):
    sleeps: list[float] = []
    with CapiClient(
        user_agent="x/1",
        scenarios=["x/y"],
        base_url="http://127.0.0.1:9/",
        clock=clock,
        sleep=sleeps.append,
        retries=1,
        metrics_interval=None,
    ) as c:
        with pytest.raises(ServerError, match="cannot reach"):
            c.login()
    assert len(sleeps) == 1


def test_600_signals_go_in_3_calls(sim, clock):
    signals = [Signal.decision(f"192.0.2.{i % 250}", "mywaf/login-bruteforce", duration=60) for i in range(600)]
    with make(sim, clock) as c:
        assert c.push_signals(signals) == 600
    assert calls(sim, "/signals") == [200, 200, 200]
    assert [s["uuid"] for s in sim.signals] == [s.uuid for s in signals]
    assert all(s["machine_id"] == sim.signals[0]["machine_id"] for s in sim.signals)


def test_invalid_signals_rejected_before_any_call(sim, clock):
    with make(sim, clock) as c:
        with pytest.raises(InvalidSignal):
            c.push_signals([Signal.whisper("192.0.2.1", "a/b"), {"scenario": "a/b"}])  # type: ignore[list-item]
        with pytest.raises(InvalidSignal):
            c.push_signals([Signal.decision("not an ip", "a/b")])
    assert calls(sim, "/signals") == []


def test_blocklist_download_and_304(sim, clock):
    sim.add_blocklist("tor-exit", ["192.0.2.7", "# comment", "", "2001:db8::/64"])
    with make(sim, clock) as c:
        link = c.get_stream_decisions(startup=True)["links"]["blocklists"][0]
        first = c.fetch_blocklist(link)
        assert first.modified and first.values == ["192.0.2.7", "2001:db8::/64"]
        again = c.fetch_blocklist(link, if_modified_since=first.last_modified)
        assert not again.modified and again.values == []


def test_enroll_and_metrics(sim, clock):
    with make(sim, clock) as c:
        c.enroll("attachKey123", name="web-01", tags=["prod"])
        c.push_metrics({"bouncers": [], "machines": []})
        with pytest.raises(ConfigurationError):
            c.enroll("")
    assert calls(sim, "/watchers/enroll") == [200] and sim.metrics == [{"bouncers": [], "machines": []}]


def test_v2_paths(sim, clock):
    sim.add_decisions(["192.0.2.1"])
    with make(sim, clock, api_version="v2") as c:
        doc = c.get_stream_decisions(startup=True)
    assert doc["new"][0]["value"] == "192.0.2.1"
    assert all(r.path.startswith("/v2/") for r in sim.requests)


@pytest.mark.parametrize(
    "kw",
    [{"user_agent": ""}, {"scenarios": ["Bad Name"]}, {"api_version": "v9"}, {"base_url": "ftp://x"}],
)
def test_bad_configuration(kw):
    args: dict[str, Any] = {"user_agent": "x/1", "scenarios": ["a/b"], **kw}
    with pytest.raises(ConfigurationError):
        CapiClient(**args)


def test_secrets_never_in_repr_or_logs(sim, clock, caplog):
    caplog.set_level("DEBUG")
    storage = MemoryStorage()
    with make(sim, clock, storage=storage) as c:
        sim.fail_next(status=503, path="/watchers/login")
        c.login()
        text = repr(c) + repr(storage) + caplog.text
    creds, token = storage.load_credentials(), storage.load_token()
    assert creds is not None and token is not None
    assert creds.password not in text and token.token not in text


def test_async_client_parity(sim, clock):
    sim.add_decisions(["192.0.2.1"])
    sim.add_blocklist("tor", ["198.51.100.1"])
    sleeps: list[float] = []

    async def sleep(d: float) -> None:
        sleeps.append(d)

    async def main() -> None:
        async with AsyncCapiClient(
            user_agent="mywaf/2.1",
            scenarios=["mywaf/login-bruteforce"],
            base_url=sim.url,
            clock=clock,
            sleep=sleep,
            storage=MemoryStorage(),
            metrics_interval=None,
        ) as c:
            doc = await c.get_stream_decisions(startup=True)
            assert doc["new"][0]["decisions"][0]["value"] == "192.0.2.1"
            sim.revoke_tokens()
            sim.fail_next(status=503, path="/signals")
            n = await c.push_signals([Signal.whisper("192.0.2.1", "mywaf/404-scan") for _ in range(300)])
            assert n == 300
            bl = await c.fetch_blocklist(doc["links"]["blocklists"][0])
            assert bl.values == ["198.51.100.1"]
            await c.enroll("k")
            await c.push_metrics({"bouncers": [], "machines": []})
            with pytest.raises(InvalidSignal):
                await c.push_signals(["nope"])  # type: ignore[list-item]

    asyncio.run(main())
    assert len(sim.signals) == 300 and len(sleeps) == 1
    assert calls(sim, "/watchers/login") == [200, 200]
