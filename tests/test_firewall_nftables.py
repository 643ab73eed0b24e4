"""FirewallSync with the nftables backend, in network namespaces this test creates.

Two namespaces joined by a veth pair: ``srv`` (10.77.0.1, fd77::1) runs a TCP server and the
firewall; ``cli`` connects from 10.77.0.2/.3 and fd77::2/::3. Real packets: a connection from a
banned source is refused (``reject``) or never answered (``drop``); the kernel's sets are read
back with ``nft -j list set`` and must equal the engine's export after every step. The host's
own rules are never touched.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from capi_fast import DecisionIndex
from capi_fast.errors import ConfigurationError, FirewallError
from capi_fast.firewall import FirewallSync
from capi_fast.nftables import NftablesBackend
from support import Clock

if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
    pytest.skip("needs root, nft and ip (.ci/run installs nftables)", allow_module_level=True)

PORT = 7000
SERVER = """
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", PORT))
s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
""".replace("PORT", str(PORT))


def spaced(start: int, stop: int) -> list[str]:
    """Addresses two apart (none adjacent, so each stays its own element after aggregation)."""
    return [str(ipaddress.IPv4Address(0xC6330000 + 2 * i)) for i in range(start, stop)]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


class Net:
    def __init__(self, tag: str) -> None:
        self.srv, self.cli = f"cfw-s-{tag}", f"cfw-c-{tag}"

    def nft(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.srv, "nft")

    def connects(self, source: str, timeout: float = 5.0) -> bool:
        """Whether a TCP connection from ``source`` (an address of cli) to the server is answered."""
        dest = "fd77::1" if ":" in source else "10.77.0.1"
        code = (
            "import socket,sys\n"
            f"fam = socket.AF_INET6 if ':' in {source!r} else socket.AF_INET\n"
            "s = socket.socket(fam)\n"
            f"s.settimeout({timeout})\n"
            f"s.bind(({source!r}, 0))\n"
            "try:\n"
            f"    s.connect(({dest!r}, {PORT}))\n"
            "    sys.exit(0 if s.recv(2) == b'hi' else 3)\n"
            "except (ConnectionRefusedError, TimeoutError, OSError):\n"
            "    sys.exit(1)\n"
        )
        done = subprocess.run(["ip", "netns", "exec", self.cli, sys.executable, "-c", code], timeout=timeout + 30)
        return done.returncode == 0


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net(str(os.getpid()))
    for ns in (n.srv, n.cli):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    server = None
    try:
        sh("ip", "link", "add", "cfw0", "netns", n.srv, "type", "veth", "peer", "name", "cfw1", "netns", n.cli)
        sh("ip", "-n", n.srv, "addr", "add", "10.77.0.1/24", "dev", "cfw0")
        sh("ip", "-n", n.srv, "addr", "add", "fd77::1/64", "dev", "cfw0", "nodad")
        for a in ("10.77.0.2/24", "10.77.0.3/24"):
            sh("ip", "-n", n.cli, "addr", "add", a, "dev", "cfw1")
        for a in ("fd77::2/64", "fd77::3/64"):
            sh("ip", "-n", n.cli, "addr", "add", a, "dev", "cfw1", "nodad")
        sh("ip", "-n", n.srv, "link", "set", "cfw0", "up")
        sh("ip", "-n", n.cli, "link", "set", "cfw1", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", n.srv, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        yield n
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for ns in (n.srv, n.cli):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


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
