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
import time
from collections.abc import Iterator

import pytest

from capi_fast import DecisionIndex
from capi_fast.errors import ConfigurationError, FirewallError
from capi_fast.firewall import Content, FirewallSync
from capi_fast.nftables import NftablesBackend
from netns_support import Net, spaced, two_hosts
from support import Clock

if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
    pytest.skip("needs root, nft and ip (.ci/run installs nftables)", allow_module_level=True)


def cidrs(content: Content) -> dict[tuple[str, int], set[str]]:
    return {key: set(elements) for key, elements in content.items()}


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
    assert kernel[("captcha", 6)] == {}, "2001:db8::1 answers ban: in the ban range, not the captcha set"
    # 1,000 adds and 1,000 deletes: one transaction of exactly those elements.
    ix.add_many(spaced(5000, 6000), now=clock.now)
    for ip in spaced(0, 1000):
        ix.remove(ip)
    step = fw.sync()
    assert not step.full and (step.added, step.deleted) == (1000, 1000)
    assert fw.check() and cidrs(backend.read()) == cidrs(fw.wanted())
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
    assert set(backend.read()[("ban", 4)]) == {"10.77.0.0/31", "10.77.0.3/32", "10.77.0.4/30"}, "a hole, ranges kept"
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


def test_elements_time_out_in_the_kernel_when_their_decisions_expire(net):
    # The kernel's timer, not the daemon, removes what expires (a grace of 1 s past the end).
    ix = DecisionIndex()
    now = time.time()
    ix.add("10.77.0.2/31", ttl=5, now=now)  # both client addresses, in the interval set
    ix.add("fd77::3", ttl=5, now=now)  # the hash set
    ix.add("10.77.0.9", ttl=3600, now=now)
    ix.add("10.77.0.11", now=now)  # never expires: no timeout
    backend = NftablesBackend(hooks=["input"], action="reject", grace=1, command=net.nft())
    fw = FirewallSync(ix, backend)
    fw.sync()
    assert not net.connects("10.77.0.3") and not net.connects("fd77::3")
    ends = backend.read()[("ban", 4)]
    assert ends["10.77.0.11/32"] is None and abs(ends["10.77.0.9/32"] - (now + 3601)) <= 2
    assert 5 <= ends["10.77.0.2/31"] - now <= 8
    # Nothing syncs any more (the daemon is stopped): the kernel drops what expired, on time.
    deadline = time.monotonic() + 15
    while "10.77.0.2/31" in backend.read()[("ban", 4)] and time.monotonic() < deadline:
        time.sleep(0.1)
    kernel = cidrs(backend.read())
    assert kernel[("ban", 4)] == {"10.77.0.9/32", "10.77.0.11/32"} and kernel[("ban", 6)] == set()
    assert net.connects("10.77.0.2") and net.connects("10.77.0.3") and net.connects("fd77::3")
    assert not fw.check(), "the kernel lost elements the last sync put there"
    # The next sync comes after more than half the grace: a full load, which cannot miss.
    report = fw.sync()
    assert report.full and fw.check()
    # A decision made longer: its element is replaced with the new timeout, in one transaction.
    ix.add("10.77.0.9", ttl=7200)
    report = fw.sync()
    assert (report.added, report.deleted) == (1, 1)
    assert abs(backend.read()[("ban", 4)]["10.77.0.9/32"] - (time.time() + 7201)) <= 2


def test_while_syncs_keep_up_the_sync_deletes_what_expires_before_the_kernel(net):
    # A clock of our own: the decision ends, the sync that follows deletes the element in a
    # delta (the kernel holds it for the grace: the delete cannot miss).
    clock = Clock()
    ix = DecisionIndex()
    ix.add("10.77.0.3", ttl=30, now=clock.now)
    ix.add("10.77.0.0/30", "captcha", ttl=30, now=clock.now)
    backend = NftablesBackend(remediations=["ban", "captcha"], hooks=["input"], grace=600, command=net.nft())
    fw = FirewallSync(ix, backend, ["ban", "captcha"], clock=clock)
    fw.sync()
    assert not net.connects("10.77.0.3", timeout=1.0)
    clock.now += 31
    report = fw.sync()
    assert not report.full and report.deleted == 3 and fw.check(), "the ban host, the captcha /31 and .2"
    assert net.connects("10.77.0.3")
    # Later syncs stay deltas while they come within half the grace.
    clock.now += 200
    assert not fw.sync().full
    clock.now += 301
    assert fw.sync().full, "a gap over half the grace: loaded whole"


def test_switching_timeouts_on_redeclares_the_sets(net):
    ix = DecisionIndex()
    ix.add("10.77.0.3", ttl=600)
    FirewallSync(ix, NftablesBackend(hooks=["input"], timeouts=False, command=net.nft())).sync()
    plain = NftablesBackend(hooks=["input"], timeouts=False, command=net.nft()).read()
    assert plain[("ban", 4)] == {"10.77.0.3/32": None}, "no timeout when off"
    # nft cannot change a set's flags: the load deletes and declares the sets anew.
    fw = FirewallSync(ix, NftablesBackend(hooks=["input"], command=net.nft()))
    assert fw.sync().full and fw.check()
    assert fw.backend.read()[("ban", 4)]["10.77.0.3/32"] is not None
    assert not net.connects("10.77.0.3", timeout=1.0)
    # A rule of the user's using a set keeps it from being deleted: the load says so, nothing changes.
    subprocess.run([*net.nft(), "add", "chain", "inet", "capi_fast", "mine"], check=True)
    subprocess.run(
        [*net.nft(), "add", "rule", "inet", "capi_fast", "mine", "ip", "saddr", "@ban_v4", "counter"], check=True
    )
    with pytest.raises(FirewallError, match="nft failed"):
        FirewallSync(ix, NftablesBackend(hooks=["input"], timeouts=False, command=net.nft())).sync()
    assert fw.check() and not net.connects("10.77.0.3", timeout=1.0)


def test_the_documentation_shows_the_table_this_backend_makes(net):
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "firewall.md"
    shown = re.search(r"^```text\n(table inet capi_fast \{.*?)^```", page.read_text(), flags=re.S | re.M)
    assert shown, "docs/firewall.md lost its nft listing"
    now = 1_800_000_000.0
    ix = DecisionIndex()
    ix.add("203.0.113.7", ttl=4 * 3600, now=now)
    ix.add("198.51.100.0/24", ttl=7 * 86400, now=now)
    ix.add("2001:db8::/48", now=now)
    FirewallSync(ix, NftablesBackend(command=net.nft()), clock=lambda: now).sync()
    listed = subprocess.run([*net.nft(), "list", "table", "inet", "capi_fast"], capture_output=True, text=True).stdout

    def same(text: str) -> list[str]:  # the countdown and blank lines aside
        return [re.sub(r" expires [0-9dhms]+", "", line) for line in text.splitlines() if line.strip()]

    assert same(listed) == same(shown.group(1))
