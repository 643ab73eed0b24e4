"""The CAPI client: ``CapiClient`` (sync) and ``AsyncCapiClient`` (asyncio), over httpx.

``_BaseClient`` holds the configuration, the credential and token rules, request building,
response parsing and error mapping, with no I/O; the two clients add only the I/O (the shape of
httpx's own clients). The vendor's rules it enforces (../shared/reference/sdk-guide.txt):

- credentials are generated once, registered on first use, stored, and never regenerated once
  CAPI accepted them; a changed ``machine_id_prefix`` (or endpoint) raises ``ConfigurationError``
  unless ``reset_credentials=True`` asks for new ones;
- the token is renewed shortly before it expires, re-obtained once on a 401 (then the call is
  replayed), and re-obtained when the scenario list changes;
- signals go at most 250 per call;
- a user agent is always sent: ``capi-fast/<version> <user_agent>``.

Transient failures (connection errors, timeouts, 5xx, 429, an unreadable body) are retried with
exponential backoff and jitter, honouring Retry-After, a bounded number of times; other 4xx raise
at once. Passwords and tokens never reach logs or reprs.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from capi_fast._native import __version__
from capi_fast.errors import (
    AuthenticationError,
    CapiError,
    ConfigurationError,
    InvalidSignal,
    RateLimitError,
    ServerError,
)
from capi_fast.signals import SCENARIO_RE, Signal
from capi_fast.storage import Credentials, MemoryStorage, Storage, Token, generate_credentials

if TYPE_CHECKING:
    from capi_fast.batcher import AsyncSignalBatcher, SignalBatcher

__all__ = ["DEV_URL", "MAX_SIGNALS_PER_CALL", "PROD_URL", "AsyncCapiClient", "Blocklist", "CapiClient"]

log = logging.getLogger("capi_fast.client")

PROD_URL = "https://api.crowdsec.net/"
DEV_URL = "https://api.dev.crowdsec.net/"
MAX_SIGNALS_PER_CALL = 250
_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class Blocklist:
    """A blocklist download.

    Attributes:
        modified: False when CAPI answered 304 Not Modified (``values`` is then empty).
        values: the IPs and CIDRs, one per non-empty line.
        last_modified: the Last-Modified header, to pass back as ``if_modified_since``.
    """

    modified: bool
    values: list[str]
    last_modified: str | None


def _parse_expire(text: str) -> float:
    """RFC 3339 (Go may write nanoseconds) to Unix seconds."""
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00"))).timestamp()


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying (only to schedule renewal)."""
    try:
        body = token.split(".")[1]
        exp = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))).get("exp")
        return float(exp) if exp is not None else None
    except (IndexError, ValueError, AttributeError, TypeError):
        return None


