"""``RemediationEngine``: answers "what remediation for this IP?" from CAPI's (or a LAPI's) decisions.

It owns a native ``DecisionIndex`` and keeps it in step with the source: a startup pull, then
deltas, plus the subscribed blocklists and allowlists (each list's entries under origin
``lists:<name>``). Allowlist entries are decisions of the reserved remediation ``allow``, ranked
above every other, so an allowlisted address (or one inside an allowlisted range) answers
``bypass`` whatever covers it, and the packet-filter exports leave it out. A blocklist that CAPI
answers 304 for is still published: its decisions get a fresh duration, so an unchanged list
never lapses.
A refresh is applied as one atomic batch after the whole answer was fetched and parsed, so a
failed refresh changes nothing and the last good decisions keep being served. The vendor's
2-hour minimum between CAPI refreshes is enforced unless ``force=True``. With ``snapshot_path``
the index and the stream state are saved after each refresh and loaded at start, so a restart
neither loses decisions nor needs a new startup pull.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import orjson

from capi_fast._native import MAPPED_MAGIC, DecisionIndex, MappedIndex, ParsedStream, Remediator, parse_stream
from capi_fast.client import CapiClient
from capi_fast.engine_lists import ALLOW, ListBatch, ListPlan, RefreshState, allow_key, state_from
from capi_fast.errors import CapiError, ConfigurationError, SnapshotError
from capi_fast.lapi import AsyncLapiClient, LapiClient
from capi_fast.lists import (
    MAX_LINKS,
    MAX_NAME,
    Allowlist,
    AllowlistLink,
    Blocklist,
    BlocklistLink,
    allowlist_links,
    blocklist_links,
)
from capi_fast.refresher import LAPI_INTERVAL, Health, RefreshSchedule
from capi_fast.usage_metrics import USAGE_METRICS_INTERVAL, UsageMetrics

__all__ = ["ALLOW", "BYPASS", "MIN_CAPI_INTERVAL", "RefreshReport", "RemediationEngine"]
# The async twin, AsyncRemediationEngine, lives in capi_fast.async_engine.

log = logging.getLogger("capi_fast.engine")

BYPASS = "bypass"
#: The vendor's minimum between two CAPI refreshes, in seconds.
MIN_CAPI_INTERVAL = 2 * 3600.0
_LEVELS = ("normal", "flex", "disabled")


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh did.

    Attributes:
        performed: False when it was skipped (too soon) or failed.
        startup: True for the first, full pull.
        added: decisions added. deleted: decisions removed. skipped: malformed items skipped
            (stream items, list links, list lines and values).
        lists_updated: blocklists and allowlists downloaded anew.
        lists_renewed: blocklists CAPI answered 304 for: still published, their decisions got a
            fresh duration.
        lists_removed: lists no longer subscribed.
        duration: seconds the refresh took.
        next_refresh_at: Unix time before which a refresh is refused without ``force``.
        error: why it failed (the previous decisions are still served), or None.
        snapshot_saved: False when the decisions were applied in memory but the snapshot could
            not be written (disk full, permissions): followers and a restarted process would miss
            them; the next refresh writes it again.
    """

    performed: bool
    startup: bool = False
    added: int = 0
    deleted: int = 0
    skipped: int = 0
    lists_updated: tuple[str, ...] = ()
    lists_renewed: tuple[str, ...] = ()
    lists_removed: tuple[str, ...] = ()
    duration: float = 0.0
    next_refresh_at: float = 0.0
    error: str | None = None
    snapshot_saved: bool = True


_Source = TypeVar("_Source")


