"""Bad input gets a typed error and leaves the index untouched."""

from __future__ import annotations

import pytest

from capi_fast import DecisionIndex, InvalidDecision, InvalidIP, RemediationEngine
from capi_fast.errors import CapiFastError
from support import NOW

BAD = [
    "",
    "1.2.3",
    "1.2.3.4/33",
    "::g",
    "1.2.3.4/",
    "1.2.3.4/-1",
    "1.2.3.4/+8",
    "1.2.3.4/255.0.0.0",
    " 1.2.3.4",
    "1.2.3.4\n",
    "01.2.3.4",
    "256.1.1.1",
    "fe80::1%eth0",
    "2001:db8::/129",
    "1:2:3:4:5:6:7:8:9",
    "1.2.3.4/0008",
    "x" * 100_000,
    "1" * 70,
    "١.٢.٣.٤",
]


@pytest.mark.parametrize("value", BAD, ids=lambda v: repr(v[:20]))
def test_malformed_values_raise_invalid_ip(make_index, value):
    idx = make_index()
    idx.add("192.0.2.1", now=NOW)
    with pytest.raises(InvalidIP) as info:
        idx.add(value, now=NOW)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CapiFastError)
    assert len(str(info.value)) < 200, "the message quotes at most a bounded prefix"
    with pytest.raises(InvalidIP):
        idx.lookup(value, now=NOW)
    with pytest.raises(InvalidIP):
        idx.remove(value)
    assert len(idx) == 1


def test_lookup_rejects_networks(make_index):
    with pytest.raises(InvalidIP):
        make_index().lookup("192.0.2.0/24")


@pytest.mark.parametrize("value", [None, 3232235777, b"1.2.3.4", ["1.2.3.4"], 1.5])
def test_non_str_is_a_type_error(make_index, value):
    idx = make_index()
    with pytest.raises(TypeError):
        idx.add(value)
    with pytest.raises(TypeError):
        idx.lookup(value)
    with pytest.raises(TypeError):
        idx.lookup_many([value])


def test_strict_batch_applies_nothing_on_a_bad_item(make_index):
    idx = make_index()
    with pytest.raises(InvalidIP):
        idx.add_many(["192.0.2.1", "bogus", "192.0.2.2"], now=NOW)
    assert len(idx) == 0


def test_lenient_batch_skips_and_counts(make_index):
    idx = make_index()
    r = idx.add_many(["192.0.2.1", "bogus", "10.0.0.0/33", "192.0.2.2"], now=NOW, strict=False)
    assert (r.added, r.skipped) == (2, 2)
    r = idx.apply(remove=["192.0.2.1", "nope"], now=NOW, strict=False)
    assert (r.removed, r.skipped) == (1, 1)


@pytest.mark.parametrize("name", ["", "x" * 257, "ban\n", "ba\x00n"])
def test_bad_remediation_or_origin_names(make_index, name):
    idx = make_index()
    with pytest.raises(InvalidDecision):
        idx.add("192.0.2.1", name, now=NOW)
    with pytest.raises(InvalidDecision):
        idx.add("192.0.2.1", "ban", origin=name, now=NOW)
    assert len(idx) == 0


def test_bad_priorities(make_index):
    with pytest.raises(InvalidDecision):
        make_index(priorities=["ban", "ban"])


@pytest.mark.parametrize("now", [float("nan"), float("inf"), -1.0])
def test_bad_clock(make_index, now):
    with pytest.raises(ValueError):
        make_index().lookup("192.0.2.1", now=now)


def test_bad_ttl(make_index):
    with pytest.raises(ValueError):
        make_index().add("192.0.2.1", ttl=float("nan"))
    with pytest.raises(TypeError):
        make_index().add("192.0.2.1", ttl="60")


def test_packed_buffer_errors(make_index):
    idx = make_index()
    with pytest.raises(ValueError):
        idx.lookup_many(b"\x01\x02\x03", family=4)
    with pytest.raises(ValueError):
        idx.lookup_many(b"\x01\x02\x03\x04", family=5)
    with pytest.raises(ValueError):
        idx.lookup_many(b"\x01\x02\x03\x04")
    with pytest.raises(TypeError):
        idx.lookup_many(["192.0.2.1"], family=4)


def test_bad_export_family(make_index):
    with pytest.raises(ValueError):
        make_index().export_cidrs("ban", family=5)


def test_a_lone_surrogate_is_an_invalid_ip_and_a_skipped_item():
    bad = "192.0.2.\ud800"
    idx = DecisionIndex()
    for call in (idx.lookup, idx.remove, lambda v: idx.add(v), lambda v: idx.lookup_many([v])):
        with pytest.raises(InvalidIP):
            call(bad)
    r = idx.add_many([bad, "192.0.2.1", (bad, "ban"), ("192.0.2.2", "ban", None, "o\udc00")], strict=False)
    assert (r.added, r.skipped) == (1, 3) and idx.lookup("192.0.2.1") == "ban"
    r = idx.apply(remove=[bad, ("192.0.2.1",)], strict=False)
    assert (r.removed, r.skipped) == (1, 1)
    engine = RemediationEngine(None)
    with pytest.raises(InvalidIP):
        engine.get_ip_remediation(bad)
