"""The signal batcher: ``add`` is O(1) and never waits for the network; a sender delivers.

The vendor's rule (the CrowdSec CAPI SDK guide): buffer signals and send the buffer every
10 s to 10 min depending on how big it gets, never more than 250 in one call. Here the wait
before the next send shrinks linearly with the queue, from ``max_interval`` (600 s) for one
signal to ``min_interval`` (10 s) for a full call of 250; successive sends are never closer than
``min_interval``. A failed send keeps the signals (in order) and backs off, doubling up to
``max_interval``. Delivery is at-least-once; the signal uuid is the de-duplication key.

A batch CAPI refuses for what it holds (400, 413, 422) would be refused forever and hold back
every later signal, so it is split: the next sends, ``min_interval`` apart, take half as many
until one signal alone is refused. That one is set aside in ``refused/`` inside the spool, one
file in the signal inbox's format (move it into a daemon's inbox to send it again), logged at
ERROR and counted (``BatcherStats.refused``); the batch size then grows back with each success.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capi_fast.errors import AuthenticationError, CapiError, InvalidSignal, RateLimitError, StorageError
from capi_fast.files import private_dir
from capi_fast.signal_inbox import write_signal_file
from capi_fast.signals import MAX_SIGNALS_PER_CALL, Signal
from capi_fast.spool import Spool

if TYPE_CHECKING:
    from capi_fast.client import AsyncCapiClient, CapiClient

__all__ = ["AsyncSignalBatcher", "BatcherStats", "SignalBatcher"]

log = logging.getLogger("capi_fast.batcher")


@dataclass(frozen=True)
class BatcherStats:
    """What the batcher did, for metrics."""

    queued: int
    sent: int
    failed_attempts: int
    dropped: int
    quarantined: int  # damaged stretches of the spool moved aside (see capi_fast.spool)
    refused: int  # signals CAPI refused alone, set aside in refused/ (see the module's text)
    last_success: float | None
    last_error: str | None
    next_send_in: float


def _refused_for_content(error: Exception) -> bool:
    """CAPI refused the request for what it holds: sending it again would be refused again."""
    return (
        isinstance(error, CapiError)
        and not isinstance(error, (AuthenticationError, RateLimitError))
        and error.status in (400, 413, 422)
    )


class _Schedule:
    """When to send next: the adaptive interval and the failure backoff, on an injectable clock."""

    def __init__(self, min_interval: float, max_interval: float, clock: Callable[[], float]) -> None:
        if not 0 < min_interval <= max_interval:
            raise ValueError("need 0 < min_interval <= max_interval")
        self.min_interval, self.max_interval, self.clock = min_interval, max_interval, clock
        self.last_send = clock()
        self.backoff = 0.0
        # Signals in the next send: fewer while a refused batch is split, and sends then come
        # min_interval apart.
        self.limit = MAX_SIGNALS_PER_CALL

    def wait(self, queued: int) -> float:
        """Seconds until the next send is due (0 when due now)."""
        if queued == 0:
            return self.max_interval
        fill = 1.0 if self.limit < MAX_SIGNALS_PER_CALL else min(queued, MAX_SIGNALS_PER_CALL) / MAX_SIGNALS_PER_CALL
        interval = self.max_interval - (self.max_interval - self.min_interval) * fill
        interval = max(interval, self.backoff, self.min_interval)
        return max(0.0, self.last_send + interval - self.clock())

    def sent(self, ok: bool) -> None:
        self.last_send = self.clock()
        self.backoff = 0.0 if ok else min(self.max_interval, max(self.min_interval, self.backoff * 2))


class _Base:
    def __init__(
        self,
        path: str | Path | None,
        *,
        max_signals: int,
        min_interval: float,
        max_interval: float,
        durability: str,
        clock: Callable[[], float],
    ) -> None:
        self.spool = Spool(path, max_signals=max_signals, durability=durability)
        self.schedule = _Schedule(min_interval, max_interval, clock)
        self.sent = 0
        self.failed_attempts = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.refused = 0
        self._logged_backoff: float | None = None

    def add(self, signal: Signal) -> None:
        """Queues a signal durably; returns without touching the network."""
        if not isinstance(signal, Signal):
            raise InvalidSignal(f"expected a Signal, got {type(signal).__name__}")
        self.spool.add(signal.uuid, signal.is_whisper, signal.to_payload(""))
        self.wake()

    def wake(self) -> None:
        """Tells the sender the spool grew (signals added to it directly, as an inbox does)."""

    def _due(self) -> bool:
        return bool(len(self.spool)) and self.schedule.wait(len(self.spool)) <= 0

    def _send_plan(self) -> Generator[list[dict[str, Any]], Exception | None, bool]:
        """One send, without its I/O; both senders drive it, one awaiting the push.

        Yields the payloads to push, receives the push's error (or None), returns True on success
        or when there was nothing to send.
        """
        try:
            batch = self.spool.oldest(self.schedule.limit)
        except Exception as e:  # the spool itself failed (files removed, disk error)
            self._result(0, e)
            return False
        if not batch:
            return True
        error = yield [p for _, p in batch]
        return self._done(batch, error)

    @staticmethod
    def _deadline(timeout: float | None) -> Callable[[], bool]:
        """Whether ``timeout`` seconds (None: never) have passed since now."""
        end = None if timeout is None else time.monotonic() + timeout
        return lambda: end is not None and time.monotonic() > end

    def _done(self, batch: list[tuple[int, dict[str, Any]]], error: Exception | None) -> bool:
        """Records a send: acks the batch if CAPI accepted it; True on success."""
        if error is None:
            try:
                self.spool.ack([seq for seq, _ in batch])
            except Exception as e:  # sent but not acked: resent later (at-least-once), after a backoff
                error = e
            else:
                self.schedule.limit = min(MAX_SIGNALS_PER_CALL, self.schedule.limit * 2)
        elif _refused_for_content(error):
            if len(batch) > 1:
                self.schedule.limit = max(1, len(batch) // 2)
                log.warning(
                    "CAPI refused %d signals (%s); sending them in smaller batches to find the one it refuses",
                    len(batch),
                    error,
                )
                self._result(len(batch), error, split=True)
                return False
            return self._set_aside(batch[0], error)
        self._result(len(batch), error)
        return error is None

    def _set_aside(self, item: tuple[int, dict[str, Any]], error: Exception) -> bool:
        """Moves a signal CAPI refuses alone out of the spool, into refused/ when the spool is on disk."""
        seq, payload = item
        where = "dropped (the spool is in memory)"
        try:
            if self.spool.path is not None:
                folder = private_dir(self.spool.path / "refused", "the refused signals' folder")
                where = f"set aside in {write_signal_file(folder, [(not payload.get('decisions'), payload)])}"
            self.spool.ack([seq])
        except (StorageError, OSError) as e:  # kept queued: tried again after a backoff
            self._result(1, e)
            return False
        self.refused += 1
        self.schedule.limit = MAX_SIGNALS_PER_CALL
        log.error("CAPI refused signal %s alone (%s): %s", payload.get("uuid"), error, where)
        self.schedule.sent(True)
        return True

    def _result(self, n: int, error: Exception | None, split: bool = False) -> None:
        """Counts a send step; a failure backs off (a split does not) and is logged once per backoff step."""
        self.schedule.sent(error is None or split)
        if error is None:
            self.sent += n
            self.last_success = self.schedule.clock()
            self.last_error = None
            self._logged_backoff = None
            return
        self.failed_attempts += 1
        self.last_error = f"{type(error).__name__}: {error}" if not isinstance(error, CapiError) else str(error)
        if not split and self.schedule.backoff != self._logged_backoff:
            self._logged_backoff = self.schedule.backoff
            log.warning(
                "sending %d signals failed (%s); they stay queued, next attempt in %.0f s",
                n,
                self.last_error,
                self.schedule.backoff,
            )

    def stats(self) -> BatcherStats:
        """Queued, sent, failed attempts, dropped, quarantined, last success, last error, next send."""
        return BatcherStats(
            queued=len(self.spool),
            sent=self.sent,
            failed_attempts=self.failed_attempts,
            dropped=self.spool.dropped,
            quarantined=self.spool.quarantined,
            refused=self.refused,
            last_success=self.last_success,
            last_error=self.last_error,
            next_send_in=self.schedule.wait(len(self.spool)),
        )


class SignalBatcher(_Base):
    """Durable signal buffer with a background sender thread. Get one from ``client.signal_batcher()``.

    Args:
        client: the ``CapiClient`` that sends.
        path: the spool file (None: in memory, not durable).
        max_signals: spool bound (oldest whispers, then decisions, dropped past it).
        min_interval: shortest gap between sends (10 s).
        max_interval: longest wait for a small buffer (600 s).
        durability: ``normal`` or ``full`` (see ``capi_fast.spool``).
        clock: time source (tests pass a controllable one).
        start: start the sender thread (tests drive ``send_due``/``flush`` themselves).
    """

    def __init__(
        self,
        client: CapiClient,
        path: str | Path | None = None,
        *,
        max_signals: int = 100_000,
        min_interval: float = 10.0,
        max_interval: float = 600.0,
        durability: str = "normal",
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ) -> None:
        super().__init__(
            path,
            max_signals=max_signals,
            min_interval=min_interval,
            max_interval=max_interval,
            durability=durability,
            clock=clock,
        )
        self.client = client
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="capi-signal-sender", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Wakes the sender when a full call is waiting (else its schedule already covers it)."""
        if len(self.spool) >= MAX_SIGNALS_PER_CALL:
            with self._cond:
                self._cond.notify()

    def _send_batch(self) -> bool:
        """Sends the oldest batch; True on success (or nothing to send)."""
        with self._send_lock:
            plan = self._send_plan()
            try:
                payloads = next(plan)
                error: Exception | None = None
                try:
                    self.client.push_signal_payloads(payloads)
                except Exception as e:  # any failure keeps the batch queued and backs off
                    error = e
                plan.send(error)
            except StopIteration as done:
                return bool(done.value)
            raise AssertionError("a send plan yields once")

    def send_due(self) -> bool:
        """Sends one batch if the schedule says it is due; True if it sent one.

        Also lets the client send its CAPI metrics when they are due (in the background).
        """
        self.client.metrics_tick()
        if not self._due():
            return False
        self._send_batch()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Sends everything queued now, ignoring the schedule; False if a send failed or time ran out."""
        expired = self._deadline(timeout)
        while len(self.spool):
            if not self._send_batch() or expired():
                return False
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
                self._cond.wait(timeout=min(self.schedule.wait(len(self.spool)), 60.0))
                if self._closing:
                    return
            try:
                self.send_due()
            except Exception as e:  # the sender must survive anything: backed off, counted, logged once a step
                self._result(0, e)

    def close(self, flush: bool = True, timeout: float = 30.0) -> None:
        """Stops the sender; with ``flush`` first tries to deliver what is queued."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if flush:
            self.flush(timeout)
        self.spool.close()

    def __enter__(self) -> SignalBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSignalBatcher(_Base):
    """The asyncio twin: ``add`` is synchronous and O(1); ``start()`` runs the sender task."""

    def __init__(
        self,
        client: AsyncCapiClient,
        path: str | Path | None = None,
        *,
        max_signals: int = 100_000,
        min_interval: float = 10.0,
        max_interval: float = 600.0,
        durability: str = "normal",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            path,
            max_signals=max_signals,
            min_interval=min_interval,
            max_interval=max_interval,
            durability=durability,
            clock=clock,
        )
        self.client = client
        self._task: asyncio.Task[None] | None = None
        self._event: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._closing = False

    def wake(self) -> None:
        """Wakes the sender task when a full call is waiting (else its schedule already covers it)."""
        if self._event is not None and len(self.spool) >= MAX_SIGNALS_PER_CALL:
            self._event.set()

    async def _send_batch(self) -> bool:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            plan = self._send_plan()
            try:
                payloads = next(plan)
                error: Exception | None = None
                try:
                    await self.client.push_signal_payloads(payloads)
                except Exception as e:  # any failure keeps the batch queued and backs off
                    error = e
                plan.send(error)
            except StopIteration as done:
                return bool(done.value)
            raise AssertionError("a send plan yields once")

    async def send_due(self) -> bool:
        """Sends one batch if due; True if it sent one. Also lets the client send CAPI metrics when due."""
        self.client.metrics_tick()
        if not self._due():
            return False
        await self._send_batch()
        return True

    async def flush(self, timeout: float | None = None) -> bool:
        """Sends everything queued now, ignoring the schedule; False if a send failed or time ran out."""
        expired = self._deadline(timeout)
        while len(self.spool):
            if not await self._send_batch() or expired():
                return False
        return True

    def start(self) -> None:
        """Starts the sender task on the running loop."""
        self._event = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._event is not None
        while not self._closing:
            try:
                await asyncio.wait_for(self._event.wait(), timeout=min(self.schedule.wait(len(self.spool)), 60.0))
            except TimeoutError:
                pass
            self._event.clear()
            if self._closing:
                return
            try:
                await self.send_due()
            except Exception as e:  # the sender must survive anything: backed off, counted, logged once a step
                self._result(0, e)

    async def aclose(self, flush: bool = True, timeout: float = 30.0) -> None:
        """Stops the sender task, then with ``flush`` first tries to deliver what is queued.

        A send in flight is let finish rather than cancelled, so nothing is sent twice; what is
        still queued after ``timeout`` stays in the spool for the next start.
        """
        self._closing = True
        if self._task is not None and self._event is not None:
            self._event.set()
            await self._task
        if flush:
            await self.flush(timeout)
        self.spool.close()
