"""The Signal model: CAPI's rules enforced before anything is sent."""

from __future__ import annotations

import ipaddress
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capi_fast.errors import InvalidSignal
from capi_fast.signals import Signal, format_duration, rfc3339

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_decision_signal_payload():
    s = Signal.decision(
        "203.0.113.7", "mywaf/login-bruteforce", remediation="captcha", duration=3600, message="12 failed logins"
    )
    p = s.to_payload("m" * 48)
    assert p["machine_id"] == "m" * 48
    assert p["source"] == {"scope": "Ip", "value": "203.0.113.7", "ip": "203.0.113.7"}
    assert [d["type"] for d in p["decisions"]] == ["captcha"]
    assert p["decisions"][0]["duration"] == "1h0m0s"
    assert p["decisions"][0]["uuid"] == p["uuid"] == s.uuid
    assert str(uuid.UUID(p["uuid"])) == p["uuid"]
    for k in ("start_at", "stop_at", "created_at"):
        assert STAMP.match(p[k]), p[k]
    assert not s.is_whisper


def test_whisper_has_no_decision_and_ranges_are_normalised():
    s = Signal.whisper("2001:db8::1/64", "mywaf/404-scan", context={"path": "/wp-login.php"})
    p = s.to_payload("x")
    assert s.is_whisper and p["decisions"] == []
    assert p["source"] == {"scope": "Range", "value": "2001:db8::/64", "range": "2001:db8::/64"}
    assert p["context"] == [{"key": "path", "value": "/wp-login.php"}]
    assert Signal.whisper("192.0.2.1/32", "a/b").scope == "Ip"


def test_each_signal_gets_its_own_uuid_unless_given():
    a, b = Signal.whisper("192.0.2.1", "a/b"), Signal.whisper("192.0.2.1", "a/b")
    assert a.uuid != b.uuid
    fixed = str(uuid.uuid4())
    assert Signal.whisper("192.0.2.1", "a/b", uuid=fixed).uuid == fixed


@pytest.mark.parametrize(
    "scenario",
    ["", "nolsash", "my.waf/x", "a" * 17 + "/b", "a/" + "b" * 65, "a/b/c", "a b/c", "a/", "/b", "a/b\n", "é/b", 42],
)
def test_scenario_names_are_checked(scenario):
    with pytest.raises(InvalidSignal):
        Signal.whisper("192.0.2.1", scenario)


@pytest.mark.parametrize("ip", ["", "1.2.3", "::g", "example.com", "1.2.3.4/33", None, 3232235777])
def test_sources_are_checked(ip):
    with pytest.raises(InvalidSignal):
        Signal.decision(ip, "a/b")


def test_other_rules():
    with pytest.raises(InvalidSignal):
        Signal.decision("192.0.2.1", "a/b", duration=0)
    with pytest.raises(InvalidSignal):
        Signal.decision("192.0.2.1", "a/b", remediation="")
    with pytest.raises(InvalidSignal):
        Signal.whisper("192.0.2.1", "a/b", start_at=100.0, stop_at=50.0)
    with pytest.raises(InvalidSignal):
        Signal.whisper("192.0.2.1", "a/b", start_at=datetime(2026, 1, 1))  # naive
    with pytest.raises(InvalidSignal):
        Signal.whisper("192.0.2.1", "a/b", uuid="not-a-uuid")
    with pytest.raises(InvalidSignal):
        Signal.whisper("192.0.2.1", "a/b", message="x" * 5000)
    assert isinstance(InvalidSignal("x"), ValueError)


def test_timestamps_are_utc_z():
    paris = timezone(timedelta(hours=1))
    assert rfc3339(datetime(2026, 11, 24, 16, 0, tzinfo=paris)) == "2026-11-24T15:00:00.000000Z"
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500000Z"
    s = Signal.whisper("192.0.2.1", "a/b", start_at=datetime(2026, 1, 1, tzinfo=UTC), stop_at=1767225601.25)
    assert (s.start_at, s.stop_at) == ("2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:01.250000Z")


@pytest.mark.parametrize(
    "seconds,text", [(3600, "1h0m0s"), (86400, "24h0m0s"), (90061, "25h1m1s"), (0.5, "0h0m0.5s"), (61.25, "0h1m1.25s")]
)
def test_go_durations(seconds, text):
    assert format_duration(seconds) == text


def _source_by_ipaddress(value: str) -> tuple[str, str] | None:
    """What ipaddress alone makes of a source without "/" (None: not an address)."""
    try:
        return "Ip", str(ipaddress.ip_address(value))
    except ValueError:
        return None


odd_octets = st.sampled_from(["0", "00", "01", "007", "255", " 1", "1 ", "", "0x1", "-1"])
quads = st.lists(
    st.one_of(st.integers(0, 300).map(str), odd_octets),
    min_size=1,
    max_size=5,
).map(".".join)


@given(st.one_of(quads, st.text(max_size=20).filter(lambda v: "/" not in v)))
@settings(max_examples=2000, deadline=None)
def test_dotted_quad_fast_path_agrees_with_ipaddress(value):
    expected = _source_by_ipaddress(value)
    if expected is None:
        with pytest.raises(InvalidSignal):
            Signal.whisper(value, "a/b")
    else:
        s = Signal.whisper(value, "a/b")
        assert (s.scope, s.value) == expected


@given(st.floats(0, 4_102_444_800, allow_nan=False))
def test_timestamps_match_strftime(t):
    assert rfc3339(t) == datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_generated_uuids_are_version_4():
    ids = {Signal.whisper("192.0.2.1", "a/b").uuid for _ in range(200)}
    assert len(ids) == 200
    for u in ids:
        parsed = uuid.UUID(u)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == u
