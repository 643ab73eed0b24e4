"""Type stubs of the native core ``capi_fast._native``."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, final, overload

from typing_extensions import Buffer

__version__: str
SNAPSHOT_VERSION: int
#: The first bytes of a file ``DecisionIndex.save_mapped`` wrote.
MAPPED_MAGIC: bytes

AddItem = str | tuple[str] | tuple[str, str] | tuple[str, str, float | None] | tuple[str, str, float | None, str]
RemoveItem = str | tuple[str] | tuple[str, str | None] | tuple[str, str | None, str | None]

@final
class ParsedStream:
    """The operations read from one decisions-stream answer (see ``parse_stream``)."""

    @property
    def adds(self) -> int:
        """Decisions to add."""
    @property
    def removes(self) -> int:
        """Decisions to remove."""
    @property
    def skipped(self) -> int:
        """Malformed items skipped (bad scope, field, duration or IP)."""
    @property
    def links(self) -> bytes | None:
        """The raw JSON of the answer's ``links`` member, or None."""

def parse_stream(body: bytes, origin: str = "CAPI") -> ParsedStream:
    """Reads a CAPI (v3 grouped, v2 flat) or LAPI stream answer from its bytes, without the GIL.

    Decisions without an origin get ``origin``. Bad items are skipped and counted.

    Raises:
        ServerError: the body is not a JSON object.
    """

@final
class BatchResult:
    """The outcome of a batch applied to a ``DecisionIndex``."""

    @property
    def added(self) -> int:
        """Decisions that were not held before."""
    @property
    def refreshed(self) -> int:
        """Decisions already held whose expiry was replaced (for a stream's adds: kept or extended)."""
    @property
    def removed(self) -> int:
        """Decisions removed (including ones re-added already expired, outside a stream)."""
    @property
    def skipped(self) -> int:
        """Malformed items skipped (only with ``strict=False``)."""
    @property
    def normalized(self) -> int:
        """Networks whose host bits were cleared (``10.1.2.3/8`` -> ``10.0.0.0/8``)."""

