"""Blocklists and allowlists: the stream answer's links, and the bodies downloaded from them.

CAPI's v3 stream answer carries ``links.blocklists`` (lists the machine subscribed to in the
console: IPs or ranges to remediate for the link's ``duration``) and ``links.allowlists`` (IPs
or ranges that must never be remediated). The rules follow crowdsec (``pkg/apiserver/apic.go``:
a blocklist link without a scope or a duration is skipped; a list's decisions carry the link's
scope) and CrowdSec's PHP remediation engine (allowlist lines become "allow" decisions expiring
at the line's ``expiration``). A malformed link, line or value is skipped and counted; the rest
is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from capi_fast.signals import parse_rfc3339
from capi_fast.stream import parse_go_duration

__all__ = [
    "Allowlist",
    "AllowlistLink",
    "Blocklist",
    "BlocklistLink",
    "allowlist_links",
    "blocklist_links",
    "parse_allowlist",
    "parse_blocklist",
]

#: Longest list name used (the index's origin ``lists:<name>`` must stay short).
MAX_NAME = 128
#: Most links of each kind taken from one answer (CAPI serves a handful; the rest are skipped and
#: counted, so a hostile answer cannot make a refresh download without end).
MAX_LINKS = 1000
_SCOPES = ("ip", "range")
_L = TypeVar("_L")


@dataclass(frozen=True)
class BlocklistLink:
    """A subscribed blocklist, from ``links.blocklists``.

    Attributes:
        name: the list's name; its decisions live under origin ``lists:<name>``.
        url: where to download it (one value a line).
        remediation: what its values get (``ban``...).
        scope: ``ip`` (single addresses) or ``range`` (CIDR networks).
        duration: seconds a download's decisions last (renewed by every refresh that finds the
            list still published).
    """

    name: str
    url: str
    remediation: str
    scope: str
    duration: float


@dataclass(frozen=True)
class AllowlistLink:
    """A subscribed allowlist, from ``links.allowlists``.

    Attributes:
        name: the list's name; its entries live under origin ``lists:<name>``.
        url: where to download it (JSON lines).
        id: CAPI's id of the list, if given.
    """

    name: str
    url: str
    id: str = ""


@dataclass(frozen=True)
class Blocklist:
    """A blocklist download.

    Attributes:
        modified: False when CAPI answered 304 Not Modified (``values`` is then empty).
        values: the IPs and CIDRs, one per non-empty line.
        last_modified: the Last-Modified header, to pass back as ``if_modified_since``.
        skipped: lines left out (a network in a list whose link promised single addresses).
    """

    modified: bool
    values: list[str]
    last_modified: str | None
    skipped: int = 0


@dataclass(frozen=True)
class Allowlist:
    """An allowlist download.

    Attributes:
        modified: False when the server answered 304 Not Modified (``entries`` is then empty).
        entries: ``(value, expires_at)`` pairs: an IP or CIDR, and the Unix time its entry ends
            (None: while the list is subscribed).
        skipped: lines that were not an entry CAPI's format allows (bad JSON, scope, value type
            or expiration).
        last_modified: the Last-Modified header, to pass back as ``if_modified_since``.
    """

    modified: bool
    entries: list[tuple[str, float | None]] = field(default_factory=list)
    skipped: int = 0
    last_modified: str | None = None


def _name(value: Any) -> str | None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        return None
    return value


def _url(value: Any) -> str | None:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or not value.isprintable():
        return None
    return value


def _items(links: Any, key: str) -> list[Any]:
    """The links of one kind; ValueError when the member is there but not a list of them."""
    if not isinstance(links, dict):
        raise ValueError("links is not an object")
    items = links.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise ValueError(f"links.{key} is not a list")
    return items


def _capped(out: list[_L], skipped: int) -> tuple[list[_L], int]:
    return out[:MAX_LINKS], skipped + max(0, len(out) - MAX_LINKS)


def blocklist_links(links: Any) -> tuple[list[BlocklistLink], int]:
    """The usable blocklist links of a stream answer's ``links`` member, and how many were skipped.

    A link needs a name, an http(s) url, a remediation, a scope (``ip`` or ``range``) and a Go
    duration; crowdsec skips a link without a scope or a duration, and so does this.
    A second link with a name already given is skipped (a list's state is kept by name); past
    ``MAX_LINKS`` links the rest are skipped. ValueError when ``links`` is not a links object.
    """
    out: list[BlocklistLink] = []
    names: set[str] = set()
    skipped = 0
    for item in _items(links, "blocklists"):
        try:
            if not isinstance(item, dict):
                raise ValueError("not an object")
            name, url = _name(item.get("name")), _url(item.get("url"))
            remediation, scope = _name(item.get("remediation")), item.get("scope")
            if name is None or url is None or remediation is None:
                raise ValueError("name, url or remediation")
            if not isinstance(scope, str) or scope.lower() not in _SCOPES:
                raise ValueError("scope")
            duration = parse_go_duration(item.get("duration"))  # type: ignore[arg-type]
            if name in names:
                raise ValueError("a second link of the same name")
        except ValueError:
            skipped += 1
            continue
        names.add(name)
        out.append(BlocklistLink(name, url, remediation, scope.lower(), duration))
    return _capped(out, skipped)


def allowlist_links(links: Any) -> tuple[list[AllowlistLink], int]:
    """The usable allowlist links of a stream answer's ``links`` member, and how many were skipped.

    Past ``MAX_LINKS`` links the rest are skipped.
    """
    out: list[AllowlistLink] = []
    skipped = 0
    for item in _items(links, "allowlists"):
        name = _name(item.get("name")) if isinstance(item, dict) else None
        url = _url(item.get("url")) if isinstance(item, dict) else None
        if name is None or url is None:
            skipped += 1
            continue
        lid = item.get("id")
        out.append(AllowlistLink(name, url, lid if isinstance(lid, str) else ""))
    return _capped(out, skipped)


def _full_length(value: str) -> bool:
    """True when ``value`` is a single address: no prefix, or the family's full prefix."""
    address, slash, length = value.partition("/")
    return not slash or length == ("128" if ":" in address else "32")


def parse_blocklist(text: str, scope: str = "range") -> tuple[list[str], int]:
    """The values of a blocklist body (one a line; blank and ``#`` lines ignored), and how many were skipped.

    With ``scope="ip"`` a line holding a wider network than one address is skipped: the link
    promised single addresses. The index checks each value's form when it is applied.
    """
    values = []
    skipped = 0
    for line in text.splitlines():
        v = line.strip()
        if not v or v.startswith("#"):
            continue
        if scope == "ip" and not _full_length(v):
            skipped += 1
            continue
        values.append(v)
    return values, skipped


def _expiry(value: Any) -> float | None:
    """Unix time of an RFC 3339 ``expiration``, None for Go's zero time; raises ValueError."""
    if not isinstance(value, str):
        raise ValueError("expiration")
    t = parse_rfc3339(value)
    return None if t.year <= 1 else t.timestamp()  # Go's zero time: no expiration


def parse_allowlist(lines: Iterable[bytes | str]) -> tuple[list[tuple[str, float | None]], int]:
    """Entries of an allowlist body (JSON lines ``{"value", "scope"?, "expiration"?}``), and lines skipped.

    ``scope`` may be ``ip`` or ``range`` (either case; absent means the value's own form
    decides); ``expiration`` is RFC 3339 (a time or date without a zone is UTC, as crowdsec
    reads it), or absent/null for none. Blank lines are ignored.
    """
    entries: list[tuple[str, float | None]] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
            if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
                raise ValueError("value")
            value = doc["value"].strip()
            scope = doc.get("scope")
            if scope is not None and (not isinstance(scope, str) or scope.lower() not in _SCOPES):
                raise ValueError("scope")
            if isinstance(scope, str) and scope.lower() == "ip" and not _full_length(value):
                raise ValueError("an ip-scoped entry holding a network")
            exp = doc.get("expiration")
            entries.append((value, None if exp is None else _expiry(exp)))
        except (orjson.JSONDecodeError, ValueError, TypeError):
            skipped += 1
    return entries, skipped
