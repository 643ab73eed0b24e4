"""Random sequences of operations on the native index, compared step by step with the reference."""

from __future__ import annotations

import ipaddress
import os
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from capi_fast import DecisionIndex
from capi_fast._native import MappedIndex
from capi_fast.firewall import delta
from capi_fast.reference import ReferenceIndex

T0 = 1_800_000_000.0

# Small pools so that prefixes overlap and collide often.
v4_hosts = st.builds(lambda a, b: f"10.{a}.{b // 8}.{b}", st.integers(0, 3), st.integers(0, 15))
v4_nets = st.builds(lambda h, n: f"{h}/{n}", v4_hosts, st.sampled_from([0, 8, 12, 16, 20, 24, 28, 30, 31, 32]))
v6_hosts = st.builds(
    lambda a, b: str(ipaddress.IPv6Address((0x20010DB8 << 96) | (a << 80) | b)), st.integers(0, 3), st.integers(0, 9)
)
v6_nets = st.builds(lambda h, n: f"{h}/{n}", v6_hosts, st.sampled_from([0, 16, 32, 44, 48, 64, 96, 127, 128]))
mapped = st.builds(lambda h: f"::ffff:{h}", v4_hosts)
mapped_nets = st.builds(lambda h, n: f"::ffff:{h}/{n}", v4_hosts, st.sampled_from([96, 104, 120, 128]))
values = st.one_of(v4_hosts, v4_nets, v6_hosts, v6_nets, mapped, mapped_nets)
addresses = st.one_of(v4_hosts, v6_hosts, mapped)
remediations = st.sampled_from(["ban", "captcha", "mfa", "throttle"])
origins = st.sampled_from(["CAPI", "lists:tor", "cscli"])
ttls = st.one_of(st.none(), st.floats(-5, 400, allow_nan=False), st.integers(1, 50))


class Compare(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.native = DecisionIndex()
        self.held: set[str] = set()  # values added (network starts are looked up too)
        self.exports: dict = {}  # (remediation, family) -> (native ExportBlocks, reference export_until)
        self.ref = ReferenceIndex()
        self.now = T0

    def both(self, name, *args, **kwargs):
        a = getattr(self.native, name)(*args, **kwargs)
        b = getattr(self.ref, name)(*args, **kwargs)
        return a, b

    @rule(value=values, rem=remediations, origin=origins, ttl=ttls)
    def add(self, value, rem, origin, ttl):
        self.held.add(value)
        a, b = self.both("add", value, rem, origin=origin, ttl=ttl, now=self.now)
        assert a == b

    @rule(items=st.lists(st.tuples(values, remediations, ttls, origins), max_size=30))
    def add_many(self, items):
        self.held.update(v for v, *_ in items)
        a, b = self.both("add_many", items, now=self.now)
        assert (a.added, a.refreshed, a.removed, a.normalized) == (b.added, b.refreshed, b.removed, b.normalized)

    @rule(
        adds=st.lists(st.tuples(values, remediations, ttls, origins), max_size=10),
        removes=st.lists(st.tuples(values, st.none() | origins, st.none() | remediations), max_size=10),
    )
    def apply(self, adds, removes):
        a, b = self.both("apply", adds, removes, now=self.now)
        assert (a.added, a.refreshed, a.removed) == (b.added, b.refreshed, b.removed)

    @rule(value=values, origin=st.none() | origins, rem=st.none() | remediations)
    def remove(self, value, origin, rem):
        a, b = self.both("remove", value, origin, rem)
        assert a == b

    @rule(dt=st.floats(0, 120, allow_nan=False))
    def tick(self, dt):
        self.now += dt

    @rule()
    def purge(self):
        a, b = self.both("purge_expired", now=self.now)
        assert a == b

    @rule(ips=st.lists(addresses, min_size=1, max_size=20))
    def lookups(self, ips):
        for ip in ips:
            a, b = self.both("lookup", ip, now=self.now)
            assert a == b, ip
        a, b = self.both("lookup_many", ips, now=self.now)
        assert a == b
        packed = b"".join(ipaddress.ip_address(ip).packed for ip in ips if ":" not in ip)
        a, b = self.both("lookup_many", packed, family=4, now=self.now)
        assert a == b

    @precondition(lambda self: len(self.ref) > 0)
    @rule(family=st.sampled_from([4, 6]), rem=remediations)
    def export(self, family, rem):
        a, b = self.both("export_cidrs", rem, family=family, now=self.now)
        assert a == b
        a, b = self.both("export_until", rem, family=family, now=self.now)
        assert a == b
        # What changed since this export was last taken: native, against the reference's delta.
        before = self.exports.get((rem, family))
        blocks, added, deleted = self.native.export_changes(rem, family, self.now, before and before[0])
        expected = delta({0: before[1] if before else {}}, {0: b})
        assert (added, deleted) == (expected.add.get(0, {}), expected.delete.get(0, {}))
        assert blocks.content() == b and len(blocks) == len(b)
        self.exports[(rem, family)] = (blocks, b)

    @rule(ips=st.lists(addresses, min_size=1, max_size=20), later=st.sampled_from([0, 1, 30, 500]))
    def mapped(self, ips, later):
        # The mapped snapshot answers in place as the index does, now and as decisions expire.
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.snap")
            self.native.save_mapped(path, b"m", now=self.now)
            m = MappedIndex(path)
        held = [n.split("/")[0] for n in self.held]
        for ip in ips + held:
            assert m.lookup(ip, now=self.now + later) == self.native.lookup(ip, now=self.now + later), ip
        assert m.to_index().lookup_many(ips, now=self.now) == self.native.lookup_many(ips, now=self.now)

    @rule()
    def active_counts(self):
        a, b = self.both("active_counts", now=self.now)
        assert a == b

    @invariant()
    def same_size(self):
        assert len(self.native) == len(self.ref)
        assert self.native.codes == self.ref.codes


Compare.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCompare = Compare.TestCase
