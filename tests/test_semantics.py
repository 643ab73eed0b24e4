"""The decision-index contract (CrowdSec's semantics), checked on the native index and on the reference."""

from __future__ import annotations

import pytest

from capi_fast import DecisionIndex
from support import NOW


def test_highest_priority_wins_not_longest_match(make_index):
    idx = make_index()
    idx.add("10.1.0.0/16", "ban", ttl=60, origin="CAPI", now=NOW)
    idx.add("10.1.2.3", "captcha", ttl=60, origin="cscli", now=NOW)
    assert idx.lookup("10.1.2.3", now=NOW) == "ban"
    idx.remove("10.1.0.0/16")
    assert idx.lookup("10.1.2.3", now=NOW) == "captcha"
    assert idx.lookup("10.1.2.4", now=NOW) is None


def test_readding_replaces_expiry_and_keys_are_value_origin_remediation(make_index):
    idx = make_index()
    assert idx.add("192.0.2.1", "ban", ttl=10, origin="CAPI", now=NOW) is True
    assert idx.add("192.0.2.1", "ban", ttl=100, origin="CAPI", now=NOW) is False
    assert len(idx) == 1
    assert idx.lookup("192.0.2.1", now=NOW + 50) == "ban", "expiry was replaced by the later one"
    assert idx.add("192.0.2.1", "ban", ttl=5, origin="cscli", now=NOW) is True
    assert idx.add("192.0.2.1", "captcha", ttl=500, origin="CAPI", now=NOW) is True
    assert len(idx) == 3
    assert idx.remove("192.0.2.1", origin="CAPI", remediation="captcha") == 1
    assert idx.remove("192.0.2.1", origin="nobody") == 0
    assert idx.remove("192.0.2.1") == 2
    assert len(idx) == 0


def test_expired_never_returned_even_before_purge(make_index):
    idx = make_index()
    idx.add("2001:db8::/32", "ban", ttl=1.5, now=NOW)
    idx.add("2001:db8::1", "captcha", ttl=3, now=NOW)
    assert idx.lookup("2001:db8::1", now=NOW + 1.499) == "ban"
    assert idx.lookup("2001:db8::1", now=NOW + 1.5) == "captcha"
    assert idx.lookup("2001:db8::1", now=NOW + 3) is None
    assert len(idx) == 2, "expired decisions are held until purged"
    assert idx.purge_expired(now=NOW + 2) == 1
    assert idx.purge_expired(now=NOW + 2) == 0
    assert idx.purge_expired(now=NOW + 4) == 1
    assert len(idx) == 0


def test_already_expired_add_removes_the_decision(make_index):
    idx = make_index()
    idx.add("198.51.100.7", "ban", ttl=60, origin="CAPI", now=NOW)
    r = idx.add_many([("198.51.100.7", "ban", -1.0, "CAPI")], now=NOW)
    assert (r.added, r.removed) == (0, 1)
    assert idx.lookup("198.51.100.7", now=NOW) is None
    assert len(idx) == 0


def test_ipv4_mapped_ipv6_answers_as_ipv4(make_index):
    idx = make_index()
    idx.add("203.0.113.0/24", "ban", now=NOW)
    idx.add("::ffff:198.51.100.0/120", "captcha", now=NOW)
    assert idx.lookup("::ffff:203.0.113.9", now=NOW) == "ban"
    assert idx.lookup("198.51.100.200", now=NOW) == "captcha"
    assert idx.stats()["ipv4_ranges"] == 2
    assert idx.stats()["ipv6_ranges"] == 0


def test_host_bits_are_normalised_and_counted(make_index):
    idx = make_index()
    r = idx.add_many(["10.1.2.3/8", "10.0.0.0/8", "2001:db8::1/64"], now=NOW)
    assert (r.added, r.refreshed, r.normalized) == (2, 1, 2)
    assert idx.stats()["normalized"] == 2
    assert idx.lookup("10.200.0.1", now=NOW) == "ban"
    assert idx.remove("10.9.9.9/8") == 1


