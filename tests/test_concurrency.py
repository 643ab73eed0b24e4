"""Readers never see half a batch and keep answering while a writer applies batches."""

from __future__ import annotations

import threading

import pytest

from capi_fast import DecisionIndex
from support import NOW


def generation(g: int, size: int) -> list[str]:
    return [f"10.{g % 200}.{i // 250}.{i % 250}" for i in range(size)]


def remediation(g: int) -> str:
    return "ban" if g % 2 == 0 else "captcha"


@pytest.mark.parametrize("size", [300, 5000], ids=["in-place-batches", "copy-on-write-batches"])
def test_batches_are_atomic_for_concurrent_readers(size):
    idx = DecisionIndex()
    rounds = 40
    # Every batch swaps one generation of addresses for the next, and generations alternate
    # remediations: a reader must always see exactly one whole generation, with its own answer.
    probes = {g: generation(g, size) for g in range(rounds + 1)}
    idx.add_many(probes[0], remediation(0), now=NOW)
    every = [ip for g in range(rounds + 1) for ip in probes[g]]
    done = threading.Event()
    errors: list[str] = []  # a failure in a thread is reported here, then asserted by the test
    seen = [0, 0]

    def check(answers: list[str | None]) -> str | None:
        present = [g for g in range(rounds + 1) if any(answers[g * size : (g + 1) * size])]
        if len(present) != 1:
            return f"saw generations {present}, expected exactly one"
        g = present[0]
        wrong = {a for a in answers[g * size : (g + 1) * size] if a != remediation(g)}
        return f"generation {g} answered {wrong}, expected {remediation(g)}" if wrong else None

    def reader(slot: int) -> None:
        try:
            while not done.is_set() or seen[slot] == 0:
                problem = check(idx.lookup_many(every, now=NOW))
                if problem is not None:
                    errors.append(problem)
                    return
                seen[slot] += 1
        except Exception as e:  # reaches the test instead of a thread warning
            errors.append(f"{type(e).__name__}: {e}")

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    for g in range(rounds):
        idx.apply(add=[(ip, remediation(g + 1)) for ip in probes[g + 1]], remove=probes[g], now=NOW)
    done.set()
    for t in readers:
        t.join(timeout=120)
        assert not t.is_alive()
    assert not errors, errors[0]
    assert all(seen), "both readers ran"
    assert len(idx) == size
    assert check(idx.lookup_many(every, now=NOW)) is None
    assert check([None] * len(every)) is not None, "the check can fail"
    assert check(["ban"] * len(every)) is not None, "the check can fail"


def test_parallel_writers_lose_nothing():
    idx = DecisionIndex()

    def writer(w: int) -> None:
        for b in range(20):
            idx.add_many([f"10.{w}.{b}.{i}" for i in range(100)], now=NOW)
            idx.purge_expired(now=NOW)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(idx) == 4 * 20 * 100


class Interrupted(Exception):
    pass


def _interrupt_soon():
    """Arms a 20 ms timer whose handler raises Interrupted; returns the disarm function."""
    import signal

    def handler(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.02)

    def disarm():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    return disarm


@pytest.mark.parametrize("call", ["add_many", "remove"])
def test_long_native_loops_let_the_interpreter_in(call):
    """A loop over a million Python objects runs the interpreter's checks as it goes.

    The same check that hands the GIL to a waiting thread after the switch interval runs
    pending signal handlers: a handler raising mid-loop proves the loop does not hold the
    interpreter off until it is done (a request thread would otherwise wait for all of it).
    An interrupted batch is not applied.
    """
    values = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1_000_000)]
    index = DecisionIndex()
    if call == "remove":
        index.add_many(values[:1000], now=NOW)
    disarm = lambda: None  # noqa: E731
    try:
        with pytest.raises(Interrupted):
            disarm = _interrupt_soon()  # a million items take far longer than 20 ms
            if call == "add_many":
                index.add_many(values, now=NOW)
            else:
                index.apply(remove=values)
            # Reached only when the loop held the interpreter off to its end: the handler
            # then runs here, after the fact, and the whole batch is applied.
            assert len(index) == 0, "the batch was applied before the signal could be handled"
    finally:
        disarm()
    assert len(index) == (0 if call == "add_many" else 1000), "an interrupted batch applies nothing"
