"""The firewall's pure rules: deltas between contents, deletes left to the kernel's timers, and
the nft scripts they become (no root needed; the namespace tests run them in a kernel)."""

from __future__ import annotations

from capi_fast.firewall import Delta, delta
from capi_fast.nftables import MAX_TIMEOUT, NftablesBackend

BAN4 = ("ban", 4)


def test_a_changed_end_is_a_delete_and_an_add():
    old = {BAN4: {"192.0.2.1/32": 100.0, "192.0.2.2/32": None, "192.0.2.8/29": 50.0}}
    new = {BAN4: {"192.0.2.1/32": 200.0, "192.0.2.2/32": None, "192.0.2.3/32": 70.0}}
    change = delta(old, new)
    assert change.delete == {BAN4: {"192.0.2.1/32": 100.0, "192.0.2.8/29": 50.0}}
    assert change.add == {BAN4: {"192.0.2.1/32": 200.0, "192.0.2.3/32": 70.0}}
    assert (change.added, change.deleted) == (2, 2)
    assert delta(new, new) == Delta()


def test_nft_scripts_carry_timeouts_counted_from_now():
    b = NftablesBackend(hooks=["input"], grace=30)
    content = {
        BAN4: {"192.0.2.1/32": 1000.5, "192.0.2.2/32": None, "198.51.100.0/24": 1000.0 + MAX_TIMEOUT + 1},
        ("ban", 6): {"2001:db8::/32": 1060.0},
    }
    script = b.load_script(content, now=1000.0)
    assert "add set inet capi_fast ban_v4 { type ipv4_addr; flags timeout; }" in script
    assert "add set inet capi_fast ban_v6_nets { type ipv6_addr; flags interval,timeout; }" in script
    assert "add element inet capi_fast ban_v4 { 192.0.2.1 timeout 31s, 192.0.2.2 }" in script, "end + grace"
    assert "add element inet capi_fast ban_v4_nets { 198.51.100.0/24 }" in script, "over a year: none"
    assert "add element inet capi_fast ban_v6_nets { 2001:db8::/32 timeout 90s }" in script
    change = Delta(add={BAN4: {"192.0.2.9/32": 1099.2}}, delete={BAN4: {"192.0.2.1/32": 1000.5}})
    assert b.delta_script(change, now=1000.0).splitlines() == [
        "delete element inet capi_fast ban_v4 { 192.0.2.1 }",
        "add element inet capi_fast ban_v4 { 192.0.2.9 timeout 130s }",
    ]
    plain = NftablesBackend(timeouts=False).load_script(content, now=1000.0)
    assert "timeout" not in plain and "flags interval;" in plain
