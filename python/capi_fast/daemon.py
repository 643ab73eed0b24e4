"""``capi-fast run --config FILE``: refresh, keep the packet filter in step, write the snapshot.

One loop: refresh the engine (a LAPI stream or CAPI), sync the firewall by deltas
(``FirewallSync``), push usage metrics when due, log one line with counts and timings, then wait
the refresh interval (backing off after failures, as ``capi_fast.refresher`` does). SIGTERM or
SIGINT stops it cleanly (a refresh in progress finishes; the table, sets and rules it created
are removed when ``firewall.cleanup`` is true); SIGHUP reads the configuration again and
rebuilds from it (a configuration that no longer reads is logged and the old one kept).
A failed firewall transaction is logged and the next sync loads everything again.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from capi_fast.client import CapiClient
from capi_fast.daemon_config import DaemonConfig, FirewallConfig, load_config
from capi_fast.engine import RemediationEngine
from capi_fast.errors import CapiFastError, ConfigurationError
from capi_fast.firewall import Backend, FirewallSync
from capi_fast.ipset import IpsetBackend
from capi_fast.lapi import LapiClient
from capi_fast.nftables import NftablesBackend
from capi_fast.refresher import RefreshSchedule
from capi_fast.storage import FileStorage

__all__ = ["Daemon"]

log = logging.getLogger("capi_fast.daemon")


def _backend(fw: FirewallConfig) -> Backend | None:
    prefix = ("ip", "netns", "exec", fw.netns) if fw.netns else ()
    if fw.backend == "nftables":
        return NftablesBackend(
            fw.name,
            fw.remediations,
            hooks=fw.hooks,
            action=fw.action,
            log_prefix=fw.log_prefix,
            command=(*prefix, "nft"),
        )
    if fw.backend == "ipset":
        return IpsetBackend(
            fw.name,
            fw.remediations,
            hooks=fw.hooks,
            action=fw.action,
            log_prefix=fw.log_prefix,
            ipset=(*prefix, "ipset"),
            iptables=(*prefix, "iptables"),
            ip6tables=(*prefix, "ip6tables"),
        )
    return None


class Daemon:
    """The refresh-and-sync loop of ``capi-fast run``.

    Args:
        config_path: the TOML file (``capi_fast.daemon_config``).
        wait: ``wait(seconds)`` returns True to stop (default: the stop event, which SIGTERM sets).
    """

    def __init__(self, config_path: str, wait: Callable[[float], bool] | None = None) -> None:
        self.config_path = config_path
        self.config: DaemonConfig = load_config(config_path)
        self.stop_event = threading.Event()
        self._reload = False
        self._wait = wait or self.stop_event.wait
        self._build()

    def _build(self) -> None:
        c = self.config
        logging.getLogger("capi_fast").setLevel(c.log_level.upper())
        source: LapiClient | CapiClient
        if c.lapi_url:
            source = LapiClient(c.lapi_url, c.api_key or "", user_agent="capi-fast-daemon")
        else:
            storage = FileStorage(c.home)
            creds = storage.load_credentials()
            try:
                settings = json.loads((c.home / "cli.json").read_text())
                scenarios, prefix = list(settings["scenarios"]), str(settings.get("prefix") or "")
            except (OSError, ValueError, KeyError, TypeError):
                scenarios, prefix = [], ""
            if creds is None or not scenarios:
                raise ConfigurationError(f"no CAPI machine in {c.home}: run `capi-fast --home {c.home} register` first")
            source = CapiClient(
                user_agent="capi-fast-daemon",
                scenarios=scenarios,
                storage=storage,
                machine_id_prefix=prefix,
                base_url=c.capi_url or creds.base_url,
            )
        self.source = source
        self.engine = RemediationEngine(source, snapshot_path=c.snapshot, metrics_interval=c.metrics_interval)
        self.backend = _backend(c.firewall)
        self.firewall = (
            None
            if self.backend is None
            else FirewallSync(lambda: self.engine.index, self.backend, c.firewall.remediations)
        )
        self.schedule = RefreshSchedule(self.engine._interval(c.interval), 0.1)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        self.stop_event.set()  # wakes the wait; the loop tells a reload from a stop

    def once(self) -> bool:
        """One refresh and sync; whether both went well. Never raises."""
        ok = True
        started = time.perf_counter()
        try:
            r = self.engine.refresh_decisions()
        except Exception as e:  # the loop never dies: logged, retried sooner
            log.error("refresh failed: %s: %s", type(e).__name__, e)
            return False
        line = (
            f"refresh: +{r.added} -{r.deleted} decisions ({len(self.engine.index)} held) in {r.duration:.2f} s"
            if r.performed
            else f"refresh: not performed ({r.error})"
        )
        ok = r.performed or r.error == "too soon"
        if self.firewall is not None and self.engine.health().last_good_refresh is None:
            # No decisions yet (the source is down and there is no snapshot): loading now would
            # empty what the kernel holds from an earlier run. Leave it until there is something.
            line += "; firewall left as it is (no decisions yet)"
        elif self.firewall is not None:
            try:
                s = self.firewall.sync()
                kind = "full load" if s.full else "delta"
                line += f"; firewall {kind}: +{s.added} -{s.deleted} ({s.elements} elements) in {s.seconds:.3f} s"
            except CapiFastError as e:
                ok = False
                line += f"; firewall failed ({e}); the next sync loads everything"
        self.engine.push_usage_metrics(force=False)
        log.info("%s [%.2f s]", line, time.perf_counter() - started)
        return ok

    def run(self) -> int:
        """Runs until SIGTERM/SIGINT (or ``wait`` says stop); the exit code."""
        handlers = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            log.info("capi-fast daemon started (%s)", self.config_path)
            while True:
                ok = self.once()
                delay = self.schedule.next_delay(ok)
                stop = self._wait(delay)
                if self._reload:
                    self._reload = False
                    self.stop_event.clear()
                    self._reread()
                    continue
                if stop or self.stop_event.is_set():
                    break
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            self._close()
        log.info("capi-fast daemon stopped")
        return 0

    def _reread(self) -> None:
        try:
            config = load_config(self.config_path)
        except CapiFastError as e:
            log.error("configuration not reloaded, the old one stays: %s", e)
            return
        self._close(cleanup=config.firewall != self.config.firewall)
        self.config = config
        self._build()
        log.info("configuration reloaded from %s", self.config_path)

    def _close(self, cleanup: bool | None = None) -> None:
        if self.backend is not None and (self.config.firewall.cleanup if cleanup is None else cleanup):
            try:
                self.backend.remove()
            except CapiFastError as e:
                log.error("could not remove the firewall's table/sets: %s", e)
        self.source.close()
