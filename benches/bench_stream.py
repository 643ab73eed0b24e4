"""A startup stream of N decisions pulled from the simulator and applied end to end.

Each path does the same work: HTTP GET of the stream over loopback, parsing, and building an
index that answers lookups. capi_fast's engine hands the raw bytes to the native reader; the
"orjson" variant parses with orjson and the Python stream reader into the same native index
(the design asked which is faster); the baseline is the vendor's pure-Python SDK (cscapi's
``get_decisions``, httpx + json) feeding the pure-Python reference index.
The simulator caches its rendered startup answer, as CAPI does, so its own rendering is outside
the timings after the first pull.
"""

from __future__ import annotations

import time

import orjson
import pytest

from benchsupport import EXTRA, N, record
from capi_fast import CapiClient, DecisionIndex, MemoryStorage
from capi_fast.engine import RemediationEngine
from capi_fast.reference import ReferenceIndex
from capi_fast.stream import parse_stream
from capi_fast.testing import CapiSimulator

cscapi_client = pytest.importorskip("cscapi.client")
cscapi_storage = pytest.importorskip("cscapi.sql_storage")

NOW = time.time()


@pytest.fixture(scope="module")
def sim(workload):
    with CapiSimulator(clock=lambda: NOW, token_lifetime=86400) as s:
        values = [v for v, *_ in workload]
        s.add_decisions(values[: len(values) // 2], duration=86400)
        s.add_decisions(values[len(values) // 2 :], duration=6 * 86400 + 1234.5)
        _engine(s).refresh_decisions()  # renders and caches the startup answer
        yield s


def _client(sim: CapiSimulator) -> CapiClient:
    c = CapiClient(user_agent="bench/1", scenarios=["mywaf/x"], base_url=sim.url, storage=MemoryStorage())
    c.login()
    return c


def _engine(sim: CapiSimulator) -> RemediationEngine:
    return RemediationEngine(_client(sim))


def _python_apply(index, doc):
    batch = parse_stream(doc)
    mapped = ("ban", "captcha")
    return index.apply(
        add=[(v, t if t in mapped else "captcha", ttl, o) for v, t, ttl, o in batch.add],
        remove=[(v, o, t) for v, o, t in batch.remove],
        strict=False,
    )


def test_engine_native_reader(benchmark, sim):
    """What ``RemediationEngine.refresh_decisions()`` does on its startup pull."""
    reports = []

    def run(engine):
        reports.append(engine.refresh_decisions())

    benchmark.pedantic(run, setup=lambda: ((_engine(sim),), {}), rounds=5, iterations=1)
    assert reports[-1].added == len(set(sim._decisions)) and reports[-1].skipped == 0
    record(benchmark, "stream", "capi_fast engine", N)


def test_orjson_and_python_reader(benchmark, sim):
    """The alternative: orjson + the Python reader, into the same native index."""

    def run(client):
        index = DecisionIndex()
        _python_apply(index, orjson.loads(client.get_stream_raw(startup=True)))
        assert len(index) > 0

    benchmark.pedantic(run, setup=lambda: ((_client(sim),), {}), rounds=3, iterations=1)
    record(benchmark, "stream", "orjson + Python reader", N)


def test_cscapi_and_reference(benchmark, sim, tmp_path):
    """The pure-Python baseline: cscapi pulls the stream, the reference index holds it."""
    storage = cscapi_storage.SQLStorage(f"sqlite:///{tmp_path / 'cscapi.db'}")
    client = cscapi_client.CAPIClient(storage, cscapi_client.CAPIClientConfig(scenarios=["mywaf/x"]))
    client.url = sim.url + "v3"
    machine_id = "benchcscapi" + "0" * 37

    def run():
        doc = client.get_decisions(machine_id, ["mywaf/x"])
        index = ReferenceIndex()
        _python_apply(index, doc)
        assert len(index) > 0

    benchmark.pedantic(run, rounds=1, iterations=1)
    record(benchmark, "stream", "reference", N)
    body = sim.encode(sim._startup_doc)
    EXTRA["startup stream"]["MB of JSON"] = len(body) / 1e6
