"""Keeping a packet filter's sets equal to what the engine answers, by deltas.

``FirewallSync`` asks the engine's index for the fewest CIDRs answering each remediation it
keeps (``ban`` by default; ``captcha`` into a set of its own if wanted), per family, compares
them with what it last applied, and hands the backend one transaction of element additions and
deletions (``capi_fast.nftables``, ``capi_fast.ipset``). The first sync, and any sync after the backend failed or the
kernel's sets were found changed, is a full load: the sets are created if missing and refilled
in the same transaction, so no packet ever meets an empty set. Allowlisted addresses answer
``bypass`` in the index, so they never appear in a ban set; ranges stay whole and merged.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from capi_fast._native import DecisionIndex, ExportBlocks
from capi_fast.errors import ConfigurationError, FirewallError
from capi_fast.export import check_set_name

__all__ = [
    "ACTIONS",
    "HOOKS",
    "Backend",
    "Content",
    "Delta",
    "FirewallSync",
    "SyncReport",
    "check_options",
    "run_tool",
]

log = logging.getLogger("capi_fast.firewall")

FAMILIES = (4, 6)
#: Where a backend's rules can hook, and what they do to a banned source.
HOOKS = ("input", "forward")
ACTIONS = ("drop", "reject")


def run_tool(
    tool: Sequence[str], args: Sequence[str], script: str | None = None, check: bool = True
) -> tuple[int, str]:
    """Runs a packet-filter tool (``tool``: the command, maybe under ``ip netns exec NS``).

    Returns its exit code and output. Raises ``FirewallError`` when it cannot be run, and with
    ``check`` when it fails (with the first lines of what it said).
    """
    name = tool[-1] if tool else "?"
    try:
        done = subprocess.run(
            [*tool, *args], input=None if script is None else script.encode(), capture_output=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FirewallError(f"could not run {' '.join(tool)}: {e}") from None
    if check and done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise FirewallError(f"{name} failed ({done.returncode}): {' / '.join(why[:3]) or 'no message'}")
    return done.returncode, done.stdout.decode(errors="replace")


def check_options(names: Sequence[str], hooks: Sequence[str], action: str) -> None:
    """The checks every backend makes of its set names, hooks and action (``ConfigurationError``)."""
    for name in names:
        if not isinstance(name, str):
            raise ConfigurationError(f"set and table names must be strings, got {name!r}")
        try:
            check_set_name(name)
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
    if isinstance(hooks, str) or any(h not in HOOKS for h in hooks):
        raise ConfigurationError(f"hooks must be a list of {HOOKS}, got {hooks!r}")
    if action not in ACTIONS:
        raise ConfigurationError(f"action must be one of {ACTIONS}, got {action!r}")


#: (remediation, family) -> that set's CIDRs, each with when its decisions end (Unix seconds;
#: None: never, or a backend that does not time elements out).
Content = dict[tuple[str, int], dict[str, float | None]]


@dataclass(frozen=True)
class Delta:
    """What one sync changes, per (remediation, family).

    CIDRs to add with their ends, and CIDRs to delete with the ends they had. A CIDR whose end
    changed is in both (deleted, then added again).
    """

    add: dict[tuple[str, int], dict[str, float | None]] = field(default_factory=dict)
    delete: dict[tuple[str, int], dict[str, float | None]] = field(default_factory=dict)

    @property
    def added(self) -> int:
        """Elements added."""
        return sum(map(len, self.add.values()))

    @property
    def deleted(self) -> int:
        """Elements deleted."""
        return sum(map(len, self.delete.values()))


def delta(old: Content, new: Content) -> Delta:
    """The elements to delete and add to turn ``old`` into ``new``.

    ``DecisionIndex.export_changes`` computes the same natively; this is its reference.
    """
    add: dict[tuple[str, int], dict[str, float | None]] = {}
    delete: dict[tuple[str, int], dict[str, float | None]] = {}
    for key in new.keys() | old.keys():
        before, after = old.get(key, {}), new.get(key, {})
        gone = {c: end for c, end in before.items() if c not in after or after[c] != end}
        came = {c: end for c, end in after.items() if c not in before or before[c] != end}
        if came:
            add[key] = came
        if gone:
            delete[key] = gone
    return Delta(add, delete)


class Backend(Protocol):
    """A packet filter holding one set per (remediation, family)."""

    #: Whether the backend gives elements a timeout from their end (``Content``'s values), so
    #: they leave the kernel when their decisions expire even if nothing syncs any more.
    timeouts: bool
    #: Seconds a timed-out element stays past its end: while syncs come more often than that,
    #: the sync deletes every element itself (the kernel never removes one under it, which would
    #: fail the transaction's delete or leave a stale timeout on a re-add).
    grace: float

    def load(self, content: Content, now: float | None = None) -> None:
        """Creates what is missing and replaces every set's content, in one transaction.

        ``now`` is the time ``content``'s ends are counted from (default: the time).
        """

    def apply(self, change: Delta, content: Callable[[], Content], now: float | None = None) -> None:
        """Adds and deletes elements, in one transaction.

        ``content()`` gives what the sets then hold, for a backend that must rebuild a set
        instead (to grow it).
        """

    def read(self, now: float | None = None) -> Content:
        """What the kernel holds now (with each element's end where it has one)."""

    def remove(self) -> None:
        """Removes everything the backend created."""


@dataclass(frozen=True)
class SyncReport:
    """What a sync did."""

    full: bool
    added: int
    deleted: int
    elements: int
    seconds: float


class FirewallSync:
    """Keeps a backend's sets equal to the engine's answers.

    Args:
        index: where the answers come from (``engine.index``; read at each sync, so an engine
            that swaps its index is followed when given as a callable).
        backend: the packet filter (``NftablesBackend``).
        remediations: the remediations that get a set (default ``ban``).
        clock: Unix time source (which decisions are in force).
    """

    def __init__(
        self,
        index: DecisionIndex | Callable[[], DecisionIndex],
        backend: Backend,
        remediations: Sequence[str] = ("ban",),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(remediations, str) or not remediations:
            raise ConfigurationError("remediations must be a non-empty list, e.g. ['ban']")
        self._index = index if callable(index) else (lambda: index)
        self.backend = backend
        self.remediations = tuple(remediations)
        self.clock = clock
        self._exports: dict[tuple[str, int], ExportBlocks] | None = None  # None: the next sync loads whole
        self._synced_at: float | None = None

    @property
    def applied(self) -> Content | None:
        """What the last sync put in the sets (None before one, or after a failure)."""
        return None if self._exports is None else _content(self._exports)

    def wanted(self) -> Content:
        """What the sets should hold now (with each CIDR's end when the backend times elements out)."""
        ix, now = self._index(), self.clock()
        return {
            (r, f): ix.export_changes(r, f, now, None, self.backend.timeouts)[0].content()
            for r in self.remediations
            for f in FAMILIES
        }

    def sync(self, full: bool = False) -> SyncReport:
        """One transaction bringing the sets to ``wanted()``: a full load first, then deltas.

        The comparison with the last sync is native (``DecisionIndex.export_changes``): only
        what changed becomes Python objects. A failure raises the backend's error and makes the
        next sync a full load.
        """
        started, now, ix = time.perf_counter(), self.clock(), self._index()
        until = self.backend.timeouts
        old, self._exports = self._exports, None
        whole = full or old is None
        exports: dict[tuple[str, int], ExportBlocks] = {}
        change = Delta()
        for key in ((r, f) for r in self.remediations for f in FAMILIES):
            previous = None if whole or old is None else old.get(key)
            blocks, added, deleted = ix.export_changes(key[0], key[1], now, previous, until)
            exports[key] = blocks
            if added:
                change.add[key] = added
            if deleted:
                change.delete[key] = deleted

        def content() -> Content:
            return _content(exports)

        # Syncs further apart than half the grace: the kernel may have timed elements out (its
        # clock counts from each transaction, seconds after ``now`` for a big one), so a delta's
        # deletes could miss; a full load flushes instead and cannot.
        lapsed = until and self._synced_at is not None and now - self._synced_at >= self.backend.grace / 2
        full_load = whole or lapsed
        if full_load:
            self.backend.load(content(), now)
        elif change.add or change.delete:
            self.backend.apply(change, content, now)
        self._exports, self._synced_at = exports, now
        return SyncReport(
            full=full_load,
            added=change.added,
            deleted=change.deleted,
            elements=sum(map(len, exports.values())),
            seconds=time.perf_counter() - started,
        )

    def check(self) -> bool:
        """Whether the kernel holds exactly what was last applied.

        False before any sync, or when the sets cannot be read; the next sync then loads
        everything.
        """
        last = self.applied
        if last is None:
            return False
        try:
            kernel = self.backend.read(self.clock())
        except FirewallError as e:
            log.warning("reading the packet filter's sets back failed (%s): the next sync loads them whole", e)
            self._exports = None
            return False
        same = all(set(kernel.get(key, {})) == set(last.get(key, {})) for key in kernel.keys() | last.keys())
        if not same:
            self._exports = None
        return same


def _content(exports: dict[tuple[str, int], ExportBlocks]) -> Content:
    """The sets' content an export gives (CIDR -> end, per set)."""
    return {key: blocks.content() for key, blocks in exports.items()}
