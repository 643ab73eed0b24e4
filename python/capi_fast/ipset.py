"""The ipset backend of ``FirewallSync``: ``hash:net`` sets, iptables rules, swaps for rebuilds.

Each (remediation, family) has a set ``<prefix>_<remediation>_v4`` / ``_v6`` of type
``hash:net`` (every prefix length; ``0.0.0.0/0`` and ``::/0``, which ``hash:net`` refuses, are
stored as their two halves), sized from its count (``maxelem`` twice the count, at least
65,536). With ``hooks``, an iptables/ip6tables rule per hook (``INPUT``, ``FORWARD``) drops (or
rejects) sources in the ``ban`` sets, optionally after a ``LOG`` rule; the rules are inserted
first in their chain on load when missing and deleted by ``remove``.

- ``load`` fills a new set under a temporary name and ``swap``s it with the live one, which the
  kernel does atomically: the live set is never empty or missing, whatever its size, and an
  existing set of the same name (of another size) is never a failure.
- ``apply`` deletes and adds elements through one ``ipset restore``; a set that would outgrow
  its ``maxelem`` is rebuilt by a swap instead. ipset has no multi-command transaction: if a
  restore fails midway, ``FirewallSync`` loads everything again on its next sync.
- ``remove`` deletes the rules, then the sets.

``ipset``, ``iptables`` and ``ip6tables`` are the commands run (prefix them with
``ip netns exec NS`` to work in a network namespace, as the tests do).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from capi_fast.errors import ConfigurationError, FirewallError
from capi_fast.firewall import FAMILIES, Content, Delta, check_options, run_tool

__all__ = ["IpsetBackend"]

_HOOKS = {"input": "INPUT", "forward": "FORWARD"}
_ACTIONS = {"drop": "DROP", "reject": "REJECT"}
_MIN_MAXELEM = 65536
_NAME_MAX = 31


def _entries(cidrs: Iterable[str]) -> list[str]:
    """``hash:net`` entries: a /0 becomes its two /1 halves, a host its address."""
    out = []
    for c in cidrs:
        if c == "0.0.0.0/0":
            out += ["0.0.0.0/1", "128.0.0.0/1"]
        elif c == "::/0":
            out += ["::/1", "8000::/1"]
        else:
            out.append(c.removesuffix("/32") if "." in c else c.removesuffix("/128"))
    return out


class IpsetBackend:
    """``hash:net`` sets (and optionally iptables rules) this backend owns.

    Args:
        prefix: the start of every set name.
        remediations: the remediations that get sets (as ``FirewallSync``'s).
        hooks: ``input`` and/or ``forward``: a rule per hook and family for the ``ban`` sets;
            empty: sets only (your rules use them).
        action: ``drop`` or ``reject``.
        log_prefix: a ``LOG`` rule with this prefix before each drop rule (None: no logging).
        ipset: how to run ``ipset`` (e.g. ``("ip", "netns", "exec", "fw", "ipset")``).
        iptables: how to run ``iptables``.
        ip6tables: how to run ``ip6tables``.
    """

    def __init__(
        self,
        prefix: str = "capi_fast",
        remediations: Sequence[str] = ("ban",),
        *,
        hooks: Sequence[str] = ("input",),
        action: str = "drop",
        log_prefix: str | None = None,
        ipset: Sequence[str] = ("ipset",),
        iptables: Sequence[str] = ("iptables",),
        ip6tables: Sequence[str] = ("ip6tables",),
    ) -> None:
        check_options((prefix, *remediations), hooks, action)
        longest = max(len(self._name(prefix, r, 4, True)) for r in remediations)
        if longest > _NAME_MAX:
            raise ConfigurationError(f"set names would be {longest} characters; ipset takes {_NAME_MAX}")
        if log_prefix is not None and (not log_prefix.isprintable() or len(log_prefix) > 29):
            raise ConfigurationError("log_prefix must be printable and at most 29 characters (iptables' limit)")
        self.prefix = prefix
        self.remediations = tuple(remediations)
        self.hooks = tuple(hooks)
        self.action = action
        self.log_prefix = log_prefix
        self._ipset = tuple(ipset)
        self._iptables = {4: tuple(iptables), 6: tuple(ip6tables)}
        self.maxelem: dict[tuple[str, int], int] = {}
        self.sizes: dict[tuple[str, int], int] = {}  # entries in each live set, as this backend made it

    @staticmethod
    def _name(prefix: str, remediation: str, family: int, tmp: bool = False) -> str:
        return f"{prefix}_{remediation}_v{family}" + ("_tmp" if tmp else "")

    def set_name(self, remediation: str, family: int) -> str:
        """The live set of ``remediation`` and ``family``."""
        return self._name(self.prefix, remediation, family)

    # -- running the tools -------------------------------------------------------------------------

    def _restore(self, lines: list[str]) -> None:
        if lines:
            run_tool(self._ipset, ["restore"], "\n".join(lines) + "\n")

    def _rules(self, family: int) -> list[list[str]]:
        """The rules this backend owns in one family, as iptables arguments after the chain."""
        match = ["-m", "set", "--match-set", self.set_name("ban", family), "src"]
        rules = []
        for hook in self.hooks:
            chain = _HOOKS[hook]
            if self.log_prefix is not None:
                rules.append([chain, *match, "-j", "LOG", "--log-prefix", self.log_prefix])
            rules.append([chain, *match, "-j", _ACTIONS[self.action]])
        return rules

    # -- the backend -------------------------------------------------------------------------------

    def _rebuild(self, rem: str, fam: int, cidrs: Iterable[str]) -> list[str]:
        """``ipset restore`` lines filling a new set and swapping it in."""
        entries = _entries(sorted(cidrs))
        maxelem = max(_MIN_MAXELEM, 2 * len(entries))
        live, tmp = self.set_name(rem, fam), self._name(self.prefix, rem, fam, True)
        kind = f"hash:net family {'inet' if fam == 4 else 'inet6'}"
        # ``create -exist`` still fails when the live set differs (another maxelem): the live set is
        # only created when missing, and takes the new one's size with the swap.
        exists = run_tool(self._ipset, ["list", "-name", live], check=False)[0] == 0
        lines = [] if exists else [f"create {live} {kind} maxelem {maxelem}"]
        lines.append(f"create {tmp} {kind} maxelem {maxelem}")
        lines += [f"add {tmp} {e}" for e in entries]
        lines += [f"swap {tmp} {live}", f"destroy {tmp}"]
        self.maxelem[(rem, fam)] = maxelem
        self.sizes[(rem, fam)] = len(entries)
        return lines

    #: ipset's sets are made without timeouts: a sync deletes expired elements.
    timeouts = False
    grace = 0.0

    def load(self, content: Content, now: float | None = None) -> None:
        """Replaces every set's content by a swap, then makes sure the rules are there."""
        for rem in self.remediations:
            for fam in FAMILIES:
                run_tool(self._ipset, ["destroy", self._name(self.prefix, rem, fam, True)], check=False)
                self._restore(self._rebuild(rem, fam, content.get((rem, fam), ())))
        for fam in FAMILIES:
            wanted = self._rules(fam) if "ban" in self.remediations else []
            for rule in reversed(wanted):
                code, _ = run_tool(self._iptables[fam], ["-C", *rule], check=False)
                if code != 0:
                    run_tool(self._iptables[fam], ["-I", rule[0], "1", *rule[1:]])
            # Rules of ours made with other settings (another action, prefix or hook) go.
            self._delete_rules(fam, keep=[" ".join(r) for r in wanted])

    def apply(self, change: Delta, content: Callable[[], Content], now: float | None = None) -> None:
        """Deletes and adds elements (a set that would outgrow ``maxelem`` is rebuilt instead)."""
        lines: list[str] = []
        for key in sorted(change.add.keys() | change.delete.keys()):
            rem, fam = key
            if rem not in self.remediations:
                raise ConfigurationError(f"this backend has no set for {rem!r}")
            added, deleted = _entries(change.add.get(key, ())), _entries(change.delete.get(key, ()))
            size = self.sizes.get(key, 0) + len(added) - len(deleted)
            if size > self.maxelem.get(key, 0):
                run_tool(self._ipset, ["destroy", self._name(self.prefix, rem, fam, True)], check=False)
                lines += self._rebuild(rem, fam, content().get(key, ()))
                continue
            self.sizes[key] = size
            live = self.set_name(rem, fam)
            lines += [f"del {live} {e} -exist" for e in deleted]
            lines += [f"add {live} {e} -exist" for e in added]
        self._restore(lines)

    def read(self, now: float | None = None) -> Content:
        """The sets' members as the kernel holds them (a /0 read back whole)."""
        out: Content = {}
        for rem in self.remediations:
            for fam in FAMILIES:
                name = self.set_name(rem, fam)
                _, text = run_tool(self._ipset, ["save", name])
                nets = []
                for line in text.splitlines():
                    parts = line.split()
                    if len(parts) >= 3 and parts[0] == "add" and parts[1] == name:
                        nets.append(ipaddress.ip_network(parts[2]))
                out[(rem, fam)] = dict.fromkeys(str(n) for n in ipaddress.collapse_addresses(nets))  # type: ignore[type-var]
        return out

    def _delete_rules(self, fam: int, keep: Sequence[str] = ()) -> list[str]:
        """Deletes the rules naming this backend's sets but ``keep``; the ones that would not go."""
        ours = [f"--match-set {self.set_name(rem, fam)} src" for rem in self.remediations]
        left = []
        for chain in _HOOKS.values():
            code, listing = run_tool(self._iptables[fam], ["-S", chain], check=False)
            rules = [line for line in listing.splitlines() if line.startswith(f"-A {chain} ")] if code == 0 else []
            # By position, from the last: a rule's text may not survive a round trip through a shell.
            for number in range(len(rules), 0, -1):
                line = rules[number - 1]
                if any(m in line for m in ours) and not any(_same_rule(line, k) for k in keep):
                    if run_tool(self._iptables[fam], ["-D", chain, str(number)], check=False)[0] != 0:
                        left.append(line)
        return left

    def remove(self) -> None:
        """Deletes the rules this backend made, then its sets; raises if something stays."""
        left = [line for fam in FAMILIES for line in self._delete_rules(fam)]
        for rem in self.remediations:
            for fam in FAMILIES:
                for tmp in (False, True):
                    name = self._name(self.prefix, rem, fam, tmp)
                    if run_tool(self._ipset, ["list", "-name", name], check=False)[0] != 0:
                        continue
                    if run_tool(self._ipset, ["destroy", name], check=False)[0] != 0:
                        left.append(f"set {name}")
        if left:
            raise FirewallError(f"could not remove: {'; '.join(left)}")


def _same_rule(listed: str, wanted: str) -> bool:
    """Whether an ``iptables -S`` line is the rule ``wanted`` (``CHAIN args...``), quotes aside.

    iptables lists the options it filled in after ours (``REJECT --reject-with ...``).
    """
    want = f"-A {wanted}".replace('"', "").split()
    return listed.replace('"', "").split()[: len(want)] == want
