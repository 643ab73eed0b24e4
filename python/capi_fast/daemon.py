"""``capi-fast run --config FILE``: refresh, keep the packet filter in step, write the snapshot.

One loop: refresh the engine (a LAPI stream or CAPI), sync the firewall by deltas
(``FirewallSync``), push usage metrics when due, log one line with counts and timings, then wait
the refresh interval (backing off after failures, as ``capi_fast.refresher`` does). SIGTERM or
SIGINT stops it cleanly (a refresh in progress finishes; the table, sets and rules it created
are removed when ``firewall.cleanup`` is true); SIGHUP reads the configuration again and
rebuilds from it (a configuration that no longer reads is logged and the old one kept).
A failed firewall transaction is logged and the next sync loads everything again.

With ``[signals]``, the daemon also sends to CAPI the signals other processes drop into its
inbox (``capi_fast.signal_inbox``): it looks every ``check_every`` seconds, moves them into its
spool and a ``SignalBatcher`` sends them on the vendor's schedule; a stop sends what is queued
(what cannot go stays in the spool for the next start). ``[signals]`` is read at start only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from types import FrameType

from capi_fast.batcher import SignalBatcher
from capi_fast.client import CapiClient
from capi_fast.daemon_config import DaemonConfig, backend_of, load_config
from capi_fast.engine import RemediationEngine
from capi_fast.errors import CapiFastError, ConfigurationError
from capi_fast.firewall import Backend, FirewallSync
from capi_fast.lapi import LapiClient
from capi_fast.refresher import RefreshSchedule
from capi_fast.registration import load_registration
from capi_fast.signal_inbox import SignalInbox
from capi_fast.storage import FileStorage

__all__ = ["Daemon"]

log = logging.getLogger("capi_fast.daemon")


class Daemon:
    """The refresh-and-sync loop of ``capi-fast run``.

    Args:
        config_path: the TOML file (``capi_fast.daemon_config``).
        wait: ``wait(seconds)`` returns True to stop (default: sleep until a signal arrives).
    """

    source: LapiClient | CapiClient
    engine: RemediationEngine
    backend: Backend | None
    firewall: FirewallSync | None
    schedule: RefreshSchedule

    def __init__(self, config_path: str, wait: Callable[[float], bool] | None = None) -> None:
        self.config_path = config_path
        self.config: DaemonConfig = load_config(config_path)
        # Signal handlers only set flags and write a byte here: a handler that took a lock (as
        # Event.set does) could deadlock when a second signal lands while the first holds it.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._reload = False
        self._wait = wait or self._sleep
        self._retire: Backend | None = None  # an earlier configuration's backend, removed once the new one loaded
        self._verified = time.monotonic()
        self.inbox: SignalInbox | None = None
        self.batcher: SignalBatcher | None = None
        self._build(self.config)
        try:
            self._build_signals(self.config)
        except Exception as e:  # signals must not keep the packet filter from starting
            log.error("signals are not relayed this run (fix and restart): %s: %s", type(e).__name__, e)

    def _build(self, c: DaemonConfig, keep_source: bool = False) -> None:
        """Builds the source, engine and firewall of ``c``; nothing is assigned if one fails."""
        logging.getLogger("capi_fast").setLevel(c.log_level.upper())
        if keep_source:
            source, engine = self.source, self.engine
        else:
            source = self._source(c)
            try:
                engine = RemediationEngine(source, snapshot_path=c.snapshot, metrics_interval=c.metrics_interval)
            except Exception:
                source.close()
                raise
        interval = engine._interval(c.interval)
        # Elements outlive their decisions in the kernel by three refresh intervals (two minutes
        # at least), so while the daemon runs, it deletes them itself (see NftablesBackend).
        backend = backend_of(c.firewall, grace=max(120.0, 3 * interval))
        self.source, self.engine, self.backend = source, engine, backend
        self.firewall = (
            None if backend is None else FirewallSync(lambda: engine.index, backend, c.firewall.remediations)
        )
        self.schedule = RefreshSchedule(interval, 0.1)

    def _build_signals(self, c: DaemonConfig) -> None:
        """The inbox and the batcher sending its signals (a CAPI client of their own)."""
        if c.signals.inbox is None:
            return
        inbox = SignalInbox(c.signals.inbox)
        client = self._capi(c)
        try:
            options = {} if c.signals.spool is None else {"path": c.signals.spool}
            batcher = client.signal_batcher(**options)
        except Exception:
            client.close()
            raise
        self.inbox, self.batcher = inbox, batcher

    def drain(self) -> None:
        """Moves what the inbox holds into the spool; never raises (a failure is logged)."""
        if self.inbox is None or self.batcher is None:
            return
        try:
            r = self.inbox.drain(self.batcher.spool)
        except Exception as e:  # the files stay for the next look
            log.error("signal inbox: %s: %s", type(e).__name__, e)
            return
        if r.files:
            log.info(
                "signals: %d taken in from %d files (%d already queued, %d skipped, %d quarantined); %d queued",
                r.signals,
                r.files,
                r.duplicates,
                r.skipped,
                r.quarantined,
                len(self.batcher.spool),
            )
        if r.signals:
            self.batcher.wake()

    @staticmethod
    def _capi(c: DaemonConfig) -> CapiClient:
        """A client of the CAPI machine registered in ``c.home``."""
        storage = FileStorage(c.home)
        creds = storage.load_credentials()
        registered = load_registration(c.home)
        if creds is None or not registered.scenarios:
            raise ConfigurationError(f"no CAPI machine in {c.home}: run `capi-fast --home {c.home} register` first")
        return CapiClient(
            user_agent="capi-fast-daemon",
            scenarios=list(registered.scenarios),
            storage=storage,
            machine_id_prefix=registered.prefix,
            base_url=c.capi_url or creds.base_url,
        )

    @staticmethod
    def _source(c: DaemonConfig) -> LapiClient | CapiClient:
        if c.lapi_url:
            return LapiClient(c.lapi_url, c.api_key or "", user_agent="capi-fast-daemon")
        return Daemon._capi(c)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stopping = True  # never undone by a reload
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes the wait
            os.write(self._wake_w, b"x")

    def _sleep(self, seconds: float) -> bool:
        """Waits ``seconds`` or until a signal arrives; whether one did."""
        woken = bool(select.select([self._wake_r], [], [], seconds)[0])
        if woken:
            os.read(self._wake_r, 4096)
        return woken

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
        loaded = self.config.snapshot is not None and self.engine.snapshot_error is None
        if self.firewall is not None and self.engine.health().last_good_refresh is None and not loaded:
            # No decisions yet (the source is down and there is no snapshot): loading now would
            # empty what the kernel holds from an earlier run. Leave it until there is something.
            line += "; firewall left as it is (no decisions yet)"
        elif self.firewall is not None:
            try:
                full = self._verify_due() and not self.firewall.check()
                if full:
                    line += "; the kernel's sets differ from what was applied (changed by someone else?)"
                s = self.firewall.sync(full=full)
                kind = "full load" if s.full else "delta"
                line += f"; firewall {kind}: +{s.added} -{s.deleted} ({s.elements} elements) in {s.seconds:.3f} s"
                self._retire_old()
            except CapiFastError as e:
                ok = False
                line += f"; firewall failed ({e}); the next sync loads everything"
        self.engine.push_usage_metrics(force=False)
        log.log(logging.INFO if ok else logging.WARNING, "%s [%.2f s]", line, time.perf_counter() - started)
        return ok

    def _verify_due(self) -> bool:
        every = self.config.firewall.verify_every
        if not every or time.monotonic() - self._verified < every:
            return False
        self._verified = time.monotonic()
        return True

    def _retire_old(self) -> None:
        """Removes an earlier configuration's table/sets/rules, now that the new ones are loaded."""
        if self._retire is not None:
            old, self._retire = self._retire, None
            try:
                old.remove()
            except CapiFastError as e:
                log.error("could not remove the previous configuration's firewall objects: %s", e)

    def run(self) -> int:
        """Runs until SIGTERM/SIGINT (or ``wait`` says stop); the exit code."""
        handlers = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            log.info("capi-fast daemon started (%s)", self.config_path)
            while not self._stopping:
                ok = self.once()
                if self._stopping or self._pause(self.schedule.next_delay(ok)):
                    break
                if self._reload:
                    self._reload = False
                    self._reread()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            self._close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        log.info("capi-fast daemon stopped")
        return 0

    def _pause(self, seconds: float) -> bool:
        """Waits ``seconds`` (or until SIGHUP), looking at the signal inbox on the way; True: stop."""
        end = time.monotonic() + seconds
        while True:
            self.drain()
            left = end - time.monotonic()
            if left <= 0:
                return False
            tick = self.config.signals.check_every if self.inbox is not None else left
            stop = self._wait(min(left, tick))
            if self._stopping or (stop and not self._reload):
                return True
            if self._reload:
                return False

    def _reread(self) -> None:
        """SIGHUP: the new configuration replaces the old one only if all of it builds.

        The packet filter is never left empty in between: the same table or sets are simply
        reloaded by the next sync; others are removed only after the new ones loaded.
        """
        old_config, old_backend, old_source = self.config, self.backend, self.source
        try:
            config = load_config(self.config_path)
            same_source = _source_key(config) == _source_key(old_config)
            self._build(config, keep_source=same_source)
        except Exception as e:  # a bad file must not take the daemon (or the firewall) down
            log.error("configuration not reloaded, the old one stays: %s: %s", type(e).__name__, e)
            return
        if config.signals != old_config.signals:
            log.warning("[signals] changes take effect at the next start; the running sender stays")
            config = dataclasses.replace(config, signals=old_config.signals)
        self.config = config
        if not same_source:
            old_source.close()
        if old_backend is not None and config.firewall.identity != old_config.firewall.identity:
            self._retire = old_backend
            if self.backend is None:  # the firewall was turned off: nothing new to wait for
                self._retire_old()
        log.info("configuration reloaded from %s", self.config_path)

    def _close(self) -> None:
        if self.config.firewall.cleanup:
            for backend in (self.backend, self._retire):
                if backend is not None:
                    try:
                        backend.remove()
                    except CapiFastError as e:
                        log.error("could not remove the firewall's objects: %s", e)
        if self.batcher is not None:
            self.drain()
            self.batcher.close(flush=True, timeout=10.0)  # what cannot go now stays in the spool
            self.batcher.client.close()
        self.source.close()


def _source_key(c: DaemonConfig) -> tuple[object, ...]:
    return (c.lapi_url, c.api_key, c.capi, c.home, c.capi_url, c.snapshot, c.metrics_interval)
