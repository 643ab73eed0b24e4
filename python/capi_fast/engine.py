"""``RemediationEngine``: answers "what remediation for this IP?" from CAPI's (or a LAPI's) decisions.

It owns a native ``DecisionIndex`` and keeps it in step with the source: a startup pull, then
deltas, plus the subscribed blocklists (each list's decisions under origin ``lists:<name>``).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import orjson

from capi_fast._native import DecisionIndex, ParsedStream, Remediator, parse_stream
from capi_fast.client import Blocklist, CapiClient
from capi_fast.errors import CapiError, ConfigurationError, SnapshotError, StorageError
from capi_fast.lapi import AsyncLapiClient, LapiClient
from capi_fast.stream import blocklist_links, parse_go_duration

__all__ = ["BYPASS", "MIN_CAPI_INTERVAL", "RefreshReport", "RemediationEngine"]
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
        added: decisions added. deleted: decisions removed. skipped: malformed items skipped.
        lists_updated: blocklists downloaded anew. lists_removed: blocklists no longer subscribed.
        duration: seconds the refresh took.
        next_refresh_at: Unix time before which a refresh is refused without ``force``.
        error: why it failed (the previous decisions are still served), or None.
    """

    performed: bool
    startup: bool = False
    added: int = 0
    deleted: int = 0
    skipped: int = 0
    lists_updated: tuple[str, ...] = ()
    lists_removed: tuple[str, ...] = ()
    duration: float = 0.0
    next_refresh_at: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class _ListPlan:
    """A blocklist to download: its link, the Last-Modified we hold, its ttl and remediation."""

    name: str
    link: dict[str, Any]
    since: str | None
    ttl: float
    remediation: str


