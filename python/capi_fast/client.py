"""The CAPI client: ``CapiClient`` (sync) and ``AsyncCapiClient`` (asyncio), over httpx.

``_BaseClient`` holds the configuration, the credential and token rules, request building,
response parsing and error mapping, with no I/O; the two clients add only the I/O (the shape of
httpx's own clients). Registration and login are one plan (``_BaseClient._login_plan``, a
generator of the public calls to make) that both clients drive. The vendor's rules it enforces
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
import base64
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from capi_fast._native import __version__
from capi_fast.errors import (
    AuthenticationError,
    CapiError,
    ConfigurationError,
    InvalidMetrics,
    InvalidSignal,
    ServerError,
)
from capi_fast.http_policy import HttpPolicy, check_seconds
from capi_fast.lists import Allowlist, AllowlistLink, Blocklist, BlocklistLink, parse_allowlist, parse_blocklist
from capi_fast.metrics import METRICS_INTERVAL, Activity, capi_metrics, metrics_problem
from capi_fast.signals import MAX_SIGNALS_PER_CALL, Signal, parse_rfc3339, scenario_problem
from capi_fast.storage import Credentials, MemoryStorage, Storage, Token, generate_credentials

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

PROD_URL = "https://api.crowdsec.net/"
DEV_URL = "https://api.dev.crowdsec.net/"


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying (only to schedule renewal)."""
    try:
        body = token.split(".")[1]
        exp = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))).get("exp")
        return float(exp) if exp is not None else None
    except (IndexError, ValueError, AttributeError, TypeError):
        return None


@dataclass(frozen=True)
class _Public:
    """An unauthenticated call of the login plan: path under the API version, JSON body, what for logs."""

    path: str
    body: dict[str, Any]
    what: str


#: Answers after which crowdsec drops its token, logs in again and replays the call.
_TOKEN_REFUSED = (401, 403)
#: Failures of a list download that are neither transport errors (retried) nor statuses: a
#: redirect loop, a body that does not decode. They fail that list only, never the refresh.
_UNUSABLE_ANSWER = (httpx.TooManyRedirects, httpx.DecodingError)
#: CAPI's pattern for an enroll attachment key (the swagger's ``EnrollRequest``).
ATTACHMENT_KEY_RE = re.compile(r"^[A-Za-z0-9]+$", re.ASCII)
_VERSION_SUFFIX = re.compile(r"^(.*/)(v[23])/?$")


def _refused(e: CapiError) -> bool:
    """True when CAPI answered a register with a refusal rather than being overloaded.

    CAPI answers 500 to a register of a machine_id it already holds (php-capi-client regenerates
    its credentials then); 502-504 and 429 are transient.
    """
    return e.status == 500 or (e.status is not None and 400 <= e.status < 500 and e.status != 429)


def _split_version(url: str) -> tuple[str, str | None]:
    """``https://api.crowdsec.net/v3/`` -> (``https://api.crowdsec.net/``, ``v3``).

    The PHP and Python SDKs write their base URLs with the version.
    """
    url = url if url.endswith("/") else url + "/"
    m = _VERSION_SUFFIX.match(url)
    return (m.group(1), m.group(2)) if m else (url, None)


