"""FirewallSync with the ipset backend (hash:net sets, iptables rules), in network namespaces.

Past 65,536 entries and through a rebuild by swap, with a connection loop from a banned address
running during the swaps: not one connection gets through. Real packets as in the nftables test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from capi_fast import DecisionIndex
from capi_fast.errors import ConfigurationError
from capi_fast.firewall import FirewallSync
from capi_fast.ipset import IpsetBackend
from netns_support import PORT, Net, spaced, two_hosts
from support import Clock

if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "ipset", "iptables", "ip6tables")):
    pytest.skip("needs root, ip, ipset and iptables (.ci/run installs them)", allow_module_level=True)


@pytest.fixture
def net() -> Iterator[Net]:
    with two_hosts("ips") as n:
        yield n


def backend(net: Net, **kw: object) -> IpsetBackend:
    return IpsetBackend(
        ipset=net.run("ipset"),
        iptables=net.run("iptables"),
        ip6tables=net.run("ip6tables"),
        **kw,  # type: ignore[arg-type]
    )


def test_past_65536_entries_with_deltas_and_a_rebuild_to_grow(net):
    ix = DecisionIndex()
    ix.add_many(spaced(0, 70_000))
    ix.add("203.0.113.0/24")
    ix.add("2001:db8::/32")
    b = backend(net, hooks=[])
    fw = FirewallSync(ix, b)
    first = fw.sync()
    assert first.full and first.elements == 70_002 and fw.check()
    assert b.maxelem[("ban", 4)] == 140_002
    # A delta of 1,000 each way.
    for ip in spaced(0, 1000):
        ix.remove(ip)
    ix.add_many(spaced(70_000, 71_000))
    step = fw.sync()
    assert (step.full, step.added, step.deleted) == (False, 1000, 1000) and fw.check()
    # Growing past maxelem rebuilds the set (a swap), bigger, without failing.
    ix.add_many(spaced(71_000, 150_000))
    grown = fw.sync()
    assert not grown.full and grown.added == 79_000 and fw.check()
    assert b.maxelem[("ban", 4)] >= 2 * 149_000
    # Loading again over existing sets: no "already exists" at any size.
    assert FirewallSync(ix, b).sync().full and fw.check()


def test_banned_sources_are_rejected_and_let_in_again(net):
    clock = Clock()
    ix = DecisionIndex(["allow", "ban"])
    b = backend(net, hooks=["input"], action="reject", log_prefix="capi-fast ")
    fw = FirewallSync(ix, b, clock=clock)
    fw.sync()
    assert net.connects("10.77.0.3") and net.connects("fd77::3")
    ix.add("10.77.0.3", now=clock.now)
    ix.add("fd77::3", ttl=60, now=clock.now)
    fw.sync()
    assert net.connects("10.77.0.2") and not net.connects("10.77.0.3")
    assert net.connects("fd77::2") and not net.connects("fd77::3")
    ix.add("10.77.0.0/29", now=clock.now)
    ix.add("10.77.0.2", "allow", now=clock.now)
    fw.sync()
    assert net.connects("10.77.0.2") and not net.connects("10.77.0.3"), "allowlisted hole in a banned range"
    # Every address: 0.0.0.0/0 (stored as two /1 halves, read back whole).
    ix.add("0.0.0.0/0", now=clock.now)
    ix.remove("10.77.0.2")
    fw.sync()
    assert fw.check() and not net.connects("10.77.0.2")
    ix.remove("0.0.0.0/0")
    ix.remove("10.77.0.0/29")
    ix.remove("10.77.0.3")
    clock.now += 61
    fw.sync()
    assert fw.check() and net.connects("10.77.0.3") and net.connects("fd77::3")
    ix.add("10.77.0.3", now=clock.now)
    fw.sync()
    b.remove()
    assert net.connects("10.77.0.3"), "rules and sets removed"
    rules = subprocess.run([*net.run("iptables"), "-S"], capture_output=True, text=True, check=True).stdout
    assert "capi_fast" not in rules


LOOP = """
import select, socket, sys
sys.stdout.write("started\\n"); sys.stdout.flush()
through = attempts = 0
while True:
    s = socket.socket()
    s.settimeout(0.5)
    s.bind(("10.77.0.3", 0))
    try:
        s.connect(("10.77.0.1", PORT))
        through += 1
    except OSError:
        pass
    finally:
        s.close()
    attempts += 1
    if select.select([sys.stdin], [], [], 0)[0]:
        break
print(attempts, through)
""".replace("PORT", str(PORT))


def test_no_connection_gets_through_while_sets_are_swapped(net):
    ix = DecisionIndex()
    ix.add_many(spaced(0, 100_000))
    ix.add("10.77.0.3")
    fw = FirewallSync(ix, backend(net, hooks=["input"], action="reject"))
    fw.sync()
    loop = subprocess.Popen(
        ["ip", "netns", "exec", net.cli, sys.executable, "-c", LOOP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert loop.stdout is not None and loop.stdin is not None
    assert loop.stdout.readline().strip() == "started"
    for _ in range(5):
        assert fw.sync(full=True).full  # each a fill and a swap of 100,001 entries
    loop.stdin.write("stop\n")
    loop.stdin.flush()
    attempts, through = map(int, loop.communicate(timeout=60)[0].split())
    assert attempts > 100 and through == 0, (attempts, through)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigurationError, match="31"):
        IpsetBackend(prefix="a_very_long_prefix_for_sets")
    with pytest.raises(ConfigurationError):
        IpsetBackend(hooks=["output"])
    with pytest.raises(ConfigurationError):
        IpsetBackend(action="accept")
    with pytest.raises(ConfigurationError):
        IpsetBackend(log_prefix="x" * 30)


def test_remove_takes_every_rule_of_ours_whatever_made_it(net):
    ix = DecisionIndex()
    ix.add("10.77.0.3")
    FirewallSync(ix, backend(net, hooks=["input", "forward"], action="reject", log_prefix="it's ")).sync()
    # Removed with other settings than it was loaded with (as `capi-fast firewall remove` does).
    backend(net, hooks=["input"]).remove()
    rules = subprocess.run([*net.run("iptables"), "-S"], capture_output=True, text=True, check=True).stdout
    sets = subprocess.run([*net.run("ipset"), "list", "-name"], capture_output=True, text=True, check=True).stdout
    assert "capi_fast" not in rules and "capi_fast" not in sets
    assert net.connects("10.77.0.3")


def test_a_reload_with_other_settings_replaces_the_rules(net):
    ix = DecisionIndex()
    ix.add("10.77.0.3")
    FirewallSync(ix, backend(net, action="drop")).sync()
    FirewallSync(ix, backend(net, action="reject")).sync()
    rules = subprocess.run([*net.run("iptables"), "-S", "INPUT"], capture_output=True, text=True, check=True).stdout
    assert "REJECT" in rules and "DROP" not in rules
