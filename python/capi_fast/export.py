"""Renders CIDR lists for packet filters: ``nft -f``, ``ipset restore``, or one per line."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["FORMATS", "check_set_name", "render"]

FORMATS = ("plain", "nft", "ipset")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,30}$")
_CHUNK = 4096


def check_set_name(name: str) -> str:
    """``name`` if nft and ipset accept ``<name>_v4``/``<name>_v6`` as set names, else ValueError."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"set name {name!r} must be a letter then up to 30 letters, digits, '_' or '-'")
    return name


def render(
    fmt: str,
    name: str,
    v4: Sequence[str] | None,
    v6: Sequence[str] | None,
    *,
    allow_empty: bool = False,
) -> str:
    """The script loading ``v4``/``v6`` CIDRs into sets named ``<name>_v4``/``<name>_v6``.

    Scripts replace a set's content atomically from the tool's point of view (``flush`` then
    ``add`` in one ``nft -f`` transaction; ``ipset restore`` of a create/flush/add script). A
    family given as None is not touched at all. A family given an empty list has its set created
    if missing but never flushed, unless ``allow_empty``: a script must not empty a live ban set
    because nothing was found to put in it.

    Raises:
        ValueError: unknown format, or a set name the tools would refuse.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    check_set_name(name)
    if fmt == "plain":
        return "".join(f"{c}\n" for c in (*(v4 or ()), *(v6 or ())))
    lines = ["add table inet capi_fast"] if fmt == "nft" else []
    for family, cidrs in (("4", v4), ("6", v6)):
        if cidrs is None:
            continue
        s = f"{name}_v{family}"
        refill = bool(cidrs) or allow_empty
        if fmt == "nft":
            lines.append(f"add set inet capi_fast {s} {{ type ipv{family}_addr; flags interval; auto-merge; }}")
            if refill:
                lines.append(f"flush set inet capi_fast {s}")
            for i in range(0, len(cidrs), _CHUNK):
                lines.append(f"add element inet capi_fast {s} {{ {', '.join(cidrs[i : i + _CHUNK])} }}")
        else:
            inet = "inet" if family == "4" else "inet6"
            lines.append(f"create {s} hash:net family {inet} maxelem {max(65536, 2 * len(cidrs))} -exist")
            if refill:
                lines.append(f"flush {s}")
            lines.extend(f"add {s} {c}" for c in cidrs)
    return "\n".join(lines) + "\n"