def _product(user_agent: str) -> tuple[str, str]:
    """(name, version) of the integration from its user agent's first token (``mywaf/2.1``)."""
    first = user_agent.split()[0]
    name, _, version = first.partition("/")
    return name, version or "unknown"


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
        api_version: str | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        renew_before: float = 60.0,
        reset_credentials: bool = False,
        metrics_interval: float | None = METRICS_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(user_agent, str) or not user_agent.strip() or any(c in user_agent for c in "\r\n"):
            raise ConfigurationError(
                "user_agent is required (e.g. 'mywaf/2.1'): CAPI uses it to tell integrations apart"
            )
        if isinstance(scenarios, str):
            raise ConfigurationError("scenarios must be a list of names, not one str")
        scenarios = list(scenarios)
        if not scenarios:
            raise ConfigurationError(
                "scenarios must name at least one scenario your software detects (e.g. ['mywaf/login-bruteforce']): "
                "CAPI shares no decisions with a machine that declares none"
            )
        for name in scenarios:
            problem = scenario_problem(name)
            if problem is not None:
                raise ConfigurationError(problem)
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.policy = HttpPolicy(
            "CAPI",
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            clock=clock,
        )
        check_seconds("renew_before", renew_before)
        if metrics_interval is not None:
            check_seconds("metrics_interval", metrics_interval, positive=True)
        base_url, url_version = _split_version(base_url)
        if api_version is None:
            api_version = url_version or "v3"
        if api_version not in ("v2", "v3"):
            raise ConfigurationError(f"api_version must be 'v2' or 'v3', got {api_version!r}")
        if url_version is not None and url_version != api_version:
            raise ConfigurationError(f"base_url ends in /{url_version}/ but api_version is {api_version!r}")
        self.user_agent = f"{user_agent.strip()} capi-fast/{__version__}"
        self.product, self.product_version = _product(user_agent.strip())
        self.scenarios = scenarios
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.machine_id_prefix = machine_id_prefix
        self.base_url = base_url
        self.api_version = api_version
        self.renew_before = renew_before
        self.reset_credentials = reset_credentials
        self.clock = clock
        self.activity = Activity()
        self.metrics_interval = metrics_interval
        self._metrics_due: float | None = None  # None: not before the next login
        self._metrics_lock = threading.Lock()

    @property
    def timeout(self) -> float:
        """Seconds per HTTP call."""
        return self.policy.timeout

    @property
    def retries(self) -> int:
        """Retries of a transient failure."""
        return self.policy.retries

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
                expires.append(parse_rfc3339(body["expire"]).timestamp())
            except ValueError:
                pass
        if not expires:
            raise AuthenticationError("CAPI's login answer says nothing of the token's expiry")
        return Token(token=body["token"], expire=min(expires), scenarios=tuple(self.scenarios), base_url=self.base_url)

    def _new_pair(self, refused: Credentials) -> Credentials:
        """New credentials in place of ``refused``, unless CAPI accepted a pair meanwhile."""
        with self.storage.lock():
            current = self.storage.load_credentials()
            if current is not None and (current.registered or current.machine_id != refused.machine_id):
                return current
            creds = generate_credentials(self.machine_id_prefix, self.base_url)
            self.storage.save_credentials(creds)
            self.storage.save_token(None)
            log.warning(
                "CAPI refused to register machine %s and to log it in: registering a new machine %s",
                refused.machine_id,
                creds.machine_id,
            )
            return creds

    def _login_body(self, creds: Credentials) -> dict[str, Any]:
        return {"machine_id": creds.machine_id, "password": creds.password, "scenarios": self.scenarios}

    def _login_plan(self, force: bool) -> Generator[_Public, Any, Token]:
        """Registration and login as the public calls to make: the one rule both clients drive.

        Each ``yield`` is a call; the driver sends back its parsed answer or throws its
        ``CapiError`` in. Returns the token (stored).
        """
        creds = self._credentials()
        token = None if force else self._usable_token()
        if token is not None:
            return token
        answer: Any = None
        if not creds.registered:
            register = _Public("watchers", {"machine_id": creds.machine_id, "password": creds.password}, "register")
            try:
                yield register
            except CapiError as failed:
                if failed.status is None:
                    raise  # CAPI never answered: the next call registers the same pair again
                # CAPI may have stored the machine and its answer been lost (a timeout, then a
                # retry answered 500 for the known machine_id; or a process that died before
                # saving): the same pair may log in.
                log.warning("register failed (%s); trying to log in with the same credentials", failed)
                try:
                    answer = yield _Public("watchers/login", self._login_body(creds), "login")
                except AuthenticationError:
                    if not _refused(failed):
                        raise failed from None  # overloaded: retry later with the same pair
                    creds = self._new_pair(creds)
                    if not creds.registered:
                        yield _Public(
                            "watchers", {"machine_id": creds.machine_id, "password": creds.password}, "register"
                        )
                except CapiError:
                    raise failed from None
            creds = self._mark_registered(creds)
            log.info("registered machine %s with CAPI", creds.machine_id)
        if answer is None:
            answer = yield _Public("watchers/login", self._login_body(creds), "login")
        token = self._token_from(answer)
        self.storage.save_token(token)
        with self._metrics_lock:
            first_login = self._metrics_due is None
            if first_login:
                self._metrics_due = self.clock()
        return token

    # -- wire ----------------------------------------------------------------------------------

    def _url(self, call: str) -> str:
        return f"{self.base_url}{self.api_version}/{call}"

    def _headers(self, token: Token | None, body: bool = False) -> dict[str, str]:
        h = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if body:
            h["Content-Type"] = "application/json"
        if token is not None:
            h["Authorization"] = f"Bearer {token.token}"
        return h

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
        if not isinstance(attachment_key, str) or not ATTACHMENT_KEY_RE.fullmatch(attachment_key):
            raise ConfigurationError(
                "attachment_key must be the letters and digits the CrowdSec console shows (Enroll command)"
            )
        if name is not None and (not isinstance(name, str) or not name.isprintable()):
            raise ConfigurationError("name must be a printable str")
        if isinstance(tags, str):
            raise ConfigurationError("tags must be a list of str, not one str")
        unique: list[str] = []
        for tag in tags:
            if not isinstance(tag, str) or not tag.strip() or not tag.isprintable():
                raise ConfigurationError(f"tag {tag!r} must be a non-empty printable str")
            if tag not in unique:
                unique.append(tag)
        return {"attachment_key": attachment_key, "name": name or "", "overwrite": bool(overwrite), "tags": unique}

    @staticmethod
    def _list_url(link: BlocklistLink | AllowlistLink | dict[str, Any] | str) -> str:
        if isinstance(link, BlocklistLink | AllowlistLink):
            url = link.url
        else:
            url = link if isinstance(link, str) else str(link.get("url", ""))
        if not url.startswith(("http://", "https://")):
            raise CapiError(f"list link has no http(s) url: {url[:100]!r}")
        return url

    @staticmethod
    def _blocklist(r: httpx.Response, link: BlocklistLink | dict[str, Any] | str) -> Blocklist:
        if r.status_code == 304:
            return Blocklist(False, [], r.headers.get("Last-Modified"))
        scope = link.scope if isinstance(link, BlocklistLink) else "range"
        values, skipped = parse_blocklist(r.text, scope)
        return Blocklist(True, values, r.headers.get("Last-Modified"), skipped)

    @staticmethod
    def _allowlist(r: httpx.Response, link: Any = None) -> Allowlist:
        if r.status_code == 304:
            return Allowlist(False, last_modified=r.headers.get("Last-Modified"))
        entries, skipped = parse_allowlist(r.content.splitlines())
        return Allowlist(True, entries, skipped, r.headers.get("Last-Modified"))

    def _list_answer(self, r: httpx.Response, what: str) -> None:
        """Raises (or asks for a retry) unless a list download answered 200 or 304."""
        if r.status_code not in (200, 304):
            self.policy.check(r, what)
            raise CapiError(f"{what}: unexpected status {r.status_code}", r.status_code)

    def _list_headers(self, if_modified_since: str | float | None) -> dict[str, str]:
        return {"User-Agent": self.user_agent, **_if_modified_since(if_modified_since)}

    # -- metrics -------------------------------------------------------------------------------

    def metrics_payload(self) -> dict[str, Any]:
        """The CAPI metrics body describing this process (``POST /v3/metrics``)."""
        return capi_metrics(self.product, self.product_version, self.activity, self.clock())

    def _metrics_now(self) -> bool:
        """True (and the next push scheduled) when CAPI metrics are due."""
        if self.metrics_interval is None:
            return False
        with self._metrics_lock:
            now = self.clock()
            if self._metrics_due is None or now < self._metrics_due:
                return False
            self._metrics_due = now + self.metrics_interval
            return True


