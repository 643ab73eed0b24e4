"""FirewallSync with the nftables backend, in network namespaces this test creates.

Two namespaces joined by a veth pair: ``srv`` (10.77.0.1, fd77::1) runs a TCP server and the
firewall; ``cli`` connects from 10.77.0.2/.3 and fd77::2/::3. Real packets: a connection from a
banned source is refused (``reject``) or never answered (``drop``); the kernel's sets are read
back with ``nft -j list set`` and must equal the engine's export after every step. The host's
own rules are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from capi_fast import DecisionIndex
from capi_fast.errors import ConfigurationError, FirewallError
from capi_fast.firewall import FirewallSync
from capi_fast.nftables import NftablesBackend
from netns_support import Net, spaced, two_hosts
from support import Clock

if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
    pytest.skip("needs root, nft and ip (.ci/run installs nftables)", allow_module_level=True)


@pytest.fixture
def net() -> Iterator[Net]:
    with two_hosts("nft") as n:
        yield n


def test_full_load_then_deltas_keep_the_kernel_equal_to_the_export(net):
    clock = Clock()
    ix = DecisionIndex()
    ix.add_many(spaced(0, 5000), now=clock.now)
    ix.add("203.0.113.0/24", now=clock.now)
    ix.add("203.0.112.0/24", now=clock.now)  # with .113.0/24: one /23, merged
    ix.add("2001:db8::/32", now=clock.now)
    ix.add("2001:db8::1", "captcha", now=clock.now)
    backend = NftablesBackend(remediations=["ban", "captcha"], hooks=[], command=net.nft())
    fw = FirewallSync(ix, backend, remediations=["ban", "captcha"], clock=clock)
    first = fw.sync()
    assert first.full and first.added == first.elements and fw.check()
    kernel = backend.read()
    assert "203.0.112.0/23" in kernel[("ban", 4)] and "2001:db8::/32" in kernel[("ban", 6)]
    assert kernel[("captcha", 6)] == frozenset(), "2001:db8::1 answers ban: in the ban range, not the captcha set"
    # 1,000 adds and 1,000 deletes: one transaction of exactly those elements.
    ix.add_many(spaced(5000, 6000), now=clock.now)
    for ip in spaced(0, 1000):
        ix.remove(ip)
    step = fw.sync()
    assert not step.full and (step.added, step.deleted) == (1000, 1000)
    assert fw.check() and backend.read() == fw.wanted()
    assert not fw.sync().added and fw.check(), "nothing changed: nothing sent"


def test_banned_sources_are_rejected_and_let_in_again(net):
    clock = Clock()
    ix = DecisionIndex(["allow", "ban"])
    backend = NftablesBackend(hooks=["input"], action="reject", command=net.nft())
    fw = FirewallSync(ix, backend, clock=clock)
    fw.sync()
    assert net.connects("10.77.0.2") and net.connects("10.77.0.3") and net.connects("fd77::3")
    ix.add("10.77.0.3", now=clock.now)
    ix.add("fd77::3", ttl=600, now=clock.now)
    fw.sync()
    assert net.connects("10.77.0.2") and not net.connects("10.77.0.3")
    assert net.connects("fd77::2") and not net.connects("fd77::3")
    # A banned range drops every address inside it; an allowlisted address inside stays open.
    ix.add("10.77.0.0/29", now=clock.now)
    fw.sync()
    assert not net.connects("10.77.0.2")
    ix.add("10.77.0.2", "allow", now=clock.now)
    fw.sync()
    assert backend.read()[("ban", 4)] == {"10.77.0.0/31", "10.77.0.3/32", "10.77.0.4/30"}, "a hole, ranges kept"
    assert net.connects("10.77.0.2") and not net.connects("10.77.0.3")
    # Deleted and expired decisions open the door again.
    ix.remove("10.77.0.0/29")
    ix.remove("10.77.0.3")
    clock.now += 601
    report = fw.sync()
    assert report.deleted == 4 and fw.check(), "the /29 around the allowed .2 was 3 elements, plus fd77::3"
    assert net.connects("10.77.0.3") and net.connects("fd77::3")
    backend.remove()
    ix.add("10.77.0.3", now=clock.now)
    assert net.connects("10.77.0.3"), "removed: no table, no rule"


def test_drop_never_answers(net):
    ix = DecisionIndex()
    ix.add("10.77.0.3")
    FirewallSync(ix, NftablesBackend(hooks=["input"], command=net.nft())).sync()
    assert not net.connects("10.77.0.3", timeout=1.0)
    assert net.connects("10.77.0.2")


def test_a_failed_transaction_changes_nothing_and_the_next_sync_reloads(net):
    ix = DecisionIndex()
    ix.add("10.77.0.3")
    backend = NftablesBackend(hooks=["input"], action="reject", command=net.nft())
    fw = FirewallSync(ix, backend)
    fw.sync()
    # Someone deletes the table behind our back: the delta cannot apply.
    subprocess.run([*net.nft(), "delete", "table", "inet", "capi_fast"], check=True)
    ix.add("10.77.0.2")
    with pytest.raises(FirewallError, match="nft failed"):
        fw.sync()
    assert not fw.check()
    report = fw.sync()
    assert report.full and fw.check()
    assert not net.connects("10.77.0.2") and not net.connects("10.77.0.3")


def test_bad_settings_are_refused():
    with pytest.raises(ConfigurationError):
        NftablesBackend(table="bad name")
    with pytest.raises(ConfigurationError):
        NftablesBackend(hooks=["output"])
    with pytest.raises(ConfigurationError):
        NftablesBackend(action="accept")
    with pytest.raises(ConfigurationError):
        NftablesBackend(log_prefix='x" drop')
    with pytest.raises(ConfigurationError):
        FirewallSync(DecisionIndex(), NftablesBackend(), remediations="ban")
    with pytest.raises(FirewallError, match="could not run"):
        NftablesBackend(command=("/nonexistent/nft",)).load({})


def test_a_million_decisions_then_a_delta_of_a_thousand_each_way(net):
    # The community blocklist's shape at 1M decisions: a full load, then 1,000 adds and 1,000
    # deletes as one transaction; the kernel equals the export after each step.
    from capi_fast.workload import community_blocklist

    ix = DecisionIndex()
    workload = community_blocklist(1_000_000, 7)
    ix.add_many(workload, strict=False)
    backend = NftablesBackend(hooks=["input"], command=net.nft())
    fw = FirewallSync(ix, backend)
    first = fw.sync()
    assert first.full and first.elements > 990_000 and fw.check()
    gone = [v for v, *_ in workload if "/" not in v and ":" not in v][:1000]
    for ip in gone:
        ix.remove(ip)
    new = [ip for ip in spaced(10**6, 10**6 + 1100) if ix.lookup(ip) is None][:1000]
    ix.add_many(new)
    step = fw.sync()
    assert not step.full and (step.added, step.deleted) == (1000, 1000)
    assert fw.check()


def test_a_full_load_keeps_chains_of_your_own_and_drops_hooks_no_longer_wanted(net):
    ix = DecisionIndex()
    ix.add("10.77.0.3")
    backend = NftablesBackend(hooks=["input", "forward"], command=net.nft())
    fw = FirewallSync(ix, backend)
    fw.sync()
    # A chain of the user's in the table (nft sets are only usable from their own table).
    subprocess.run([*net.nft(), "add", "chain", "inet", "capi_fast", "mine"], check=True)
    subprocess.run(
        [*net.nft(), "add", "rule", "inet", "capi_fast", "mine", "ip", "saddr", "@ban_v4", "counter"], check=True
    )
    FirewallSync(ix, NftablesBackend(hooks=["input"], command=net.nft())).sync(full=True)
    listed = subprocess.run([*net.nft(), "list", "table", "inet", "capi_fast"], capture_output=True, text=True).stdout
    assert "chain mine" in listed and "chain input" in listed and "chain forward" not in listed
