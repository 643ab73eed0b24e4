"""Client address behind proxies: headers are read only from trusted peers, never spoofable."""

from __future__ import annotations

import pytest

from capi_fast.client_address import ClientAddress
from capi_fast.errors import ConfigurationError

PROXIES = ["10.0.0.0/8", "2001:db8:ffff::/48"]


def test_by_default_no_header_is_trusted():
    assert ClientAddress().resolve("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9"


def test_a_header_from_an_untrusted_peer_is_ignored():
    resolver = ClientAddress(PROXIES)
    assert resolver.resolve("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9", "the attacker is the peer"


def test_trusted_hops_are_walked_from_the_right():
    resolver = ClientAddress(PROXIES)
    assert resolver.resolve("10.0.0.2", ["198.51.100.1, 10.0.0.1"]) == "198.51.100.1"
    assert resolver.resolve("10.0.0.2", ["198.51.100.1", "10.0.0.1"]) == "198.51.100.1", "several header lines"


def test_a_spoofed_entry_left_of_the_real_client_is_never_reached():
    # The client sent "X-Forwarded-For: 1.1.1.1"; the trusted proxy appended the real address.
    resolver = ClientAddress(PROXIES)
    assert resolver.resolve("10.0.0.1", ["1.1.1.1, 203.0.113.9"]) == "203.0.113.9"


def test_a_chain_stops_at_its_first_untrusted_hop():
    resolver = ClientAddress(PROXIES)
    # 192.0.2.50 is not ours: whatever it claims (left of it) is not believed.
    assert resolver.resolve("10.0.0.1", ["198.51.100.1, 192.0.2.50"]) == "192.0.2.50"


def test_every_hop_trusted_gives_the_leftmost():
    assert ClientAddress(PROXIES).resolve("10.0.0.3", ["10.0.0.1, 10.0.0.2"]) == "10.0.0.1"


@pytest.mark.parametrize("header", ["not-an-ip", "198.51.100.1, , 10.0.0.1", "unknown", "999.1.1.1"])
def test_malformed_headers_fall_back_to_the_peer(header):
    assert ClientAddress(PROXIES).resolve("10.0.0.2", [header]) == "10.0.0.2"


def test_ports_brackets_and_mapped_addresses():
    resolver = ClientAddress(PROXIES)
    assert resolver.resolve("::ffff:10.0.0.2", ["198.51.100.1:4711"]) == "198.51.100.1"
    assert resolver.resolve("2001:db8:ffff::1", ["[2001:db8::7]:443"]) == "2001:db8::7"
    assert resolver.resolve("2001:db8:ffff::1", ["2001:db8::8"]) == "2001:db8::8"


def test_rfc7239_forwarded():
    resolver = ClientAddress(PROXIES, header="forwarded")
    assert resolver.resolve("10.0.0.2", ['for=198.51.100.1;proto=https, for="10.0.0.1"']) == "198.51.100.1"
    assert resolver.resolve("10.0.0.2", ['for="[2001:db8::9]:80"']) == "2001:db8::9"
    assert resolver.resolve("10.0.0.2", ["for=_hidden"]) == "10.0.0.2", "obfuscated: the peer"
    assert resolver.resolve("10.0.0.2", ["proto=https"]) == "10.0.0.2", "no for=: the peer"
    assert resolver.resolve("203.0.113.9", ["for=198.51.100.1"]) == "203.0.113.9", "untrusted peer"


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigurationError):
        ClientAddress("10.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ClientAddress(["not a network"])
    with pytest.raises(ConfigurationError):
        ClientAddress(PROXIES, header="x-real-ip")
