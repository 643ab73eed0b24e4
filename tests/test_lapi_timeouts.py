"""A startup pull (every decision) gets a read timeout of its own: a LAPI holding a million
decisions takes tens of seconds to start answering one, while deltas stay on the short timeout.
A local fake LAPI stalls its answers (real sockets on loopback)."""

from __future__ import annotations

import asyncio

import pytest

from capi_fast.errors import ConfigurationError, ServerError
from capi_fast.lapi import AsyncLapiClient, LapiClient
from servers import FakeLapi


def test_a_slow_startup_pull_is_waited_for_and_a_slow_delta_is_not():
    with FakeLapi() as fake:
        client = LapiClient(fake.url, fake.KEY, timeout=0.2, startup_timeout=1.0, retries=0)
        fake.stall["true"] = 0.5
        assert client.get_stream_decisions(startup=True) == {"new": [], "deleted": []}
        fake.stall["false"] = 0.5
        with pytest.raises(ServerError, match="within 0.2 s"):
            client.get_stream_decisions(startup=False)
        fake.stall["true"] = 1.5
        with pytest.raises(ServerError, match="within 1.0 s"):
            client.get_stream_decisions(startup=True)
        client.close()


def test_the_async_client_does_the_same():
    async def main() -> None:
        with FakeLapi() as fake:
            client = AsyncLapiClient(fake.url, fake.KEY, timeout=0.2, startup_timeout=1.0, retries=0)
            fake.stall["true"] = 0.5
            assert await client.get_stream_decisions(startup=True) == {"new": [], "deleted": []}
            fake.stall["false"] = 0.5
            with pytest.raises(ServerError, match="within 0.2 s"):
                await client.get_stream_decisions(startup=False)
            await client.aclose()

    asyncio.run(main())


def test_bad_startup_timeouts_are_refused():
    with pytest.raises(ConfigurationError):
        LapiClient("http://127.0.0.1:1/", "k", startup_timeout=0)
    assert LapiClient("http://127.0.0.1:1/", "k", timeout=30).startup_timeout == 300
    assert LapiClient("http://127.0.0.1:1/", "k", timeout=30, startup_timeout=5).startup_timeout == 30, "never shorter"