def _checked_metrics(metrics: Any) -> dict[str, Any]:
    problem = metrics_problem(metrics)
    if problem is not None:
        raise InvalidMetrics(f"metrics not sent: {problem}")
    result: dict[str, Any] = metrics
    return result


def _startup(startup: bool) -> dict[str, str] | None:
    return {"startup": "true"} if startup else None


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
        user_agent: your product and version (``mywaf/2.1``); sent as ``mywaf/2.1 capi-fast/<v>``,
            and the name and version the CAPI metrics report.
        scenarios: the scenarios your software detects, at least one (``signals.SCENARIO_RE``:
            php-common's rule; names outside the guide's lowercase convention are warned about once).
        storage: where credentials and token live (default: memory only).
        machine_id_prefix: up to 16 ``[a-z0-9]``; fixed once chosen.
        base_url: ``PROD_URL`` by default; ``DEV_URL`` or a ``CapiSimulator.url``.
        api_version: ``v3`` (SDK shapes) or ``v2`` (crowdsec 1.4 shapes); by default the one
            ``base_url`` ends with, else ``v3``.
        timeout: seconds per HTTP call.
        retries: retries of a transient failure (so ``retries + 1`` attempts).
        backoff: first backoff in seconds; doubles per attempt up to ``max_backoff``, with jitter.
        max_backoff: longest backoff.
        max_retry_after: a 429 asking to wait longer than this raises ``RateLimitError`` at once.
        renew_before: seconds before expiry at which the token is renewed.
        reset_credentials: allow new credentials when the prefix or endpoint changed.
        metrics_interval: seconds between automatic CAPI metrics pushes (the first follows the
            first login); None turns them off.
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
            if r.status_code in _TOKEN_REFUSED and not replayed:
                replayed = True
                log.info("%s: token refused (%d); logging in again and replaying once", what, r.status_code)
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
        **config: Any,
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
            if r.status_code in _TOKEN_REFUSED and not replayed:
                replayed = True
                log.info("%s: token refused (%d); logging in again and replaying once", what, r.status_code)
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
