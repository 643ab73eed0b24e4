"""The HTTP policy of every client (CAPI and LAPI, sync and async).

Retries, backoff, ``Retry-After``, and the mapping of answers to ``capi_fast.errors``. A call is
attempted ``retries + 1`` times at most. A transport failure, a timeout, a 5xx, a 429 and an
answer that is not JSON are retried, after ``Retry-After`` when the service sent one (a 429
asking for longer than ``max_retry_after`` raises at once), else after an exponential backoff
with jitter (``backoff * 2**attempt``, at most ``max_backoff``, times 0.5-1.0). 401 and 403 raise
``AuthenticationError`` (the CAPI client logs in again and replays once before that), other 4xx
``CapiError``. Errors name the service (CAPI or LAPI).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from capi_fast.errors import AuthenticationError, CapiError, ConfigurationError, RateLimitError, ServerError

__all__ = ["HttpPolicy", "Retry", "check_seconds", "retry_after"]

log = logging.getLogger("capi_fast.client")


class Retry(Exception):
    """An attempt failed in a way worth retrying; carries the error to raise if it was the last."""

    def __init__(self, error: CapiError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def check_seconds(name: str, value: object, positive: bool = False) -> None:
    """ConfigurationError unless ``value`` is a finite number of seconds (> 0 with ``positive``, else >= 0)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):  # type: ignore[operator]
        bound = "more than 0" if positive else "0 or more"
        raise ConfigurationError(f"{name} must be a number of seconds, {bound}, got {value!r}")


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            return None


def _message(r: httpx.Response) -> str:
    try:
        doc = orjson.loads(r.content)
        message = doc.get("message") if isinstance(doc, dict) else None
        if isinstance(message, str):
            return message[:200]
    except orjson.JSONDecodeError:
        pass
    return r.text[:200]


class HttpPolicy:
    """How one client retries and reads answers (see the module doc).

    Args:
        service: ``CAPI`` or ``LAPI``, named in errors.
        timeout: seconds per HTTP call.
        retries: retries of a transient failure (so ``retries + 1`` attempts).
        backoff, max_backoff: the exponential backoff's start and cap, in seconds.
        max_retry_after: the longest ``Retry-After`` honoured; a longer one raises at once.
        clock: Unix time (for ``Retry-After`` dates).
    """

    def __init__(
        self,
        service: str,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        max_retry_after: float,
        clock: Callable[[], float],
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be a whole number, 0 or more, got {retries!r}")
        check_seconds("timeout", timeout, positive=True)
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff), ("max_retry_after", max_retry_after)):
            check_seconds(name, value)
        self.service = service
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.clock = clock
        self._rng = random.Random()

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        if retry_after is not None:
            return retry_after
        base: float = min(self.max_backoff, self.backoff * (2.0**attempt))
        return base * (0.5 + 0.5 * self._rng.random())

    def failed(self, what: str, e: Exception, attempt: int, timeout: float | None = None) -> float:
        """Classifies a failed attempt: raises the typed error if it was the last, else the delay.

        ``timeout`` is the call's own when it had a longer one than the policy's.
        """
        if isinstance(e, Retry):
            failure: CapiError = e.error
            delay = self.delay(attempt, e.retry_after)
        elif isinstance(e, httpx.TimeoutException):
            failure = ServerError(f"{what}: {self.service} did not answer within {timeout or self.timeout} s")
            delay = self.delay(attempt, None)
        else:
            failure = ServerError(f"{what}: cannot reach {self.service} ({type(e).__name__})")
            delay = self.delay(attempt, None)
        if attempt == self.retries:
            raise failure from None
        log.info("%s failed (%s); retry %d/%d in %.2f s", what, failure, attempt + 1, self.retries, delay)
        return delay

    def check(self, r: httpx.Response, what: str, raw: bool = False) -> Any:
        """The parsed JSON (or with ``raw`` the bytes) of a successful answer; raises or asks for a retry otherwise."""
        if r.status_code == 429:
            wait = retry_after(r.headers.get("Retry-After"), self.clock())
            err = RateLimitError(f"{what}: {self.service} answered 429 Too Many Requests", 429, wait)
            if wait is not None and wait > self.max_retry_after:
                raise err
            raise Retry(err, wait)
        if r.status_code >= 500:
            raise Retry(ServerError(f"{what}: {self.service} answered {r.status_code}", r.status_code))
        if r.status_code in (401, 403):
            raise AuthenticationError(f"{what}: {self.service} answered {r.status_code}: {_message(r)}", r.status_code)
        if r.status_code >= 400:
            raise CapiError(f"{what}: {self.service} answered {r.status_code}: {_message(r)}", r.status_code)
        if raw:
            return r.content
        if not r.content:
            return None
        try:
            return orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise Retry(ServerError(f"{what}: {self.service}'s answer is not valid JSON", r.status_code)) from None

    def run(
        self, what: str, fn: Callable[[], Any], sleep: Callable[[float], None], timeout: float | None = None
    ) -> Any:
        """Runs ``fn`` under this policy (the sync clients' loop); ``timeout``: ``fn``'s own, if longer."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (Retry, httpx.TransportError) as e:
                delay = self.failed(what, e, attempt, timeout)
            sleep(delay)
        raise AssertionError("unreachable")

    async def run_async(
        self,
        what: str,
        fn: Callable[[], Awaitable[Any]],
        sleep: Callable[[float], Awaitable[None]],
        timeout: float | None = None,
    ) -> Any:
        """Awaits ``fn`` under this policy (the async clients' loop)."""
        for attempt in range(self.retries + 1):
            try:
                return await fn()
            except (Retry, httpx.TransportError) as e:
                delay = self.failed(what, e, attempt, timeout)
            await sleep(delay)
        raise AssertionError("unreachable")
