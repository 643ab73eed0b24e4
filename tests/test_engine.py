"""RemediationEngine over a CAPI source, against the simulator through real sockets."""

from __future__ import annotations

import pytest

from capi_fast import CapiClient, MemoryStorage
from capi_fast.engine import MIN_CAPI_INTERVAL, RemediationEngine
from capi_fast.errors import ConfigurationError, InvalidIP
from capi_fast.stream import parse_go_duration, parse_stream
from capi_fast.testing import CapiSimulator
from support import Clock


@pytest.fixture
def sim(clock: Clock):
    with CapiSimulator(clock=clock, token_lifetime=10 * 86400) as s:
        yield s


@pytest.fixture
def client(sim: CapiSimulator, clock: Clock):
    with CapiClient(
        user_agent="t/1",
        scenarios=["mywaf/x"],
        base_url=sim.url,
        clock=clock,
        storage=MemoryStorage(),
        sleep=lambda _: None,
        retries=1,
    ) as c:
        yield c


def test_startup_then_deltas_and_deletions(sim, client, clock):
    sim.add_decisions(["192.0.2.1", "198.51.100.0/24", "2001:db8::/48"], duration=86400)
    e = RemediationEngine(client, clock=clock)
    r = e.refresh_decisions()
    assert r.performed and r.startup and r.added == 3 and r.error is None
    assert e.get_ip_remediation("198.51.100.77") == "ban"
    assert e.get_ip_remediation("2001:db8::1") == "ban"
    assert e.get_ip_remediation("203.0.113.1") == "bypass"
    sim.add_decisions(["203.0.113.1"])
    sim.delete_decisions(["192.0.2.1"])
    clock.now += MIN_CAPI_INTERVAL
    r = e.refresh_decisions()
    assert not r.startup and (r.added, r.deleted) == (1, 1)
    assert e.get_ip_remediation("203.0.113.1") == "ban"
    assert e.get_ip_remediation("192.0.2.1") == "bypass"
    streams = [r.path for r in sim.requests if r.path.endswith("/decisions/stream")]
    assert len(streams) == 2


def test_two_hour_rule(sim, client, clock):
    e = RemediationEngine(client, clock=clock)
    assert e.refresh_decisions().performed
    r = e.refresh_decisions()
    assert not r.performed and r.error == "too soon" and r.next_refresh_at == clock.now + MIN_CAPI_INTERVAL
    assert e.refresh_decisions(force=True).performed
    clock.now += MIN_CAPI_INTERVAL
    assert e.refresh_decisions().performed


def test_blocklists_304_and_removal(sim, client, clock):
    sim.add_blocklist("tor-exit", ["192.0.2.50", "192.0.2.51"], remediation="captcha", duration=3600)
    e = RemediationEngine(client, clock=clock, min_interval=0)
    r = e.refresh_decisions()
    assert r.lists_updated == ("tor-exit",)
    assert e.get_ip_remediation("192.0.2.50") == "captcha"
    r = e.refresh_decisions()
    assert r.lists_updated == () and e.get_ip_remediation("192.0.2.50") == "captcha"
    assert [x.status for x in sim.requests if "/blocklists/" in x.path] == [200, 304]
    clock.now += 5
    sim.add_blocklist("tor-exit", ["192.0.2.52"], remediation="captcha", duration=3600)
    r = e.refresh_decisions()
    assert r.lists_updated == ("tor-exit",)
    assert e.get_ip_remediation("192.0.2.50") == "bypass" and e.get_ip_remediation("192.0.2.52") == "captcha"
    sim.remove_blocklist("tor-exit")
    r = e.refresh_decisions()
    assert r.lists_removed == ("tor-exit",) and e.get_ip_remediation("192.0.2.52") == "bypass"


def test_failed_refresh_keeps_serving_and_says_why(sim, client, clock):
    sim.add_decisions(["192.0.2.1"])
    e = RemediationEngine(client, clock=clock, min_interval=0)
    e.refresh_decisions()
    sim.add_decisions(["192.0.2.2"])
    sim.fail_next(2, status=503, path="/decisions/stream")  # retries=1: both attempts fail
    r = e.refresh_decisions()
    assert not r.performed and "503" in (r.error or "")
    assert e.get_ip_remediation("192.0.2.1") == "ban" and e.get_ip_remediation("192.0.2.2") == "bypass"
    sim.add_blocklist("l", ["192.0.2.9"])
    sim.fail_next(2, status=500, path="/blocklists/")
    r = e.refresh_decisions()
    assert r.performed and "blocklist l" in (r.error or "")
    assert e.get_ip_remediation("192.0.2.2") == "ban", "the stream delta is not lost when a list fails"
    assert e.get_ip_remediation("192.0.2.9") == "bypass"
    r = e.refresh_decisions()
    assert r.performed and r.error is None and r.lists_updated == ("l",)
    assert e.get_ip_remediation("192.0.2.9") == "ban"


def test_failed_list_keeps_its_previous_content(sim, clock):
    sim.add_blocklist("l", ["192.0.2.9"])
    with CapiClient(
        user_agent="t/1", scenarios=["t/x"], base_url=sim.url, clock=clock, sleep=lambda _: None, retries=1, timeout=0.3
    ) as client:
        e = RemediationEngine(client, clock=clock, min_interval=0)
        e.refresh_decisions()
        clock.now += 5
        sim.add_blocklist("l", ["192.0.2.10"])
        sim.fail_next(2, kind="timeout", delay=5, path="/blocklists/")
        r = e.refresh_decisions()
    assert "blocklist l" in (r.error or "") and e.get_ip_remediation("192.0.2.9") == "ban"
    assert e.get_ip_remediation("192.0.2.10") == "bypass"


