"""Two test hosts in network namespaces: ``srv`` (10.77.0.1, fd77::1) runs a TCP server and the
firewall under test; ``cli`` (10.77.0.2/.3, fd77::2/::3) connects. Created and deleted by each
test; the host's own rules are never touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator

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

    def run(self, tool: str) -> tuple[str, ...]:
        """``tool`` run inside ``srv`` (where the firewall is)."""
        return ("ip", "netns", "exec", self.srv, tool)

    def nft(self) -> tuple[str, ...]:
        return self.run("nft")

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


@contextlib.contextmanager
def two_hosts(tag: str) -> Iterator[Net]:
    """Two network namespaces joined by a veth pair, a TCP server listening in ``srv``."""
    n = Net(f"{tag}{os.getpid()}")
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
        # No rate limit on the ICMP errors a reject sends, so every refused attempt is seen at once.
        sh("ip", "netns", "exec", n.srv, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0")
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
