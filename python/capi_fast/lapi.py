"""Clients of CrowdSec's Local API (LAPI) for bouncers: the decisions stream with an API key.

A ``RemediationEngine`` can take its decisions from a LAPI instead of CAPI, so a fleet shares one
CrowdSec deployment. ``LapiClient`` and ``AsyncLapiClient`` share their rules (``_LapiRules``) and
the HTTP policy of every client (``capi_fast.http_policy``: retries, backoff, errors naming
LAPI); the async one only awaits the I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict, Unpack

import httpx
import orjson

from capi_fast._native import __version__
from capi_fast.errors import CapiError, ConfigurationError, ServerError
from capi_fast.http_policy import HttpPolicy, check_seconds
from capi_fast.lists import Allowlist, Blocklist

__all__ = ["AsyncLapiClient", "LapiClient"]

_WHAT = "LAPI decisions stream"
_METRICS = "LAPI usage metrics"


def _read(read: float, other: float) -> httpx.Timeout:
    """A read timeout of ``read`` seconds, the others (connect, write, pool) of ``other``."""
    return httpx.Timeout(other, read=read)


class LapiClientOptions(TypedDict, total=False):
    """The settings ``LapiClient`` and ``AsyncLapiClient`` take as keywords (see ``LapiClient``)."""

    user_agent: str
    timeout: float
    startup_timeout: float
    retries: int
    backoff: float
    max_backoff: float
    max_retry_after: float
    clock: Callable[[], float]
    scopes: Sequence[str]
    origins: Sequence[str]
    scenarios_containing: Sequence[str]
    scenarios_not_containing: Sequence[str]


class _LapiRules:
    """What both LAPI clients share: the key check, the request, the answer checks."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        user_agent: str = "capi-fast-bouncer",
        timeout: float = 10.0,
        startup_timeout: float = 300.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        clock: Callable[[], float] = time.time,
        scopes: Sequence[str] = ("ip", "range"),
        origins: Sequence[str] = (),
        scenarios_containing: Sequence[str] = (),
        scenarios_not_containing: Sequence[str] = (),
    ) -> None:
        if not isinstance(api_key, str) or not api_key or any(c in api_key for c in "\r\n"):
            raise ConfigurationError("api_key is required: create one with `cscli bouncers add NAME`")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(user_agent, str) or not user_agent.strip() or any(c in user_agent for c in "\r\n"):
            raise ConfigurationError("user_agent must name your bouncer (e.g. 'mywaf-bouncer/1.0')")
        self.policy = HttpPolicy(
            "LAPI",
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            clock=clock,
        )
        check_seconds("startup_timeout", startup_timeout, positive=True)
        # A startup pull is the whole decision set: crowdsec 1.4 takes over 10 s to start
        # answering one of a million decisions, so it gets a read timeout of its own.
        self.startup_timeout = max(float(startup_timeout), timeout)
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.user_agent = f"{user_agent.strip()} capi-fast/{__version__}"
        self._api_key = api_key
        filters = {
            "scopes": scopes,
            "origins": origins,
            "scenarios_containing": scenarios_containing,
            "scenarios_not_containing": scenarios_not_containing,
        }
        self._filters: dict[str, str] = {}
        for name, values in filters.items():
            if isinstance(values, str) or not all(isinstance(v, str) and v and "," not in v for v in values):
                raise ConfigurationError(f"{name} must be a list of non-empty names without commas, got {values!r}")
            if values:
                self._filters[name] = ",".join(values)

    @property
    def timeout(self) -> float:
        """Seconds per HTTP call."""
        return self.policy.timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _request(self, startup: bool) -> tuple[str, dict[str, str], dict[str, str], float]:
        """URL, parameters, headers and read timeout of a stream pull."""
        headers = {"User-Agent": self.user_agent, "X-Api-Key": self._api_key, "Accept": "application/json"}
        params = {"startup": "true" if startup else "false", **self._filters}
        return f"{self.base_url}v1/decisions/stream", params, headers, self.startup_timeout if startup else self.timeout

    def _metrics_request(self) -> tuple[str, dict[str, str]]:
        headers = {"User-Agent": self.user_agent, "X-Api-Key": self._api_key, "Content-Type": "application/json"}
        return f"{self.base_url}v1/usage-metrics", headers

    @staticmethod
    def _document(body: bytes) -> dict[str, Any]:
        try:
            doc = orjson.loads(body or b"null")
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise ServerError(f"{_WHAT}: the answer is not a JSON object")
        return doc

    @staticmethod
    def _no_blocklists() -> CapiError:
        return CapiError("a LAPI stream has no list links")