def test_restart_from_snapshot_needs_no_startup_pull(sim, client, clock, tmp_path):
    sim.add_decisions(["192.0.2.1"])
    sim.add_blocklist("l", ["192.0.2.9"])
    e = RemediationEngine(client, clock=clock, snapshot_path=tmp_path / "engine.snap")
    e.refresh_decisions()
    again = RemediationEngine(client, clock=clock, snapshot_path=tmp_path / "engine.snap")
    assert again.get_ip_remediation("192.0.2.1") == "ban" and again.get_ip_remediation("192.0.2.9") == "ban"
    assert not again.refresh_decisions().performed, "the 2-hour rule survives the restart"
    clock.now += MIN_CAPI_INTERVAL
    r = again.refresh_decisions()
    assert r.performed and not r.startup
    assert r.lists_updated == (), "If-Modified-Since state survived too"
    startups = [x for x in sim.requests if x.path.endswith("/decisions/stream")]
    assert len(startups) == 2


def test_answer_rules():
    class Nothing:
        pass

    e = RemediationEngine(Nothing(), priorities=("ban", "captcha"), fallback="captcha")  # type: ignore[arg-type]
    e.index.apply(add=[("192.0.2.1", e._mapped("throttle"), 60.0, "CAPI"), ("192.0.2.2", "ban", 60.0, "CAPI")])
    assert e.get_ip_remediation("192.0.2.1") == "captcha", "unknown types take the fallback"
    e.bouncing_level = "flex"
    assert e.get_ip_remediation("192.0.2.2") == "captcha"
    e.bouncing_level = "disabled"
    assert e.get_ip_remediation("192.0.2.2") == "bypass"
    with pytest.raises(InvalidIP):
        e.get_ip_remediation("not an ip")
    assert e.counters == {("CAPI", "captcha"): 2, ("CAPI", "bypass"): 1}
    with pytest.raises(ConfigurationError):
        RemediationEngine(Nothing(), fallback="mfa")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RemediationEngine(Nothing(), bouncing_level="loud")  # type: ignore[arg-type]


def test_stream_parsing_skips_and_counts_bad_items():
    doc = {
        "new": [
            {"scenario": "s/a", "scope": "ip", "decisions": [{"value": "192.0.2.1", "duration": "1h"}, {"value": "x"}]},
            {"scenario": "s/b", "scope": "country", "decisions": [{"value": "FR", "duration": "1h"}]},
            {
                "duration": "3h59m59.65s",
                "origin": "cscli",
                "scenario": "t",
                "scope": "Range",
                "type": "captcha",
                "value": "10.0.0.0/8",
            },
            {"duration": "bogus", "scope": "Ip", "type": "ban", "value": "192.0.2.3"},
            "junk",
        ],
        "deleted": [{"scope": "ip", "decisions": ["192.0.2.9", 5]}, None],
        "links": {"blocklists": [{"name": "l", "url": "http://x/"}, "junk"]},
    }
    b = parse_stream(doc)
    assert b.add == [("192.0.2.1", "ban", 3600.0, "CAPI"), ("10.0.0.0/8", "captcha", 14399.65, "cscli")]
    assert b.remove == [("192.0.2.9", "CAPI", None)]
    assert b.skipped == 6 and len(b.links) == 1
    assert parse_stream({"new": None, "deleted": None}).add == []
    with pytest.raises(ValueError):
        parse_go_duration("1 hour")


def test_follower_reloads_what_the_writer_publishes(sim, client, clock, tmp_path):
    path = tmp_path / "host.snap"
    sim.add_decisions(["192.0.2.1"])
    writer = RemediationEngine(client, clock=clock, min_interval=0, snapshot_path=path)
    writer.refresh_decisions()
    tick = Clock(0.0)
    follower = RemediationEngine.follow(path, monotonic=tick)
    assert follower.get_ip_remediation("192.0.2.1") == "ban"
    sim.add_decisions(["192.0.2.2"])
    writer.refresh_decisions()
    assert follower.get_ip_remediation("192.0.2.2") == "bypass", "checks at most once a second"
    tick.now += 1.0
    assert follower.get_ip_remediation("192.0.2.2") == "ban"
    # It answers from the writer's file mapped in place, not from an index of its own.
    assert follower.mapped is not None and follower.mapped.decisions == 2 and follower._index is None
    assert follower.counters == {("CAPI", "ban"): 2, ("clean", "bypass"): 1}, "its own counts, per process"
    assert follower.stats()["index"]["decisions"] == 2
    assert follower.index.lookup("192.0.2.2") == "ban", "an index built from the mapping when asked"
    with pytest.raises(ConfigurationError):
        follower.refresh_decisions()
    assert sum(1 for r in sim.requests if r.path.endswith("/decisions/stream")) == 2, "only the writer calls CAPI"


def test_follower_never_sees_a_torn_snapshot_while_the_writer_refreshes(sim, client, clock, tmp_path):
    import threading

    path = tmp_path / "host.snap"
    sim.add_decisions([f"10.0.{i // 250}.{i % 250}" for i in range(5000)])
    writer = RemediationEngine(client, clock=clock, min_interval=0, snapshot_path=path)
    writer.refresh_decisions()
    follower = RemediationEngine.follow(path, check_every=0.0)
    done = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                assert follower.get_ip_remediation("10.0.0.1") == "ban"
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    for i in range(15):
        sim.add_decisions([f"10.1.0.{i}"])
        writer.refresh_decisions(force=True)
    done.set()
    t.join(30)
    assert not errors, errors[0]
    assert follower.get_ip_remediation("10.1.0.14") == "ban"
