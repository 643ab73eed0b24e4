"""The CAPI protocol without its I/O: what the sync and async clients share.

Configuration and its checks, credentials and the login plan (a generator both clients drive),
headers and URLs, signal, enroll and metrics bodies, list downloads' answers. ``CapiClient`` and
``AsyncCapiClient`` (``capi_fast.client``) only send what these build and await what they read.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from email.utils import formatdate
from pathlib import Path
from typing import Any, Required, TypedDict

import httpx
import orjson

from capi_fast._native import __version__
from capi_fast.errors import (
    AuthenticationError,
    CapiError,
    ConfigurationError,
    InvalidMetrics,
    InvalidSignal,
)
from capi_fast.http_policy import HttpPolicy, check_seconds
from capi_fast.lists import Allowlist, AllowlistLink, Blocklist, BlocklistLink, parse_allowlist, parse_blocklist
from capi_fast.metrics import METRICS_INTERVAL, Activity, capi_metrics, metrics_problem
from capi_fast.signals import MAX_SIGNALS_PER_CALL, Signal, parse_rfc3339, scenario_problem
from capi_fast.storage import Credentials, MemoryStorage, Storage, Token, generate_credentials

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


class CapiClientOptions(TypedDict, total=False):
    """The settings ``CapiClient`` and ``AsyncCapiClient`` take as keywords (see ``CapiClient``)."""

    user_agent: Required[str]
    scenarios: Required[Sequence[str]]
    storage: Storage | None
    machine_id_prefix: str
    base_url: str
    api_version: str | None
    timeout: float
    retries: int
    backoff: float
    max_backoff: float
    max_retry_after: float
    renew_before: float
    reset_credentials: bool
    metrics_interval: float | None
    clock: Callable[[], float]


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

    def _replays(self, status: int, what: str, replayed: bool) -> bool:
        """True when a call CAPI refused the token of (401 or 403) is to be replayed after a new login.

        Once per call: a token refused twice is an ``AuthenticationError``.
        """
        if status in _TOKEN_REFUSED and not replayed:
            log.info("%s: token refused (%d); logging in again and replaying once", what, status)
            return True
        return False

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
