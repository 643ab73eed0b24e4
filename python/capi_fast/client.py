"""The CAPI client: ``CapiClient`` (sync) and ``AsyncCapiClient`` (asyncio), over httpx.

``capi_fast.capi_protocol._BaseClient`` holds the configuration, the credential and token rules,
request building and response reading, with no I/O (``capi_fast.http_policy`` the retries and the
error mapping); the two clients here add only the I/O (the shape of httpx's own clients).
Registration and login are one plan (``_BaseClient._login_plan``, a generator of the public calls
to make) that both clients drive. The vendor's rules it enforces
(the CrowdSec SDK guide, and what crowdsec and php-capi-client do):

- credentials are generated once, registered on first use, stored, and never regenerated once
  CAPI accepted them; a changed ``machine_id_prefix`` (or endpoint) raises ``ConfigurationError``
  unless ``reset_credentials=True`` asks for new ones;
- a register whose answer was lost (CAPI stored the machine, the client never learnt it) is
  followed by a login with the same pair; only when that pair is refused too, and CAPI never
  accepted it, is a new pair generated (CAPI answers 500 to a register of a known machine_id);
- the token is renewed shortly before it expires, re-obtained once on a 401 or 403 (then the
  call is replayed, as crowdsec does), and re-obtained when the scenario list changes;
- signals go at most 250 per call; JSON bodies say ``Content-Type: application/json``;
- a user agent is always sent, the integration's own first: ``mywaf/2.1 capi-fast/<version>``.

Transient failures (connection errors, timeouts, 5xx, 429, an unreadable body) are retried with
exponential backoff and jitter, honouring Retry-After, a bounded number of times; other 4xx raise
at once. Passwords and tokens never reach logs or reprs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Unpack

import httpx
import orjson

from capi_fast.capi_protocol import (
    _UNUSABLE_ANSWER,
    ATTACHMENT_KEY_RE,
    DEV_URL,
    PROD_URL,
    CapiClientOptions,
    _BaseClient,
    _checked_metrics,
    _Public,
    _spool_path,
    _startup,
)
from capi_fast.errors import (
    CapiError,
    ServerError,
)
from capi_fast.lists import Allowlist, AllowlistLink, Blocklist, BlocklistLink
from capi_fast.signals import MAX_SIGNALS_PER_CALL, Signal
from capi_fast.storage import Token

if TYPE_CHECKING:
    from capi_fast.batcher import AsyncSignalBatcher, SignalBatcher

__all__ = [
    "ATTACHMENT_KEY_RE",
    "DEV_URL",
    "MAX_SIGNALS_PER_CALL",
    "PROD_URL",
    "Allowlist",
    "AsyncCapiClient",
    "Blocklist",
    "CapiClient",
]

log = logging.getLogger("capi_fast.client")


class CapiClient(_BaseClient):
    """The synchronous CAPI client.

    Args:
        transport: an httpx transport (tests, proxies, custom TLS).
        sleep: how to wait between retries (tests pass a recorder).
        **config: the client's settings, all keyword-only: see "Other Parameters".

    Other Parameters:
        user_agent (str): your product and version (``mywaf/2.1``); sent as
            ``mywaf/2.1 capi-fast/<v>``, and the name and version the CAPI metrics report. Required.
        scenarios (Sequence[str]): the scenarios your software detects, at least one
            (``signals.SCENARIO_RE``: php-common's rule; names outside the guide's lowercase
            convention are warned about once). Required.
        storage (Storage | None): where credentials and token live (default None: memory only).
        machine_id_prefix (str): up to 16 ``[a-z0-9]``; fixed once chosen (default none).
        base_url (str): ``PROD_URL`` by default; ``DEV_URL`` or a ``CapiSimulator.url``.
        api_version (str | None): ``v3`` (SDK shapes) or ``v2`` (crowdsec 1.4 shapes); by default
            the one ``base_url`` ends with, else ``v3``.
        timeout (float): seconds per HTTP call (30).
        retries (int): retries of a transient failure, so ``retries + 1`` attempts (4).
        backoff (float): first backoff in seconds (0.5); doubles per attempt up to
            ``max_backoff``, with jitter.
        max_backoff (float): longest backoff (30).
        max_retry_after (float): a 429 asking to wait longer than this raises ``RateLimitError``
            at once (120).
        renew_before (float): seconds before expiry at which the token is renewed (60).
        reset_credentials (bool): allow new credentials when the prefix or endpoint changed.
        metrics_interval (float | None): seconds between automatic CAPI metrics pushes (the
            first follows the first login; default 30 min); None turns them off.
        clock (Callable[[], float]): Unix time source (tests pass a controllable one).
    """

    def __init__(
        self,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **config: Unpack[CapiClientOptions],
    ) -> None:
        super().__init__(**config)
        self._sleep = sleep
        self._http = httpx.Client(timeout=self.timeout, transport=transport, follow_redirects=False)
        self._metrics_thread: threading.Thread | None = None
        self._closed = False

    def close(self) -> None:
        """Lets a metrics push in flight finish (at most ``timeout``), then closes the connection pool."""
        self._closed = True
        thread = self._metrics_thread
        if thread is not None:
            thread.join(self.timeout)
        self._http.close()

    def __enter__(self) -> CapiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attempts(self, what: str, fn: Callable[[], Any]) -> Any:
        return self.policy.run(what, fn, self._sleep)

    def _post_public(self, call: _Public) -> Any:
        def once() -> Any:
            r = self._http.post(
                self._url(call.path), content=orjson.dumps(call.body), headers=self._headers(None, body=True)
            )
            return self.policy.check(r, call.what)

        return self._attempts(call.what, once)

    def _token(self, force: bool = False) -> Token:
        plan = self._login_plan(force)
        try:
            call = next(plan)
            while True:
                try:
                    answer = self._post_public(call)
                except CapiError as e:
                    call = plan.throw(e)
                else:
                    call = plan.send(answer)
        except StopIteration as done:
            token: Token = done.value
        self.metrics_tick()
        return token

    def _call(
        self,
        method: str,
        call: str,
        what: str,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        replayed = False
        body = content is not None

        def once() -> Any:
            nonlocal replayed
            token = self._token()
            r = self._http.request(
                method, self._url(call), content=content, params=params, headers=self._headers(token, body)
            )
            if self._replays(r.status_code, what, replayed):
                replayed = True
                token = self._token(force=True)
                r = self._http.request(
                    method, self._url(call), content=content, params=params, headers=self._headers(token, body)
                )
            return self.policy.check(r, what, raw)

        return self._attempts(what, once)

    @property
    def machine_id(self) -> str:
        """This machine's id (generated and stored on first use)."""
        return self._credentials().machine_id

    def login(self) -> None:
        """Registers if needed and logs in now (otherwise done on the first call)."""
        self._token(force=True)

    def push_signals(self, signals: Iterable[Signal]) -> int:
        """Sends signals, at most 250 per call; returns how many were sent.

        Raises:
            InvalidSignal: an item is not a ``Signal`` (checked before any call).
        """
        payloads = self._signal_payloads(signals)
        self.push_signal_payloads(payloads)
        return len(payloads)

    def push_signal_payloads(self, payloads: list[dict[str, Any]]) -> None:
        """Sends already-built signal payloads (from the batcher's spool), 250 per call at most."""
        for body in self._payload_batches(payloads, self.machine_id):
            self._call("POST", "signals", "push signals", content=body)
            self.activity.last_push = self.clock()

    def signal_batcher(self, **options: Any) -> SignalBatcher:
        """A durable ``SignalBatcher`` whose spool lives beside a ``FileStorage``'s files.

        Options are ``SignalBatcher``'s (``path=None`` and a ``MemoryStorage`` mean in memory).
        """
        from capi_fast.batcher import SignalBatcher

        options.setdefault("path", _spool_path(self.storage))
        return SignalBatcher(self, **options)

    def get_stream_decisions(self, startup: bool = False) -> dict[str, Any]:
        """The decisions stream: everything with ``startup=True``, else changes since the last pull."""
        doc = self._call("GET", "decisions/stream", "decisions stream", params=_startup(startup))
        self.activity.last_pull = self.clock()
        if not isinstance(doc, dict):
            raise ServerError("decisions stream: CAPI's answer is not a JSON object")
        return doc

    def get_stream_raw(self, startup: bool = False) -> bytes:
        """The decisions stream's body as received, for ``capi_fast._native.parse_stream``."""
        body: bytes = self._call("GET", "decisions/stream", "decisions stream", params=_startup(startup), raw=True)
        self.activity.last_pull = self.clock()
        return body

    def fetch_blocklist(
        self, link: BlocklistLink | dict[str, Any] | str, if_modified_since: str | float | None = None
    ) -> Blocklist:
        """Downloads a blocklist from a stream link (or its URL), honouring If-Modified-Since.

        Redirects are followed (as crowdsec does). A ``BlocklistLink`` of scope ``ip`` drops the
        lines that hold wider networks.
        """
        result: Blocklist = self._download(link, if_modified_since, "blocklist download", self._blocklist)
        return result

    def fetch_allowlist(
        self, link: AllowlistLink | dict[str, Any] | str, if_modified_since: str | float | None = None
    ) -> Allowlist:
        """Downloads an allowlist (JSON lines) from a stream link (or its URL), honouring If-Modified-Since."""
        result: Allowlist = self._download(link, if_modified_since, "allowlist download", self._allowlist)
        return result

    def _download(
        self,
        link: Any,
        if_modified_since: str | float | None,
        what: str,
        read: Callable[[httpx.Response, Any], Any],
    ) -> Any:
        url, headers = self._list_url(link), self._list_headers(if_modified_since)

        def once() -> Any:
            try:
                r = self._http.get(url, headers=headers, follow_redirects=True)
            except _UNUSABLE_ANSWER as e:
                raise CapiError(f"{what}: unusable answer ({type(e).__name__})") from None
            self._list_answer(r, what)
            return read(r, link)

        return self._attempts(what, once)

    def enroll(
        self, attachment_key: str, name: str | None = None, overwrite: bool = False, tags: Sequence[str] = ()
    ) -> None:
        """Attaches this machine to a CrowdSec console account.

        Raises:
            ConfigurationError: the key is not letters and digits, or a tag is empty (duplicate
                tags are sent once).
        """
        body = self._enroll_body(attachment_key, name, overwrite, tags)
        self._call("POST", "watchers/enroll", "enroll", content=orjson.dumps(body))

    def push_metrics(self, metrics: dict[str, Any] | None = None) -> None:
        """Sends CAPI metrics now: ``metrics`` (checked against CAPI's schema) or ``metrics_payload()``.

        The client already sends them by itself after its first login and then every
        ``metrics_interval`` seconds while a batcher or an engine uses it (see ``metrics_tick``).

        Raises:
            InvalidMetrics: ``metrics`` breaks the schema (``bouncers`` and ``machines`` lists of
                the items CAPI defines); nothing was sent.
        """
        body = self.metrics_payload() if metrics is None else _checked_metrics(metrics)
        self._call("POST", "metrics", "push metrics", content=orjson.dumps(body))

    def metrics_tick(self) -> None:
        """Sends CAPI metrics in a background thread if they are due; never blocks, never raises."""
        if self._closed or not self._metrics_now():
            return
        with self._metrics_lock:
            if self._metrics_thread is not None and self._metrics_thread.is_alive():
                return
            self._metrics_thread = threading.Thread(target=self._push_metrics_quietly, name="capi-metrics", daemon=True)
            self._metrics_thread.start()

    def _push_metrics_quietly(self) -> None:
        try:
            self.push_metrics()
        except Exception as e:  # a background push must never take anything down
            log.warning("sending CAPI metrics failed (%s); next attempt in %s s", e, self.metrics_interval)