def test_priorities_and_unknown_remediations(make_index):
    idx = make_index(priorities=["captcha", "ban"])
    idx.add("192.0.2.0/24", "ban", now=NOW)
    idx.add("192.0.2.1", "captcha", now=NOW)
    assert idx.lookup("192.0.2.1", now=NOW) == "captcha"
    idx.add("192.0.2.2", "zzz", now=NOW)
    idx.add("192.0.2.2", "mfa", now=NOW)
    idx.add("192.0.2.3", "zzz", now=NOW)
    idx.add("192.0.2.3", "mfa", now=NOW)
    assert idx.lookup("192.0.2.2", now=NOW) == "ban", "listed remediations rank above unlisted ones"
    idx.remove("192.0.2.0/24")
    assert idx.lookup("192.0.2.3", now=NOW) == "mfa", "unlisted ones rank alphabetically"
    assert idx.codes == (None, "captcha", "ban", "zzz", "mfa")
    assert idx.priorities == ["captcha", "ban"]


def test_apply_is_removes_then_adds(make_index):
    idx = make_index()
    idx.add_many(["192.0.2.1", "192.0.2.2"], origin="CAPI", ttl=60, now=NOW)
    r = idx.apply(
        add=[("192.0.2.1", "ban", 30.0, "CAPI"), "192.0.2.9"], remove=["192.0.2.1", ("192.0.2.2", "CAPI")], now=NOW
    )
    assert (r.added, r.removed) == (2, 2)
    assert [idx.lookup(f"192.0.2.{i}", now=NOW) for i in (1, 2, 9)] == ["ban", None, "ban"]


def test_lookup_many_lists_and_packed_buffers(make_index):
    idx = make_index()
    idx.add("192.0.2.0/24", "captcha", now=NOW)
    idx.add("2001:db8::/48", "ban", now=NOW)
    ips = ["192.0.2.1", "198.51.100.1", "2001:db8::5", "::ffff:192.0.2.7"]
    assert idx.lookup_many(ips, now=NOW) == ["captcha", None, "ban", "captcha"]
    packed4 = bytes([192, 0, 2, 1, 198, 51, 100, 1])
    codes = idx.lookup_many(packed4, family=4, now=NOW)
    assert [idx.codes[c] for c in codes] == ["captcha", None]
    import ipaddress

    packed6 = b"".join(ipaddress.IPv6Address(a).packed for a in ["2001:db8::5", "::1", "::ffff:192.0.2.7"])
    for buf in (packed6, bytearray(packed6), memoryview(packed6)):
        assert [idx.codes[c] for c in idx.lookup_many(buf, family=6, now=NOW)] == ["ban", None, "captcha"]


def test_contains_and_len(make_index):
    idx = make_index()
    idx.add("192.0.2.1", ttl=3600)
    assert "192.0.2.1" in idx
    assert "192.0.2.2" not in idx
    assert len(idx) == 1


def test_export_cidrs_is_minimal_and_exact(make_index):
    idx = make_index()
    idx.add("10.0.0.0/8", "captcha", now=NOW)
    idx.add("10.1.0.0/16", "ban", now=NOW)
    idx.add_many([f"192.0.2.{i}" for i in range(4, 8)], now=NOW)
    idx.add("10.2.0.0/16", "captcha", ttl=5, now=NOW)
    idx.add("2001:db8::/32", "ban", now=NOW)
    assert idx.export_cidrs("ban", family=4, now=NOW) == ["10.1.0.0/16", "192.0.2.4/30"]
    captcha = idx.export_cidrs("captcha", family=4, now=NOW)
    assert captcha[0] == "10.0.0.0/16" and "10.128.0.0/9" in captcha and len(captcha) == 8
    assert idx.export_cidrs("ban", family=6, now=NOW) == ["2001:db8::/32"]
    assert idx.export_cidrs("mfa", now=NOW) == []


def test_stats_shape():
    idx = DecisionIndex()
    idx.add_many(["192.0.2.1", "192.0.2.0/24", "2001:db8::1", "2001:db8::/32"], now=NOW)
    s = idx.stats()
    assert {k: s[k] for k in ("decisions", "ipv4_addresses", "ipv4_ranges", "ipv6_addresses", "ipv6_ranges")} == {
        "decisions": 4,
        "ipv4_addresses": 1,
        "ipv4_ranges": 1,
        "ipv6_addresses": 1,
        "ipv6_ranges": 1,
    }
    assert s["memory_bytes"] > 0
    assert "4 decisions" in repr(idx)


@pytest.mark.parametrize("ttl", [None, float("inf")])
def test_no_ttl_means_never_expires(make_index, ttl):
    idx = make_index()
    idx.add("192.0.2.1", ttl=ttl, now=NOW)
    assert idx.lookup("192.0.2.1", now=NOW + 100 * 365 * 86400) == "ban"
    assert idx.purge_expired(now=NOW + 100 * 365 * 86400) == 0
