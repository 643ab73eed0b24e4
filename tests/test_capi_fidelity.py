"""Behaviour against the real CAPI: what crowdsec, php-capi-client and php-remediation-engine do.

Each test names the real-service behaviour it pins down. They run against the simulator (real
HTTP on loopback, as strict as CAPI's swagger) with injected clocks: no test waits for real time.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from capi_fast import (
    AsyncCapiClient,
    AuthenticationError,
    CapiClient,
    ConfigurationError,
    DecisionIndex,
    InvalidMetrics,
    InvalidSignal,
    MemoryStorage,
    RemediationEngine,
    Signal,
)
from capi_fast._native import parse_stream
from capi_fast.engine import MIN_CAPI_INTERVAL
from capi_fast.lists import allowlist_links, blocklist_links, parse_allowlist
from capi_fast.testing import CapiSimulator, jwt
from support import Clock

HOUR = 3600.0


@pytest.fixture
def sim(clock: Clock):
    with CapiSimulator(clock=clock, token_lifetime=30 * 86400) as s:
        yield s


def make(sim: CapiSimulator, clock: Clock, **kw: Any) -> CapiClient:
    kw.setdefault("storage", MemoryStorage())
    kw.setdefault("metrics_interval", None)
    kw.setdefault("scenarios", ["mywaf/login-bruteforce"])
    return CapiClient(user_agent="mywaf/2.1", base_url=sim.url, clock=clock, sleep=lambda _: None, retries=1, **kw)


def statuses(sim: CapiSimulator, path: str) -> list[int]:
    return [r.status for r in sim.requests if r.path.endswith(path)]


# -- 1. an unchanged blocklist never lapses --------------------------------------------------


def test_unchanged_blocklist_never_lapses_through_304s(sim, clock):
    sim.add_blocklist("tor-exit", ["203.0.113.9", "198.51.100.0/24"], scope="range", duration=24 * HOUR)
    with make(sim, clock) as c:
        e = RemediationEngine(c, clock=clock)
        t0 = clock.now
        assert e.refresh_decisions().lists_updated == ("tor-exit",)
        for step in range(1, 6):  # five days of refreshes, every one answered 304
            clock.now = t0 + step * 23 * HOUR
            r = e.refresh_decisions()
            assert r.performed and r.lists_renewed == ("tor-exit",) and r.lists_updated == ()
            # Still published, so still blocking a day after the last full download.
            assert e.index.lookup("203.0.113.9", now=clock.now + 23 * HOUR) == "ban"
            assert e.index.lookup("198.51.100.7", now=clock.now + 23 * HOUR) == "ban"
        assert statuses(sim, "/blocklists/tor-exit/download") == [200, 304, 304, 304, 304, 304]
        # Once unsubscribed it goes, 304s or not.
        sim.remove_blocklist("tor-exit")
        clock.now += MIN_CAPI_INTERVAL
        assert e.refresh_decisions().lists_removed == ("tor-exit",)
        assert e.index.lookup("203.0.113.9", now=clock.now) is None


def test_a_304_with_a_changed_remediation_moves_the_values(sim, clock):
    sim.add_blocklist("l", ["192.0.2.5"], remediation="ban")
    with make(sim, clock) as c:
        e = RemediationEngine(c, clock=clock, min_interval=0)
        e.refresh_decisions()
        with sim._lock:  # the console changes the link's remediation, not the list's content
            next(iter(sim._blocklists.values())).remediation = "captcha"
            sim._mutations += 1
        r = e.refresh_decisions()
        assert r.lists_renewed == ("l",)
        assert e.index.lookup("192.0.2.5", now=clock.now) == "captcha"
        assert len(e.index) == 1


# -- 2. allowlists -----------------------------------------------------------------------------


def test_allowlist_wins_over_every_decision_and_range(sim, clock):
    sim.add_decisions(["192.0.2.1", "198.51.100.0/24", "2001:db8::/48"])
    sim.add_blocklist("bl", ["203.0.113.5"], remediation="captcha")
    until = clock.now + 10 * HOUR
    sim.add_allowlist("office", ["192.0.2.1", "198.51.100.128/25", "203.0.113.5", "2001:db8::1"], expiration=until)
    with make(sim, clock) as c:
        e = RemediationEngine(c, clock=clock)
        r = e.refresh_decisions()
        assert r.performed and set(r.lists_updated) == {"bl", "office"}, r
        answers = {ip: e.get_ip_remediation(ip) for ip in ("192.0.2.1", "198.51.100.200", "203.0.113.5", "2001:db8::1")}
        assert set(answers.values()) == {"bypass"}, answers
        assert e.get_ip_remediation("198.51.100.5") == "ban", "outside the allowlisted /25"
        assert e.get_ip_remediation("2001:db8::2") == "ban"
        assert e.counters[("lists:office", "bypass")] == 4
        # Packet filters never ban what is allowlisted.
        ban = e.index.export_cidrs("ban", family=4, now=clock.now)
        assert "192.0.2.1/32" not in ban and ban == ["198.51.100.0/25"]
        assert e.index.export_cidrs("captcha", family=4, now=clock.now) == []
        # Each entry ends at its expiration.
        assert e.index.lookup("192.0.2.1", now=until + 1) == "ban"
        # Conditional download: the unchanged allowlist is answered 304 and stays.
        clock.now += MIN_CAPI_INTERVAL
        assert e.refresh_decisions().performed
        assert statuses(sim, "/allowlists/al-office/download") == [200, 304]
        assert e.index.lookup("192.0.2.1", now=clock.now) == "allow"
        # Removed from the links: the decisions it covered apply again.
        sim.remove_allowlist("office")
        clock.now += MIN_CAPI_INTERVAL
        assert e.refresh_decisions().lists_removed == ("office",)
        assert e.index.lookup("192.0.2.1", now=clock.now) == "ban"
        assert e.index.lookup("203.0.113.5", now=clock.now) == "captcha"


def test_allowlist_and_blocklist_of_the_same_name_stay_apart(sim, clock):
    sim.add_blocklist("same", ["192.0.2.7"])
    sim.add_allowlist("same", ["192.0.2.7"])
    with make(sim, clock) as c:
        e = RemediationEngine(c, clock=clock, min_interval=0)
        e.refresh_decisions()
        assert e.index.lookup("192.0.2.7", now=clock.now) == "allow"
        sim.remove_blocklist("same")
        e.refresh_decisions()
        assert e.index.lookup("192.0.2.7", now=clock.now) == "allow", "removing the blocklist kept the allowlist"


def test_allowlists_are_told_apart_by_id_not_name(sim, clock):
    sim.add_allowlist("office", ["192.0.2.1", "192.0.2.3"], id="a")
    sim.add_allowlist("office", ["192.0.2.2", "192.0.2.3"], id="b")
    sim.add_decisions(["192.0.2.1", "192.0.2.2", "192.0.2.3"])
    with make(sim, clock) as c:
        e = RemediationEngine(c, clock=clock, min_interval=0)
        e.refresh_decisions()
        assert [e.index.lookup(f"192.0.2.{i}", now=clock.now) for i in (1, 2, 3)] == ["allow"] * 3
        sim.remove_allowlist("office", id="a")  # the other "office" is unchanged: answered 304
        r = e.refresh_decisions()
        assert r.lists_removed == ("office",)
        got = [e.index.lookup(f"192.0.2.{i}", now=clock.now) for i in (1, 2, 3)]
        assert got == ["ban", "allow", "allow"], "list b still allows .2 and .3"


def test_a_snapshot_from_before_allowlists_keeps_answering_until_rebuilt(sim, clock, tmp_path):
    snap = tmp_path / "decisions.snap"
    old = DecisionIndex(["ban", "captcha"])  # how the previous release wrote its index
    old.add("192.0.2.1", "ban", ttl=HOUR, origin="CAPI")
    old.save(snap, metadata=orjson.dumps({"startup_done": True, "last_refresh": clock.now, "lists": {}}))
    follower = RemediationEngine.follow(snap)
    assert follower.get_ip_remediation("192.0.2.1") == "ban", "an upgrade must not fail open"
    sim.add_decisions(["192.0.2.9"])
    sim.add_allowlist("office", ["192.0.2.9"])
    with make(sim, clock) as c:
        writer = RemediationEngine(c, clock=clock, snapshot_path=snap)
        assert writer.get_ip_remediation("192.0.2.1") == "ban"
        r = writer.refresh_decisions()
        assert r.startup and writer.index.priorities == ["allow", "ban", "captcha"]
        assert writer.get_ip_remediation("192.0.2.9") == "bypass"
    assert RemediationEngine.follow(snap).get_ip_remediation("192.0.2.9") == "bypass"


def test_a_list_that_redirects_forever_fails_alone(sim, clock):
    with make(sim, clock) as c:
        e = RemediationEngine(c, clock=clock, min_interval=0)
        e.refresh_decisions()
        sim.add_decisions(["192.0.2.1"])
        sim.add_blocklist("loop", ["192.0.2.2"], redirect="loop")
        r = e.refresh_decisions()
        assert r.performed and "blocklist loop" in (r.error or "")
        assert e.index.lookup("192.0.2.1", now=clock.now) == "ban", "the stream delta was kept"


def test_allow_outranks_on_index_semantics():
    idx = DecisionIndex(["allow", "ban", "captcha"])
    now = 1_800_000_000.0
    idx.add("10.0.0.0/8", "ban", ttl=HOUR, now=now)
    idx.add("10.1.2.3", "ban", ttl=HOUR, now=now)
    idx.add("10.1.2.0/24", "allow", ttl=60, now=now, origin="lists:office")
    assert idx.lookup("10.1.2.3", now=now) == "allow", "an allowlisted range allows every address inside it"
    assert idx.lookup("10.1.3.3", now=now) == "ban"
    assert idx.lookup("10.1.2.3", now=now + 61) == "ban"
    assert idx.export_cidrs("ban", family=4, now=now)[:2] == ["10.0.0.0/16", "10.1.0.0/23"]


def test_a_lapi_decision_of_type_allow_is_not_an_allowlist():
    idx = DecisionIndex(["allow", "ban", "captcha"])
    body = orjson.dumps(
        {
            "new": [
                {
                    "duration": "1h",
                    "origin": "cscli",
                    "scenario": "x",
                    "scope": "Ip",
                    "type": "allow",
                    "value": "192.0.2.1",
                }
            ]
        }
    )
    idx.apply(stream=parse_stream(body), fallback="captcha", stream_types=["ban", "captcha"])
    assert idx.lookup("192.0.2.1") == "captcha"


def test_allowlist_lines_are_read_as_crowdsec_writes_them():
    lines = [
        b'{"value": "192.0.2.1", "scope": "ip", "expiration": "2027-01-02T03:04:05.123456789Z"}',
        b'{"value": "198.51.100.0/24", "scope": "Range", "description": "office"}',
        b'{"value": "192.0.2.2", "expiration": null}',
        b"",
        b"not json",
        b'{"value": 3}',
        b'{"value": "192.0.2.3", "scope": "country"}',
        b'{"value": "192.0.2.0/24", "scope": "ip"}',
        b'{"value": "192.0.2.4", "expiration": "tomorrow"}',
        b'{"value": "192.0.2.5", "expiration": "2035-04-27T21:59:59"}',
        b'{"value": "192.0.2.6", "expiration": "2035-04-27"}',
    ]
    entries, skipped = parse_allowlist(lines)
    assert [v for v, _ in entries] == ["192.0.2.1", "198.51.100.0/24", "192.0.2.2", "192.0.2.5", "192.0.2.6"]
    assert entries[4][1] == datetime(2035, 4, 27, tzinfo=UTC).timestamp(), "no zone: UTC, as crowdsec reads it"
    assert entries[0][1] == datetime(2027, 1, 2, 3, 4, 5, 123456, tzinfo=UTC).timestamp() and entries[1][1] is None
    assert skipped == 5


# -- 3. a 403 is a refused token ---------------------------------------------------------------


@pytest.mark.parametrize("call", ["signals", "stream", "metrics", "enroll"])
@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_logs_in_again_once_and_replays(sim, clock, call, status):
    with make(sim, clock) as c:
        c.login()
        sim.revoke_tokens(status=status)
        if call == "signals":
            c.push_signals([Signal.whisper("192.0.2.1", "mywaf/404-scan")])
        elif call == "stream":
            c.get_stream_decisions()
        elif call == "metrics":
            c.push_metrics()
        else:
            c.enroll("attachKey1")
    path = {"signals": "/signals", "stream": "/decisions/stream", "metrics": "/metrics", "enroll": "/watchers/enroll"}
    assert statuses(sim, path[call]) == [status, 200]
    assert statuses(sim, "/watchers/login") == [200, 200]


def test_a_token_refused_twice_raises(sim, clock):
    with make(sim, clock) as c:
        c.login()
        sim.fail_next(2, status=403, path="/decisions/stream")
        with pytest.raises(AuthenticationError):
            c.get_stream_decisions()


# -- 4. a failed register never wedges the client ----------------------------------------------


def test_a_lost_register_answer_is_recovered_by_logging_in(sim, clock):
    storage = MemoryStorage()
    sim.fail_next(kind="lost", path="/watchers")  # CAPI stores the machine; the answer never arrives
    with make(sim, clock, storage=storage) as c:
        c.get_stream_decisions()
        mid = c.machine_id
    creds = storage.load_credentials()
    assert creds is not None and creds.registered and list(sim.watchers) == [mid]
    assert statuses(sim, "/watchers")[-1] == 500, "the retry found the machine already registered"


def test_a_process_that_died_before_saving_logs_in_with_the_same_pair(sim, clock):
    first = MemoryStorage()
    with make(sim, clock, storage=first) as c:
        c.login()
    creds = first.load_credentials()
    assert creds is not None
    again = MemoryStorage(replace(creds, registered=False))  # the save of registered=True was lost
    with make(sim, clock, storage=again) as c:
        c.get_stream_decisions()
    stored = again.load_credentials()
    assert stored is not None and stored.machine_id == creds.machine_id and stored.registered
    assert len(sim.watchers) == 1


def test_a_refused_pair_never_accepted_is_replaced(sim, clock, caplog):
    taken = MemoryStorage()
    with make(sim, clock, storage=taken) as c:
        c.login()
    creds = taken.load_credentials()
    assert creds is not None
    clash = MemoryStorage(replace(creds, password="x" * 32, registered=False))  # someone else's machine_id
    with make(sim, clock, storage=clash) as c:
        c.get_stream_decisions()
    new = clash.load_credentials()
    assert new is not None and new.registered and new.machine_id != creds.machine_id
    assert len(sim.watchers) == 2 and "registering a new machine" in caplog.text


def test_credentials_capi_accepted_are_never_replaced(sim, clock):
    taken = MemoryStorage()
    with make(sim, clock, storage=taken) as c:
        c.login()
    creds = taken.load_credentials()
    assert creds is not None
    wrong = MemoryStorage(replace(creds, password="x" * 32))  # registered=True, but refused now
    with make(sim, clock, storage=wrong) as c:
        with pytest.raises(AuthenticationError):
            c.get_stream_decisions()
    assert wrong.load_credentials() == replace(creds, password="x" * 32)
    assert statuses(sim, "/watchers") == [200], "no register attempted for accepted credentials"


def test_an_unreachable_capi_keeps_the_pair(clock):
    storage = MemoryStorage()
    with CapiClient(
        user_agent="x/1", scenarios=["x/y"], base_url="http://127.0.0.1:9/", storage=storage, retries=0, clock=clock
    ) as c:
        with pytest.raises(Exception, match="cannot reach"):
            c.login()
        mid = c.machine_id
    assert storage.load_credentials() is not None and mid == c.machine_id


# -- 5. scenario names -------------------------------------------------------------------------


def test_hub_scenarios_with_capitals_are_accepted_and_pushed(sim, clock, caplog):
    caplog.set_level(logging.WARNING)
    hub = [
        "crowdsecurity/CVE-2022-26134",
        "crowdsecurity/vpatch-CVE-2023-1234",
        "firewallservices/pf-scan-multi_ports",
        "Dominic-Wagner/vaultwarden-bf",
    ]
    with make(sim, clock, scenarios=hub) as c:
        c.push_signals([Signal.decision("192.0.2.1", name) for name in hub])
    assert [s["scenario"] for s in sim.signals] == hub
    assert list(sim.watchers.values()) == [hub]
    assert caplog.text.count("crowdsecurity/CVE-2022-26134") == 1, "one warning per name, not per use"


@pytest.mark.parametrize(
    "name", ["", "x", "my.waf/x", "a" * 17 + "/b", "a/" + "b" * 65, "a/b c", "a/b/c", "é/b", "a/b\n"]
)
def test_names_outside_the_sdk_rule_are_refused(name):
    with pytest.raises(InvalidSignal):
        Signal.whisper("192.0.2.1", name)
    with pytest.raises(ConfigurationError):
        CapiClient(user_agent="x/1", scenarios=[name])


def test_an_empty_scenario_list_is_refused():
    with pytest.raises(ConfigurationError, match="at least one scenario"):
        CapiClient(user_agent="x/1", scenarios=[])


def test_scenario_trust_can_be_set():
    s = Signal.decision("192.0.2.1", "crowdsecurity/ssh-bf", scenario_trust="certified")
    assert s.to_payload("m")["scenario_trust"] == "certified"
    with pytest.raises(InvalidSignal):
        Signal.whisper("192.0.2.1", "a/b", scenario_trust="trust me")


# -- 6 and 7. wire details ---------------------------------------------------------------------


def test_json_bodies_say_content_type_and_user_agent_leads_with_the_integration(sim, clock):
    with make(sim, clock) as c:
        c.push_signals([Signal.whisper("192.0.2.1", "mywaf/404-scan")])
        c.enroll("attachKey1")
        c.push_metrics()
        c.get_stream_decisions()
    posts = [r for r in sim.requests if r.method == "POST"]
    assert len(posts) == 5 and all(r.content_type == "application/json" for r in posts)
    assert all(r.user_agent.startswith("mywaf/2.1 capi-fast/") for r in sim.requests)


@pytest.mark.parametrize("suffix", ["v3/", "v3", "v2/"])
def test_base_url_written_with_its_version(sim, clock, suffix):
    with CapiClient(
        user_agent="x/1", scenarios=["x/y"], base_url=sim.url + suffix, clock=clock, metrics_interval=None
    ) as c:
        c.get_stream_decisions()
        assert c.api_version == suffix[:2]
    assert all(r.path.startswith(f"/{suffix[:2]}/") and r.status == 200 for r in sim.requests)
    with pytest.raises(ConfigurationError):
        CapiClient(user_agent="x/1", scenarios=["x/y"], base_url=sim.url + "v3/", api_version="v2")


def test_blocklist_links_without_scope_or_duration_are_skipped_and_counted(sim, clock):
    sim.add_blocklist("no-scope", ["192.0.2.1"], scope=None)
    sim.add_blocklist("no-duration", ["192.0.2.2"], duration=None)
    sim.add_blocklist("ips", ["192.0.2.3", "10.0.0.0/8", "2001:db8::1/128"], scope="ip")
    sim.add_blocklist("moved", ["192.0.2.4"], redirect=True)
    with make(sim, clock) as c:
        r = RemediationEngine(c, clock=clock).refresh_decisions()
    assert set(r.lists_updated) == {"ips", "moved"}
    assert r.skipped == 3, "two links, and one network in a list of single addresses"
    assert not any("no-scope" in x.path or "no-duration" in x.path for x in sim.requests)
    assert statuses(sim, "/blocklists/moved/download") == [302, 200], "the redirect was followed"


def test_list_link_rules():
    links = {
        "blocklists": [
            {"name": "ok", "url": "https://x/1", "remediation": "ban", "scope": "Range", "duration": "24h"},
            {"name": "ok2", "url": "https://x/2", "remediation": "ban", "scope": "ip", "duration": "1d"},
            {"name": "a" * 300, "url": "https://x/3", "remediation": "ban", "scope": "ip", "duration": "1h"},
            {"name": "c", "url": "https://x/4", "remediation": "ban", "scope": "country", "duration": "1h"},
            {"name": "d", "url": "file:///etc/passwd", "remediation": "ban", "scope": "ip", "duration": "1h"},
            "nope",
        ],
        "allowlists": [{"id": "1", "name": "office", "url": "https://x/a"}, {"name": "no-url"}, None],
    }
    blocks, bad = blocklist_links(links)
    assert [(b.name, b.scope, b.duration) for b in blocks] == [("ok", "range", 86400.0)] and bad == 5
    allows, bad = allowlist_links(links)
    assert [a.name for a in allows] == ["office"] and bad == 2


def test_enroll_checks_the_key_and_sends_each_tag_once(sim, clock):
    with make(sim, clock) as c:
        for key in ("", "ab-12", "key with space", "clé"):
            with pytest.raises(ConfigurationError):
                c.enroll(key)
        with pytest.raises(ConfigurationError):
            c.enroll("attachKey1", tags=["prod", ""])
        c.enroll("attachKey1", name="web-01", tags=["prod", "eu", "prod"])
    assert statuses(sim, "/watchers/enroll") == [200]
    (body,) = sim.enrollments.values()
    assert body["tags"] == ["prod", "eu"] and body["name"] == "web-01"


# -- 8. the same value in two groups -----------------------------------------------------------


def test_the_longest_of_one_answer_wins(sim, clock):
    sim.add_decisions(["192.0.2.9"], scenario="crowdsecurity/ssh-bf", duration=4 * HOUR)
    sim.add_decisions(["192.0.2.9"], scenario="crowdsecurity/http-probing", duration=30)
    with make(sim, clock) as c:
        e = RemediationEngine(c, clock=clock)
        e.refresh_decisions()
    assert e.index.lookup("192.0.2.9", now=clock.now + 31) == "ban", "released after 30 s"
    assert e.index.lookup("192.0.2.9", now=clock.now + 4 * HOUR + 1) is None


@pytest.mark.parametrize("order", [("4h", "30s"), ("30s", "4h")])
def test_the_longest_of_one_answer_wins_on_index_semantics(order):
    now = 1_800_000_000.0
    groups = [
        {"scenario": f"a/s{i}", "scope": "ip", "decisions": [{"value": "192.0.2.9", "duration": d}]}
        for i, d in enumerate(order)
    ]
    idx = DecisionIndex()
    r = idx.apply(stream=parse_stream(orjson.dumps({"new": groups})), now=now)
    assert r.added == 1 and len(idx) == 1
    assert idx.lookup("192.0.2.9", now=now + 31) == "ban"
    assert idx.lookup("192.0.2.9", now=now + 4 * HOUR + 1) is None


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_after_login_then_every_30_minutes(sim, clock):
    with make(sim, clock, metrics_interval=1800) as c:
        e = RemediationEngine(c, clock=clock, min_interval=0)
        e.refresh_decisions()  # logs in (metrics due), pulls
        thread = c._metrics_thread
        assert thread is not None
        thread.join(10)
        assert len(sim.metrics) == 1
        c.push_signals([Signal.whisper("192.0.2.1", "mywaf/404-scan")])
        clock.now += 1799
        c.metrics_tick()
        assert c._metrics_thread is thread, "not due yet"
        clock.now += 1
        e.refresh_decisions()  # an engine refresh ticks too
        assert c._metrics_thread is not None
        c._metrics_thread.join(10)
    assert len(sim.metrics) == 2
    last = sim.metrics[-1]
    assert [b["name"] for b in last["bouncers"]] == ["mywaf"] and last["bouncers"][0]["version"] == "2.1"
    assert last["machines"][0]["last_push"].endswith("Z") and last["bouncers"][0]["last_pull"].endswith("Z")
    assert statuses(sim, "/metrics") == [200, 200]


def test_a_running_batcher_sends_metrics_every_interval(sim, clock):
    with make(sim, clock, metrics_interval=1800) as c:
        c.login()
        c._metrics_thread.join(10)  # type: ignore[union-attr]
        batcher = c.signal_batcher(start=False, clock=clock)
        batcher.add(Signal.whisper("192.0.2.1", "mywaf/404-scan"))
        clock.now += 1800
        batcher.send_due()
        c._metrics_thread.join(10)  # type: ignore[union-attr]
        batcher.close()
    assert len(sim.metrics) == 2


def test_metrics_never_block_or_fail_the_caller(sim, clock):
    sim.fail_next(5, status=503, path="/metrics")
    with make(sim, clock, metrics_interval=1800) as c:
        assert c.get_stream_decisions() is not None
        assert c._metrics_thread is not None
        c._metrics_thread.join(10)
    assert 200 not in statuses(sim, "/metrics")


def test_push_metrics_checks_the_schema_before_sending(sim, clock):
    with make(sim, clock) as c:
        for bad in (
            {},
            {"bouncers": []},
            {"bouncers": [{"name": 3}], "machines": []},
            {"bouncers": {}, "machines": []},
        ):
            with pytest.raises(InvalidMetrics):
                c.push_metrics(bad)
    assert statuses(sim, "/metrics") == []


def test_async_client_sends_metrics_in_a_task(sim, clock):
    async def main() -> None:
        async def no_wait(_: float) -> None:
            return None

        async with AsyncCapiClient(
            user_agent="mywaf/2.1", scenarios=["mywaf/x"], base_url=sim.url, clock=clock, sleep=no_wait
        ) as c:
            await c.get_stream_decisions()
            await asyncio.gather(*c._background)

    asyncio.run(main())
    assert len(sim.metrics) == 1


# -- the simulator is as strict as CAPI --------------------------------------------------------


def raw(sim: CapiSimulator, method: str, path: str, body: Any = None, token: str | None = None, **headers: str) -> int:
    h = dict(headers)
    if token:
        h["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) else (None if body is None else orjson.dumps(body))
    return httpx.request(method, sim.url.rstrip("/") + path, content=content, headers=h, timeout=5).status_code


@pytest.fixture
def token(sim, clock) -> str:
    with make(sim, clock) as c:
        c.login()
        t = c.storage.load_token()
        assert t is not None
        return t.token


def good_signal() -> dict[str, Any]:
    return Signal.decision("192.0.2.1", "mywaf/x").to_payload("m" * 48)


@pytest.mark.parametrize(
    "change",
    [
        {"message": None},
        {"scenario_hash": None},
        {"scenario_version": None},
        {"source": {"value": "192.0.2.1"}},
        {"start_at": "yesterday"},
        {"stop_at": "2026-13-01"},
        {"scenario": "My Waf/x"},
        {"decisions": [{"value": "192.0.2.1"}]},
        {"decisions": [{**good_signal()["decisions"][0], "id": "1"}]},
        {"context": [{"key": 1, "value": "x"}]},
    ],
)
def test_simulator_refuses_signals_the_real_capi_refuses(sim, token, change):
    assert raw(sim, "POST", "/v3/signals", [good_signal()], token) == 200
    bad = {k: v for k, v in {**good_signal(), **change}.items() if v is not None}
    assert raw(sim, "POST", "/v3/signals", [bad], token) == 400


def test_simulator_login_enroll_metrics_rules(sim, clock, token):
    assert raw(sim, "POST", "/v3/watchers", {"machine_id": "a" * 30, "password": "p" * 32}) == 200
    assert raw(sim, "POST", "/v3/watchers/login", {"machine_id": "a" * 30, "password": "p" * 32}) == 400, "48 only"
    assert raw(sim, "POST", "/v3/watchers", {"machine_id": "b" * 48, "password": "p" * 32}) == 200
    login = {"machine_id": "b" * 48, "password": "p" * 32, "scenarios": ["crowdsecurity/CVE-2022-26134"]}
    assert raw(sim, "POST", "/v3/watchers/login", login) == 200
    assert raw(sim, "POST", "/v3/watchers/login", {**login, "scenarios": ["not a scenario"]}) == 400
    assert raw(sim, "POST", "/v3/watchers/enroll", {"attachment_key": "ab-12"}, token) == 400
    assert raw(sim, "POST", "/v3/metrics", {}, token) == 400
    assert raw(sim, "POST", "/v3/metrics/", {"bouncers": [], "machines": [], "apil_version": "v1"}, token) == 200


def test_simulator_accepts_gzip_bodies_as_crowdsec_17_sends_them(sim, token):
    body = gzip.compress(orjson.dumps([good_signal() for _ in range(40)]))
    assert raw(sim, "POST", "/v3/signals", body, token, **{"Content-Encoding": "gzip"}) == 200
    assert len(sim.signals) == 40
    assert raw(sim, "POST", "/v3/signals", b"\x1f\x8bnot gzip", token, **{"Content-Encoding": "gzip"}) == 400


def test_simulator_usage_metrics(sim, token, clock):
    good = {
        "remediation_components": [
            {
                "version": "2.1",
                "utc_startup_timestamp": int(clock.now),
                "type": "mywaf",
                "metrics": [
                    {
                        "meta": {"window_size_seconds": 1800, "utc_now_timestamp": int(clock.now)},
                        "items": [{"name": "dropped", "value": 3, "unit": "request", "labels": {"origin": "CAPI"}}],
                    }
                ],
            }
        ]
    }
    assert raw(sim, "POST", "/v3/usage-metrics", good, token) == 200
    bad = {"remediation_components": [{"utc_startup_timestamp": 1}]}
    assert raw(sim, "POST", "/v3/usage-metrics", bad, token) == 422
    assert sim.usage_metrics == [good]


def test_simulator_tokens_carry_the_organization_after_enroll(sim, clock):
    with make(sim, clock) as c:
        c.login()
        t = c.storage.load_token()
        assert t is not None and "organization_id" not in jwt.decode(t.token, sim._secret)
        c.enroll("attachKey1")
        c.login()
        t = c.storage.load_token()
        assert t is not None and jwt.decode(t.token, sim._secret)["organization_id"]


def test_simulator_honours_the_pull_flags(sim, token):
    sim.add_decisions(["192.0.2.1"])
    sim.add_blocklist("bl", ["192.0.2.2"])
    r = httpx.get(
        sim.url + "v3/decisions/stream",
        params={"startup": "true", "community_pull": "false"},
        headers={"Authorization": f"Bearer {token}"},
    )
    doc = r.json()
    assert doc["new"] == [] and [b["name"] for b in doc["links"]["blocklists"]] == ["bl"]


def test_the_client_never_sends_what_the_simulator_refuses(sim, clock):
    sim.add_decisions(["192.0.2.1"])
    sim.add_blocklist("bl", ["192.0.2.2"])
    sim.add_allowlist("al", ["192.0.2.3"])
    with make(sim, clock, scenarios=["crowdsecurity/CVE-2022-26134", "mywaf/x"]) as c:
        c.push_signals(
            [
                Signal.decision("192.0.2.1", "mywaf/x", message="m", context={"k": "v"}, scenario_hash="h"),
                Signal.whisper("2001:db8::/64", "crowdsecurity/CVE-2022-26134", scenario_trust="certified"),
            ]
        )
        c.enroll("attachKey1", name="n", tags=["t"])
        c.push_metrics()
        RemediationEngine(c, clock=clock).refresh_decisions()
    assert all(200 <= r.status < 400 for r in sim.requests), [(r.path, r.status) for r in sim.requests]
