"""Which address a request comes from, behind reverse proxies, without being fooled.

The socket peer is the client unless it is one of ``trusted_proxies``. Only then is the
forwarding header read (``X-Forwarded-For`` by default, or RFC 7239 ``Forwarded``): its
addresses, then the peer, are walked from right to left past trusted hops, and the first
address that is not a trusted proxy is the client. What a client writes into the header itself
sits left of the hops that appended to it, so it is only reached when every hop right of it is
trusted: a spoofed header from an untrusted peer is never read, and a chain stops at its first
untrusted hop. A malformed entry on the way (not an address, ``unknown``, an obfuscated
identifier) means the chain cannot be trusted: the peer is the answer. Trust nothing by default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from capi_fast._native import DecisionIndex
from capi_fast.errors import ConfigurationError, InvalidIP

__all__ = ["ClientAddress", "Networks", "address_text"]

_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address
HEADERS = ("x-forwarded-for", "forwarded")
_MEMBER = "member"


def _address(text: str) -> _Addr | None:
    """An address from a header entry, or None when it is not one.

    ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80`` and ``2001:db8::1`` are; IPv4-mapped IPv6
    is read as IPv4.
    """
    t = text.strip().strip('"').strip()
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            return None
        t = t[1:end]
    elif t.count(":") == 1:  # IPv4 with a port
        t = t.split(":", 1)[0]
    try:
        a = ipaddress.ip_address(t)
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


def _forwarded_for(values: Iterable[str]) -> list[str]:
    """The ``for=`` of each element of RFC 7239 ``Forwarded`` headers, in order ("" when absent)."""
    out = []
    for value in values:
        for element in value.split(","):
            found = ""
            for pair in element.split(";"):
                name, _, val = pair.partition("=")
                if name.strip().lower() == "for":
                    found = val.strip()
            out.append(found)
    return out


def address_text(text: str) -> str | None:
    """The address an entry names, as text the native index reads; None when it is not one.

    A plain address is returned as written (the index checks it); a port, brackets or quotes
    are taken off first.
    """
    t = text.strip()
    if "%" in t:  # an IPv6 zone (fe80::1%eth0) names an interface, not another address
        t = t.split("%", 1)[0] + ("]" + t.split("]", 1)[1] if "]" in t else "")
    if not t:
        return None
    if '"' in t or "[" in t or t.count(":") == 1 or (t[:7].lower() == "::ffff:" and "." in t):
        found = _address(t)
        return None if found is None else str(found)
    return t


class Networks:
    """Addresses and networks, asked natively "is this address in one of them?".

    Args:
        entries: addresses or networks (``"10.0.0.0/8"``, ``"2001:db8::1"``).
        what: how an entry is named in the error for one that is not an address or network.
    """

    def __init__(self, entries: Iterable[str], what: str) -> None:
        self._index = DecisionIndex([_MEMBER])
        self.count = 0
        for entry in entries:
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except (ValueError, TypeError):
                raise ConfigurationError(f"{what} {entry!r} is not an address or network") from None
            self._index.add(str(net), _MEMBER)
            self.count += 1

    def __bool__(self) -> bool:
        return self.count > 0

    def holds(self, address: str) -> bool | None:
        """Whether ``address`` is in one of the networks; None when it is not an address.

        IPv4-mapped IPv6 is read as IPv4.
        """
        try:
            return self._index.lookup(address) is not None
        except InvalidIP:
            return None


class ClientAddress:
    """Resolves the client's address of a request.

    Args:
        trusted_proxies: addresses or networks of the reverse proxies in front of the app
            (e.g. ``["10.0.0.0/8", "127.0.0.1"]``); ``"unix"`` trusts a request that came
            through a unix socket (it has no peer address). Empty (the default) trusts no header.
        header: ``x-forwarded-for`` (default) or ``forwarded`` (RFC 7239): the one your proxies
            write. Only that one is read, so a client cannot slip the other past them.
    """

    def __init__(self, trusted_proxies: Sequence[str] = (), header: str = "x-forwarded-for") -> None:
        if isinstance(trusted_proxies, str):
            raise ConfigurationError("trusted_proxies must be a list of addresses or networks, not one str")
        header = header.lower()
        if header not in HEADERS:
            raise ConfigurationError(f"header must be one of {HEADERS}, got {header!r}")
        self.unix = "unix" in trusted_proxies
        self._proxies = Networks((p for p in trusted_proxies if p != "unix"), "trusted proxy")
        #: Whether any header can be believed (some proxy, or unix sockets, is trusted).
        self.trusted_any = bool(self._proxies) or self.unix
        self.header = header
        self._trust = self._proxies.holds
        self._peers: dict[str, tuple[str, bool | None]] = {}

    def _peer(self, peer: str) -> tuple[str, bool | None]:
        """``(address text, trusted)`` of a socket peer (trusted None: not an address).

        Peers are few (the proxies themselves, or the clients of a directly exposed app), so
        the answer is remembered; the memory is dropped whenever it reaches 4096 peers.
        """
        known = self._peers.get(peer)
        if known is None:
            text = address_text(peer)
            known = (peer, None) if text is None else (text, self._trust(text))
            if len(self._peers) >= 4096:
                self._peers.clear()
            self._peers[peer] = known
        return known

    def is_trusted_peer(self, peer: str | None) -> bool:
        """Whether ``peer`` (None or "": a unix socket) is one of the trusted proxies."""
        if not peer:
            return self.unix
        return bool(self._peer(peer)[1])

    def resolve(self, peer: str | None, header_values: Iterable[str] = ()) -> str:
        """The client's address, given the socket peer and the values of ``header`` in order.

        A peer of None or "" (a unix socket) is a trusted hop with ``"unix"`` trusted, else the
        answer is "" (no address).
        """
        if not peer:
            peer_text = ""
            if not self.unix:
                return ""
        else:
            peer_text, trusted = self._peer(peer)
            if not trusted:
                return peer_text  # not an address (then the caller's lookup says so), or not a proxy
        values = header_values if isinstance(header_values, list) else list(header_values)
        if self.header == "forwarded":
            entries = _forwarded_for(values)
        elif len(values) == 1 and "," not in values[0]:
            entries = values  # one proxy, one entry: the common case
        else:
            entries = [e for v in values for e in v.split(",")]
        current = peer_text
        for entry in reversed(entries):
            found = address_text(entry)
            hop = None if found is None else self._trust(found)
            if hop is None or found is None:
                return peer_text  # a chain with a hole cannot be trusted
            current = found
            if not hop:
                return current
        return current
