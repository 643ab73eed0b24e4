"""Renders CIDR lists for packet filters: ``nft -f``, ``ipset restore``, or one per line."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["FORMATS", "render"]

FORMATS = ("plain", "nft", "ipset")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,30}$")
_CHUNK = 4096


def render(fmt: str, name: str, v4: Sequence[str], v6: Sequence[str]) -> str:
    """The script loading ``v4``/``v6`` CIDRs into sets named ``<name>_v4``/``<name>_v6``.

    Scripts replace the sets' content atomically from the tool's point of view (``flush`` then
    ``add`` in one ``nft -f`` transaction; ``ipset restore`` of a create/flush/add script).

    Raises:
        ValueError: unknown format, or a set name the tools would refuse.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"set name {name!r} must be a letter then up to 30 letters, digits, '_' or '-'")
    if fmt == "plain":
        return "".join(f"{c}\n" for c in (*v4, *v6))
    if fmt == "nft":
        lines = ["add table inet capi_fast"]
        for fam, cidrs in (("ipv4", v4), ("ipv6", v6)):
            s = f"{name}_v{fam[-1]}"
            lines.append(f"add set inet capi_fast {s} {{ type {fam}_addr; flags interval; auto-merge; }}")
            lines.append(f"flush set inet capi_fast {s}")
            for i in range(0, len(cidrs), _CHUNK):
                lines.append(f"add element inet capi_fast {s} {{ {', '.join(cidrs[i : i + _CHUNK])} }}")
        return "\n".join(lines) + "\n"
    lines = []
    for fam, cidrs in (("inet", v4), ("inet6", v6)):
        s = f"{name}_v{'4' if fam == 'inet' else '6'}"
        lines.append(f"create {s} hash:net family {fam} maxelem {max(65536, 2 * len(cidrs))} -exist")
        lines.append(f"flush {s}")
        lines.extend(f"add {s} {c}" for c in cidrs)
    return "\n".join(lines) + "\n"
