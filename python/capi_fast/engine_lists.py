"""The engine's refresh state, and what one refresh does with the lists it downloaded.

The state is saved in the snapshot's metadata. A refresh turns its list downloads into index
operations and report lines: blocklists renewed on 304 or replaced, allowlists keyed by CAPI's
id, lists no longer published removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capi_fast.lists import Allowlist, AllowlistLink, Blocklist, BlocklistLink

__all__ = ["ALLOW", "ListBatch", "ListPlan", "RefreshState", "allow_key", "state_from"]

#: The remediation of allowlist entries: it outranks every other and answers ``bypass``.
ALLOW = "allow"


@dataclass(frozen=True)
class ListPlan:
    """A list to download: its link and the Last-Modified we hold."""

    link: BlocklistLink | AllowlistLink
    since: str | None

    @property
    def name(self) -> str:
        """The list's name."""
        return self.link.name


@dataclass
class RefreshState:
    """Where the engine stands: startup pull done, last refresh, and each list it holds."""

    startup_done: bool = False
    last_refresh: float = 0.0
    # blocklist name -> {"last_modified", "remediation", "values"}
    lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "id:<id>" (or "name:<name>") -> {"name", "last_modified", "entries": [[value, expires_at or None], ...]}
    allowlists: dict[str, dict[str, Any]] = field(default_factory=dict)


def state_from(doc: Any) -> RefreshState:
    """The refresh state saved in a snapshot's metadata; raises TypeError/ValueError on a wrong shape."""
    if not isinstance(doc, dict):
        raise TypeError(f"metadata is a {type(doc).__name__}, not an object")
    lists, allowlists = doc.get("lists", {}), doc.get("allowlists", {})
    for name, table in (("lists", lists), ("allowlists", allowlists)):
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise TypeError(f"{name} is not an object of objects")
    last = doc.get("last_refresh", 0.0)
    if isinstance(last, bool) or not isinstance(last, int | float):
        raise TypeError("last_refresh is not a number")
    return RefreshState(
        startup_done=bool(doc.get("startup_done")),
        last_refresh=float(last),
        lists={str(k): dict(v) for k, v in lists.items()},
        allowlists={str(k): dict(v) for k, v in allowlists.items()},
    )


def allow_key(link: AllowlistLink) -> str:
    """Allowlists are told apart by CAPI's id (crowdsec stores them by id): two may share a name."""
    return f"id:{link.id}" if link.id else f"name:{link.name}"


class ListBatch:
    """The index operations of one refresh's list downloads, and what to report of them."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.adds: list[tuple[str, str, float | None, str]] = []
        self.removes: list[tuple[str, str | None, str | None]] = []
        self.updated: list[str] = []
        self.renewed: list[str] = []
        self.removed: list[str] = []
        self.errors: list[str] = []
        self.skipped = 0
        self.allow_names_dropped: set[str] = set()
        self.allow_written: set[str] = set()

    def drop_blocklist(self, name: str, info: dict[str, Any]) -> None:
        """Removes a blocklist that left the links."""
        self.removes.extend((v, f"lists:{name}", info.get("remediation")) for v in info.get("values", []))
        self.removed.append(name)

    def blocklist(
        self, link: BlocklistLink, got: Blocklist, state: dict[str, dict[str, Any]], remediation: str
    ) -> None:
        """A downloaded blocklist: replaces its values, or on a 304 re-adds them with a fresh duration."""
        prev = state.get(link.name) or {}
        origin = f"lists:{link.name}"
        renewed = not got.modified and bool(prev)  # a 304: still published, re-added with a fresh duration
        values = list(prev.get("values", [])) if renewed else got.values
        if not renewed:
            self.skipped += got.skipped
        if prev and (got.modified or prev.get("remediation") != remediation):
            self.removes.extend((v, origin, prev.get("remediation")) for v in prev.get("values", []))
        self.adds.extend((v, remediation, link.duration, origin) for v in values)
        last_modified = prev.get("last_modified") if renewed else got.last_modified
        state[link.name] = {"last_modified": last_modified, "remediation": remediation, "values": values}
        (self.renewed if renewed else self.updated).append(link.name)

    def allowlist(self, link: AllowlistLink, got: Allowlist, state: dict[str, dict[str, Any]]) -> None:
        """A downloaded allowlist: its unexpired entries replace the previous ones (a 304 keeps them)."""
        key = allow_key(link)
        prev = state.get(key)
        if not got.modified and prev is not None:
            return  # entries carry their own expiry: nothing to renew
        if prev is not None:
            self.drop_allow(prev)
        entries = []
        for value, expires in got.entries:
            if expires is not None and expires <= self.now:
                self.skipped += 1
                continue
            entries.append([value, expires])
        state[key] = {"name": link.name, "last_modified": got.last_modified, "entries": entries}
        self.add_allow(key, state[key])
        self.skipped += got.skipped
        self.updated.append(link.name)

    def drop_allow(self, info: dict[str, Any]) -> None:
        """Removes an allowlist's entries (a list of the same name re-adds its own: see ``restore_allow``)."""
        name = str(info.get("name", ""))
        self.removes.extend((e[0], f"lists:{name}", ALLOW) for e in info.get("entries", []))
        self.allow_names_dropped.add(name)

    def add_allow(self, key: str, info: dict[str, Any]) -> None:
        """Adds an allowlist's unexpired entries as ``allow`` decisions."""
        origin = f"lists:{info.get('name', '')}"
        for value, expires in info.get("entries", []):
            if expires is None or expires > self.now:
                self.adds.append((value, ALLOW, None if expires is None else expires - self.now, origin))
        self.allow_written.add(key)

    def restore_allow(self, state: dict[str, dict[str, Any]]) -> None:
        """Re-adds the entries of unchanged allowlists sharing a name with one whose entries were removed.

        Entries of lists of one name share the origin ``lists:<name>``; removals apply before
        additions, so re-adding keeps a value another list of that name still allows.
        """
        for key, info in state.items():
            if key not in self.allow_written and info.get("name") in self.allow_names_dropped:
                self.add_allow(key, info)
