"""``AsyncRemediationEngine``: the asyncio twin of ``RemediationEngine`` for async servers.

Same answers, rules, persistence and counters (they are shared); the refresh awaits its I/O,
downloads the blocklists concurrently, and runs the CPU-heavy steps (reading the stream, applying
the batch, writing the snapshot) in a worker thread: the native core releases the GIL there, so
the event loop keeps serving ``get_ip_remediation`` while a million decisions are applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from capi_fast._native import parse_stream
from capi_fast.client import AsyncCapiClient
from capi_fast.engine import RefreshReport, _Engine
from capi_fast.engine_lists import ListPlan
from capi_fast.errors import CapiError
from capi_fast.lapi import AsyncLapiClient
from capi_fast.lists import Allowlist, AllowlistLink, Blocklist

__all__ = ["AsyncRemediationEngine"]


class AsyncRemediationEngine(_Engine[AsyncCapiClient | AsyncLapiClient]):
    """Remediation answers from an ``AsyncCapiClient`` or ``AsyncLapiClient``.

    Arguments and answers are ``RemediationEngine``'s; only ``refresh_decisions`` is awaited.
    ``get_ip_remediation`` stays a plain (native, non-blocking) call.
    """

    async def refresh_decisions(self, force: bool = False) -> RefreshReport:
        """Pulls the stream (startup, then deltas) and the blocklists; applies them as one batch."""
        source = self._refresher()
        if isinstance(source, AsyncCapiClient):
            source.metrics_tick()  # every call, refused or not: metrics go every 30 min, refreshes every 2 h
        async with self._async_lock():
            refused = self._refused(force)
            if refused is not None:
                return refused
            started = time.perf_counter()
            startup = not self.state.startup_done
            try:
                body = await source.get_stream_raw(startup=startup)
                parsed = await asyncio.to_thread(parse_stream, body)
            except CapiError as e:
                return self._failed(startup, e)
            plans, bad_links = self._list_plans(parsed) or (None, 0)
            fetched = await asyncio.gather(*(self._fetch(source, p) for p in plans or ()))
            return await asyncio.to_thread(self._commit, parsed, plans, fetched, startup, started, bad_links)

    async def push_usage_metrics(self, force: bool = True) -> bool:
        """``RemediationEngine.push_usage_metrics``, awaited."""
        body = self._metrics_body(force)
        if body is None:
            return False
        assert isinstance(self.source, AsyncLapiClient) and self.usage_metrics is not None
        try:
            await self.source.push_usage_metrics(body)
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
        wait: Callable[[float], Awaitable[bool]] | None = None,
    ) -> None:
        """Refreshes in a task on the running loop until ``await stop()``: at once, then every ``interval``.

        The rules are ``RemediationEngine.start``'s (``capi_fast.refresher``); ``wait(seconds)``
        returns True to stop (default: the stop event).
        """
        schedule = self._background_schedule(interval, jitter)
        stop = asyncio.Event()

        async def until_stopped(delay: float) -> bool:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                return False
            return True

        pause = wait or until_stopped

        async def run() -> None:
            delay = 0.0
            while not stop.is_set():
                if delay and await pause(delay):
                    return
                error: Exception | None = None
                try:
                    await self.refresh_decisions()
                except Exception as e:  # the refresher never dies: reported by health(), retried
                    error = e
                await self.push_usage_metrics(force=False)
                delay = self._background_delay(schedule, error)

        self._stop = stop
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        """Stops the background refresh (a refresh in progress finishes first)."""
        stop, task = getattr(self, "_stop", None), getattr(self, "_task", None)
        if stop is not None:
            stop.set()
        if task is not None:
            await task
        self._task = None

    def _running(self) -> bool:
        task = getattr(self, "_task", None)
        return task is not None and not task.done()

    async def __aenter__(self) -> AsyncRemediationEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _async_lock(self) -> asyncio.Lock:
        # Created on first use, inside the running loop.
        lock: asyncio.Lock | None = getattr(self, "_alock", None)
        if lock is None:
            lock = self._alock = asyncio.Lock()
        return lock

    @staticmethod
    async def _fetch(source: AsyncCapiClient | AsyncLapiClient, plan: ListPlan) -> Blocklist | Allowlist | Exception:
        try:
            if isinstance(plan.link, AllowlistLink):
                return await source.fetch_allowlist(plan.link, if_modified_since=plan.since)
            return await source.fetch_blocklist(plan.link, if_modified_since=plan.since)
        except Exception as e:  # any failure of one list keeps its previous content
            return e