class AsyncCapiClient(_BaseClient):
    """The asyncio twin of ``CapiClient``: same arguments, same methods, awaited."""

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **config: Unpack[CapiClientOptions],
    ) -> None:
        super().__init__(**config)
        self._sleep = sleep
        self._http = httpx.AsyncClient(timeout=self.timeout, transport=transport, follow_redirects=False)
        self._login_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    async def aclose(self) -> None:
        """Lets a metrics push in flight finish, then closes the connection pool."""
        self._closed = True
        if self._background:
            await asyncio.wait(self._background, timeout=self.timeout)
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCapiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _attempts(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await self.policy.run_async(what, fn, self._sleep)

    async def _post_public(self, call: _Public) -> Any:
        async def once() -> Any:
            r = await self._http.post(
                self._url(call.path), content=orjson.dumps(call.body), headers=self._headers(None, body=True)
            )
            return self.policy.check(r, call.what)

        return await self._attempts(call.what, once)

    async def _token(self, force: bool = False) -> Token:
        async with self._login_lock:
            plan = self._login_plan(force)
            try:
                call = next(plan)
                while True:
                    try:
                        answer = await self._post_public(call)
                    except CapiError as e:
                        call = plan.throw(e)
                    else:
                        call = plan.send(answer)
            except StopIteration as done:
                token: Token = done.value
        self.metrics_tick()
        return token

    async def _call(
        self,
        method: str,
        call: str,
        what: str,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        replayed = False
        body = content is not None

        async def once() -> Any:
            nonlocal replayed
            token = await self._token()
            r = await self._http.request(
                method, self._url(call), content=content, params=params, headers=self._headers(token, body)
            )
            if self._replays(r.status_code, what, replayed):
                replayed = True
                token = await self._token(force=True)
                r = await self._http.request(
                    method, self._url(call), content=content, params=params, headers=self._headers(token, body)
                )
            return self.policy.check(r, what, raw)

        return await self._attempts(what, once)

    @property
    def machine_id(self) -> str:
        """This machine's id (generated and stored on first use)."""
        return self._credentials().machine_id

    async def login(self) -> None:
        """Registers if needed and logs in now."""
        await self._token(force=True)

    async def push_signals(self, signals: Iterable[Signal]) -> int:
        """Sends signals, at most 250 per call; returns how many were sent."""
        payloads = self._signal_payloads(signals)
        await self.push_signal_payloads(payloads)
        return len(payloads)

    async def push_signal_payloads(self, payloads: list[dict[str, Any]]) -> None:
        """Sends already-built signal payloads, 250 per call at most."""
        for body in self._payload_batches(payloads, self.machine_id):
            await self._call("POST", "signals", "push signals", content=body)
            self.activity.last_push = self.clock()

    def signal_batcher(self, **options: Any) -> AsyncSignalBatcher:
        """A durable ``AsyncSignalBatcher``; call its ``start()`` inside the running loop."""
        from capi_fast.batcher import AsyncSignalBatcher

        options.setdefault("path", _spool_path(self.storage))
        return AsyncSignalBatcher(self, **options)

    async def get_stream_decisions(self, startup: bool = False) -> dict[str, Any]:
        """The decisions stream: everything with ``startup=True``, else changes since the last pull."""
        doc = await self._call("GET", "decisions/stream", "decisions stream", params=_startup(startup))
        self.activity.last_pull = self.clock()
        if not isinstance(doc, dict):
            raise ServerError("decisions stream: CAPI's answer is not a JSON object")
        return doc

    async def get_stream_raw(self, startup: bool = False) -> bytes:
        """The decisions stream's body as received, for ``capi_fast._native.parse_stream``."""
        body: bytes = await self._call(
            "GET", "decisions/stream", "decisions stream", params=_startup(startup), raw=True
        )
        self.activity.last_pull = self.clock()
        return body

    async def fetch_blocklist(
        self, link: BlocklistLink | dict[str, Any] | str, if_modified_since: str | float | None = None
    ) -> Blocklist:
        """Downloads a blocklist from a stream link (or its URL), honouring If-Modified-Since."""
        result: Blocklist = await self._download(link, if_modified_since, "blocklist download", self._blocklist)
        return result

    async def fetch_allowlist(
        self, link: AllowlistLink | dict[str, Any] | str, if_modified_since: str | float | None = None
    ) -> Allowlist:
        """Downloads an allowlist (JSON lines) from a stream link (or its URL), honouring If-Modified-Since."""
        result: Allowlist = await self._download(link, if_modified_since, "allowlist download", self._allowlist)
        return result

    async def _download(
        self,
        link: Any,
        if_modified_since: str | float | None,
        what: str,
        read: Callable[[httpx.Response, Any], Any],
    ) -> Any:
        url, headers = self._list_url(link), self._list_headers(if_modified_since)

        async def once() -> Any:
            try:
                r = await self._http.get(url, headers=headers, follow_redirects=True)
            except _UNUSABLE_ANSWER as e:
                raise CapiError(f"{what}: unusable answer ({type(e).__name__})") from None
            self._list_answer(r, what)
            return read(r, link)

        return await self._attempts(what, once)

    async def enroll(
        self, attachment_key: str, name: str | None = None, overwrite: bool = False, tags: Sequence[str] = ()
    ) -> None:
        """Attaches this machine to a CrowdSec console account."""
        body = self._enroll_body(attachment_key, name, overwrite, tags)
        await self._call("POST", "watchers/enroll", "enroll", content=orjson.dumps(body))

    async def push_metrics(self, metrics: dict[str, Any] | None = None) -> None:
        """Sends CAPI metrics now: ``metrics`` (checked against CAPI's schema) or ``metrics_payload()``."""
        body = self.metrics_payload() if metrics is None else _checked_metrics(metrics)
        await self._call("POST", "metrics", "push metrics", content=orjson.dumps(body))

    def metrics_tick(self) -> None:
        """Sends CAPI metrics in a task of the running loop if they are due; never blocks, never raises."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._closed or self._background or not self._metrics_now():
            return
        task = loop.create_task(self._push_metrics_quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _push_metrics_quietly(self) -> None:
        try:
            await self.push_metrics()
        except Exception as e:  # a background push must never take anything down
            log.warning("sending CAPI metrics failed (%s); next attempt in %s s", e, self.metrics_interval)