@final
class DecisionIndex:
    """A thread-safe index of CrowdSec decisions.

    An address gets the highest-priority remediation among every active decision covering it
    (not the longest match). A decision is keyed by (network, origin, remediation); adding it
    again replaces its expiry (a stream answer's adds only lengthen it, see ``apply``). Expiry
    has millisecond resolution and a decision is active while ``expiry > now``; expired
    decisions are never returned, purged or not. IPv4-mapped IPv6 addresses answer as IPv4.
    Every time-dependent method takes ``now`` (Unix seconds).

    Args:
        priorities: remediations from most to least severe. Others rank below them,
            alphabetically.

    """

    def __init__(self, priorities: Sequence[str] = ("ban", "captcha")) -> None: ...
    def add(
        self,
        value: str,
        remediation: str = "ban",
        *,
        ttl: float | None = None,
        origin: str = "manual",
        now: float | None = None,
    ) -> bool:
        """Adds a decision on an address or CIDR network; returns True if it was not held.

        ``ttl`` is in seconds (None: never expires); a ttl that is already over removes the
        decision. Raises ``InvalidIP`` for a malformed value.
        """
    def add_many(
        self,
        items: Iterable[AddItem],
        remediation: str = "ban",
        *,
        ttl: float | None = None,
        origin: str = "manual",
        now: float | None = None,
        strict: bool = True,
    ) -> BatchResult:
        """Adds many decisions as one atomic batch.

        Each item is a value, or a tuple ``(value, remediation, ttl, origin)`` or a prefix of
        it, the rest taken from the keyword defaults. With ``strict`` a malformed value raises
        ``InvalidIP`` and nothing is applied; without, it is skipped and counted.
        """
    def apply(
        self,
        add: Iterable[AddItem] | None = None,
        remove: Iterable[RemoveItem] | None = None,
        *,
        remediation: str = "ban",
        ttl: float | None = None,
        origin: str = "manual",
        now: float | None = None,
        strict: bool = True,
        stream: ParsedStream | None = None,
        fallback: str | None = None,
        stream_types: Sequence[str] | None = None,
    ) -> BatchResult:
        """Applies removals, then additions, as one atomic batch.

        A remove item is a value or ``(value, origin, remediation)`` (None matches any).
        Lookups see the whole batch or none of it. Other threads keep running while a large
        batch is read (the GIL is shared as with Python code; the rest runs without it), and
        an exception from a signal handler (Ctrl-C) aborts the batch, with nothing applied.

        ``stream``'s removals and additions come first in the batch; its skipped items are
        counted in the result. Its additions never shorten a decision: one already held (from an
        earlier answer, or earlier in the same answer, as when CAPI lists an address under two
        scenarios) keeps the later of the two expiries, as crowdsec keeps an address banned while
        any of its decisions is active. A stream addition whose duration is already over changes
        nothing and is counted nowhere (outside a stream, such an addition removes the decision).
        A stream addition that keeps or extends a held decision counts as ``refreshed``.

        With ``fallback``, a stream decision type (of an addition or of a removal) that is not one
        of ``stream_types`` becomes ``fallback``; ``stream_types`` defaults to the priorities.
        Passing ``stream_types=["ban", "captcha"]`` to an index ranking ``["allow", "ban",
        "captcha"]`` makes a stream's "allow" decision the fallback instead of an allowlist entry.
        Without ``fallback`` every type is kept as it is, and ``stream_types`` raises ValueError.
        """
    def remove(self, value: str, origin: str | None = None, remediation: str | None = None) -> int:
        """Removes the decisions on exactly ``value``, optionally of one origin/remediation."""
    def lookup(self, ip: str, now: float | None = None) -> str | None:
        """The remediation for ``ip``, or None. Raises ``InvalidIP`` for a malformed address."""
    @overload
    def lookup_many(self, ips: Iterable[str], *, family: None = None, now: float | None = None) -> list[str | None]:
        """Looks up many addresses with the GIL released; gives a list of remediations."""
    @overload
    def lookup_many(self, ips: Buffer, *, family: int, now: float | None = None) -> bytes:
        """Looks up a buffer of packed big-endian addresses with the GIL released.

        4 bytes each with ``family=4``, 16 with ``family=6``. Gives one code byte per address:
        0 for none, else an index into ``codes``.
        """
    def purge_expired(self, now: float | None = None) -> int:
        """Removes decisions expired at ``now``; returns how many. Costs what expires."""
    def __len__(self) -> int:
        """Decisions held, including expired ones not purged yet."""
    def __contains__(self, ip: str) -> bool:
        """True when ``ip`` has an active decision now."""
    def stats(self) -> dict[str, Any]:
        """Counts by family and kind, normalised networks, remediations, and memory in bytes."""
    @property
    def codes(self) -> tuple[str | None, ...]:
        """Remediation by code of ``lookup_many`` on packed buffers; code 0 is None."""
    @property
    def priorities(self) -> list[str]:
        """Remediations from most to least severe."""
    def save(self, path: str | PathLike[str], *, metadata: bytes | None = None, now: float | None = None) -> None:
        """Writes the active decisions to ``path`` atomically (versioned, checksummed)."""
    @staticmethod
    def load(path: str | PathLike[str]) -> DecisionIndex:
        """Reads an index written by ``save``; raises ``SnapshotError`` on a damaged file."""
    @staticmethod
    def load_with_metadata(path: str | PathLike[str]) -> tuple[DecisionIndex, bytes]:
        """Like ``load``, also returning the metadata given to ``save``."""
    def active_counts(self, now: float | None = None) -> dict[tuple[str, str], int]:
        """Active decisions at ``now`` by (origin, remediation), as usage metrics report them."""
    def save_mapped(self, path: str | PathLike[str], metadata: bytes | None = None, now: float | None = None) -> None:
        """Writes the decisions active at ``now`` in the mapped layout, atomically, mode 0600.

        ``MappedIndex`` answers from such a file in place.
        """
    def export_cidrs(self, remediation: str = "ban", family: int = 4, now: float | None = None) -> list[str]:
        """The fewest CIDRs covering exactly the addresses answering ``remediation`` now."""
    def export_until(
        self, remediation: str = "ban", family: int = 4, now: float | None = None
    ) -> dict[str, float | None]:
        """``export_cidrs`` with when each CIDR stops answering ``remediation``.

        That is the latest expiry (Unix seconds) among the active decisions of ``remediation``
        meeting the CIDR; None when one never expires. A packet filter can give each element
        that timeout, so it leaves the kernel when its decisions expire.
        """
    def export_changes(
        self,
        remediation: str = "ban",
        family: int = 4,
        now: float | None = None,
        previous: ExportBlocks | None = None,
        until: bool = True,
    ) -> tuple[ExportBlocks, dict[str, float | None], dict[str, float | None]]:
        """The export now, and what changed since ``previous`` (an earlier result's first item).

        Returns ``(blocks, added, deleted)``: added CIDRs with their new ends, deleted ones with
        their old ends; a CIDR whose end changed is in both. Only the changes become Python
        objects, so a sync of a million-decision index costs the native sweep, not a million
        strings. Without ``until`` every end is None and only CIDRs count.
        """