class _Engine(Generic[_Source]):
    """What ``RemediationEngine`` and ``AsyncRemediationEngine`` share: everything but the I/O.

    Args:
        source: the client decisions come from (None for a follower).
        priorities: remediations from most to least severe (default ban > captcha).
        fallback: what an unknown decision type becomes (default captcha, as CrowdSec's PHP engine).
        bouncing_level: ``normal``; ``flex`` (ban becomes captcha); ``disabled`` (always bypass).
        min_interval: seconds between refreshes (default: the vendor's 2 hours for CAPI, none for LAPI).
        snapshot_path: where to save the index and stream state after each refresh.
        clock: Unix time source.
        max_staleness: seconds without a good refresh after which ``stale_action`` answers.
        stale_action: ``bypass`` (fail open, default), or a remediation (fail closed).
        metrics_interval: seconds between usage-metrics pushes to a LAPI source (default 30
            min, at least 10 min; 0 turns them off). The background refresh pushes them.
    """

    def __init__(
        self,
        source: _Source | None,
        *,
        priorities: Sequence[str] = ("ban", "captcha"),
        fallback: str = "captcha",
        bouncing_level: str = "normal",
        min_interval: float | None = None,
        snapshot_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
        max_staleness: float | None = None,
        stale_action: str = BYPASS,
        metrics_interval: float = USAGE_METRICS_INTERVAL,
    ) -> None:
        if fallback not in priorities:
            raise ConfigurationError(f"fallback {fallback!r} must be one of the priorities {list(priorities)}")
        if ALLOW in priorities:
            raise ConfigurationError(f"{ALLOW!r} is reserved for allowlist entries; it cannot be a priority")
        if stale_action not in (BYPASS, *priorities):
            raise ConfigurationError(
                f"stale_action must be {BYPASS!r} or one of {list(priorities)}, got {stale_action!r}"
            )
        if max_staleness is not None and not max_staleness > 0:
            raise ConfigurationError(f"max_staleness must be more than 0 seconds or None, got {max_staleness!r}")
        self.source = source
        #: The usage-metrics window pushed to a LAPI source (None for CAPI and followers).
        self.usage_metrics = (
            UsageMetrics(metrics_interval, clock=clock) if isinstance(source, LapiClient | AsyncLapiClient) else None
        )
        self.priorities = list(priorities)
        self.fallback = fallback
        self.max_staleness = max_staleness
        self.stale_action = stale_action
        self._stale = False
        self._last_good: float | None = None
        self._last_error: str | None = None
        self._index: DecisionIndex | None = DecisionIndex(self._index_priorities)
        self._answer = Remediator(self._index, {}, clean=BYPASS)
        self.bouncing_level = bouncing_level
        if min_interval is None:
            min_interval = 0.0 if isinstance(source, LapiClient | AsyncLapiClient) else MIN_CAPI_INTERVAL
        self.min_interval = min_interval
        self.snapshot_path = None if snapshot_path is None else Path(snapshot_path)
        self.clock = clock
        self.state = RefreshState()
        self._refreshing = threading.Lock()  # one refresh at a time (the async engine uses its own lock)
        self._seen: tuple[int, int, int] | None = None
        self._rebuild = False  # the next refresh builds a fresh index (the loaded one is not trusted)
        #: Why the decisions served do not come from ``snapshot_path`` (missing, unreadable, of
        #: other priorities), or None. Set on load, cleared by a good load or a saved refresh.
        self.snapshot_error: str | None = None
        self._follows = False  # a follower maps a snapshot in the mapped layout instead of loading it
        self._mapping: MappedIndex | None = None
        self._open_snapshot()

    def _open_snapshot(self) -> None:
        if self.snapshot_path is not None:
            if self.snapshot_path.exists():
                self._seen = self._signature()
                self._load()
            else:
                self.snapshot_error = f"there is no snapshot at {self.snapshot_path}"

    @classmethod
    def follow(
        cls,
        snapshot_path: str | os.PathLike[str],
        *,
        priorities: Sequence[str] = ("ban", "captcha"),
        fallback: str = "captcha",
        bouncing_level: str = "normal",
        check_every: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> Self:
        """A read-only engine for extra workers, answering from another process's snapshot.

        It reloads the snapshot when it changes (one ``stat`` at most every ``check_every``
        seconds), so CAPI is called once per host, not once per worker. A snapshot in the
        mapped layout (what engines write) is mapped, not loaded: lookups read its bytes in
        place, every worker shares its pages, and a reload is a new mapping (microseconds).
        """
        engine = cls(None, priorities=priorities, fallback=fallback, bouncing_level=bouncing_level)
        engine.snapshot_path, engine._follows = Path(snapshot_path), True
        engine._open_snapshot()
        engine._answer = Remediator(
            engine._answer.index,
            engine._answer_table(),
            clean=BYPASS,
            reload=engine._reload_if_changed,
            check_every=check_every,
            monotonic=None if monotonic is time.monotonic else monotonic,
        )
        return engine

    def _signature(self) -> tuple[int, int, int] | None:
        assert self.snapshot_path is not None
        try:
            st = os.stat(self.snapshot_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_if_changed(self) -> None:
        """Called by the native answer path at most once per check interval (followers only)."""
        sig = self._signature()
        if sig is not None and sig != self._seen:
            self._seen = sig
            try:
                self._load()
            except Exception as e:  # the request path never raises: keep the last good index
                self.snapshot_error = f"{self.snapshot_path} could not be reloaded: {e}"
                log.warning(
                    "could not reload the snapshot %s (%s); still answering from the last good one",
                    self.snapshot_path,
                    e,
                )

    # -- answers -------------------------------------------------------------------------------

    #: ``get_ip_remediation(ip)`` -> ``ban``, ``captcha`` (or another listed remediation) or
    #: ``bypass``; raises ``InvalidIP`` for a malformed address. It is the native
    #: ``Remediator.get`` bound to this engine (no Python frame on the request path): the answer
    #: follows the bouncing level and is counted under the deciding decision's origin.
    get_ip_remediation: Callable[[str], str]

    @property
    def _answer(self) -> Remediator:
        return self._remediator

    @_answer.setter
    def _answer(self, remediator: Remediator) -> None:
        self._remediator = remediator
        self.get_ip_remediation = remediator.get

    @property
    def bouncing_level(self) -> str:
        """``normal``, ``flex`` (ban becomes captcha) or ``disabled`` (always bypass)."""
        return self._bouncing_level

    @bouncing_level.setter
    def bouncing_level(self, level: str) -> None:
        if level not in _LEVELS:
            raise ConfigurationError(f"bouncing_level must be one of {_LEVELS}, got {level!r}")
        self._bouncing_level = level
        self._answer.set_answers(self._answer_table())

    @property
    def _index_priorities(self) -> list[str]:
        """The index ranks allowlist entries above every remediation."""
        return [ALLOW, *self.priorities]

    def _answer_table(self) -> dict[str, str]:
        if self._stale:  # no good refresh for max_staleness: the configured failure action answers
            return {rem: self.stale_action for rem in self.priorities} | {ALLOW: BYPASS}
        level = self._bouncing_level
        table = {
            rem: BYPASS if level == "disabled" else "captcha" if level == "flex" and rem == "ban" else rem
            for rem in self.priorities
        }
        table[ALLOW] = BYPASS
        return table

    @property
    def index(self) -> DecisionIndex:
        """The native index answering lookups.

        A follower answering from a mapped snapshot (``mapped``) has none: this is then a copy
        built from the mapping on first use, for reading (changing it changes no answer; the
        next snapshot replaces it).
        """
        if self._index is None:
            mapping = self._mapping
            assert mapping is not None
            index = mapping.to_index()  # without the GIL: a reload may swap the mapping meanwhile
            if self._mapping is not mapping:
                return index
            self._index = index
        return self._index

    @index.setter
    def index(self, index: DecisionIndex) -> None:
        self._index, self._mapping = index, None
        self._answer.set_index(index)

    @property
    def mapped(self) -> MappedIndex | None:
        """The mapped snapshot a follower answers from (None: the in-memory index answers)."""
        return self._mapping

    def _use(self, index: DecisionIndex | MappedIndex) -> None:
        if isinstance(index, MappedIndex):
            self._index, self._mapping = None, index
            self._answer.set_index(index)
        else:
            self.index = index

    @property
    def counters(self) -> dict[tuple[str, str], int]:
        """Answers given, by (origin of the deciding decision, answer).

        ``("clean", "bypass")`` counts addresses no decision covered. These are what CrowdSec's
        usage metrics report.
        """
        counts: dict[tuple[str, str], int] = self._answer.counts()
        return counts

    def take_counters(self) -> dict[tuple[str, str], int]:
        """``counters``, then starts counting again from zero (for a periodic metrics push)."""
        counts: dict[tuple[str, str], int] = self._answer.take_counts()
        return counts

    def count_answer_as(self, ip: str, answer: str) -> None:
        """Counts the last answer for ``ip`` as ``answer``: what the bouncer finally did differed.

        A solved captcha lets the request through, so it is reported as ``bypass`` (usage
        metrics count the final answer). Raises ``InvalidIP`` like ``get_ip_remediation``.
        """
        self._answer.recount(ip, answer)

    def active_decisions(self) -> dict[tuple[str, str], int]:
        """Decisions in force now, by (origin, remediation); allowlist entries are left out."""
        return {k: n for k, n in self.index.active_counts(self.clock()).items() if k[1] != ALLOW}

    def _mapped(self, kind: str) -> str:
        return kind if kind in self.priorities else self.fallback

    # -- refresh -------------------------------------------------------------------------------

    @property
    def next_refresh_at(self) -> float:
        """Unix time before which ``refresh_decisions()`` refuses without ``force``."""
        return self.state.last_refresh + self.min_interval if self.state.last_refresh else 0.0

    # The steps of a refresh, shared with AsyncRemediationEngine (which only awaits the I/O).

    def _refresher(self) -> _Source:
        if self.source is None:
            raise ConfigurationError("a follower engine does not refresh: the publishing process does")
        return self.source

    def _refused(self, force: bool) -> RefreshReport | None:
        if not force and self.clock() < self.next_refresh_at:
            return RefreshReport(performed=False, next_refresh_at=self.next_refresh_at, error="too soon")
        return None

    def _failed(self, startup: bool, e: CapiError) -> RefreshReport:
        log.warning("refresh failed, still serving the previous decisions: %s", e)
        return self._noted(
            RefreshReport(performed=False, startup=startup, next_refresh_at=self.next_refresh_at, error=str(e))
        )

    def _list_plans(self, parsed: ParsedStream) -> tuple[list[ListPlan], int] | None:
        """The lists to download from the stream answer's links, and how many links were unusable.

        None when the links member cannot be read at all: the lists then stay as they are (an
        unreadable answer is no reason to drop every subscribed list).
        """
        if not parsed.links:
            return [], 0
        try:
            links = orjson.loads(parsed.links)
            blocklists, bad_blocklists = blocklist_links(links)
            allowlists, bad_allowlists = allowlist_links(links)
        except Exception as e:
            log.warning("the stream answer's links cannot be read (%s): the lists stay as they are", e)
            return None
        plans = []
        for link in blocklists:
            prev = self.state.lists.get(link.name)
            plans.append(ListPlan(link, prev.get("last_modified") if prev else None))
        for allow in allowlists:
            prev = self.state.allowlists.get(allow_key(allow))
            plans.append(ListPlan(allow, prev.get("last_modified") if prev else None))
        skipped = bad_blocklists + bad_allowlists
        if skipped:
            log.warning(
                "%d list links skipped: a link needs a printable name of at most %d characters, given once, "
                "an http(s) url, a scope and a duration (and at most %d links of a kind are taken)",
                skipped,
                MAX_NAME,
                MAX_LINKS,
            )
        return plans, skipped

    def _commit(
        self,
        parsed: ParsedStream,
        plans: list[ListPlan] | None,
        fetched: Sequence[Blocklist | Allowlist | Exception],
        startup: bool,
        started: float,
        skipped_links: int = 0,
    ) -> RefreshReport:
        """Applies the stream answer and the downloaded lists, saves the snapshot; never raises.

        CAPI (or the LAPI) has moved this machine's stream position once its answer arrived, so
        from here nothing may lose that delta: a failed list keeps its previous content; if the
        lists cannot be applied at all the stream answer is applied alone; if even that fails,
        the next refresh is a startup pull, which sends every active decision again. A snapshot
        that cannot be written is reported and written by the next refresh.
        """
        if plans is None:
            return self._noted(
                self._apply_stream_alone(parsed, startup, started, "list links unreadable: lists unchanged")
            )
        try:
            return self._noted(self._apply_all(parsed, plans, fetched, startup, started, skipped_links))
        except Exception as e:  # the lists' part failed: the stream answer must still land
            log.exception("applying the lists failed; applying the stream answer alone")
            why = f"lists not applied: {type(e).__name__}: {e}"
            return self._noted(self._apply_stream_alone(parsed, startup, started, why))

    def _apply_stream_alone(self, parsed: ParsedStream, startup: bool, started: float, why: str) -> RefreshReport:
        now = self.clock()
        try:
            result = self.index.apply(
                stream=parsed, fallback=self.fallback, stream_types=self.priorities, strict=False, now=now
            )
        except Exception as e:
            log.exception("applying the stream answer failed; the next refresh pulls every active decision again")
            self.state.startup_done = False
            return RefreshReport(
                performed=False,
                startup=startup,
                duration=time.perf_counter() - started,
                next_refresh_at=self.next_refresh_at,
                error=f"{why}; stream answer not applied ({type(e).__name__}: {e}): the next refresh is a full pull",
            )
        self.state.startup_done = True
        self.state.last_refresh = now
        unsaved = self._save()
        return RefreshReport(
            performed=True,
            startup=startup,
            added=result.added,
            deleted=result.removed,
            skipped=result.skipped,
            duration=time.perf_counter() - started,
            next_refresh_at=self.next_refresh_at,
            error="; ".join(e for e in (why, unsaved) if e),
            snapshot_saved=unsaved is None,
        )

    def _apply_all(
        self,
        parsed: ParsedStream,
        plans: list[ListPlan],
        fetched: Sequence[Blocklist | Allowlist | Exception],
        startup: bool,
        started: float,
        skipped_links: int,
    ) -> RefreshReport:
        """The stream and the downloaded lists as one batch, then the snapshot.

        A blocklist answered 304 is still published: its values are re-added with a fresh
        duration (crowdsec and the PHP engine download the whole list again before it would
        lapse; a 304 says the same at no cost).
        """
        now = self.clock()
        batch = ListBatch(now)
        lists = {name: dict(info) for name, info in self.state.lists.items()}
        allowlists = {name: dict(info) for name, info in self.state.allowlists.items()}
        for plan, got in zip(plans, fetched, strict=True):
            if isinstance(got, Exception):
                kind = "allowlist" if isinstance(plan.link, AllowlistLink) else "blocklist"
                log.warning("%s %s not refreshed (its previous content stays): %s", kind, plan.name, got)
                batch.errors.append(f"{kind} {plan.name}: {got}")
            elif isinstance(plan.link, BlocklistLink) and isinstance(got, Blocklist):
                batch.blocklist(plan.link, got, lists, self._mapped(plan.link.remediation))
            elif isinstance(plan.link, AllowlistLink) and isinstance(got, Allowlist):
                batch.allowlist(plan.link, got, allowlists)
        seen_blocklists = {p.name for p in plans if isinstance(p.link, BlocklistLink)}
        seen_allowlists = {allow_key(p.link) for p in plans if isinstance(p.link, AllowlistLink)}
        for name in [n for n in lists if n not in seen_blocklists]:
            batch.drop_blocklist(name, lists.pop(name))
        for key in [k for k in allowlists if k not in seen_allowlists]:
            info = allowlists.pop(key)
            batch.drop_allow(info)
            batch.removed.append(str(info.get("name", key)))
        batch.restore_allow(allowlists)
        # A snapshot from before allowlists (no "allow" rank), or one whose refresh state was lost:
        # the startup pull rebuilds into a new index, swapped in whole.
        fresh = self._rebuild or self.index.priorities != self._index_priorities
        target = DecisionIndex(self._index_priorities) if fresh else self.index
        result = target.apply(
            add=batch.adds,
            remove=batch.removes,
            stream=parsed,
            fallback=self.fallback,
            stream_types=self.priorities,
            strict=False,
            now=now,
        )
        if target is not self.index:
            self.index = target
        self._rebuild = False
        self.state.startup_done = True
        self.state.last_refresh = now
        self.state.lists = lists
        self.state.allowlists = allowlists
        unsaved = self._save()
        if unsaved:
            batch.errors.append(unsaved)
        return RefreshReport(
            performed=True,
            startup=startup,
            added=result.added,
            deleted=result.removed,
            skipped=result.skipped + batch.skipped + skipped_links,
            lists_updated=tuple(batch.updated),
            lists_renewed=tuple(batch.renewed),
            lists_removed=tuple(batch.removed),
            duration=time.perf_counter() - started,
            next_refresh_at=self.next_refresh_at,
            error="; ".join(batch.errors) or None,
            snapshot_saved=unsaved is None,
        )

    # -- background refresh and health ---------------------------------------------------

    def _noted(self, report: RefreshReport) -> RefreshReport:
        """Records a refresh's outcome for ``health()`` and applies ``stale_action`` if due."""
        if report.performed:
            self._last_good = self.clock()
            self._last_error = report.error if not report.snapshot_saved else None
        elif report.error != "too soon":
            self._last_error = report.error
        self._check_staleness()
        return report

    def _check_staleness(self) -> None:
        last = self._last_good if self._last_good is not None else (self.state.last_refresh or None)
        stale = self.max_staleness is not None and (last is None or self.clock() - last > self.max_staleness)
        if stale != self._stale:
            self._stale = stale
            if stale:
                log.warning(
                    "no good refresh for %s s: answering %r for every address", self.max_staleness, self.stale_action
                )
            else:
                log.warning("decisions are fresh again: answering from them")
            self._answer.set_answers(self._answer_table())
            self._answer.set_clean(self.stale_action if stale else BYPASS)

    def _interval(self, interval: float | None) -> float:
        if interval is not None:
            return interval
        return LAPI_INTERVAL if isinstance(self.source, LapiClient | AsyncLapiClient) else max(self.min_interval, 1.0)

    def _background_schedule(self, interval: float | None, jitter: float) -> RefreshSchedule:
        """Checks that a background refresh may start (a source, none running); its schedule."""
        self._refresher()
        if self._running():
            raise ConfigurationError("the background refresh is already running")
        return RefreshSchedule(self._interval(interval), jitter)

    def _background_delay(self, schedule: RefreshSchedule, error: Exception | None) -> float:
        """After a background refresh (``error``: what it raised, if anything): the wait before the next."""
        if error is not None:
            log.error("background refresh failed", exc_info=error)
            self._last_error = f"{type(error).__name__}: {error}"
        return schedule.next_delay(error is None and self._last_error is None)

    def _metrics_body(self, force: bool) -> dict[str, Any] | None:
        """The usage-metrics body when a push is due (or forced), taking the counts; else None."""
        um = self.usage_metrics
        if um is None or um.disabled or not (force or um.due()):
            return None
        return um.take(self.take_counters(), self.active_decisions())

    def health(self) -> Health:
        """The age of the last good refresh, the last error, and whether ``stale_action`` answers."""
        self._check_staleness()
        last = self._last_good if self._last_good is not None else (self.state.last_refresh or None)
        return Health(
            running=self._running(),
            last_good_refresh=last,
            age=None if last is None else max(0.0, self.clock() - last),
            last_error=self._last_error,
            stale=self._stale,
        )

    def _running(self) -> bool:
        return False

    # -- persistence ---------------------------------------------------------------------------

    def _save(self) -> str | None:
        """Writes the snapshot; what went wrong, or None (the decisions in memory stand either way)."""
        if self.snapshot_path is None:
            return None
        meta = orjson.dumps(
            {
                "startup_done": self.state.startup_done,
                "last_refresh": self.state.last_refresh,
                "lists": self.state.lists,
                "allowlists": self.state.allowlists,
            }
        )
        try:
            self.index.save_mapped(self.snapshot_path, metadata=meta)
        except (OSError, SnapshotError) as e:
            log.error(
                "cannot write the decision snapshot %s (%s): serving from memory, the next refresh tries again",
                self.snapshot_path,
                e,
            )
            return f"snapshot not saved: {e}"
        self.snapshot_error = None
        return None

    def _load(self) -> None:
        assert self.snapshot_path is not None
        try:
            index: DecisionIndex | MappedIndex
            if self._follows and _is_mapped(self.snapshot_path):
                index = MappedIndex(self.snapshot_path)
                meta = index.metadata
            else:
                index, meta = DecisionIndex.load_with_metadata(self.snapshot_path)
            doc = orjson.loads(meta) if meta else {}
        except (SnapshotError, orjson.JSONDecodeError, OSError) as e:
            self.snapshot_error = f"the snapshot {self.snapshot_path} is unreadable: {e}"
            log.warning(
                "ignoring the unreadable snapshot %s (%s): a startup pull will rebuild it", self.snapshot_path, e
            )
            return
        try:
            state = state_from(doc)
        except (TypeError, ValueError, AttributeError) as e:
            # The decisions are fine, the refresh state is not: answer from them (never fail open)
            # while a startup pull rebuilds a fresh index.
            log.warning(
                "snapshot %s has malformed metadata (%s): serving its decisions until a startup pull rebuilds it",
                self.snapshot_path,
                e,
            )
            state, self._rebuild = RefreshState(), True
        if index.priorities == self.priorities and index.priorities != self._index_priorities:
            # Written before allowlists existed (no "allow" rank, so no allowlist entry): keep
            # answering from it, and let a startup pull rebuild it in the current layout.
            log.warning(
                "snapshot %s predates allowlists: serving it until a startup pull rebuilds it", self.snapshot_path
            )
            self._use(index)
            self.state = RefreshState()
            self.snapshot_error = None  # its decisions are served
            return
        if index.priorities != self._index_priorities:
            self.snapshot_error = (
                f"the snapshot {self.snapshot_path} ranks {index.priorities}, this engine {self._index_priorities}"
            )
            log.warning(
                "snapshot priorities %s differ from %s: a startup pull will rebuild it",
                index.priorities,
                self._index_priorities,
            )
            return
        self._use(index)
        self.state = state
        self.snapshot_error = None

    def stats(self) -> dict[str, Any]:
        """Index counts, refresh state and answers by (origin, remediation)."""
        return {
            "index": self.index.stats()
            if self._mapping is None
            else {
                "decisions": self._mapping.decisions,
                "networks": len(self._mapping),
                "mapped": str(self._mapping.path),
                "bytes": self._mapping.size,
            },
            "last_refresh": self.state.last_refresh,
            "next_refresh_at": self.next_refresh_at,
            "lists": sorted(self.state.lists),
            "allowlists": sorted({str(i.get("name")) for i in self.state.allowlists.values()}),
            "answers": {f"{o}/{r}": n for (o, r), n in sorted(self.counters.items())},
        }


def _is_mapped(path: Path) -> bool:
    """Whether the file at ``path`` is in the mapped layout (``DecisionIndex.save_mapped``)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAPPED_MAGIC)) == MAPPED_MAGIC
    except OSError:
        return False


class RemediationEngine(_Engine[CapiClient | LapiClient]):
    """Remediation answers from a CAPI or LAPI source, with blocklists, persistence and counters.

    Args:
        source: a ``CapiClient`` or a ``LapiClient`` (None: see ``follow``).
        priorities: remediations from most to least severe (default ban > captcha).
        fallback: what an unknown decision type becomes (default captcha, as CrowdSec's PHP engine).
        bouncing_level: ``normal``; ``flex`` (ban becomes captcha); ``disabled`` (always bypass).
        min_interval: seconds between refreshes (default: the vendor's 2 hours for CAPI, none for LAPI).
        snapshot_path: where to save the index and stream state after each refresh (and load
            them from at start).
        clock: Unix time source.
        max_staleness: seconds without a good refresh after which ``stale_action`` answers
            (None, the default: the last good decisions answer however old they are).
        stale_action: ``bypass`` (fail open, default), or a remediation (fail closed).
        metrics_interval: seconds between usage-metrics pushes to a LAPI source (default 30
            min, at least 10 min; 0 turns them off). The background refresh pushes them.
    """

    def refresh_decisions(self, force: bool = False) -> RefreshReport:
        """Pulls the stream (startup, then deltas) and the blocklists; applies them as one batch.

        The stream's raw bytes are read by the native parser (no Python objects per decision).
        A failed stream pull changes nothing and says why in the report; the last good decisions
        keep being served.
        """
        source = self._refresher()
        if isinstance(source, CapiClient):
            source.metrics_tick()  # every call, refused or not: metrics go every 30 min, refreshes every 2 h
        with self._refreshing:
            refused = self._refused(force)
            if refused is not None:
                return refused
            started = time.perf_counter()
            startup = not self.state.startup_done
            try:
                parsed = parse_stream(source.get_stream_raw(startup=startup))
            except CapiError as e:
                return self._failed(startup, e)
            plans, bad_links = self._list_plans(parsed) or (None, 0)
            fetched = [self._fetch(source, p) for p in plans or ()]
            return self._commit(parsed, plans, fetched, startup, started, bad_links)

    def push_usage_metrics(self, force: bool = True) -> bool:
        """Pushes the usage metrics to the LAPI now (or, without ``force``, when due).

        Returns whether a push was made and accepted; a failed one keeps its counts for the
        next and never raises (see ``usage_metrics.last_error``).
        """
        body = self._metrics_body(force)
        if body is None:
            return False
        assert isinstance(self.source, LapiClient) and self.usage_metrics is not None
        try:
            self.source.push_usage_metrics(body)
        except Exception as e:
            self.usage_metrics.done(e)
            return False
        self.usage_metrics.done(None)
        return True

    def start(
        self,
        interval: float | None = None,
        *,
        jitter: float = 0.1,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        """Refreshes in a background thread until ``stop()``: at once, then every ``interval``.

        ``interval`` defaults to 10 s from a LAPI and to ``min_interval`` (2 h) from CAPI, with
        ``jitter``; a failure is retried sooner (see ``capi_fast.refresher``) and the last good
        decisions keep answering. Usage metrics go to a LAPI source when due
        (``metrics_interval``). ``wait(seconds)`` returns True to stop (default: the stop event).
        """
        schedule = self._background_schedule(interval, jitter)
        stop = self._stop_event = threading.Event()
        pause = wait or stop.wait

        def run() -> None:
            delay = 0.0
            while not stop.is_set():
                if delay and pause(delay):
                    return
                error: Exception | None = None
                try:
                    self.refresh_decisions()
                except Exception as e:  # the refresher never dies: reported by health(), retried
                    error = e
                self.push_usage_metrics(force=False)
                delay = self._background_delay(schedule, error)

        thread = threading.Thread(target=run, name="capi-fast-refresh", daemon=True)
        self._thread: threading.Thread | None = thread
        thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the background refresh (a refresh in progress finishes first)."""
        event, thread = getattr(self, "_stop_event", None), getattr(self, "_thread", None)
        if event is not None:
            event.set()
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def _running(self) -> bool:
        thread = getattr(self, "_thread", None)
        return thread is not None and thread.is_alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _fetch(source: CapiClient | LapiClient, plan: ListPlan) -> Blocklist | Allowlist | Exception:
        try:
            if isinstance(plan.link, AllowlistLink):
                return source.fetch_allowlist(plan.link, if_modified_since=plan.since)
            return source.fetch_blocklist(plan.link, if_modified_since=plan.since)
        except Exception as e:  # any failure of one list keeps its previous content
            return e
