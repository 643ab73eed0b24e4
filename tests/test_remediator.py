"""The native answer path: answers, counters by the deciding decision's origin, index swaps."""

from __future__ import annotations

import threading

import pytest

from capi_fast import DecisionIndex
from capi_fast._native import Remediator
from capi_fast.errors import InvalidIP
from support import NOW, Clock


def _index() -> DecisionIndex:
    ix = DecisionIndex()
    ix.apply(
        add=[
            ("10.0.0.0/16", "ban", 600.0, "lists:firehol"),
            ("10.0.1.1", "captcha", 600.0, "cscli"),
            ("10.0.1.2", "ban", 60.0, "CAPI"),
            ("2001:db8::/48", "captcha", 600.0, "CAPI"),
        ],
        now=NOW,
    )
    return ix


def test_answers_are_counted_under_the_origin_of_the_deciding_decision():
    r = Remediator(_index(), {"ban": "ban", "captcha": "captcha"})
    assert r.get("10.0.1.1", now=NOW) == "ban", "the /16 ban outranks the host's captcha"
    assert r.get("2001:db8::5", now=NOW) == "captcha"
    assert r.get("192.0.2.1", now=NOW) == "bypass"
    assert r.get("11.0.0.1", now=NOW) == "bypass"
    assert r.get("10.1.0.0", now=NOW) == "bypass"
    assert r.counts() == {("lists:firehol", "ban"): 1, ("CAPI", "captcha"): 1, ("clean", "bypass"): 3}
    # Past the /16's expiry the host's own captcha decides.
    assert r.get("10.0.1.1", now=NOW + 601) == "bypass"
    assert r.get("10.0.1.1", now=NOW + 300) == "ban"


def test_ties_between_origins_count_once_and_stably():
    ix = DecisionIndex()
    ix.apply(add=[("192.0.2.1", "ban", 60.0, "CAPI"), ("192.0.2.0/24", "ban", 60.0, "cscli")], now=NOW)
    r = Remediator(ix, {})
    for _ in range(5):
        assert r.get("192.0.2.1", now=NOW) == "ban"
    counts = r.counts()
    assert sum(counts.values()) == 5 and len(counts) == 1, counts


def test_answer_table_and_index_swaps_keep_the_counts():
    r = Remediator(_index(), {"ban": "ban", "captcha": "captcha"})
    assert r.get("10.0.0.9", now=NOW) == "ban"
    r.set_answers({"ban": "captcha", "captcha": "captcha"})  # the "flex" bouncing level
    assert r.get("10.0.0.9", now=NOW) == "captcha"
    other = DecisionIndex()
    other.add("10.0.0.9", "captcha", ttl=60, origin="cscli", now=NOW)
    r.set_index(other)
    assert r.index is other
    assert r.get("10.0.0.9", now=NOW) == "captcha"
    assert r.counts() == {("lists:firehol", "ban"): 1, ("lists:firehol", "captcha"): 1, ("cscli", "captcha"): 1}
    before = r.counts()
    assert r.take_counts() == before
    assert r.counts() == {}


def test_a_remediation_seen_after_creation_answers_as_itself():
    ix = DecisionIndex()
    r = Remediator(ix, {"ban": "captcha"})
    ix.add("192.0.2.1", "throttle", ttl=60, origin="cscli", now=NOW)
    assert r.get("192.0.2.1", now=NOW) == "throttle"
    assert r.counts() == {("cscli", "throttle"): 1}


def test_bad_addresses_raise_and_are_not_counted():
    r = Remediator(_index(), {})
    for bad in ["", "1.2.3", "10.0.0.0/8", "x" * 500]:
        with pytest.raises(InvalidIP):
            r.get(bad)
    with pytest.raises(TypeError):
        r.get(5)  # type: ignore[arg-type]
    assert r.counts() == {}


def test_reload_hook_runs_at_most_once_per_interval():
    tick = Clock(0.0)
    calls: list[float] = []
    r = Remediator(_index(), {}, reload=lambda: calls.append(tick.now), check_every=1.0, monotonic=tick)
    r.get("192.0.2.1")
    tick.now = 0.5
    r.get("192.0.2.1")
    assert calls == []
    tick.now = 1.0
    r.get("192.0.2.1")
    r.get("192.0.2.1")
    assert calls == [1.0]
    tick.now = 2.5
    r.get("192.0.2.1")
    assert calls == [1.0, 2.5]


def test_counts_are_exact_under_concurrent_lookups_and_swaps():
    r = Remediator(_index(), {})
    per_thread, threads = 20_000, 4
    stop = threading.Event()

    def read() -> None:
        for i in range(per_thread):
            r.get("10.0.0.1" if i % 2 else "192.0.2.1", now=NOW)

    def swap() -> None:
        while not stop.is_set():
            r.set_index(_index())

    workers = [threading.Thread(target=read) for _ in range(threads)]
    swapper = threading.Thread(target=swap)
    swapper.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    swapper.join()
    assert r.counts() == {
        ("lists:firehol", "ban"): per_thread * threads // 2,
        ("clean", "bypass"): per_thread * threads // 2,
    }