@final
class ExportBlocks:
    """One export of a remediation in one family, kept native (``DecisionIndex.export_changes``)."""

    def __len__(self) -> int: ...
    @property
    def family(self) -> int:
        """The address family (4 or 6)."""
    def content(self) -> dict[str, float | None]:
        """CIDR -> end of its answer (Unix seconds; None: never), as ``export_until`` gives."""

@final
class MappedIndex:
    """Lookups answered in place from a file ``DecisionIndex.save_mapped`` wrote.

    Opening maps the file read-only and checks its header, section table and names (O(1) in
    the number of decisions; ``SnapshotError`` when they do not hold); nothing is built, and
    every process mapping the same file shares its pages. It answers the in-memory index's
    remediation; when decisions of equal rank from several origins cover an address, the origin
    it credits (``decision_of``, usage counts) is the lowest tag's, where the in-memory index
    may stop at the first it meets.
    """

    def __init__(self, path: str | PathLike[str]) -> None: ...
    def lookup(self, ip: str, now: float | None = None) -> str | None:
        """The remediation for ``ip`` at ``now`` (default: the current time), or None."""
    def lookup_many(self, ips: Sequence[str], now: float | None = None) -> list[str | None]:
        """``lookup`` of each address of a list."""
    def decision_of(self, ip: str, now: float | None = None) -> tuple[str, str] | None:
        """(origin, remediation) of the decision answering ``ip`` at ``now``, or None."""
    def __len__(self) -> int: ...
    @property
    def decisions(self) -> int:
        """Decisions held (a network may hold several)."""
    @property
    def path(self) -> Path:
        """The file mapped."""
    @property
    def size(self) -> int:
        """Bytes mapped."""
    @property
    def metadata(self) -> bytes:
        """The caller metadata saved with the decisions."""
    @property
    def written_at(self) -> float:
        """When the file was written (Unix seconds)."""
    @property
    def priorities(self) -> list[str]:
        """The priority list the saved index was built with."""
    def verify(self) -> bool:
        """Whether the file's checksum matches its bytes (reads them all: O(size))."""
    def to_index(self) -> DecisionIndex:
        """A ``DecisionIndex`` holding the same decisions (for a writer starting from the file)."""

@final
class Remediator:
    """The engine's per-request answer in one native call: lookup, answer table, counters.

    Args:
        index: the index to answer from (in memory, or a mapped snapshot).
        answers: remediation -> answer (unlisted remediations answer as themselves).
        clean: the answer when no active decision covers the address.
        reload: called from ``get`` at most once per ``check_every`` seconds (snapshot followers).
        check_every: seconds between two ``reload`` calls.
        monotonic: clock for ``check_every`` (default: the process's monotonic clock, read natively).
    """

    def __init__(
        self,
        index: DecisionIndex | MappedIndex,
        answers: Mapping[str, str],
        *,
        clean: str = "bypass",
        reload: Callable[[], object] | None = None,
        check_every: float = 1.0,
        monotonic: Callable[[], float] | None = None,
    ) -> None: ...
    def get(self, ip: str, now: float | None = None) -> str:
        """The answer for ``ip``, counted under the deciding decision's origin. Raises ``InvalidIP``."""
    def recount(self, ip: str, answer: str, now: float | None = None) -> None:
        """Counts the last answer for ``ip`` as ``answer`` (a solved captcha counts as bypass)."""
    def set_index(self, index: DecisionIndex | MappedIndex) -> None:
        """Answers from ``index`` from now on; counts are kept."""
    def set_answers(self, answers: Mapping[str, str]) -> None:
        """Replaces the remediation -> answer table; counts are kept."""
    def set_clean(self, clean: str) -> None:
        """Replaces the answer for an address no decision covers; counts are kept."""
    @property
    def index(self) -> DecisionIndex | MappedIndex:
        """The index answering."""
    def counts(self) -> dict[tuple[str, str], int]:
        """Answers so far by (origin of the deciding decision or ``clean``, answer)."""
    def take_counts(self) -> dict[tuple[str, str], int]:
        """``counts()``, then starts again from zero."""