@dataclass
class _State:
    startup_done: bool = False
    last_refresh: float = 0.0
    # list name -> {"last_modified", "remediation", "values"}
    lists: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    ) -> None:
        if fallback not in priorities:
            raise ConfigurationError(f"fallback {fallback!r} must be one of the priorities {list(priorities)}")
        self.source = source
        self.priorities = list(priorities)
        self.fallback = fallback
        self._index = DecisionIndex(self.priorities)
        self._answer = Remediator(self._index, {}, clean=BYPASS)
        self.bouncing_level = bouncing_level
        if min_interval is None:
            min_interval = 0.0 if isinstance(source, LapiClient | AsyncLapiClient) else MIN_CAPI_INTERVAL
        self.min_interval = min_interval
        self.snapshot_path = None if snapshot_path is None else Path(snapshot_path)
        self.clock = clock
        self.state = _State()
        self._refreshing = threading.Lock()  # one refresh at a time (the async engine uses its own lock)
        self._seen: tuple[int, int, int] | None = None
        if self.snapshot_path is not None and self.snapshot_path.exists():
            self._seen = self._signature()
            self._load()

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
        seconds), so CAPI is called once per host, not once per worker.
        """
        engine = cls(
            None, priorities=priorities, fallback=fallback, bouncing_level=bouncing_level, snapshot_path=snapshot_path
        )
        engine._answer = Remediator(
            engine.index,
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
            self._load()

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

    def _answer_table(self) -> dict[str, str]:
        level = self._bouncing_level
        return {
            rem: BYPASS if level == "disabled" else "captcha" if level == "flex" and rem == "ban" else rem
            for rem in self.priorities
        }

    @property
    def index(self) -> DecisionIndex:
        """The native index answering lookups."""
        return self._index

    @index.setter
    def index(self, index: DecisionIndex) -> None:
        self._index = index
        self._answer.set_index(index)

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
        return RefreshReport(performed=False, startup=startup, next_refresh_at=self.next_refresh_at, error=str(e))

    def _list_plans(self, parsed: ParsedStream) -> list[_ListPlan]:
        """The blocklists to download, from the stream answer's links."""
        links = blocklist_links(orjson.loads(parsed.links)) if parsed.links else []
        plans = []
        for link in links:
            name = link.get("name")
            if not isinstance(name, str) or not name:
                continue
            try:
                ttl = parse_go_duration(str(link.get("duration", "24h")))
            except ValueError:
                ttl = 86400.0
            prev = self.state.lists.get(name)
            since = prev.get("last_modified") if prev else None
            plans.append(_ListPlan(name, link, since, ttl, self._mapped(str(link.get("remediation", "ban")))))
        return plans

    def _commit(
        self,
        parsed: ParsedStream,
        plans: list[_ListPlan],
        fetched: Sequence[Blocklist | CapiError],
        startup: bool,
        started: float,
    ) -> RefreshReport:
        """Applies the stream and the downloaded lists as one batch, then saves the snapshot.

        The stream answer is applied even if a blocklist failed: CAPI has moved this machine's
        stream position, so dropping the delta would lose it. A failed list keeps its content.
        """
        adds: list[tuple[str, str, float, str]] = []
        removes: list[tuple[str, str | None, str | None]] = []
        updated: list[str] = []
        errors: list[str] = []
        state = {name: dict(info) for name, info in self.state.lists.items()}
        seen = {p.name for p in plans}
        for plan, got in zip(plans, fetched, strict=True):
            if isinstance(got, CapiError):
                log.warning("blocklist %s not refreshed (its previous content stays): %s", plan.name, got)
                errors.append(f"blocklist {plan.name}: {got}")
                continue
            prev = state.get(plan.name)
            if not got.modified and prev is not None:
                continue
            origin = f"lists:{plan.name}"
            if prev is not None:
                removes.extend((v, origin, None) for v in prev.get("values", []))
            adds.extend((v, plan.remediation, plan.ttl, origin) for v in got.values)
            state[plan.name] = {
                "last_modified": got.last_modified,
                "remediation": plan.remediation,
                "values": got.values,
            }
            updated.append(plan.name)
        removed = [n for n in state if n not in seen]
        for name in removed:
            removes.extend((v, f"lists:{name}", None) for v in state.pop(name).get("values", []))
        result = self.index.apply(add=adds, remove=removes, stream=parsed, fallback=self.fallback, strict=False)
        self.state.startup_done = True
        self.state.last_refresh = self.clock()
        self.state.lists = state
        self._save()
        return RefreshReport(
            performed=True,
            startup=startup,
            added=result.added,
            deleted=result.removed,
            skipped=result.skipped,
            lists_updated=tuple(updated),
            lists_removed=tuple(removed),
            duration=time.perf_counter() - started,
            next_refresh_at=self.next_refresh_at,
            error="; ".join(errors) or None,
        )

    # -- persistence ---------------------------------------------------------------------------

    def _save(self) -> None:
        if self.snapshot_path is None:
            return
        meta = orjson.dumps(
            {
                "startup_done": self.state.startup_done,
                "last_refresh": self.state.last_refresh,
                "lists": self.state.lists,
            }
        )
        try:
            self.index.save(self.snapshot_path, metadata=meta)
        except OSError as e:
            raise StorageError(f"cannot write the decision snapshot {self.snapshot_path}: {e}") from None

    def _load(self) -> None:
        assert self.snapshot_path is not None
        try:
            index, meta = DecisionIndex.load_with_metadata(self.snapshot_path)
            doc = orjson.loads(meta) if meta else {}
        except (SnapshotError, orjson.JSONDecodeError, OSError) as e:
            log.warning(
                "ignoring the unreadable snapshot %s (%s): a startup pull will rebuild it", self.snapshot_path, e
            )
            return
        if index.priorities != self.priorities:
            log.warning(
                "snapshot priorities %s differ from %s: a startup pull will rebuild it",
                index.priorities,
                self.priorities,
            )
            return
        self.index = index
        self.state = _State(
            startup_done=bool(doc.get("startup_done")),
            last_refresh=float(doc.get("last_refresh", 0.0)),
            lists=dict(doc.get("lists", {})),
        )

    def stats(self) -> dict[str, Any]:
        """Index counts, refresh state and answers by (origin, remediation)."""
        return {
            "index": self.index.stats(),
            "last_refresh": self.state.last_refresh,
            "next_refresh_at": self.next_refresh_at,
            "lists": sorted(self.state.lists),
            "answers": {f"{o}/{r}": n for (o, r), n in sorted(self.counters.items())},
        }


class RemediationEngine(_Engine[CapiClient | LapiClient]):
    """Remediation answers from a CAPI or LAPI source, with blocklists, persistence and counters.

    Args:
        source: a ``CapiClient`` or a ``LapiClient`` (None: see ``follow``).
        priorities: remediations from most to least severe (default ban > captcha).
        fallback: what an unknown decision type becomes (default captcha, as CrowdSec's PHP engine).
        bouncing_level: ``normal``; ``flex`` (ban becomes captcha); ``disabled`` (always bypass).
        min_interval: seconds between refreshes (default: the vendor's 2 hours for CAPI, none for LAPI).
        snapshot_path: where to save the index and stream state after each refresh.
        clock: Unix time source.
    """

    def refresh_decisions(self, force: bool = False) -> RefreshReport:
        """Pulls the stream (startup, then deltas) and the blocklists; applies them as one batch.

        The stream's raw bytes are read by the native parser (no Python objects per decision).
        A failed stream pull changes nothing and says why in the report; the last good decisions
        keep being served.
        """
        source = self._refresher()
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
            plans = self._list_plans(parsed)
            return self._commit(parsed, plans, [self._fetch(source, p) for p in plans], startup, started)

    @staticmethod
    def _fetch(source: CapiClient | LapiClient, plan: _ListPlan) -> Blocklist | CapiError:
        try:
            return source.fetch_blocklist(plan.link, if_modified_since=plan.since)
        except CapiError as e:
            return e