class LapiClient(_LapiRules):
    """A bouncer's client of CrowdSec's Local API. Same retry policy and errors as ``CapiClient``.

    Args:
        base_url: the LAPI, e.g. ``http://127.0.0.1:8080/``.
        api_key: a bouncer key from ``cscli bouncers add``; never logged.
        transport: an httpx transport.
        sleep: how to wait between retries.
        **config: the other settings, all keyword-only: see "Other Parameters".

    Other Parameters:
        user_agent (str): your product and version (default ``capi-fast-bouncer``).
        timeout (float): seconds per HTTP call (10).
        startup_timeout (float): seconds a startup pull (every decision) may take to answer (300;
            a LAPI holding a million decisions takes tens of seconds).
        retries (int): retries of a transient failure (2).
        backoff (float): first backoff in seconds (0.5), doubling up to ``max_backoff``.
        max_backoff (float): longest backoff (30).
        max_retry_after (float): a 429 asking to wait longer than this raises
            ``RateLimitError`` at once (120).
        clock (Callable[[], float]): Unix time source.
        scopes (Sequence[str]): decision scopes to pull (default ``ip`` and ``range``, as
            crowdsec's bouncers).
        origins (Sequence[str]): only decisions of these origins (e.g. ``crowdsec``, ``cscli``,
            ``CAPI``); all if empty.
        scenarios_containing (Sequence[str]): only decisions whose scenario contains one of
            these words.
        scenarios_not_containing (Sequence[str]): no decision whose scenario contains one of
            these words.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **config: Unpack[LapiClientOptions],
    ) -> None:
        super().__init__(base_url, api_key, **config)  # the options _LapiRules takes
        self._sleep = sleep
        self._http = httpx.Client(timeout=self.timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> LapiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_stream_decisions(self, startup: bool = False) -> dict[str, Any]:
        """``GET /v1/decisions/stream``: everything with ``startup=True``, else changes since the last pull."""
        return self._document(self.get_stream_raw(startup))

    def get_stream_raw(self, startup: bool = False) -> bytes:
        """The body of ``GET /v1/decisions/stream`` as received."""
        url, params, headers, timeout = self._request(startup)

        def once() -> Any:
            answer = self._http.get(url, params=params, headers=headers, timeout=_read(timeout, self.timeout))
            return self.policy.check(answer, _WHAT, raw=True)

        body: bytes = self.policy.run(_WHAT, once, self._sleep, timeout)
        return body

    def push_usage_metrics(self, body: dict[str, Any]) -> None:
        """``POST /v1/usage-metrics`` (``capi_fast.usage_metrics`` builds ``body``).

        Raises ``CapiError`` with ``status`` 404 from a LAPI older than crowdsec 1.6.3.
        """
        url, headers = self._metrics_request()
        content = orjson.dumps(body)

        def once() -> Any:
            return self.policy.check(self._http.post(url, content=content, headers=headers), _METRICS, raw=True)

        self.policy.run(_METRICS, once, self._sleep)

    def fetch_blocklist(self, link: Any, if_modified_since: str | float | None = None) -> Blocklist:
        """LAPI streams carry no blocklist links; present so the engine can treat sources alike."""
        raise self._no_blocklists()

    def fetch_allowlist(self, link: Any, if_modified_since: str | float | None = None) -> Allowlist:
        """LAPI streams carry no allowlist links; present so the engine can treat sources alike."""
        raise self._no_blocklists()


class AsyncLapiClient(_LapiRules):
    """The asyncio twin of ``LapiClient``: same arguments, same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **config: Unpack[LapiClientOptions],
    ) -> None:
        super().__init__(base_url, api_key, **config)
        self._sleep = sleep
        self._http = httpx.AsyncClient(timeout=self.timeout, transport=transport, follow_redirects=False)

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLapiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def get_stream_decisions(self, startup: bool = False) -> dict[str, Any]:
        """``GET /v1/decisions/stream``: everything with ``startup=True``, else changes since the last pull."""
        return self._document(await self.get_stream_raw(startup))

    async def get_stream_raw(self, startup: bool = False) -> bytes:
        """The body of ``GET /v1/decisions/stream`` as received."""
        url, params, headers, timeout = self._request(startup)

        async def once() -> Any:
            answer = await self._http.get(url, params=params, headers=headers, timeout=_read(timeout, self.timeout))
            return self.policy.check(answer, _WHAT, raw=True)

        body: bytes = await self.policy.run_async(_WHAT, once, self._sleep, timeout)
        return body

    async def push_usage_metrics(self, body: dict[str, Any]) -> None:
        """``LapiClient.push_usage_metrics``, awaited."""
        url, headers = self._metrics_request()
        content = orjson.dumps(body)

        async def once() -> Any:
            return self.policy.check(await self._http.post(url, content=content, headers=headers), _METRICS, raw=True)

        await self.policy.run_async(_METRICS, once, self._sleep)

    async def fetch_blocklist(self, link: Any, if_modified_since: str | float | None = None) -> Blocklist:
        """LAPI streams carry no blocklist links; present so the engine can treat sources alike."""
        raise self._no_blocklists()

    async def fetch_allowlist(self, link: Any, if_modified_since: str | float | None = None) -> Allowlist:
        """LAPI streams carry no allowlist links; present so the engine can treat sources alike."""
        raise self._no_blocklists()