class _Retry(Exception):
    """A transient failure: wait ``delay`` (or the backoff) and try again."""

    def __init__(self, error: CapiError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _BaseClient:
    """Configuration, rules and wire formats shared by the sync and async clients."""

    def __init__(
        self,
        *,
        user_agent: str,
        scenarios: Sequence[str],
        storage: Storage | None = None,
        machine_id_prefix: str = "",
        base_url: str = PROD_URL,
        api_version: str = "v3",
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        renew_before: float = 60.0,
        reset_credentials: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(user_agent, str) or not user_agent.strip() or any(c in user_agent for c in "\r\n"):
            raise ConfigurationError(
                "user_agent is required (e.g. 'mywaf/2.1'): CAPI uses it to tell integrations apart"
            )
        scenarios = list(scenarios)
        for s in scenarios:
            if not isinstance(s, str) or not SCENARIO_RE.fullmatch(s):
                raise ConfigurationError(f"scenario {s!r} must match {SCENARIO_RE.pattern}")
        if api_version not in ("v2", "v3"):
            raise ConfigurationError(f"api_version must be 'v2' or 'v3', got {api_version!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.user_agent = f"capi-fast/{__version__} {user_agent.strip()}"
        self.scenarios = scenarios
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.machine_id_prefix = machine_id_prefix
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.api_version = api_version
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.renew_before = renew_before
        self.reset_credentials = reset_credentials
        self.clock = clock
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, user_agent={self.user_agent!r})"

    # -- rules ---------------------------------------------------------------------------------

    def _credentials(self) -> Credentials:
        """The credentials to use, generated and stored on first use (under the storage lock)."""
        with self.storage.lock():
            creds = self.storage.load_credentials()
            if creds is not None:
                changed = []
                if creds.prefix != self.machine_id_prefix:
                    changed.append(f"machine_id_prefix {creds.prefix!r} -> {self.machine_id_prefix!r}")
                if creds.base_url and creds.base_url != self.base_url:
                    changed.append(f"endpoint {creds.base_url} -> {self.base_url}")
                if not changed:
                    return creds
                if creds.registered and not self.reset_credentials:
                    raise ConfigurationError(
                        f"stored credentials (machine {creds.machine_id}) were accepted by CAPI, and "
                        + "; ".join(changed)
                        + ". Changing them resets the machine's identity: pass reset_credentials=True to do so."
                    )
                log.warning("generating new CAPI credentials: %s", "; ".join(changed))
            creds = generate_credentials(self.machine_id_prefix, self.base_url)
            self.storage.save_credentials(creds)
            self.storage.save_token(None)
            return creds

    def _mark_registered(self, creds: Credentials) -> Credentials:
        with self.storage.lock():
            current = self.storage.load_credentials()
            if current is not None and current.machine_id == creds.machine_id and not current.registered:
                current = replace(current, registered=True)
                self.storage.save_credentials(current)
            return current or creds

    def _usable_token(self) -> Token | None:
        token = self.storage.load_token()
        if (
            token is None
            or token.base_url != self.base_url
            or tuple(token.scenarios) != tuple(self.scenarios)
            or token.expire - self.renew_before <= self.clock()
        ):
            return None
        return token

    def _token_from(self, body: Any) -> Token:
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise AuthenticationError("CAPI's login answer holds no token")
        expires = [e for e in (_jwt_exp(body["token"]),) if e is not None]
        if isinstance(body.get("expire"), str):
            try:
                expires.append(_parse_expire(body["expire"]))
            except ValueError:
                pass
        if not expires:
            raise AuthenticationError("CAPI's login answer says nothing of the token's expiry")
        return Token(token=body["token"], expire=min(expires), scenarios=tuple(self.scenarios), base_url=self.base_url)

    # -- wire ----------------------------------------------------------------------------------

    def _url(self, call: str) -> str:
        return f"{self.base_url}{self.api_version}/{call}"

    def _headers(self, token: Token | None) -> dict[str, str]:
        h = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if token is not None:
            h["Authorization"] = f"Bearer {token.token}"
        return h

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base: float = min(self.max_backoff, self.backoff * (2.0**attempt))
        return base * (0.5 + 0.5 * self._rng.random())

    def _failed(self, what: str, e: Exception, attempt: int) -> float:
        """Classifies a failed attempt: raises the typed error if it was the last, else the delay."""
        if isinstance(e, _Retry):
            failure: CapiError = e.error
            delay = self._delay(attempt, e.retry_after)
        elif isinstance(e, httpx.TimeoutException):
            failure = ServerError(f"{what}: CAPI did not answer within {self.timeout} s")
            delay = self._delay(attempt, None)
        else:
            failure = ServerError(f"{what}: cannot reach CAPI ({type(e).__name__})")
            delay = self._delay(attempt, None)
        if attempt == self.retries:
            raise failure from None
        log.info("%s failed (%s); retry %d/%d in %.2f s", what, failure, attempt + 1, self.retries, delay)
        return delay

    def _check(self, r: httpx.Response, what: str, raw: bool = False) -> Any:
        """The parsed JSON (or with ``raw`` the bytes) of a successful answer; raises or asks for a retry otherwise."""
        if r.status_code == 429:
            retry_after = _retry_after(r.headers.get("Retry-After"), self.clock())
            err = RateLimitError(f"{what}: CAPI answered 429 Too Many Requests", 429, retry_after)
            if retry_after is not None and retry_after > self.max_retry_after:
                raise err
            raise _Retry(err, retry_after)
        if r.status_code >= 500:
            raise _Retry(ServerError(f"{what}: CAPI answered {r.status_code}", r.status_code))
        if r.status_code in (401, 403):
            raise AuthenticationError(f"{what}: CAPI answered {r.status_code}: {_message(r)}", r.status_code)
        if r.status_code >= 400:
            raise CapiError(f"{what}: CAPI answered {r.status_code}: {_message(r)}", r.status_code)
        if raw:
            return r.content
        if not r.content:
            return None
        try:
            return orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise _Retry(ServerError(f"{what}: CAPI's answer is not valid JSON", r.status_code)) from None

    @staticmethod
    def _signal_payloads(signals: Iterable[Signal]) -> list[dict[str, Any]]:
        """Payloads of ``signals`` (machine_id filled at send time); raises before any call."""
        items = list(signals)
        for i, s in enumerate(items):
            if not isinstance(s, Signal):
                raise InvalidSignal(f"item {i} is a {type(s).__name__}, not a Signal (use Signal.decision/whisper)")
        return [s.to_payload("") for s in items]

    @staticmethod
    def _payload_batches(payloads: list[dict[str, Any]], machine_id: str) -> list[bytes]:
        """JSON bodies of at most 250 signals each, sent as ``machine_id``."""
        return [
            orjson.dumps([{**p, "machine_id": machine_id} for p in payloads[i : i + MAX_SIGNALS_PER_CALL]])
            for i in range(0, len(payloads), MAX_SIGNALS_PER_CALL)
        ]

    @staticmethod
    def _enroll_body(attachment_key: str, name: str | None, overwrite: bool, tags: Sequence[str]) -> dict[str, Any]:
        if not isinstance(attachment_key, str) or not attachment_key:
            raise ConfigurationError("attachment_key is required (copy it from the CrowdSec console)")
        return {"attachment_key": attachment_key, "name": name or "", "overwrite": overwrite, "tags": list(tags)}

    @staticmethod
    def _blocklist(r: httpx.Response) -> Blocklist:
        if r.status_code == 304:
            return Blocklist(False, [], r.headers.get("Last-Modified"))
        values = [line.strip() for line in r.text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return Blocklist(True, values, r.headers.get("Last-Modified"))


def _startup(startup: bool) -> dict[str, str] | None:
    return {"startup": "true"} if startup else None


def _message(r: httpx.Response) -> str:
    try:
        doc = orjson.loads(r.content)
        message = doc.get("message") if isinstance(doc, dict) else None
        if isinstance(message, str):
            return message[:200]
    except orjson.JSONDecodeError:
        pass
    return r.text[:200]


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            return None


def _run_attempts(client: _BaseClient, what: str, fn: Callable[[], Any], sleep: Callable[[float], None]) -> Any:
    """Runs ``fn`` with the client's retry policy (the sync clients' shared loop)."""
    for attempt in range(client.retries + 1):
        try:
            return fn()
        except (_Retry, httpx.TransportError) as e:
            delay = client._failed(what, e, attempt)
        sleep(delay)
    raise AssertionError("unreachable")


async def _run_attempts_async(
    client: _BaseClient, what: str, fn: Callable[[], Awaitable[Any]], sleep: Callable[[float], Awaitable[None]]
) -> Any:
    """Awaits ``fn`` with the client's retry policy (the async clients' shared loop)."""
    for attempt in range(client.retries + 1):
        try:
            return await fn()
        except (_Retry, httpx.TransportError) as e:
            delay = client._failed(what, e, attempt)
        await sleep(delay)
    raise AssertionError("unreachable")


def _spool_path(storage: Storage) -> Path | None:
    directory = getattr(storage, "directory", None)
    return Path(directory) / "signals.spool" if directory is not None else None


def _if_modified_since(value: str | float | None) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, int | float):
        return {"If-Modified-Since": formatdate(value, usegmt=True)}
    return {"If-Modified-Since": value}


class CapiClient(_BaseClient):
    """The synchronous CAPI client.

    Args:
        user_agent: your product and version (``mywaf/2.1``); sent as ``capi-fast/<v> mywaf/2.1``.
        scenarios: the scenarios your software detects (``^[a-z0-9_-]+/[a-z0-9_-]+$``).
        storage: where credentials and token live (default: memory only).
        machine_id_prefix: up to 16 ``[a-z0-9]``; fixed once chosen.
        base_url: ``PROD_URL`` by default; ``DEV_URL`` or a ``CapiSimulator.url``.
        api_version: ``v3`` (SDK shapes) or ``v2`` (crowdsec 1.4 shapes).
        timeout: seconds per HTTP call.
        retries: retries of a transient failure (so ``retries + 1`` attempts).
        backoff: first backoff in seconds; doubles per attempt up to ``max_backoff``, with jitter.
        max_backoff: longest backoff.
        max_retry_after: a 429 asking to wait longer than this raises ``RateLimitError`` at once.
        renew_before: seconds before expiry at which the token is renewed.
        reset_credentials: allow new credentials when the prefix or endpoint changed.
        clock: Unix time source (tests pass a controllable one).
        transport: an httpx transport (tests, proxies, custom TLS).
        sleep: how to wait between retries (tests pass a recorder).
    """

    def __init__(
        self,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **config: Any,
    ) -> None:
        super().__init__(**config)
        self._sleep = sleep
        self._http = httpx.Client(timeout=self.timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> CapiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attempts(self, what: str, fn: Callable[[], Any]) -> Any:
        return _run_attempts(self, what, fn, self._sleep)

    def _post_public(self, call: str, body: dict[str, Any], what: str) -> Any:
        def once() -> Any:
            r = self._http.post(self._url(call), content=orjson.dumps(body), headers=self._headers(None))
            return self._check(r, what)

        return self._attempts(what, once)

    def _token(self, force: bool = False) -> Token:
        creds = self._credentials()
        token = None if force else self._usable_token()
        if token is not None:
            return token
        if not creds.registered:
            self._post_public("watchers", {"machine_id": creds.machine_id, "password": creds.password}, "register")
            creds = self._mark_registered(creds)
            log.info("registered machine %s with CAPI", creds.machine_id)
        body = {"machine_id": creds.machine_id, "password": creds.password, "scenarios": self.scenarios}
        token = self._token_from(self._post_public("watchers/login", body, "login"))
        self.storage.save_token(token)
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

        def once() -> Any:
            nonlocal replayed
            token = self._token()
            r = self._http.request(
                method, self._url(call), content=content, params=params, headers=self._headers(token)
            )
            if r.status_code == 401 and not replayed:
                replayed = True
                log.info("%s: token refused; logging in again and replaying once", what)
                token = self._token(force=True)
                r = self._http.request(
                    method, self._url(call), content=content, params=params, headers=self._headers(token)
                )
            return self._check(r, what, raw)

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
        if not isinstance(doc, dict):
            raise ServerError("decisions stream: CAPI's answer is not a JSON object")
        return doc

    def get_stream_raw(self, startup: bool = False) -> bytes:
        """The decisions stream's body as received, for ``capi_fast._native.parse_stream``."""
        body: bytes = self._call("GET", "decisions/stream", "decisions stream", params=_startup(startup), raw=True)
        return body

    def fetch_blocklist(self, link: dict[str, Any] | str, if_modified_since: str | float | None = None) -> Blocklist:
        """Downloads a blocklist from a stream link (or its URL), honouring If-Modified-Since."""
        url = link if isinstance(link, str) else str(link.get("url", ""))
        if not url.startswith(("http://", "https://")):
            raise CapiError(f"blocklist link has no http(s) url: {url[:100]!r}")
        headers = {"User-Agent": self.user_agent, **_if_modified_since(if_modified_since)}

        def once() -> Blocklist:
            r = self._http.get(url, headers=headers)
            if r.status_code in (200, 304):
                return self._blocklist(r)
            self._check(r, "blocklist download")
            raise CapiError(f"blocklist download: unexpected status {r.status_code}", r.status_code)

        result: Blocklist = self._attempts("blocklist download", once)
        return result

    def enroll(
        self, attachment_key: str, name: str | None = None, overwrite: bool = False, tags: Sequence[str] = ()
    ) -> None:
        """Attaches this machine to a CrowdSec console account."""
        body = self._enroll_body(attachment_key, name, overwrite, tags)
        self._call("POST", "watchers/enroll", "enroll", content=orjson.dumps(body))

    def push_metrics(self, metrics: dict[str, Any]) -> None:
        """Sends usage metrics (``{"bouncers": [...], "machines": [...]}``)."""
        self._call("POST", "metrics", "push metrics", content=orjson.dumps(metrics))


class AsyncCapiClient(_BaseClient):
    """The asyncio twin of ``CapiClient``: same arguments, same methods, awaited."""

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **config: Any,
    ) -> None:
        super().__init__(**config)
        self._sleep = sleep
        self._http = httpx.AsyncClient(timeout=self.timeout, transport=transport, follow_redirects=False)
        self._login_lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCapiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _attempts(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await _run_attempts_async(self, what, fn, self._sleep)

    async def _post_public(self, call: str, body: dict[str, Any], what: str) -> Any:
        async def once() -> Any:
            r = await self._http.post(self._url(call), content=orjson.dumps(body), headers=self._headers(None))
            return self._check(r, what)

        return await self._attempts(what, once)

    async def _token(self, force: bool = False) -> Token:
        async with self._login_lock:
            creds = self._credentials()
            token = None if force else self._usable_token()
            if token is not None:
                return token
            if not creds.registered:
                await self._post_public(
                    "watchers", {"machine_id": creds.machine_id, "password": creds.password}, "register"
                )
                creds = self._mark_registered(creds)
            body = {"machine_id": creds.machine_id, "password": creds.password, "scenarios": self.scenarios}
            token = self._token_from(await self._post_public("watchers/login", body, "login"))
            self.storage.save_token(token)
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

        async def once() -> Any:
            nonlocal replayed
            token = await self._token()
            r = await self._http.request(
                method, self._url(call), content=content, params=params, headers=self._headers(token)
            )
            if r.status_code == 401 and not replayed:
                replayed = True
                token = await self._token(force=True)
                r = await self._http.request(
                    method, self._url(call), content=content, params=params, headers=self._headers(token)
                )
            return self._check(r, what, raw)

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

    def signal_batcher(self, **options: Any) -> AsyncSignalBatcher:
        """A durable ``AsyncSignalBatcher``; call its ``start()`` inside the running loop."""
        from capi_fast.batcher import AsyncSignalBatcher

        options.setdefault("path", _spool_path(self.storage))
        return AsyncSignalBatcher(self, **options)

    async def get_stream_decisions(self, startup: bool = False) -> dict[str, Any]:
        """The decisions stream: everything with ``startup=True``, else changes since the last pull."""
        doc = await self._call("GET", "decisions/stream", "decisions stream", params=_startup(startup))
        if not isinstance(doc, dict):
            raise ServerError("decisions stream: CAPI's answer is not a JSON object")
        return doc

    async def get_stream_raw(self, startup: bool = False) -> bytes:
        """The decisions stream's body as received, for ``capi_fast._native.parse_stream``."""
        body: bytes = await self._call(
            "GET", "decisions/stream", "decisions stream", params=_startup(startup), raw=True
        )
        return body

    async def fetch_blocklist(
        self, link: dict[str, Any] | str, if_modified_since: str | float | None = None
    ) -> Blocklist:
        """Downloads a blocklist from a stream link (or its URL), honouring If-Modified-Since."""
        url = link if isinstance(link, str) else str(link.get("url", ""))
        if not url.startswith(("http://", "https://")):
            raise CapiError(f"blocklist link has no http(s) url: {url[:100]!r}")
        headers = {"User-Agent": self.user_agent, **_if_modified_since(if_modified_since)}

        async def once() -> Blocklist:
            r = await self._http.get(url, headers=headers)
            if r.status_code in (200, 304):
                return self._blocklist(r)
            self._check(r, "blocklist download")
            raise CapiError(f"blocklist download: unexpected status {r.status_code}", r.status_code)

        result: Blocklist = await self._attempts("blocklist download", once)
        return result

    async def enroll(
        self, attachment_key: str, name: str | None = None, overwrite: bool = False, tags: Sequence[str] = ()
    ) -> None:
        """Attaches this machine to a CrowdSec console account."""
        body = self._enroll_body(attachment_key, name, overwrite, tags)
        await self._call("POST", "watchers/enroll", "enroll", content=orjson.dumps(body))

    async def push_metrics(self, metrics: dict[str, Any]) -> None:
        """Sends usage metrics."""
        await self._call("POST", "metrics", "push metrics", content=orjson.dumps(metrics))
