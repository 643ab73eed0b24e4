"""The nftables backend of ``FirewallSync``: one table, interval sets, optionally its own rules.

Everything lives in one table (``inet capi_fast`` by default) that this backend owns. Each
(remediation, family) has two sets: ``<remediation>_v4`` holds single addresses (a hash set,
where adding or deleting an element costs the same at a million elements as at ten) and
``<remediation>_v4_nets`` holds ranges (``flags interval``, so ranges stay ranges). nft rebuilds
an interval set's whole interval tree in user space for every change, so a delta of 1,000
addresses into one interval set of 100,000 took 155 s here; kept apart, the interval sets only
hold the ranges (a few thousand in the community blocklist). With ``hooks``, a base chain per
hook drops (or rejects) packets from the ``ban`` sets, with an optional log prefix. Other
remediations' sets (say ``captcha``) are for rules of your own.

With ``timeouts`` (the default), every element carries a timeout: the time left until the last
of its decisions expires (``DecisionIndex.export_until``). The kernel then removes it on its own
``grace`` seconds after that moment (120 by default), even when the daemon is stopped or cannot
reach its source; an element whose decisions never expire, or last more than a year, has none.
While syncs come more often than the grace, each deletes expired elements itself, so the kernel
never removes one under a transaction (``FirewallSync`` loads whole after a longer gap). A
changed end is a delete and an add in the same transaction.

Every change is one ``nft -f`` transaction, which the kernel applies whole or not at all:

- ``load`` (start, or after a failure) creates what is missing, flushes and refills the sets,
  and rewrites this backend's own chains (``input``, ``forward``), in one transaction: there is
  no moment with an empty or missing set, and chains of your own in the table stay;
- ``apply`` deletes and adds elements;
- ``remove`` deletes the table.

``command`` is how ``nft`` is run (``("ip", "netns", "exec", "ns1", "nft")`` runs it in a
network namespace, as the tests do).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from capi_fast.errors import ConfigurationError, FirewallError
from capi_fast.firewall import FAMILIES, HOOKS, Content, Delta, check_options, run_tool

__all__ = ["NftablesBackend"]

_CHUNK = 4096
#: The longest timeout given to an element (a year); longer-lived ones get none.
MAX_TIMEOUT = 365 * 86400


def _canonical(element: Any) -> str | None:
    """A CIDR string from an element of ``nft -j list set`` (None for a shape it cannot be)."""
    if isinstance(element, dict) and "elem" in element:
        element = element["elem"].get("val")
    if isinstance(element, str):
        net = ipaddress.ip_network(element)
    elif isinstance(element, dict) and "prefix" in element:
        net = ipaddress.ip_network(f"{element['prefix']['addr']}/{element['prefix']['len']}")
    else:
        return None
    return str(net)


class NftablesBackend:
    """Sets (and optionally drop rules) in an nftables table this backend owns.

    Args:
        table: the ``inet`` table's name.
        remediations: the remediations that get sets (as ``FirewallSync``'s).
        hooks: ``input`` and/or ``forward``: a base chain per hook dropping the ``ban`` sets'
            sources; empty: sets only (your rules use them).
        action: ``drop`` or ``reject``.
        priority: the chains' priority (default -10: before the ``filter`` table's 0).
        log_prefix: log matched packets with this prefix (None: no logging).
        timeouts: give each element a timeout from its decisions' expiry (sets get ``flags
            timeout``); False: elements stay until a sync deletes them.
        grace: seconds an element outlives its decisions in the kernel (at least a few sync
            intervals: the daemon uses three refresh intervals, 120 s at least).
        command: how to run ``nft``.
    """

    def __init__(
        self,
        table: str = "capi_fast",
        remediations: Sequence[str] = ("ban",),
        *,
        hooks: Sequence[str] = ("input",),
        action: str = "drop",
        priority: int = -10,
        log_prefix: str | None = None,
        timeouts: bool = True,
        grace: float = 120.0,
        command: Sequence[str] = ("nft",),
    ) -> None:
        check_options((table, *remediations), hooks, action)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ConfigurationError(f"priority must be an integer, got {priority!r}")
        if log_prefix is not None and (
            not log_prefix.isprintable() or any(c in log_prefix for c in '"$\\') or len(log_prefix.encode()) > 64
        ):
            raise ConfigurationError("log_prefix must be printable, without '\"', '$' or '\\', at most 64 bytes")
        self.table = table
        self.remediations = tuple(remediations)
        self.hooks = tuple(hooks)
        self.action = action
        self.priority = priority
        self.log_prefix = log_prefix
        self.timeouts = bool(timeouts)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 1 <= grace <= 30 * 86400:
            raise ConfigurationError(f"grace must be between 1 s and 30 days, got {grace!r}")
        self.grace = float(grace)
        self.command = tuple(command)

    def _set(self, remediation: str, family: int, nets: bool = False) -> str:
        return f"{remediation}_v{family}" + ("_nets" if nets else "")

    def _timeout(self, end: float | None, now: float) -> str:
        """`` timeout Ns`` for an element ending at ``end`` (empty: none)."""
        if not self.timeouts or end is None or end - now > MAX_TIMEOUT:
            return ""
        return f" timeout {max(1, math.ceil(end - now + self.grace))}s"

    # -- scripts (pure) --------------------------------------------------------------------------

    def _declare(self, table: str, rem: str, family: int, nets: bool) -> str:
        """The ``add set`` line of one set (its type and flags)."""
        flags = ",".join((["interval"] if nets else []) + (["timeout"] if self.timeouts else []))
        spec = f"type ipv{family}_addr;" + (f" flags {flags};" if flags else "")
        return f"add set {table} {self._set(rem, family, nets)} {{ {spec} }}"

    def load_script(self, content: Content, now: float | None = None) -> str:
        """The transaction that creates what is missing and refills every set.

        The table is not deleted (a chain of your own in it, using the sets, stays); this
        backend's chains (``input``, ``forward``) are flushed and refilled, or deleted when
        their hook is no longer wanted. ``now`` (default: the time) is what timeouts count from.
        """
        now = time.time() if now is None else now
        t = f"inet {self.table}"
        lines = [f"add table {t}"]
        for rem in self.remediations:
            for fam in FAMILIES:
                for nets in (False, True):
                    lines += [self._declare(t, rem, fam, nets), f"flush set {t} {self._set(rem, fam, nets)}"]
        log = f'log prefix "{self.log_prefix}" ' if self.log_prefix is not None else ""
        for hook in HOOKS:
            base = f"type filter hook {hook} priority {self.priority}; policy accept;"
            lines += [f"add chain {t} {hook} {{ {base} }}", f"flush chain {t} {hook}"]
            if hook not in self.hooks or "ban" not in self.remediations:
                lines.append(f"delete chain {t} {hook}")
                continue
            for fam, ip in ((4, "ip"), (6, "ip6")):
                for nets in (False, True):
                    match = f"{ip} saddr @{self._set('ban', fam, nets)}"
                    lines.append(f"add rule {t} {hook} {match} {log}{self.action}")
        for (rem, fam), cidrs in sorted(content.items()):
            lines.extend(self._elements("add", rem, fam, dict(sorted(cidrs.items())), now))
        return "\n".join(lines) + "\n"

    def redeclare_script(self, existing: Iterable[str]) -> str:
        """The transaction that deletes this backend's chains and its ``existing`` sets.

        ``load`` puts it before its own script, in the same transaction, when a set exists with
        other flags (``timeouts`` changed): nft cannot change a set's flags in place.
        """
        t = f"inet {self.table}"
        lines = [f"add table {t}"]
        for hook in HOOKS:
            lines += [f"add chain {t} {hook}", f"delete chain {t} {hook}"]
        ours = {self._set(r, f, n) for r in self.remediations for f in FAMILIES for n in (False, True)}
        lines += [f"delete set {t} {name}" for name in sorted(ours.intersection(existing))]
        return "\n".join(lines) + "\n"

    def delta_script(self, change: Delta, now: float | None = None) -> str:
        """The transaction that deletes, then adds, elements."""
        now = time.time() if now is None else now
        lines: list[str] = []
        for (rem, fam), cidrs in sorted(change.delete.items()):
            lines.extend(self._elements("delete", rem, fam, cidrs, now))
        for (rem, fam), added in sorted(change.add.items()):
            lines.extend(self._elements("add", rem, fam, added, now))
        return "\n".join(lines) + "\n"

    def _elements(self, verb: str, rem: str, fam: int, ends: Mapping[str, float | None], now: float) -> Iterable[str]:
        """``verb element`` lines, hosts (without /32 or /128) to the hash set, ranges to the other.

        Added elements carry their timeouts.
        """
        if rem not in self.remediations:
            raise ConfigurationError(f"this backend has no set for {rem!r}")
        full = "/32" if fam == 4 else "/128"
        hosts: list[str] = []
        nets: list[str] = []
        for cidr, end in ends.items():
            host = cidr.endswith(full)
            text = cidr[: -len(full)] if host else cidr
            if verb == "add":
                text += self._timeout(end, now)
            (hosts if host else nets).append(text)
        for is_nets, items in ((False, hosts), (True, nets)):
            name = self._set(rem, fam, is_nets)
            for i in range(0, len(items), _CHUNK):
                yield f"{verb} element inet {self.table} {name} {{ {', '.join(items[i : i + _CHUNK])} }}"

    # -- I/O ---------------------------------------------------------------------------------------

    def _run(self, args: Sequence[str], script: str | None = None) -> str:
        return run_tool(self.command, args, script)[1]

    def load(self, content: Content, now: float | None = None) -> None:
        """Creates what is missing, refills the sets and rewrites the chains, in one transaction.

        A set declared with other flags (``timeouts`` changed since) is deleted and declared
        anew in that transaction; that fails, with nft's message, while a rule of yours uses it.
        """
        script = self.load_script(content, now)
        try:
            self._run(["-f", "-"], script)
        except FirewallError as e:
            if "File exists" not in str(e):
                raise
            listing = orjson.loads(self._run(["-j", "list", "table", "inet", self.table]))
            existing = [i["set"].get("name") for i in listing.get("nftables", []) if "set" in i]
            self._run(["-f", "-"], self.redeclare_script(existing) + script)

    def apply(self, change: Delta, content: Callable[[], Content] | None = None, now: float | None = None) -> None:
        """Deletes and adds elements, in one transaction."""
        self._run(["-f", "-"], self.delta_script(change, now))

    def read(self, now: float | None = None) -> Content:
        """The sets' elements as the kernel holds them, with when the kernel will drop each."""
        now = time.time() if now is None else now
        out: Content = {}
        for rem in self.remediations:
            for fam in FAMILIES:
                elements: dict[str, float | None] = {}
                for nets in (False, True):
                    name = self._set(rem, fam, nets)
                    doc = orjson.loads(self._run(["-j", "list", "set", "inet", self.table, name]))
                    for item in doc.get("nftables", []):
                        for element in item.get("set", {}).get("elem", []):
                            cidr = _canonical(element)
                            if cidr is None:
                                raise FirewallError(f"unexpected element in set {name}: {element!r}")
                            expires = element.get("elem", {}).get("expires") if isinstance(element, dict) else None
                            elements[cidr] = now + expires if isinstance(expires, int | float) else None
                out[(rem, fam)] = elements
        return out

    def remove(self) -> None:
        """Deletes the table with its sets, chains and rules (nothing if it is not there)."""
        t = f"inet {self.table}"
        self._run(["-f", "-"], f"add table {t}\ndelete table {t}\n")
