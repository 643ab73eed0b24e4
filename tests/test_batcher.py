"""The durable signal batcher against the simulator: nothing lost, nothing spammed."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import orjson
import pytest

from capi_fast import CapiClient, FileStorage, MemoryStorage, Signal
from capi_fast.batcher import SignalBatcher
from capi_fast.client import AsyncCapiClient
from capi_fast.spool import Spool
from capi_fast.testing import CapiSimulator
from support import Clock


@pytest.fixture
def sim():
    with CapiSimulator() as s:
        yield s


def client_for(sim: CapiSimulator, storage=None, **kw) -> CapiClient:
    return CapiClient(
        user_agent="test/1",
        scenarios=["mywaf/login-bruteforce"],
        base_url=sim.url,
        storage=storage or MemoryStorage(),
        sleep=lambda _: None,
        **kw,
    )


def sig(i: int, whisper: bool = False) -> Signal:
    ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    if whisper:
        return Signal.whisper(ip, "mywaf/404-scan")
    return Signal.decision(ip, "mywaf/login-bruteforce", duration=60)


def signal_calls(sim: CapiSimulator) -> list[int]:
    return [r.status for r in sim.requests if r.path.endswith("/signals")]


def test_10000_signals_at_most_250_per_call_all_delivered(sim):
    clock = Clock()
    with client_for(sim) as c:
        b = SignalBatcher(c, clock=clock, start=False)
        sent = [sig(i) for i in range(10_000)]
        for s in sent:
            b.add(s)
        assert b.stats().queued == 10_000
        rounds = 0
        while b.stats().queued:
            clock.now += 10
            assert b.send_due()
            rounds += 1
        assert rounds == 40
        assert not b.send_due(), "nothing left"
    assert signal_calls(sim) == [200] * 40, "each call within the simulator's 250 limit"
    assert [s["uuid"] for s in sim.signals] == [s.uuid for s in sent], "all delivered, in order"


def test_schedule_adapts_between_10s_and_10min(sim):
    clock = Clock()
    with client_for(sim) as c:
        b = SignalBatcher(c, clock=clock, start=False)
        b.add(sig(1))
        assert 590 < b.stats().next_send_in <= 600, "one signal waits about ten minutes"
        clock.now += 300
        assert not b.send_due()
        for i in range(2, 126):
            b.add(sig(i))
        assert b.stats().next_send_in == pytest.approx(5), "half a call waits 305 s in all"
        clock.now += 5
        assert b.send_due()
        for i in range(1000, 1250):
            b.add(sig(i))
        assert b.stats().next_send_in == pytest.approx(10), "a full call still waits the 10 s minimum"
        clock.now += 10
        assert b.send_due()
    assert len(sim.signals) == 375


def test_outage_then_recovery_loses_nothing_and_keeps_order(sim):
    clock = Clock()
    with client_for(sim, retries=0) as c:
        b = SignalBatcher(c, clock=clock, start=False)
        sent = [sig(i) for i in range(600)]
        for s in sent:
            b.add(s)
        c.login()
        sim.fail_next(4, status=503, path="/signals")
        waits = []
        for _ in range(4):
            clock.now += b.stats().next_send_in
            b.send_due()
            waits.append(b.stats().next_send_in)
        st = b.stats()
        assert st.failed_attempts == 4 and st.queued == 600 and st.sent == 0 and st.last_error
        assert waits == sorted(waits) and waits[-1] > waits[0], "backs off while CAPI is down"
        while b.stats().queued:
            clock.now += b.stats().next_send_in
            b.send_due()
        assert b.stats().sent == 600 and b.stats().last_success is not None
    assert [s["uuid"] for s in sim.signals] == [s.uuid for s in sent], "delivered once recovered, no duplicates"


def test_spool_survives_a_restart(tmp_path, sim):
    with client_for(sim, storage=FileStorage(tmp_path)) as c:
        b = c.signal_batcher(start=False)
        for i in range(30):
            b.add(sig(i))
        b.spool.close()  # the process "dies" without sending
        b2 = c.signal_batcher(start=False)
        assert b2.stats().queued == 30
        assert b2.flush()
    assert len(sim.signals) == 30
    assert (tmp_path / "signals.spool").is_dir()


CHILD = textwrap.dedent(
    """
    import sys
    from capi_fast import CapiClient, FileStorage, Signal
    directory, url = sys.argv[1], sys.argv[2]
    c = CapiClient(user_agent="child/1", scenarios=["mywaf/login-bruteforce"], base_url=url,
                  storage=FileStorage(directory), timeout=30, metrics_interval=None)
    b = c.signal_batcher(start=False)
    for i in range(1000):
        b.add(Signal.decision(f"10.9.{i // 256}.{i % 256}", "mywaf/login-bruteforce", duration=60))
    print("queued", flush=True)
    b.flush()   # stalls: the simulator does not answer
    """
)


def test_sigkill_mid_send_then_a_new_process_delivers_the_rest(tmp_path, sim):
    sim.fail_next(kind="timeout", delay=30, path="/signals")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), sim.url], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "queued"
    deadline = time.monotonic() + 30
    while not any(r.path.endswith("/signals") for r in sim.requests) and time.monotonic() < deadline:
        time.sleep(0.02)  # waiting for the child's send to start, bounded
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    with client_for(sim, storage=FileStorage(tmp_path)) as c:
        b = c.signal_batcher(start=False)
        assert b.stats().queued == 1000, "nothing was lost by the kill"
        assert b.flush()
    assert len({s["uuid"] for s in sim.signals}) == 1000


def test_eight_concurrent_producers(sim, tmp_path):
    with client_for(sim, storage=FileStorage(tmp_path)) as c:
        b = c.signal_batcher(start=False)

        def produce(t: int) -> None:
            for i in range(500):
                b.add(sig(t * 1000 + i))

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert b.stats().queued == 4000
        assert b.flush()
    assert len({s["uuid"] for s in sim.signals}) == 4000


def test_background_thread_sends_without_being_asked(sim):
    with client_for(sim) as c:
        with SignalBatcher(c, min_interval=0.05, max_interval=0.2) as b:
            for i in range(300):
                b.add(sig(i))
            deadline = time.monotonic() + 20
            # The simulator records a batch before the sender has read the answer and acked it.
            while (len(sim.signals) < 300 or b.stats().queued) and time.monotonic() < deadline:
                time.sleep(0.02)  # observing another thread's progress, bounded
            assert len(sim.signals) == 300
            assert b.stats().queued == 0 and b.stats().sent == 300


def test_close_drains(sim):
    with client_for(sim) as c:
        b = SignalBatcher(c)  # default 10 s / 10 min schedule: only close() can send now
        for i in range(7):
            b.add(sig(i))
        b.close()
    assert len(sim.signals) == 7


def test_bounded_spool_drops_whispers_first_counts_and_logs_once(caplog):
    caplog.set_level(logging.WARNING, logger="capi_fast.spool")
    s = Spool(None, max_signals=4)
    for i, w in enumerate([True, False, True, False]):
        s.add(f"u{i}", w, {"n": i})
    s.add("u4", False, {"n": 4})  # drops u0 (oldest whisper)
    s.add("u5", False, {"n": 5})  # drops u2 (the other whisper)
    s.add("u6", False, {"n": 6})  # no whisper left: drops u1 (oldest decision)
    assert [p["n"] for _, p in s.oldest(10)] == [3, 4, 5, 6]
    assert s.dropped == 3
    assert len([r for r in caplog.records if "spool full" in r.message]) == 1
    assert s.add("u6", False, {"n": 6}) is False, "the uuid is the dedupe key"


def test_async_batcher(sim):
    async def main() -> None:
        async with AsyncCapiClient(
            user_agent="t/1", scenarios=["mywaf/login-bruteforce"], base_url=sim.url, storage=MemoryStorage()
        ) as c:
            b = c.signal_batcher(min_interval=0.05, max_interval=0.2)
            b.start()
            for i in range(260):
                b.add(sig(i))
            deadline = time.monotonic() + 20
            while len(sim.signals) < 250 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await b.aclose()

    asyncio.run(main())
    assert len(sim.signals) == 260


def test_add_rejects_non_signals(sim):
    with client_for(sim) as c:
        b = SignalBatcher(c, start=False)
        with pytest.raises(ValueError):
            b.add({"scenario": "a/b"})  # type: ignore[arg-type]


class _BrokenSignals(httpx.HTTPTransport):
    """Real HTTP to the simulator, except that sending signals fails with an unexpected error type."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/signals"):
            raise ValueError("disk on fire")
        return super().handle_request(request)


