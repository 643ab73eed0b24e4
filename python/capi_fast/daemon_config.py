"""The daemon's configuration file (TOML, read with the standard library), checked key by key.

```toml
[source]                      # where decisions come from: a LAPI ...
lapi_url = "http://127.0.0.1:8080/"
api_key_file = "/etc/capi-fast/lapi.key"     # mode 0600; or api_key = "..."
# ... or CAPI, with the credentials `capi-fast register` saved in `home`:
# capi = true
# home = "/var/lib/capi-fast"
interval = 10                 # seconds between refreshes (default: 10 from a LAPI, 2 h from CAPI)

[snapshot]
path = "/var/lib/capi-fast/decisions.snap"   # followers (web workers) answer from it

[firewall]
backend = "nftables"          # or "ipset", or "none"
name = "capi_fast"            # nftables table / ipset name prefix
remediations = ["ban"]        # a set per remediation and family
hooks = ["input"]             # a drop rule per hook ("input", "forward"); [] for sets only
action = "drop"               # or "reject"
log_prefix = "capi-fast: "    # optional
timeouts = true               # nftables: elements time out when their decisions expire
                              # (plus three refresh intervals, 2 min at least), even with the
                              # daemon stopped (default true)
cleanup = true                # remove the table/sets/rules on stop
netns = "fw"                  # optional: run the firewall tools in this network namespace
verify_every = 600            # seconds between read-backs of the kernel's sets (0: never);
                              # a difference (someone flushed them) makes the next sync a full load

[signals]                     # optional: send to CAPI the signals other processes drop into
inbox = "/var/lib/capi-fast/inbox"          # this directory (capi_fast.SignalInbox), with the
                              # CAPI machine registered in [source] home (whatever the source)
spool = "/var/lib/capi-fast/signals.spool"  # default: signals.spool in that home
check_every = 2               # seconds between looks at the inbox

[metrics]
interval = 1800               # usage metrics to a LAPI; 0 turns them off

[log]
level = "info"
```

Every mistake is a ``ConfigurationError`` naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capi_fast.errors import ConfigurationError, StorageError
from capi_fast.files import read_private
from capi_fast.firewall import Backend
from capi_fast.ipset import IpsetBackend
from capi_fast.nftables import NftablesBackend

__all__ = ["DaemonConfig", "FirewallConfig", "SignalsConfig", "backend_of", "load_config"]

_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class FirewallConfig:
    """The ``[firewall]`` table."""

    backend: str = "none"
    name: str = "capi_fast"
    remediations: tuple[str, ...] = ("ban",)
    hooks: tuple[str, ...] = ("input",)
    action: str = "drop"
    log_prefix: str | None = None
    timeouts: bool | None = None  # None: the backend's default (nftables: on; ipset has none)
    cleanup: bool = True
    netns: str | None = None
    verify_every: float = 600.0

    @property
    def identity(self) -> tuple[str, str, str | None]:
        """What names the kernel objects: two configurations with the same one share them."""
        return (self.backend, self.name, self.netns)


@dataclass(frozen=True)
class SignalsConfig:
    """The ``[signals]`` table (``inbox`` None: the daemon sends no signals)."""

    inbox: Path | None = None
    spool: Path | None = None
    check_every: float = 2.0


@dataclass(frozen=True)
class DaemonConfig:
    """The whole file."""

    path: Path
    lapi_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    capi: bool = False
    home: Path = Path("/var/lib/capi-fast")
    capi_url: str | None = None
    interval: float | None = None
    snapshot: Path | None = None
    firewall: FirewallConfig = FirewallConfig()
    signals: SignalsConfig = SignalsConfig()
    metrics_interval: float = 1800.0
    log_level: str = "info"


class _Table:
    """One TOML table, read key by key; unknown keys are refused (a typo must not pass silently)."""

    def __init__(self, doc: dict[str, Any], name: str, where: Path) -> None:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise ConfigurationError(f"{where}: [{name}] must be a table")
        self.d, self.name, self.where = value, name, where
        self.used: set[str] = set()

    def _bad(self, key: str, what: str) -> ConfigurationError:
        return ConfigurationError(f"{self.where}: {self.name}.{key} must be {what}, got {self.d[key]!r}")

    def get(self, key: str, kind: type | tuple[type, ...], what: str, default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.d:
            return default
        value = self.d[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            raise self._bad(key, what)
        return value

    def names(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, "a list of names", list(default))
        if not all(isinstance(v, str) and v for v in value):
            raise self._bad(key, "a list of names")
        return tuple(value)

    def seconds(self, key: str, default: float | None, zero: bool = False) -> float | None:
        value = self.get(key, (int, float), "a number of seconds", default)
        if value is not None and not (0 <= value < float("inf") if zero else 0 < value < float("inf")):
            raise self._bad(key, "a number of seconds" + (" (0 or more)" if zero else " above 0"))
        return None if value is None else float(value)

    def done(self) -> None:
        unknown = sorted(set(self.d) - self.used)
        if unknown:
            raise ConfigurationError(f"{self.where}: unknown key {self.name}.{unknown[0]}")


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _key_file(path: Path, where: Path) -> str:
    try:
        key = read_private(path, "source.api_key_file")
    except StorageError as e:
        raise ConfigurationError(f"{where}: {e}") from None
    if not key:
        raise ConfigurationError(f"{where}: source.api_key_file {path} is empty")
    return key


def load_config(path: str | os.PathLike[str]) -> DaemonConfig:
    """Reads and checks the daemon's configuration file."""
    where = Path(path)
    try:
        doc = tomllib.loads(where.read_text())
    except OSError as e:
        raise ConfigurationError(f"cannot read {where}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"{where}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"source", "snapshot", "firewall", "signals", "metrics", "log"})
    if unknown:
        raise ConfigurationError(f"{where}: unknown table [{unknown[0]}]")

    src = _Table(doc, "source", where)
    lapi_url = src.get("lapi_url", str, "an http(s) URL")
    api_key = src.get("api_key", str, "a string")
    key_file = src.get("api_key_file", str, "a file path")
    capi = src.get("capi", bool, "true or false", False)
    home = Path(src.get("home", str, "a directory path", "/var/lib/capi-fast"))
    capi_url = src.get("capi_url", str, "an http(s) URL")
    interval = src.seconds("interval", None)
    if interval is not None and interval < 1:
        raise ConfigurationError(f"{where}: source.interval must be at least 1 second, got {interval!r}")
    src.done()
    if bool(lapi_url) == bool(capi):
        raise ConfigurationError(f"{where}: [source] needs either lapi_url or capi = true (one of them)")
    if lapi_url:
        if key_file:
            api_key = _key_file(Path(key_file), where)
        if not api_key:
            raise ConfigurationError(f"{where}: source.api_key_file (or api_key) is required with lapi_url")

    snap = _Table(doc, "snapshot", where)
    snapshot = snap.get("path", str, "a file path")
    snap.done()

    fw = _Table(doc, "firewall", where)
    firewall = FirewallConfig(
        backend=fw.get("backend", str, '"nftables", "ipset" or "none"', "none"),
        name=fw.get("name", str, "a name", "capi_fast"),
        remediations=fw.names("remediations", ("ban",)),
        hooks=fw.names("hooks", ("input",)),
        action=fw.get("action", str, '"drop" or "reject"', "drop"),
        log_prefix=fw.get("log_prefix", str, "a string"),
        timeouts=fw.get("timeouts", bool, "true or false"),
        cleanup=fw.get("cleanup", bool, "true or false", True),
        netns=fw.get("netns", str, "a network namespace name"),
        verify_every=fw.seconds("verify_every", 600.0, zero=True) or 0.0,
    )
    fw.done()
    if firewall.backend not in ("nftables", "ipset", "none"):
        raise ConfigurationError(f'{where}: firewall.backend must be "nftables", "ipset" or "none"')
    if firewall.netns is not None and not firewall.netns.strip():
        raise ConfigurationError(f"{where}: firewall.netns must name a network namespace (leave it out for this one)")
    try:
        backend_of(firewall)  # the backend's own checks (names, hooks, action, log prefix), before any I/O
    except ConfigurationError as e:
        raise ConfigurationError(f"{where}: [firewall] {e}") from None

    sig = _Table(doc, "signals", where)
    inbox, spool = sig.get("inbox", str, "a directory path"), sig.get("spool", str, "a directory path")
    signals = SignalsConfig(
        inbox=None if inbox is None else Path(inbox),
        spool=None if spool is None else Path(spool),
        check_every=sig.seconds("check_every", 2.0) or 2.0,
    )
    sig.done()
    if signals.spool is not None and signals.inbox is None:
        raise ConfigurationError(f"{where}: signals.spool needs signals.inbox (where the signals come from)")

    met = _Table(doc, "metrics", where)
    metrics_interval = met.seconds("interval", 1800.0, zero=True)
    met.done()

    lg = _Table(doc, "log", where)
    level = lg.get("level", str, f"one of {_LEVELS}", "info")
    lg.done()
    if level not in _LEVELS:
        raise ConfigurationError(f"{where}: log.level must be one of {_LEVELS}, got {level!r}")

    return DaemonConfig(
        path=where,
        lapi_url=lapi_url,
        api_key=api_key,
        capi=capi,
        home=home,
        capi_url=capi_url,
        interval=interval,
        snapshot=None if snapshot is None else Path(snapshot),
        firewall=firewall,
        signals=signals,
        metrics_interval=1800.0 if metrics_interval is None else metrics_interval,
        log_level=level,
    )


def backend_of(fw: FirewallConfig, grace: float = 120.0) -> Backend | None:
    """The packet-filter backend ``[firewall]`` describes (None for ``backend = "none"``).

    ``grace``: how long nftables elements outlive their decisions (see ``NftablesBackend``).
    """
    prefix = ("ip", "netns", "exec", fw.netns) if fw.netns else ()
    if not fw.remediations:
        raise ConfigurationError("remediations must name at least one remediation")
    options = {"hooks": fw.hooks, "action": fw.action, "log_prefix": fw.log_prefix}
    if fw.backend == "nftables":
        return NftablesBackend(
            fw.name,
            fw.remediations,
            timeouts=fw.timeouts is not False,
            grace=grace,
            command=(*prefix, "nft"),
            **options,  # type: ignore[arg-type]
        )
    if fw.backend == "ipset":
        if fw.timeouts:
            raise ConfigurationError("timeouts are an nftables option (ipset's sets are synced without them)")
        return IpsetBackend(
            fw.name,
            fw.remediations,
            ipset=(*prefix, "ipset"),
            iptables=(*prefix, "iptables"),
            ip6tables=(*prefix, "ip6tables"),
            **options,  # type: ignore[arg-type]
        )
    return None