def test_any_failure_backs_off_is_counted_and_logged_once_per_step(sim, caplog):
    clock = Clock()
    with client_for(sim, transport=_BrokenSignals()) as c:
        b = SignalBatcher(c, clock=clock, start=False)
        b.add(sig(1))
        clock.now += 600
        waits = []
        for _ in range(12):
            assert b.send_due(), "the send was due"
            st = b.stats()
            assert st.queued == 1 and st.next_send_in >= b.schedule.backoff > 0, "a failure backs off"
            waits.append(b.schedule.backoff)
            assert not b.send_due(), "nothing is sent again before the backoff ends"
            clock.now += st.next_send_in
        b.close(flush=False)
    assert b.stats().failed_attempts == 12 and "ValueError: disk on fire" in (b.stats().last_error or "")
    assert waits[:7] == [10, 20, 40, 80, 160, 320, 600] and set(waits[7:]) == {600}
    logged = [r for r in caplog.records if "sending 1 signals failed" in r.getMessage()]
    assert len(logged) == 7, "one line per backoff step, not one per failure"


class _BrokenSignalsAsync(httpx.AsyncHTTPTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/signals"):
            raise ValueError("disk on fire")
        return await super().handle_async_request(request)


def test_the_async_batcher_backs_off_on_any_failure_too(sim):
    clock = Clock()

    async def main() -> list[float]:
        async with AsyncCapiClient(
            user_agent="t/1",
            scenarios=["mywaf/login-bruteforce"],
            base_url=sim.url,
            storage=MemoryStorage(),
            transport=_BrokenSignalsAsync(),
            metrics_interval=None,
        ) as c:
            b = c.signal_batcher(clock=clock)
            b.add(sig(1))
            clock.now += 600
            backoffs = []
            for _ in range(3):
                assert await b.send_due() and not await b.send_due()
                backoffs.append(b.schedule.backoff)
                clock.now += b.stats().next_send_in
            assert b.stats().failed_attempts == 3 and b.stats().queued == 1
            await b.aclose(flush=False)
            return backoffs

    assert asyncio.run(main()) == [10, 20, 40]


@pytest.mark.parametrize("twin", ["thread", "asyncio"])
def test_both_twins_flush_with_a_deadline_and_keep_the_rest(sim, twin):
    """One send rule for both senders: a flush out of time stops after the batch in flight and
    the rest stays queued (the asyncio flush had no timeout before)."""
    if twin == "thread":
        with client_for(sim) as c:
            b = SignalBatcher(c, None, start=False)
            for i in range(600):
                b.add(sig(i))
            assert b.flush(timeout=0) is False
            left = len(b.spool)
            assert b.flush() is True
    else:

        async def main() -> int:
            async with AsyncCapiClient(
                user_agent="t/1", scenarios=["mywaf/login-bruteforce"], base_url=sim.url, storage=MemoryStorage()
            ) as c:
                b = c.signal_batcher(path=None)
                for i in range(600):
                    b.add(sig(i))
                assert await b.flush(timeout=0) is False
                queued = len(b.spool)
                assert await b.flush() is True
                await b.aclose(timeout=5)
                return queued

        left = asyncio.run(main())
    assert left == 350, "one call of 250 went, the rest waited"
    assert signal_calls(sim) == [200, 200, 200] and len(sim.signals) == 600, "three calls, nothing twice"


def _refused_payload(good: Signal) -> dict:
    """A signal CAPI refuses (a scenario outside its naming rule), put in the spool directly as an
    older release or a hand-edited spool could have."""
    return {**good.to_payload(""), "uuid": "refused-0001", "scenario": "MyWaf/Not Allowed"}


@pytest.mark.parametrize("twin", ["thread", "asyncio"])
def test_a_batch_capi_refuses_is_split_until_the_one_refused_signal_is_set_aside(sim, tmp_path, twin, caplog):
    """Resent whole, a refused batch was refused forever and held back every later signal."""
    good = [sig(i) for i in range(300)]
    clock = Clock()
    steps: list[float] = []  # the clock at each send

    def fill(b) -> None:
        for s in good[:100]:
            b.add(s)
        b.spool.add("refused-0001", False, _refused_payload(good[0]))
        for s in good[100:]:
            b.add(s)

    def next_step(b) -> bool:
        if not len(b.spool) or len(steps) >= 40:
            return False
        clock.now += b.stats().next_send_in
        steps.append(clock.now)
        return True

    caplog.set_level(logging.WARNING, logger="capi_fast.batcher")
    if twin == "thread":
        with client_for(sim, retries=0) as c:
            b = SignalBatcher(c, tmp_path / "spool", clock=clock, start=False)
            fill(b)
            while next_step(b):
                assert b.send_due()
            stats = b.stats()
            b.close(flush=False)
    else:

        async def main():
            async with AsyncCapiClient(
                user_agent="t/1",
                scenarios=["mywaf/login-bruteforce"],
                base_url=sim.url,
                storage=MemoryStorage(),
                retries=0,
            ) as c:
                b = c.signal_batcher(path=tmp_path / "spool", clock=clock)
                fill(b)
                while next_step(b):
                    assert await b.send_due()
                await b.aclose(flush=False)
                return b.stats()

        stats = asyncio.run(main())
    assert [s["uuid"] for s in sim.signals] == [s.uuid for s in good], "every good signal once, in order"
    assert stats.refused == 1 and stats.queued == 0
    assert len(steps) <= 20, f"found by halving, not one by one: {len(steps)} sends"
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert all(g == 10 for g in gaps[:-1]), "while splitting, sends are min_interval apart: no backoff"
    assert gaps[-1] > 60, "once the refused signal is aside, the rest (199) waits as the vendor's schedule says"
    (aside,) = (tmp_path / "spool" / "refused").iterdir()
    assert orjson.loads(aside.read_bytes()) == [{"whisper": False, "payload": _refused_payload(good[0])}]
    assert any("refused signal refused-0001 alone" in r.getMessage() for r in caplog.records)
